//! TLS for the control plane's tokio-postgres connections, over the proxy's own rustls client config
//! (`tls::upstream_connector`: encrypted, certificate not verified, as libpq's `sslmode=prefer|require`).
//! tokio-postgres decides from the URL's `sslmode` whether to use it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pgwire::tokio::tokio_rustls::client::TlsStream;
use pgwire::tokio::tokio_rustls::rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::tls::TlsConnector;

/// A `MakeTlsConnect` for `tokio_postgres::Config::connect`.
#[derive(Clone)]
pub struct MakeRustls {
    connector: TlsConnector,
}

impl MakeRustls {
    pub fn new() -> anyhow::Result<Self> {
        Ok(MakeRustls { connector: crate::tls::upstream_connector()? })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect { connector: self.connector.clone(), name })
    }
}

pub struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(RustlsStream(self.connector.connect(self.name, stream).await?)) })
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

/// A client for `pg`, over TLS when its `sslmode` asks for it; a spawned task drives the connection until
/// the client is dropped (asynchronous messages are discarded).
pub async fn connect_client(pg: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    fn drive<F>(connection: F)
    where
        F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control-plane connection ended");
            }
        });
    }
    if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
        drive(connection);
        return Ok(client);
    }
    let (client, connection) = pg.connect(MakeRustls::new()?).await?;
    drive(connection);
    Ok(client)
}
