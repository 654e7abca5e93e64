//! The control plane's tokio-postgres connections (state store and watcher, backfill and verify jobs,
//! shadow-read workers, `dualwrite check`) to the upstream, with the same TLS as the data plane: a
//! [`PgTarget`] is a tokio-postgres config with the libpq TLS settings of its URL (`libpq_tls`), and its
//! connections go through the proxy's own rustls connector, which accepts what that sslmode accepts.
//! tokio-postgres negotiates TLS (or not) from the sslmode it was given.
//!
//! Several hosts (`postgres://u@a:5432,b:5433/db?target_session_attrs=read-write`): tokio-postgres tries
//! them in order and, for `read-write`, keeps the first whose `SHOW transaction_read_only` is off (its
//! TLS connector is made per host, so `verify-full` checks each host's own name). It has no `primary`,
//! which connects as `read-write` here (see `session_attrs`), and it reports the last host's error
//! only. [`PgTarget::find_primary`] tries the hosts one by one itself, for callers that need to know
//! which host is the primary (the data plane's `topology`, the watch's replication connection), and
//! says what each host answered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use pgwire::tokio::tokio_rustls::client::TlsStream;
use pgwire::tokio::tokio_rustls::rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Connection, Socket};

use crate::libpq_tls::UpstreamTls;
use crate::session_attrs::{HostAddr, ServerRole, SessionAttrs};
use crate::tls::TlsConnector;

/// Where a control-plane connection goes and which certificates it accepts, parsed from a libpq URL
/// (`sslmode=verify-full&sslrootcert=...` included; the files it names are read by the parse).
#[derive(Debug, Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: UpstreamTls,
    attrs: SessionAttrs,
}

impl FromStr for PgTarget {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<PgTarget> {
        let (config, tls, attrs) = crate::session_attrs::parse(url)?;
        Ok(PgTarget::from_parts(config, tls, attrs))
    }
}

impl PgTarget {
    /// From a URL parsed before (see `session_attrs::parse`).
    pub fn from_parts(mut config: tokio_postgres::Config, tls: UpstreamTls, attrs: SessionAttrs) -> PgTarget {
        config.target_session_attrs(attrs.for_tokio_postgres());
        PgTarget { config, tls, attrs }
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// For settings on top of the URL's (user, application name, timeouts).
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// The same server, credentials and TLS, connecting to `database` instead (the control plane of a
    /// migration that lives in another database than the URL's).
    pub fn with_database(&self, database: &str) -> PgTarget {
        let mut target = self.clone();
        target.config.dbname(database);
        target
    }

    /// The database a connection opens: the URL's, else the user name (as Postgres defaults it).
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname().or(self.config.get_user())
    }

    /// The URL's `sslmode` (the change-data-capture watch's replication connection follows it).
    pub fn ssl_mode(&self) -> crate::libpq_tls::SslMode {
        self.tls.mode()
    }

    /// The certificate files of the URL's TLS settings (the watch's replication connection reads them).
    pub fn tls_files(&self) -> &crate::libpq_tls::TlsFiles {
        self.tls.files()
    }

    /// The URL's TCP hosts in order, each with its port.
    pub fn hosts(&self) -> anyhow::Result<Vec<HostAddr>> {
        crate::session_attrs::tcp_hosts(&self.config)
    }

    /// The same credentials, database, TLS and settings, connecting to `host` only and accepting
    /// whatever server answers there (the caller judges it).
    pub fn at_host(&self, host: &HostAddr) -> PgTarget {
        let from = &self.config;
        let mut config = tokio_postgres::Config::new();
        config.host(&host.host).port(host.port);
        if let Some(user) = from.get_user() {
            config.user(user);
        }
        if let Some(password) = from.get_password() {
            config.password(password);
        }
        if let Some(dbname) = from.get_dbname() {
            config.dbname(dbname);
        }
        if let Some(options) = from.get_options() {
            config.options(options);
        }
        if let Some(name) = from.get_application_name() {
            config.application_name(name);
        }
        if let Some(timeout) = from.get_connect_timeout() {
            config.connect_timeout(*timeout);
        }
        if let Some(timeout) = from.get_tcp_user_timeout() {
            config.tcp_user_timeout(*timeout);
        }
        config
            .ssl_mode(from.get_ssl_mode())
            .ssl_negotiation(from.get_ssl_negotiation())
            .channel_binding(from.get_channel_binding())
            .keepalives(from.get_keepalives())
            .keepalives_idle(from.get_keepalives_idle());
        if let Some(interval) = from.get_keepalives_interval() {
            config.keepalives_interval(interval);
        }
        if let Some(retries) = from.get_keepalives_retries() {
            config.keepalives_retries(retries);
        }
        PgTarget { config, tls: self.tls.clone(), attrs: SessionAttrs::Any }
    }

