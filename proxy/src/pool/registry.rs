//! What a server keeps of transaction mode across its sessions and reloads: the authenticated server
//! connections (`ServerConn`) in their pools, keyed by database, user and startup parameters, and the
//! names those connections prepare statements under (`PoolRegistry`). Sessions lease from it
//! (`session::pooled`); the server context holds it.

use std::sync::{Arc, Mutex};

use super::statements::{ServerPrepared, StatementNames};
use super::{Pool, PoolKey, PoolSettings, PoolView, Pools};
use crate::config::PoolConfig;
use crate::metrics::GaugeGuard;
use crate::protocol::startup::{CancelKey, StartupPacket};
use crate::stream::{ReadHalf, Stream, WriteHalf};

/// Statements a server connection keeps prepared before closing the least recently used one
/// (pgbouncer's default `max_prepared_statements`).
const SERVER_STATEMENTS: usize = 200;

/// One authenticated server connection of a pool. Boxed: it moves at every lease, hand-out and return
/// (through the pool's line, a oneshot, the session's link), and a pointer moves in one register where
/// the parts took a `memcpy` each time (callgrind: ~450 instructions per pooled statement).
pub struct ServerConn(Box<ServerConnParts>);

/// What a [`ServerConn`] holds.
pub struct ServerConnParts {
    pub(crate) read: Option<ReadHalf>,
    pub(crate) write: Option<WriteHalf>,
    pub(crate) key: Option<CancelKey>,
    pub(crate) prepared: ServerPrepared,
    /// The session thread the socket was opened on (its reactor reports the socket's readiness).
    home: usize,
    _gauge: GaugeGuard,
}

impl std::ops::Deref for ServerConn {
    type Target = ServerConnParts;
    fn deref(&self) -> &ServerConnParts {
        &self.0
    }
}

impl std::ops::DerefMut for ServerConn {
    fn deref_mut(&mut self) -> &mut ServerConnParts {
        &mut self.0
    }
}

impl crate::pool::Homed for ServerConn {
    fn home(&self) -> usize {
        self.home
    }
}

impl ServerConn {
    pub(crate) fn new(stream: Stream) -> Self {
        let (read, write) = stream.split();
        ServerConn(Box::new(ServerConnParts {
            read: Some(read),
            write: Some(write),
            key: None,
            prepared: ServerPrepared::new(SERVER_STATEMENTS),
            home: crate::session_threads::current(),
            _gauge: GaugeGuard::upstream(),
        }))
    }
}

/// The pools of a server (shared by its reloads) and the names their connections prepare statements
/// under.
pub struct PoolRegistry {
    pools: Pools<ServerConn>,
    pub(crate) names: Mutex<StatementNames>,
}

impl PoolRegistry {
    pub fn new() -> Self {
        PoolRegistry { pools: Pools::new(), names: Mutex::new(StatementNames::new()) }
    }

    /// Every pool's figures (`DUALWRITE POOLS`).
    pub fn view(self: &Arc<Self>) -> PoolView {
        let registry = Arc::downgrade(self);
        PoolView::new(move || registry.upgrade().map(|r| r.pools.stats()).unwrap_or_default())
    }

    pub(crate) fn pool(&self, startup: &StartupPacket, config: &PoolConfig) -> Arc<Pool<ServerConn>> {
        let mut parameters: Vec<(String, String)> = startup
            .parameters
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "user" | "database"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        parameters.sort();
        let key = PoolKey { database: startup.database().to_owned(), user: startup.user().to_owned(), parameters };
        let settings = PoolSettings { size: config.size, reserve: config.reserve, wait_timeout: config.wait_timeout };
        self.pools.pool(&key, settings)
    }
}

impl Default for PoolRegistry {
    fn default() -> Self {
        Self::new()
    }
}
