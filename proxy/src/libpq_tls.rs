//! libpq's TLS settings of a connection URL, which tokio-postgres does not know beyond
//! `sslmode=disable|prefer|require`: `sslmode=verify-ca|verify-full`, `sslrootcert`, `sslcert` and
//! `sslkey`. They are taken out of the URL here and tokio-postgres parses the rest, with an sslmode it
//! understands standing in (`require` for the verify modes: TLS or no connection; the verification is
//! the connector's). One parse serves the data plane and every control-plane connection, so all of them
//! accept the same certificates.
//!
//! The files named are read here, once: a missing or invalid file is an error at startup that names it,
//! not a failure at the first session (the upstream URL is restart-only, so a replaced file is read at
//! the next restart). As in libpq, a root certificate given with `require` or `prefer` makes those modes
//! check the chain (`verify-ca`); unlike libpq, `~/.postgresql/root.crt` is only looked at by the verify
//! modes when `sslrootcert` is absent, and `~/.postgresql/postgresql.{crt,key}` never (a service reading
//! files from its home directory unasked would surprise more than help). `sslrootcert=system` trusts the
//! platform's roots (rustls-native-certs) and, as in libpq, means and requires `verify-full`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use percent_encoding::percent_decode_str;
use pgwire::tokio::tokio_rustls::rustls::RootCertStore;

use crate::tls::{self, TlsConnector, UpstreamTrust};

/// libpq's `sslmode`, less `allow` (plaintext first, TLS if refused), which tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> anyhow::Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => anyhow::bail!("upstream URL: sslmode=allow is not supported; use prefer or disable"),
            other => anyhow::bail!(
                "upstream URL: invalid sslmode {other:?} (disable, prefer, require, verify-ca or verify-full)"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// TLS or no connection (everything but `disable` and `prefer`).
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }

    /// The mode tokio-postgres is given: it negotiates TLS; the connector decides about the certificate.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            _ => "require",
        }
    }
}

/// The TLS side of an upstream URL: its sslmode and, unless `disable`, the connector that accepts the
/// certificates that mode allows.
#[derive(Clone)]
pub struct UpstreamTls {
    mode: SslMode,
    connector: Option<TlsConnector>,
    files: TlsFiles,
}

/// The certificate files the URL's TLS settings resolved to (read at start, as `connector` was built
/// from them), for a client that takes file names rather than a rustls config: the change-data-capture
/// watch's replication connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The roots the certificate must chain to; `None` when the mode does not check the chain.
    pub roots: Option<Roots>,
    /// The client certificate and its key, if given.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file (`sslrootcert`, or libpq's default `~/.postgresql/root.crt`).
    File(PathBuf),
    /// `sslrootcert=system`: the platform's trusted roots.
    System,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// `None` exactly when the mode is `disable`.
    pub fn connector(&self) -> Option<&TlsConnector> {
        self.connector.as_ref()
    }

    /// The certificate files behind [`connector`](Self::connector).
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The settings tokio-postgres parsed itself (`disable`, `prefer`, `require`): encryption without
    /// certificate checks, as libpq without a root certificate.
    fn encrypt_only(mode: tokio_postgres::config::SslMode) -> anyhow::Result<UpstreamTls> {
        let mode = match mode {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let connector = match mode {
            SslMode::Disable => None,
            _ => Some(tls::upstream_connector(&UpstreamTrust::EncryptOnly, None)?),
        };
        Ok(UpstreamTls { mode, connector, files: TlsFiles::default() })
    }
}

/// Splits a libpq connection string into what tokio-postgres connects with and its TLS settings, reading
/// the files those name. `postgres://` URLs only carry the verify modes and the certificate files;
/// `key=value` strings are left to tokio-postgres as they are.
pub fn parse(url: &str) -> anyhow::Result<(tokio_postgres::Config, UpstreamTls)> {
    let (pg, params) = parse_with_params(url)?;
    let tls = params.load(pg.get_ssl_mode())?;
    Ok((pg, tls))
}

/// What tokio-postgres connects with, without reading any file (a reload keeps the TLS loaded at start).
pub fn parse_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    Ok(parse_with_params(url)?.0)
}