    /// What the server at this (single-host) target says it is.
    pub async fn server_role(&self) -> anyhow::Result<ServerRole> {
        let client = self.connect_client().await?;
        let row = client.query_one("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')", &[]).await?;
        Ok(ServerRole { in_hot_standby: row.get(0), read_only: row.get::<_, String>(1) == "on" })
    }

    /// The first host, in the URL's order, that the URL's `target_session_attrs` accepts (`any`: the first
    /// that answers), and its index. The error names every host and what it answered, as libpq does.
    pub async fn find_primary(&self) -> anyhow::Result<(usize, HostAddr)> {
        self.find_acceptable(&self.hosts()?, self.attrs).await
    }

    /// The same over `hosts` (this target's credentials, database and TLS on each) and `attrs`.
    pub async fn find_acceptable(&self, hosts: &[HostAddr], attrs: SessionAttrs) -> anyhow::Result<(usize, HostAddr)> {
        let mut failures = Vec::with_capacity(hosts.len());
        for (index, host) in hosts.iter().enumerate() {
            match self.at_host(host).server_role().await {
                Ok(role) => match attrs.refusal(role) {
                    None => return Ok((index, host.clone())),
                    Some(reason) => failures.push(host.failed(reason)),
                },
                Err(error) => failures.push(host.failed(format!("{error:#}"))),
            }
        }
        anyhow::bail!("no upstream server accepts target_session_attrs={}: {}", attrs.as_str(), failures.join("; "))
    }

    /// A connection; the caller drives the returned `Connection`.
    pub async fn connect(&self) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), tokio_postgres::Error> {
        self.config.connect(MakeRustls { connector: self.tls.connector().cloned() }).await
    }

    /// A client whose connection a spawned task drives until the client is dropped (asynchronous
    /// messages are discarded).
    pub async fn connect_client(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control-plane connection ended");
            }
        });
        Ok(client)
    }
}

/// A `MakeTlsConnect` for `tokio_postgres::Config::connect`; `None` with `sslmode=disable`, when
/// tokio-postgres never starts TLS.
#[derive(Clone)]
struct MakeRustls {
    connector: Option<TlsConnector>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        // Called for every host even with sslmode=disable, so nothing can fail before `connect`.
        Ok(RustlsConnect { connector: self.connector.clone(), host: domain.to_owned() })
    }
}

#[doc(hidden)]
pub struct RustlsConnect {
    connector: Option<TlsConnector>,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self.connector.ok_or_else(|| io::Error::other("TLS is off (sslmode=disable)"))?;
            let name =
                ServerName::try_from(self.host.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            match connector.connect(name, stream).await {
                Ok(stream) => Ok(RustlsStream(stream)),
                Err(error) => Err(match crate::tls::rejected_certificate(&error) {
                    Some(reason) => io::Error::other(crate::tls::describe_rejection(&self.host, reason)),
                    None => error,
                }),
            }
        })
    }
}

/// The encrypted stream (no channel binding: SCRAM runs without `-PLUS`).
pub struct RustlsStream<S>(TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libpq_tls::SslMode;
    use tokio_postgres::config::{Host, TargetSessionAttrs};

    #[test]
    fn one_host_of_several_keeps_everything_but_the_other_hosts() {
        let target: PgTarget = "postgres://dw:s3cret@a:5432,b:5433/app?sslmode=require&application_name=x&\
                                connect_timeout=7&target_session_attrs=primary"
            .parse()
            .unwrap();
        // tokio-postgres has no `primary`: the control plane's own connections check read-write.
        assert_eq!(target.config().get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
        let hosts = target.hosts().unwrap();
        assert_eq!(hosts.iter().map(HostAddr::describe).collect::<Vec<_>>(), ["a:5432", "b:5433"]);
        let one = target.at_host(&hosts[1]);
        let config = one.config();
        assert_eq!(config.get_hosts(), [Host::Tcp("b".into())]);
        assert_eq!(config.get_ports(), [5433]);
        assert_eq!((config.get_user(), config.get_password()), (Some("dw"), Some(&b"s3cret"[..])));
        assert_eq!((config.get_dbname(), config.get_application_name()), (Some("app"), Some("x")));
        assert_eq!(config.get_connect_timeout(), Some(&std::time::Duration::from_secs(7)));
        assert_eq!(one.ssl_mode(), SslMode::Require);
        // The caller judges the server it reaches.
        assert_eq!(config.get_target_session_attrs(), TargetSessionAttrs::Any);
    }
}
