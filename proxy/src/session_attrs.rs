//! libpq's multi-host connection strings as the proxy reads them (pure, no I/O): the hosts of an upstream
//! or control URL with their ports (`postgres://u@a:5432,b:5433/db`, `host=a,b port=5432,5433`), and
//! `target_session_attrs`, which says which of them a connection may land on.
//!
//! Supported values: `any` (libpq's default: the first host that accepts the connection), `read-write`
//! (a server that is not in hot standby and whose `default_transaction_read_only` is off) and `primary`
//! (a server not in hot standby). The proxy writes (dual writes, its state), so the standby-seeking
//! values (`read-only`, `standby`, `prefer-standby`) are refused when the URL is read, with a message
//! that says so. tokio-postgres parses `any`, `read-write` and `read-only` but not `primary`, so the
//! parameter is taken out of a `postgres://` URL here before tokio-postgres parses the rest (a
//! `key=value` string is left to tokio-postgres, and `primary` is then available in URLs only).
//!
//! The words of a refusal are libpq's (`server is in hot standby mode`, `session is read-only`), so an
//! operator reads what psql would have said for the same host.

use anyhow::Context;
use percent_encoding::percent_decode_str;
use tokio_postgres::config::{Host, TargetSessionAttrs};

use crate::libpq_tls::UpstreamTls;

/// Which server a session may use (see the module docs for the values refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    #[default]
    Any,
    ReadWrite,
    Primary,
}

impl SessionAttrs {
    fn parse(value: &str) -> anyhow::Result<SessionAttrs> {
        Ok(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "primary" => SessionAttrs::Primary,
            "read-only" | "standby" | "prefer-standby" => anyhow::bail!(
                "upstream URL: target_session_attrs={value} is not supported: the proxy writes (dual writes, its \
                 migration state), so it needs the primary; use read-write or primary (or any)"
            ),
            other => anyhow::bail!(
                "upstream URL: invalid target_session_attrs {other:?} (any, read-write or primary are supported)"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::Primary => "primary",
        }
    }

    /// What tokio-postgres checks for the control plane's own connections: it knows no `primary`, so
    /// `primary` connects as `read-write` there (the control plane writes its state, so a primary whose
    /// `default_transaction_read_only` is on would not serve it either).
    pub fn for_tokio_postgres(self) -> TargetSessionAttrs {
        match self {
            SessionAttrs::Any => TargetSessionAttrs::Any,
            SessionAttrs::ReadWrite | SessionAttrs::Primary => TargetSessionAttrs::ReadWrite,
        }
    }

    /// Why a server in `role` is not acceptable, in libpq's words; `None` when it is.
    pub fn refusal(self, role: ServerRole) -> Option<&'static str> {
        match self {
            SessionAttrs::Any => None,
            _ if role.in_hot_standby => Some(HOT_STANDBY),
            SessionAttrs::ReadWrite if role.read_only => Some(READ_ONLY),
            _ => None,
        }
    }

    /// Judges one ParameterStatus of a session's startup: `in_hot_standby = on` (PostgreSQL 14+ reports
    /// it) is a standby, which no value accepts. `default_transaction_read_only` is not judged here: in a
    /// session it may be the client's own choice (`options=-c default_transaction_read_only=on`, a role
    /// setting), which the proxy's `read-write` must not refuse; the probe judges the server's.
    pub fn refuses_parameter(self, name: &str, value: &str) -> Option<&'static str> {
        match name {
            "in_hot_standby" => self.refusal(ServerRole { in_hot_standby: value == "on", read_only: false }),
            _ => None,
        }
    }
}

/// libpq's words for a server in hot standby, and for one whose sessions are read-only by default.
pub const HOT_STANDBY: &str = "server is in hot standby mode";
pub const READ_ONLY: &str = "session is read-only";

/// What a server answered about itself: `pg_is_in_recovery()`, `transaction_read_only` (or the
/// ParameterStatus of the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    pub in_hot_standby: bool,
    pub read_only: bool,
}

/// One host of a (possibly multi-host) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    pub host: String,
    pub port: u16,
}

impl HostAddr {
    /// `host:port`, as the proxy's messages name an upstream.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// libpq's prefix of a failed attempt: `connection to server at "h", port p failed: `.
    pub fn failed(&self, reason: impl std::fmt::Display) -> String {
        format!("connection to server at \"{}\", port {} failed: {reason}", self.host, self.port)
    }
}

/// The TCP hosts of a parsed URL in their order, each with its port: one port for all, or one per host
/// (as libpq; tokio-postgres accepts the same), 5432 when none is given, `localhost` when no host is.
pub fn tcp_hosts(config: &tokio_postgres::Config) -> anyhow::Result<Vec<HostAddr>> {
    let names: Vec<String> = match config.get_hosts() {
        [] => vec!["localhost".to_owned()],
        hosts => hosts
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => Ok(name.clone()),
                Host::Unix(_) => anyhow::bail!("upstream over a Unix socket is not supported; use a TCP host"),
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let ports = config.get_ports();
    anyhow::ensure!(
        ports.len() <= 1 || ports.len() == names.len(),
        "upstream URL: {} hosts but {} ports (give one port for all hosts, or one per host)",
        names.len(),
        ports.len()
    );
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, host)| HostAddr { host, port: ports.get(i).or(ports.first()).copied().unwrap_or(5432) })
        .collect())
}

/// Parses a libpq URL with its TLS settings (reading the files they name, see `libpq_tls`) and its
/// `target_session_attrs`.
pub fn parse(url: &str) -> anyhow::Result<(tokio_postgres::Config, UpstreamTls, SessionAttrs)> {
    let (rest, attrs) = split(url)?;
    let (config, tls) = crate::libpq_tls::parse(&rest)?;
    let attrs = resolve(attrs, &config)?;
    Ok((config, tls, attrs))
}