fn parse_with_params(url: &str) -> anyhow::Result<(tokio_postgres::Config, TlsParams)> {
    let (rest, params) = split_tls_params(url)?;
    let pg: tokio_postgres::Config = rest.parse().map_err(|e| {
        let hint = if url.contains("verify-") || url.contains("sslrootcert") {
            " (sslmode=verify-ca|verify-full and sslrootcert are read from postgres:// URLs)"
        } else {
            ""
        };
        anyhow::anyhow!("invalid upstream URL: {e}{hint}")
    })?;
    Ok((pg, params))
}

/// The TLS parameters of a URL, taken out of it.
#[derive(Default)]
struct TlsParams {
    mode: Option<SslMode>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsParams {
    /// Reads the files and builds the connector. `parsed`: tokio-postgres's reading of a string whose
    /// sslmode was left to it (a key=value string).
    fn load(self, parsed: tokio_postgres::config::SslMode) -> anyhow::Result<UpstreamTls> {
        let Some(mode) = self.mode else {
            return UpstreamTls::encrypt_only(parsed);
        };
        let mut files = TlsFiles::default();
        let root_file = match (mode, self.root_cert) {
            (SslMode::Disable, _) => return Ok(UpstreamTls { mode, connector: None, files }),
            (SslMode::VerifyFull, Some(root)) if root == SYSTEM_ROOTS => None,
            // As libpq: the system's roots vouch for a name, so only a check of the name makes sense.
            (mode, Some(root)) if root == SYSTEM_ROOTS => {
                anyhow::bail!("upstream URL: sslrootcert=system needs sslmode=verify-full, not {}", mode.as_str())
            }
            (SslMode::Prefer | SslMode::Require, None) => None,
            (_, Some(path)) => Some(path),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(default_root_cert(mode)?),
        };
        let trust = match (mode, &root_file) {
            (SslMode::VerifyFull, None) => UpstreamTrust::ChainAndName(system_roots()?),
            (_, None) => UpstreamTrust::EncryptOnly,
            (SslMode::VerifyFull, Some(path)) => UpstreamTrust::ChainAndName(roots(path)?),
            (_, Some(path)) => UpstreamTrust::Chain(roots(path)?),
        };
        files.roots = match (mode, root_file) {
            (_, Some(path)) => Some(Roots::File(PathBuf::from(path))),
            (SslMode::VerifyFull, None) => Some(Roots::System),
            _ => None,
        };
        let identity = match (self.cert, self.key) {
            (Some(cert), Some(key)) => {
                let identity = tls::read_identity(Path::new(&cert), Path::new(&key))?;
                files.identity = Some((PathBuf::from(cert), PathBuf::from(key)));
                Some(identity)
            }
            (None, None) => None,
            _ => anyhow::bail!("upstream URL: sslcert and sslkey go together (a client certificate and its key)"),
        };
        let connector = tls::upstream_connector(&trust, identity)?;
        Ok(UpstreamTls { mode, connector: Some(connector), files })
    }
}

/// The URL without its TLS parameters (and with the sslmode tokio-postgres understands), and those
/// parameters decoded. The other parameters are kept as written: tokio-postgres decodes them itself.
fn split_tls_params(url: &str) -> anyhow::Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), params));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "sslmode" | "sslrootcert" | "sslcert" | "sslkey" => key,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        let value = percent_decode_str(raw)
            .decode_utf8()
            .with_context(|| format!("upstream URL: {slot} is not valid UTF-8 once decoded"))?
            .into_owned();
        match slot {
            "sslmode" => params.mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => params.root_cert = Some(value),
            "sslcert" => params.cert = Some(value),
            _ => params.key = Some(value),
        }
    }
    // libpq's defaults: prefer, or verify-full with the system's roots.
    let default_mode = match params.root_cert.as_deref() {
        Some(SYSTEM_ROOTS) => SslMode::VerifyFull,
        _ => SslMode::Prefer,
    };
    let mode = *params.mode.get_or_insert(default_mode);
    let sslmode = format!("sslmode={}", mode.for_tokio_postgres());
    kept.push(&sslmode);
    Ok((format!("{base}?{}", kept.join("&")), params))
}

