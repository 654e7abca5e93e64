//! Connecting to the upstream Postgres: TCP with TCP_NODELAY, then TLS when the upstream URL's sslmode
//! asks for it (`prefer`: TLS if the server accepts, `require`, `verify-ca`, `verify-full`: TLS or fail;
//! which certificates are accepted is `libpq_tls`'s). A refused certificate fails this session only, with
//! a message saying why (08001, as every connect failure). TCP keepalive and
//! TCP_USER_TIMEOUT are set on the socket so a dead peer or a broken path ends an established session;
//! the connect, the TLS negotiation and the upstream's first answer to the startup packet are bounded by
//! the connect timeout (a stalled handshake is an error naming the upstream and the timeout, 08001).

use std::time::Duration;

use pgwire::tokio::tokio_rustls::rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;

use crate::libpq_tls::{SslMode, UpstreamTls};
use crate::protocol::startup::SSL_REQUEST_CODE;
use crate::stream::Stream;
use crate::tls::describe_rejection;

/// Where and how the data plane connects.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    /// The sslmode and the connector for it (read once, at start).
    pub tls: UpstreamTls,
    pub connect_timeout: Duration,
    /// Idle time before keepalive probes; `None`: keepalive off.
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT; `None`: the system's default.
    pub tcp_user_timeout: Option<Duration>,
}

impl UpstreamTarget {
    /// From `postgres://user@host:port/db?sslmode=...&sslrootcert=...` (first host only; TCP hosts only).
    /// Reads the certificate files the URL names.
    pub fn from_url(url: &str, connect_timeout: Duration) -> anyhow::Result<Self> {
        ensure_configured(url)?;
        let (cfg, tls) = crate::libpq_tls::parse(url)?;
        Self::new(&cfg, tls, connect_timeout)
    }

    /// The same, with the TLS settings loaded before (a reload: the upstream URL and the files it names
    /// are restart-only, like the control plane's connections that were opened with them).
    pub fn from_url_keeping_tls(url: &str, tls: UpstreamTls, connect_timeout: Duration) -> anyhow::Result<Self> {
        ensure_configured(url)?;
        Self::new(&crate::libpq_tls::parse_config(url)?, tls, connect_timeout)
    }

    fn new(cfg: &tokio_postgres::Config, tls: UpstreamTls, connect_timeout: Duration) -> anyhow::Result<Self> {
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(_) => anyhow::bail!("upstream over a Unix socket is not supported; use a TCP host"),
            None => "localhost".to_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        Ok(UpstreamTarget {
            host,
            port,
            tls,
            connect_timeout: cfg.get_connect_timeout().copied().unwrap_or(connect_timeout),
            keepalive: None,
            tcp_user_timeout: None,
        })
    }

    pub fn with_tcp_options(mut self, keepalive: Option<Duration>, tcp_user_timeout: Option<Duration>) -> Self {
        self.keepalive = keepalive;
        self.tcp_user_timeout = tcp_user_timeout;
        self
    }

    #[cfg(test)]
    pub fn wants_tls(&self) -> bool {
        self.tls.connector().is_some()
    }

    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn ensure_configured(url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!url.is_empty(), "no upstream configured: give --upstream postgres://user@host:port/db");
    Ok(())
}

/// Why the upstream could not be reached; shown to the client as 08001.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to upstream server at {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("timed out connecting to upstream server at {addr} (connect timeout {}s)", .limit.as_secs())]
    Timeout { addr: String, limit: Duration },
    #[error("upstream server at {addr} did not answer the startup within the connect timeout ({}s)", .limit.as_secs())]
    StartupTimeout { addr: String, limit: Duration },
    #[error("upstream server at {addr} does not support SSL, but sslmode={}", .mode.as_str())]
    TlsRefused { addr: String, mode: SslMode },
    #[error("could not connect to upstream server at {addr}: {reason}")]
    Certificate { addr: String, reason: String },
}

