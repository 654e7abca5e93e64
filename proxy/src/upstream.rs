//! Connecting to the upstream Postgres: TCP with TCP_NODELAY, then TLS when the upstream URL's sslmode
//! asks for it (`prefer`: TLS if the server accepts, `require`: TLS or fail).

use std::time::Duration;

use pgwire::tokio::tokio_rustls::rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, SslMode};

use crate::protocol::startup::SSL_REQUEST_CODE;
use crate::session::stream::Stream;
use crate::tls::TlsConnector;

/// Where and how the data plane connects.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub ssl_mode: SslMode,
    pub connect_timeout: Duration,
}

impl UpstreamTarget {
    /// From `postgres://user@host:port/db?sslmode=...` (first host only; TCP hosts only).
    pub fn from_url(url: &str, connect_timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!url.is_empty(), "no upstream configured: give --upstream postgres://user@host:port/db");
        let cfg: tokio_postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("invalid upstream URL: {e}"))?;
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(_) => anyhow::bail!("upstream over a Unix socket is not supported; use a TCP host"),
            None => "localhost".to_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        Ok(UpstreamTarget {
            host,
            port,
            ssl_mode: cfg.get_ssl_mode(),
            connect_timeout: cfg.get_connect_timeout().copied().unwrap_or(connect_timeout),
        })
    }

    pub fn wants_tls(&self) -> bool {
        !matches!(self.ssl_mode, SslMode::Disable)
    }

    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why the upstream could not be reached; shown to the client as 08001.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to upstream server at {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("timed out connecting to upstream server at {addr}")]
    Timeout { addr: String },
    #[error("upstream server at {addr} does not support SSL, but sslmode=require")]
    TlsRefused { addr: String },
}

/// Opens a connection to the upstream, negotiating TLS as the target's sslmode says.
pub async fn connect(target: &UpstreamTarget, tls: Option<&TlsConnector>) -> Result<Stream, ConnectError> {
    let addr = target.describe();
    let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
    let work = async {
        let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let Some(tls) = tls.filter(|_| target.wants_tls()) else { return Ok(Stream::Tcp(tcp)) };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await.map_err(io_err)?;
        let answer = tcp.read_u8().await.map_err(io_err)?;
        if answer != b'S' {
            return match target.ssl_mode {
                SslMode::Require => Err(ConnectError::TlsRefused { addr: addr.clone() }),
                _ => Ok(Stream::Tcp(tcp)),
            };
        }
        let name = ServerName::try_from(target.host.clone()).map_err(|e| {
            io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let stream = tls.connect(name, tcp).await.map_err(io_err)?;
        Ok(Stream::UpstreamTls(Box::new(stream)))
    };
    match tokio::time::timeout(target.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_sslmode() {
        let t = UpstreamTarget::from_url("postgres://u@db.example:6000/app?sslmode=require", Duration::from_secs(3))
            .unwrap();
        assert_eq!(t.host, "db.example");
        assert_eq!(t.port, 6000);
        assert!(matches!(t.ssl_mode, SslMode::Require));
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        let t = UpstreamTarget::from_url("postgres://u@127.0.0.1/app?sslmode=disable", Duration::from_secs(3)).unwrap();
        assert_eq!(t.port, 5432);
        assert!(!t.wants_tls());
        assert!(UpstreamTarget::from_url("", Duration::from_secs(1)).is_err());
    }
}
