//! Connecting to the upstream Postgres: TCP with TCP_NODELAY, then TLS when the upstream URL's sslmode
//! asks for it (`prefer`: TLS if the server accepts, `require`, `verify-ca`, `verify-full`: TLS or fail;
//! which certificates are accepted is `libpq_tls`'s). A refused certificate fails this session only, with
//! a message saying why (08001, as every connect failure). TCP keepalive and
//! TCP_USER_TIMEOUT are set on the socket so a dead peer or a broken path ends an established session;
//! the connect, the TLS negotiation and the upstream's first answer to the startup packet are bounded by
//! the connect timeout (a stalled handshake is an error naming the upstream and the timeout, 08001).
//!
//! Several hosts (`postgres://u@a:5432,b:5433/db`): with `target_session_attrs=any` the first that
//! accepts the TCP connection, in order; with `read-write` or `primary` the one `topology` knows as the
//! primary, looked for again (once per session) when connecting to it fails. TLS names each host by its
//! own name (`verify-full` checks the certificate of the host actually connected to).

use std::time::Duration;

use pgwire::tokio::tokio_rustls::rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::libpq_tls::{SslMode, UpstreamTls};
use crate::pg_client::PgTarget;
use crate::protocol::startup::SSL_REQUEST_CODE;
use crate::session_attrs::{HostAddr, SessionAttrs};
use crate::stream::Stream;
use crate::tls::describe_rejection;
use crate::topology::Topology;

/// Where and how the data plane connects.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// The URL's hosts and which of them sessions use (the primary's probe included).
    pub topology: Arc<Topology>,
    /// The sslmode and the connector for it (read once, at start).
    pub tls: UpstreamTls,
    pub connect_timeout: Duration,
    /// Idle time before keepalive probes; `None`: keepalive off.
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT; `None`: the system's default.
    pub tcp_user_timeout: Option<Duration>,
}

impl UpstreamTarget {
    /// From `postgres://user@host:port[,host:port...]/db?sslmode=...&target_session_attrs=...` (TCP hosts
    /// only). Reads the certificate files the URL names. The primary is probed with the URL's own
    /// credentials unless [`with_probe`](Self::with_probe) gives the control plane's.
    pub fn from_url(url: &str, connect_timeout: Duration) -> anyhow::Result<Self> {
        ensure_configured(url)?;
        let (cfg, tls, attrs) = crate::session_attrs::parse(url)?;
        Self::new(cfg, tls, attrs, connect_timeout)
    }

    /// The same, with the TLS settings loaded before (a reload: the upstream URL and the files it names
    /// are restart-only, like the control plane's connections that were opened with them).
    pub fn from_url_keeping_tls(url: &str, tls: UpstreamTls, connect_timeout: Duration) -> anyhow::Result<Self> {
        ensure_configured(url)?;
        let (cfg, attrs) = crate::session_attrs::parse_config(url)?;
        Self::new(cfg, tls, attrs, connect_timeout)
    }

    fn new(
        cfg: tokio_postgres::Config,
        tls: UpstreamTls,
        attrs: SessionAttrs,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let hosts = crate::session_attrs::tcp_hosts(&cfg)?;
        let connect_timeout = cfg.get_connect_timeout().copied().unwrap_or(connect_timeout);
        let probe = PgTarget::from_parts(cfg, tls.clone(), attrs);
        Ok(UpstreamTarget {
            topology: Arc::new(Topology::new(hosts, attrs, probe, connect_timeout)),
            tls,
            connect_timeout,
            keepalive: None,
            tcp_user_timeout: None,
        })
    }