/// `sslrootcert`'s value naming the platform's trusted roots rather than a file.
const SYSTEM_ROOTS: &str = "system";

fn roots(path: &str) -> anyhow::Result<Arc<RootCertStore>> {
    Ok(Arc::new(tls::read_roots(Path::new(path))?))
}

/// The platform's trusted roots, as rustls-native-certs finds them (on Linux OpenSSL's locations, with
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured): libpq's `system` is OpenSSL's default store.
fn system_roots() -> anyhow::Result<Arc<RootCertStore>> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "upstream URL: sslrootcert=system, but the system's certificate store has no usable root \
             certificate{}",
            if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
        );
    }
    Ok(Arc::new(roots))
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`, which must then exist.
fn default_root_cert(mode: SslMode) -> anyhow::Result<String> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let Some(path) = home.map(|home| home.join(".postgresql").join("root.crt")).filter(|path| path.exists()) else {
        anyhow::bail!(
            "upstream URL: sslmode={} needs root certificates: set sslrootcert=<PEM file> (libpq's default \
             ~/.postgresql/root.crt does not exist)",
            mode.as_str()
        );
    };
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays_as_written() {
        let (rest, params) = split_tls_params(
            "postgres://u:p%40ss@h:5433/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@h:5433/db?application_name=a%20b&connect_timeout=3&sslmode=require");
        assert_eq!(params.mode, Some(SslMode::VerifyFull));
        assert_eq!(params.root_cert.as_deref(), Some("/tmp/ca.crt"));
        let (rest, params) = split_tls_params("postgres://u@h/db").unwrap();
        assert_eq!(rest, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(params.mode, Some(SslMode::Prefer));
        // libpq: the system's roots make verify-full the default.
        let (rest, params) = split_tls_params("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(rest, "postgres://u@h/db?sslmode=require");
        assert_eq!(params.mode, Some(SslMode::VerifyFull));
        let (rest, _) = split_tls_params("host=h user=u sslmode=require").unwrap();
        assert_eq!(rest, "host=h user=u sslmode=require");
    }

    #[test]
    fn modes_and_their_errors() {
        let mode = |url: &str| parse(url).map(|(_, tls)| tls.mode());
        assert_eq!(mode("postgres://u@h/db").unwrap(), SslMode::Prefer);
        assert_eq!(mode("postgres://u@h/db?sslmode=disable").unwrap(), SslMode::Disable);
        assert!(parse("postgres://u@h/db?sslmode=disable").unwrap().1.connector().is_none());
        assert_eq!(mode("host=h user=u sslmode=require").unwrap(), SslMode::Require);
        assert!(mode("postgres://u@h/db?sslmode=allow").unwrap_err().to_string().contains("not supported"));
        assert!(mode("postgres://u@h/db?sslmode=bogus").unwrap_err().to_string().contains("invalid sslmode"));
        let missing = mode("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/ca.pem"), "{missing:#}");
        // As libpq, a root file turns the default prefer into a chain check: the file is read.
        let prefer = mode("postgres://u@h/db?sslrootcert=/nonexistent/root.pem").unwrap_err();
        assert!(format!("{prefer:#}").contains("/nonexistent/root.pem"), "{prefer:#}");
        let weak = mode("postgres://u@h/db?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(weak.to_string().contains("needs sslmode=verify-full"), "{weak}");
        let lonely = mode("postgres://u@h/db?sslmode=require&sslcert=/a.crt").unwrap_err();
        assert!(lonely.to_string().contains("go together"), "{lonely}");
        let key_value = mode("host=h sslmode=verify-full").unwrap_err();
        assert!(key_value.to_string().contains("postgres:// URLs"), "{key_value}");
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"not a certificate\n").unwrap();
        let url = format!("postgres://u@h/db?sslmode=verify-ca&sslrootcert={}", file.path().display());
        let error = format!("{:#}", parse(&url).unwrap_err());
        assert!(error.contains(&file.path().display().to_string()) && error.contains("no certificate"), "{error}");
    }
}
