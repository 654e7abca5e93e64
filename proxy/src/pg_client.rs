//! The control plane's tokio-postgres connections (state store and watcher, backfill and verify jobs,
//! shadow-read workers, `dualwrite check`) to the upstream, with the same TLS as the data plane: a
//! [`PgTarget`] is a tokio-postgres config with the libpq TLS settings of its URL (`libpq_tls`), and its
//! connections go through the proxy's own rustls connector, which accepts what that sslmode accepts.
//! tokio-postgres negotiates TLS (or not) from the sslmode it was given.

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
use crate::tls::TlsConnector;

/// Where a control-plane connection goes and which certificates it accepts, parsed from a libpq URL
/// (`sslmode=verify-full&sslrootcert=...` included; the files it names are read by the parse).
#[derive(Debug, Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: UpstreamTls,
}

impl FromStr for PgTarget {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<PgTarget> {
        let (config, tls) = crate::libpq_tls::parse(url)?;
        Ok(PgTarget { config, tls })
    }
}

impl PgTarget {
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