    /// Probes the primary with the control plane's connection settings (credentials, database, TLS) on
    /// this URL's hosts, when sessions need the primary found (see `topology`).
    /// `control` is asked only then (it reads the control URL's certificate files).
    pub fn with_control_probe(mut self, control: impl FnOnce() -> anyhow::Result<PgTarget>) -> anyhow::Result<Self> {
        if self.topology.follows_primary() {
            let (hosts, attrs) = (self.topology.hosts().to_vec(), self.topology.attrs());
            let control = control()?;
            self.topology = Arc::new(Topology::new(hosts, attrs, control, self.connect_timeout));
        }
        Ok(self)
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

    /// The hosts, `a:5432,b:5433`.
    pub fn describe(&self) -> String {
        self.topology.hosts().iter().map(HostAddr::describe).collect::<Vec<_>>().join(",")
    }

    /// One host by its index.
    pub fn host(&self, index: usize) -> &HostAddr {
        &self.topology.hosts()[index]
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
    /// Several hosts, and none is acceptable for `target_session_attrs` (each host's answer in libpq's words).
    #[error("{0}")]
    NoPrimary(String),
}

/// Opens a connection to the upstream, negotiating TLS as the target's sslmode says.
pub async fn connect(target: &UpstreamTarget) -> Result<Stream, ConnectError> {
    connect_session(target).await.map(|(stream, _)| stream)
}

/// The same, with the index of the host connected to (see the module docs for which one).
pub async fn connect_session(target: &UpstreamTarget) -> Result<(Stream, usize), ConnectError> {
    let topology = &target.topology;
    if !topology.follows_primary() {
        let mut last = None;
        for index in 0..topology.hosts().len() {
            match connect_host(target, index).await {
                Ok(stream) => return Ok((stream, index)),
                Err(error) => last = Some(error),
            }
        }
        return Err(last.expect("a URL has at least one host"));
    }
    // The known primary, then (once) the one a new probe finds when it could not be reached.
    let mut last = None;
    for _ in 0..2 {
        let index = topology.primary().await.map_err(ConnectError::NoPrimary)?;
        match connect_host(target, index).await {
            Ok(stream) => return Ok((stream, index)),
            Err(error) => {
                topology.lost(index);
                last = Some(error);
            }
        }
    }
    Err(last.expect("tried at least once"))
}

async fn connect_host(target: &UpstreamTarget, index: usize) -> Result<Stream, ConnectError> {
    let host = target.host(index);
    let addr = host.describe();
    let io_err = |source| ConnectError::Io { addr: addr.clone(), source };
    let work = async {
        let mut tcp = TcpStream::connect((host.host.as_str(), host.port)).await.map_err(io_err)?;
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
        let name = ServerName::try_from(host.host.clone())
            .map_err(|e| io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        match tls.connect(name, tcp).await {
            Ok(stream) => Ok(Stream::UpstreamTls(Box::new(stream))),
            Err(error) => Err(match crate::tls::rejected_certificate(&error) {
                Some(reason) => {
                    ConnectError::Certificate { addr: addr.clone(), reason: describe_rejection(&host.host, reason) }
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
/// `host`: the index [`connect_session`] returned.
pub async fn await_startup_answer(stream: &Stream, target: &UpstreamTarget, host: usize) -> Result<(), ConnectError> {
    let addr = target.host(host).describe();
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
        assert_eq!(t.describe(), "db.example:6000");
        assert_eq!(t.tls.mode(), SslMode::Require);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        let t = UpstreamTarget::from_url("postgres://u@127.0.0.1/app?sslmode=disable", Duration::from_secs(3)).unwrap();
        assert_eq!(t.host(0).port, 5432);
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
    async fn with_any_the_first_host_that_accepts_the_connection_is_used() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_port = open.local_addr().unwrap().port();
        let url = format!("postgres://u@127.0.0.1:{closed_port},127.0.0.1:{open_port}/d?sslmode=disable");
        let target = UpstreamTarget::from_url(&url, Duration::from_secs(3)).unwrap();
        assert_eq!(target.describe(), format!("127.0.0.1:{closed_port},127.0.0.1:{open_port}"));
        assert!(!target.topology.follows_primary(), "any: nothing to probe");
        let (_, index) = connect_session(&target).await.unwrap();
        assert_eq!(index, 1);
        // Both refuse: the last host's error.
        drop(open);
        match connect_session(&target).await {
            Err(ConnectError::Io { addr, .. }) => assert_eq!(addr, format!("127.0.0.1:{open_port}")),
            other => panic!("not a failed connect: {:?}", other.map(|(_, i)| i)),
        }
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
        match await_startup_answer(&stream, &target, 0).await {
            Err(ConnectError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("not a failed connect: {other:?}"),
        }
    }
}