/// The same without reading any file (a reload keeps the TLS loaded at start).
pub fn parse_config(url: &str) -> anyhow::Result<(tokio_postgres::Config, SessionAttrs)> {
    let (rest, attrs) = split(url)?;
    let config = crate::libpq_tls::parse_config(&rest)?;
    let attrs = resolve(attrs, &config)?;
    Ok((config, attrs))
}

/// A `key=value` string's value, as tokio-postgres read it.
fn resolve(taken: Option<SessionAttrs>, config: &tokio_postgres::Config) -> anyhow::Result<SessionAttrs> {
    if let Some(attrs) = taken {
        return Ok(attrs);
    }
    match config.get_target_session_attrs() {
        TargetSessionAttrs::Any => Ok(SessionAttrs::Any),
        TargetSessionAttrs::ReadWrite => Ok(SessionAttrs::ReadWrite),
        _ => SessionAttrs::parse("read-only"),
    }
}

/// Takes `target_session_attrs` out of a `postgres://` URL's query; other strings are returned as they are.
fn split(url: &str) -> anyhow::Result<(String, Option<SessionAttrs>)> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), None));
    }
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None)) };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", raw)) => {
                let value = percent_decode_str(raw)
                    .decode_utf8()
                    .context("upstream URL: target_session_attrs is not valid UTF-8 once decoded")?;
                attrs = Some(SessionAttrs::parse(&value)?);
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Vec<String> {
        let (config, _) = parse_config(url).unwrap();
        tcp_hosts(&config).unwrap().iter().map(HostAddr::describe).collect()
    }

    #[test]
    fn hosts_keep_their_order_and_their_own_ports() {
        assert_eq!(hosts("postgres://u@a:5432,b:5433/db"), ["a:5432", "b:5433"]);
        assert_eq!(hosts("postgres://u@a,b:6000/db"), ["a:5432", "b:6000"]);
        assert_eq!(hosts("host=a,b,c port=7000 user=u"), ["a:7000", "b:7000", "c:7000"]);
        assert_eq!(hosts("host=a,b port=1,2 user=u"), ["a:1", "b:2"]);
        assert_eq!(hosts("postgres://u@/db"), ["localhost:5432"]);
        let (config, _) = parse_config("host=a,b,c port=1,2 user=u").unwrap();
        assert!(tcp_hosts(&config).unwrap_err().to_string().contains("3 hosts but 2 ports"));
    }

    #[test]
    fn supported_values_and_the_refused_ones() {
        let attrs = |url: &str| parse_config(url).map(|(_, a)| a);
        assert_eq!(attrs("postgres://u@a,b/db").unwrap(), SessionAttrs::Any);
        assert_eq!(attrs("postgres://u@a,b/db?target_session_attrs=read-write").unwrap(), SessionAttrs::ReadWrite);
        assert_eq!(
            attrs("postgres://u@a,b/db?sslmode=disable&target_session_attrs=primary").unwrap(),
            SessionAttrs::Primary
        );
        assert_eq!(attrs("host=a,b user=u target_session_attrs=read-write").unwrap(), SessionAttrs::ReadWrite);
        let refused = attrs("postgres://u@a,b/db?target_session_attrs=standby").unwrap_err().to_string();
        assert_eq!(
            refused,
            "upstream URL: target_session_attrs=standby is not supported: the proxy writes (dual writes, its \
             migration state), so it needs the primary; use read-write or primary (or any)"
        );
        assert!(attrs("host=a user=u target_session_attrs=read-only").unwrap_err().to_string().contains("read-only"));
        let invalid = attrs("postgres://u@a/db?target_session_attrs=writer").unwrap_err().to_string();
        assert!(invalid.contains("invalid target_session_attrs \"writer\""), "{invalid}");
        // The rest of the URL reaches tokio-postgres untouched.
        let (rest, _) = split("postgres://u@a,b/db?application_name=x&target_session_attrs=primary").unwrap();
        assert_eq!(rest, "postgres://u@a,b/db?application_name=x");
    }

    #[test]
    fn refusals_use_libpqs_words() {
        let standby = ServerRole { in_hot_standby: true, read_only: true };
        let read_only_primary = ServerRole { in_hot_standby: false, read_only: true };
        assert_eq!(SessionAttrs::Primary.refusal(standby), Some("server is in hot standby mode"));
        assert_eq!(SessionAttrs::ReadWrite.refusal(standby), Some("server is in hot standby mode"));
        assert_eq!(SessionAttrs::ReadWrite.refusal(read_only_primary), Some("session is read-only"));
        assert_eq!(SessionAttrs::Primary.refusal(read_only_primary), None);
        assert_eq!(SessionAttrs::Any.refusal(standby), None);
        assert_eq!(SessionAttrs::Primary.refuses_parameter("in_hot_standby", "on"), Some(HOT_STANDBY));
        assert_eq!(SessionAttrs::Primary.refuses_parameter("in_hot_standby", "off"), None);
        assert_eq!(SessionAttrs::ReadWrite.refuses_parameter("in_hot_standby", "on"), Some(HOT_STANDBY));
        // A session's own read-only default is the client's choice, not the server's role.
        assert_eq!(SessionAttrs::ReadWrite.refuses_parameter("default_transaction_read_only", "on"), None);
        assert_eq!(SessionAttrs::Any.refuses_parameter("in_hot_standby", "on"), None);
    }
}
