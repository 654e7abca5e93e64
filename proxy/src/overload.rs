//! The accept loop under overload. The listen queue holds a burst of connection attempts ([`listen`]);
//! connections beyond `limits.max_client_connections` are refused with a bounded amount of work each
//! ([`Refusals`]); accept failures, such as running out of file descriptors, are logged once per burst
//! ([`AcceptFailures`]); and at start the soft open-files limit is raised to what the connection limit
//! needs ([`ensure_fd_limit`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::protocol::messages::{self, SqlError};

/// Connections the kernel queues for the accept loop (it caps the value at `net.core.somaxconn`, 4096 by
/// default). The 128 that `TcpListener::bind` asks for overflowed in a burst of 500 connects: the kernel
/// answers SYNs beyond the queue with SYN cookies and drops the handshake's last ACK while the queue is
/// full. Each client believes it is connected; one that sends its startup packet is accepted late, when a
/// retransmission gets in, but one that waits for the server to speak first is never seen by the proxy.
const LISTEN_BACKLOG: u32 = 4096;
/// Refusals that may be in flight at once (each holds a socket for up to [`REFUSAL_DRAIN_TIME`]).
pub const MAX_REFUSALS_IN_FLIGHT: usize = 1024;
/// A refused client's input read before closing: a startup packet (or SSLRequest and startup packet) is
/// a few hundred bytes, Postgres caps it at 10 004.
const REFUSAL_DRAIN_BYTES: usize = 16 * 1024;
/// How long a refusal waits for the client to send its startup packet and to close.
const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(1);
/// File descriptors the proxy needs besides two per session (client and upstream): the listeners, the
/// control connections, shadow reads, the refusals in flight, log files.
const FD_HEADROOM: u64 = MAX_REFUSALS_IN_FLIGHT as u64 + 256;

/// Binds the client listener with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `TcpListener::bind`: a restarted proxy can listen again while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Refuses clients beyond `limits.max_client_connections` with FATAL 53300.
///
/// Closing a socket whose input is unread makes the kernel send a reset, and a reset can overtake the
/// error in the client's receive buffer, so a refusal first sends the error, then reads what the client
/// sends (its startup packet) until it closes, within [`REFUSAL_DRAIN_BYTES`] and [`REFUSAL_DRAIN_TIME`],
/// as Postgres reads the startup packet before it refuses. At most [`MAX_REFUSALS_IN_FLIGHT`] do so at
/// once; beyond that, a connection gets the error if its socket takes it without waiting and is closed at
/// once (a client whose startup packet has already arrived then sees a reset).
pub struct Refusals {
    in_flight: Arc<Semaphore>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals { in_flight: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)) }
    }
}

impl Refusals {
    /// Refuses `tcp`: in a task of `tasks`, or at once when too many refusals are in flight.
    pub fn refuse(&self, tcp: TcpStream, tasks: &mut JoinSet<()>) {
        let err = SqlError::fatal("53300", "sorry, too many clients already");
        crate::metrics::count_error(&err.code);
        let error = messages::error_response(&err);
        match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => {
                crate::metrics::count_refused("too_many_clients");
                tasks.spawn(refuse_and_drain(tcp, error, permit));
            }
            Err(_) => {
                crate::metrics::count_refused("too_many_refusals");
                // A fresh socket's send buffer takes the few bytes of the error; no waiting for it either.
                let _ = socket2::SockRef::from(&tcp).send(&error);
            }
        }
    }
}