/// Opens a connection to the upstream, negotiating TLS as the target's sslmode says.
pub async fn connect(target: &UpstreamTarget) -> Result<Stream, ConnectError> {
    let addr = target.describe();
    let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
    let work = async {
        let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        set_tcp_options(&tcp, target).map_err(io_err)?;
        let Some(tls) = target.tls.connector() else { return Ok(Stream::Tcp(tcp)) };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await.map_err(io_err)?;
        let answer = tcp.read_u8().await.map_err(io_err)?;
        if answer != b'S' {
            return match target.tls.mode() {
                mode if mode.requires_tls() => Err(ConnectError::TlsRefused { addr: addr.clone(), mode }),
                _ => Ok(Stream::Tcp(tcp)),
            };
        }
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        match tls.connect(name, tcp).await {
            Ok(stream) => Ok(Stream::UpstreamTls(Box::new(stream))),
            Err(error) => Err(match crate::tls::rejected_certificate(&error) {
                Some(reason) => {
                    ConnectError::Certificate { addr: addr.clone(), reason: describe_rejection(&target.host, reason) }
                }
                None => io_err(error),
            }),
        }
    };
    match tokio::time::timeout(target.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr, limit: target.connect_timeout }),
    }
}

/// Waits, within the connect timeout, until the upstream answers the startup packet just sent (its
/// authentication request or first message): a server that accepted the connection but never answers
/// (stopped, overloaded, a black hole in the path) is an error rather than a client left hanging.
pub async fn await_startup_answer(stream: &Stream, target: &UpstreamTarget) -> Result<(), ConnectError> {
    let addr = target.describe();
    match tokio::time::timeout(target.connect_timeout, stream.tcp().readable()).await {
        // Readable also at end of stream: a server that closed without answering (e.g. shutting down
        // while the connection waited in its backlog) is a failed connect (08001), not a lost session.
        Ok(Ok(())) => match stream.tcp().peek(&mut [0u8; 1]).await {
            Ok(0) => Err(ConnectError::Io {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering the startup",
                ),
            }),
            Ok(_) => Ok(()),
            Err(source) => Err(ConnectError::Io { addr, source }),
        },
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Err(_) => Err(ConnectError::StartupTimeout { addr, limit: target.connect_timeout }),
    }
}

fn set_tcp_options(tcp: &TcpStream, target: &UpstreamTarget) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    if let Some(idle) = target.keepalive {
        let interval = (idle / 4).max(Duration::from_secs(1));
        let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(4);
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if let Some(timeout) = target.tcp_user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
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
        assert_eq!(t.tls.mode(), SslMode::Require);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        let t = UpstreamTarget::from_url("postgres://u@127.0.0.1/app?sslmode=disable", Duration::from_secs(3)).unwrap();
        assert_eq!(t.port, 5432);
        assert!(!t.wants_tls());
        assert!(UpstreamTarget::from_url("", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn keepalive_and_user_timeout_are_set_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = UpstreamTarget::from_url(
            &format!("postgres://u@127.0.0.1:{port}/d?sslmode=disable"),
            Duration::from_secs(3),
        )
        .unwrap()
        .with_tcp_options(Some(Duration::from_secs(40)), Some(Duration::from_secs(25)));
        let Stream::Tcp(tcp) = connect(&target).await.unwrap() else { panic!("plain TCP expected") };
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(40));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(25)));

        let off = target.with_tcp_options(None, None);
        let Stream::Tcp(tcp) = connect(&off).await.unwrap() else { panic!("plain TCP expected") };
        assert!(!socket2::SockRef::from(&tcp).keepalive().unwrap());
    }

    #[tokio::test]
    async fn a_server_that_closes_before_answering_the_startup_is_a_failed_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = UpstreamTarget::from_url(
            &format!("postgres://u@127.0.0.1:{port}/d?sslmode=disable"),
            Duration::from_secs(3),
        )
        .unwrap();
        let stream = connect(&target).await.unwrap();
        drop(listener.accept().await.unwrap());
        match await_startup_answer(&stream, &target).await {
            Err(ConnectError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("not a failed connect: {other:?}"),
        }
    }
}