async fn refuse_and_drain(mut tcp: TcpStream, error: bytes::Bytes, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, async {
        tcp.write_all(&error).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// Logs failed `accept` calls once per burst: out of file descriptors, a proxy would otherwise log a
/// line every time it retries. A burst ends with the first connection accepted [`BURST_QUIET`] after its
/// last failure (accepts in between, as descriptors free up one at a time, do not end it).
#[derive(Default)]
pub struct AcceptFailures {
    burst: Option<Burst>,
}

struct Burst {
    started: Instant,
    last_failure: Instant,
    failures: u64,
}

/// How long accepts must go without failing before a burst of failures counts as over.
const BURST_QUIET: Duration = Duration::from_secs(1);

impl AcceptFailures {
    pub fn failed(&mut self, error: &io::Error) {
        let now = Instant::now();
        if let Some(burst) = &mut self.burst {
            burst.failures += 1;
            burst.last_failure = now;
            return;
        }
        self.burst = Some(Burst { started: now, last_failure: now, failures: 1 });
        if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            let limit = getrlimit(Resource::Nofile);
            let (soft, hard) = (Limit(limit.current), Limit(limit.maximum));
            tracing::warn!(%error, open_files_soft_limit = %soft, open_files_hard_limit = %hard,
                "accept failed: out of file descriptors; retrying every 50 ms, the burst's further failures not logged");
        } else {
            tracing::warn!(%error, "accept failed; retrying every 50 ms, the burst's further failures not logged");
        }
    }

    pub fn accepted(&mut self) {
        if let Some(burst) = self.burst.take_if(|b| b.last_failure.elapsed() >= BURST_QUIET) {
            let lasted = burst.last_failure - burst.started;
            tracing::info!(failures = burst.failures, ?lasted, "accepting connections again");
        }
    }
}

/// A resource limit as logged (`None`: unlimited).
struct Limit(Option<u64>);

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// File descriptors a proxy with this connection limit needs.
pub fn fds_needed(max_client_connections: usize) -> u64 {
    2 * max_client_connections as u64 + FD_HEADROOM
}

/// What [`ensure_fd_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit was enough.
    Enough,
    /// The soft limit is raised to `to` (the hard limit), which is enough.
    Raise { to: Option<u64> },
    /// Even the hard limit is below what is needed; the soft limit is raised to it.
    TooLow { hard: u64 },
}

impl FdLimit {
    /// What to do about `limit` when `needed` descriptors are needed (`None` in a limit: unlimited).
    pub fn plan(needed: u64, limit: Rlimit) -> FdLimit {
        let enough = |l: Option<u64>| l.is_none_or(|n| n >= needed);
        match limit.maximum {
            _ if enough(limit.current) => FdLimit::Enough,
            Some(hard) if hard < needed => FdLimit::TooLow { hard },
            to => FdLimit::Raise { to },
        }
    }
}

/// Raises the soft open-files limit to the hard one when it is below what `max_client_connections`
/// needs (a distribution's default soft limit of 1024 is short of 1000 sessions' needs), and warns when even the
/// hard limit is too low. Accepts beyond the limit would fail with EMFILE and wait in the listen queue.
pub fn ensure_fd_limit(max_client_connections: usize) {
    let needed = fds_needed(max_client_connections);
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (Limit(limit.current), Limit(limit.maximum));
    let plan = FdLimit::plan(needed, limit);
    let to = match plan {
        FdLimit::Enough => return,
        FdLimit::Raise { to } => to,
        FdLimit::TooLow { hard } => Some(hard),
    };
    if let Err(error) = setrlimit(Resource::Nofile, Rlimit { current: to, maximum: limit.maximum }) {
        tracing::warn!(%error, open_files_soft_limit = %soft, needed, max_client_connections,
            "cannot raise the open-files limit; accepts will fail with EMFILE before the connection limit");
        return;
    }
    if let FdLimit::TooLow { .. } = plan {
        tracing::warn!(open_files_hard_limit = %hard, needed, max_client_connections,
            "the hard open-files limit is below what limits.max_client_connections needs (2 per session plus headroom); \
             raise it (ulimit -Hn, LimitNOFILE=) or lower the connection limit; soft limit raised to the hard one");
    } else {
        tracing::info!(from = %soft, to = %hard, needed, max_client_connections, "raised the soft open-files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: Option<u64>, hard: Option<u64>) -> Rlimit {
        Rlimit { current: soft, maximum: hard }
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_only_when_it_is_short() {
        let needed = fds_needed(1000);
        assert_eq!(needed, 2000 + FD_HEADROOM);
        assert_eq!(FdLimit::plan(needed, limit(Some(needed), Some(needed))), FdLimit::Enough);
        assert_eq!(FdLimit::plan(needed, limit(None, None)), FdLimit::Enough);
        assert_eq!(FdLimit::plan(needed, limit(Some(1024), Some(524_288))), FdLimit::Raise { to: Some(524_288) });
        assert_eq!(FdLimit::plan(needed, limit(Some(1024), None)), FdLimit::Raise { to: None });
        assert_eq!(FdLimit::plan(needed, limit(Some(1024), Some(2048))), FdLimit::TooLow { hard: 2048 });
    }
}
