//! Server-connection pools for transaction pooling, one per (database, user, startup parameters): a pool
//! holds at most `size` authenticated server connections (`size + reserve` while clients authenticate on
//! a full pool), idle or lent to a client for one transaction, and a fair FIFO queue of the clients
//! waiting for one. A client authenticates on a connection of its own, opened in a slot of the pool
//! ([`Pool::open`]; an idle connection is closed to make room when the pool is at its limit): authentication
//! is always the client's own exchange with the server, relayed, never a stored password. That connection
//! is the client's first lease. A connection given back goes to the longest-waiting client, else idle,
//! else (beyond `size`) is closed. A connection closed leaves room that goes to the longest-waiting
//! client, which opens a connection there itself, without a login of its own where the server allows
//! it (`pool::queue` says what a waiter is handed, and when it is refused rather than left waiting). Clients
//! pinned to their connection ([`pinning`]) keep their lease to the
//! end of their session and are counted. Named prepared statements follow their clients across
//! connections ([`statements`]).
//!
//! Generic over the connection type so that its rules are tested without sockets; the session layer lends
//! its server connections through it.

pub mod deallocate;
pub mod metrics;
mod pin_words;
pub mod pinning;
mod queue;
pub mod registry;
pub mod statements;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use self::metrics::PoolMetrics;
use self::queue::{Handed, PoolState};
pub use self::queue::{Homed, PoolSettings};
use crate::sql_error::SqlError;

/// Which pool a client's transactions run in: connections are interchangeable only between clients that
/// logged in as the same user to the same database with the same startup parameters (application_name,
/// DateStyle, options, ...), which are the connection's session defaults.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    /// The other startup parameters, sorted by name.
    pub parameters: Vec<(String, String)>,
}

/// One pool's figures (what `DUALWRITE POOLS` shows).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    pub key: PoolKey,
    pub size: usize,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    pub pinned: usize,
    /// How long the longest-waiting client has waited so far.
    pub max_wait: Duration,
}

/// A server's pools as `DUALWRITE POOLS` shows them.
#[derive(Clone)]
pub struct PoolView(Arc<dyn Fn() -> Vec<PoolStats> + Send + Sync>);

impl PoolView {
    pub fn new(stats: impl Fn() -> Vec<PoolStats> + Send + Sync + 'static) -> Self {
        PoolView(Arc::new(stats))
    }

    /// Every pool's figures, in key order.
    pub fn stats(&self) -> Vec<PoolStats> {
        (self.0)()
    }
}

impl std::fmt::Debug for PoolView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolView")
    }
}

/// The error of a client that waited `pool_wait_timeout_secs` for a server connection: pgbouncer's
/// (`query_wait_timeout`, FATAL, 08P01), which drivers already know.
pub fn wait_timeout_error() -> SqlError {
    SqlError::fatal("08P01", "query_wait_timeout")
}

/// Every pool of a server, created on first use.
pub struct Pools<C> {
    pools: Mutex<HashMap<PoolKey, Arc<Pool<C>>>>,
}

impl<C: Send + Homed + 'static> Pools<C> {
    pub fn new() -> Self {
        Pools { pools: Mutex::new(HashMap::new()) }
    }

    /// The pool of `key`, created with `settings` if it does not exist yet, else given them (a reload may
    /// have changed them).
    pub fn pool(&self, key: &PoolKey, settings: PoolSettings) -> Arc<Pool<C>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(key.clone()).or_insert_with(|| Arc::new(Pool::new(key.clone(), settings)));
        pool.change(|s| {
            s.settings = settings;
            s.dispatch();
        });
        Arc::clone(pool)
    }

    /// Every pool's figures, in key order.
    pub fn stats(&self) -> Vec<PoolStats> {
        let pools: Vec<Arc<Pool<C>>> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut stats: Vec<PoolStats> = pools.iter().map(|p| p.stats()).collect();
        stats.sort_by(|a, b| a.key.cmp(&b.key));
        stats
    }
}

impl<C: Send + Homed + 'static> Default for Pools<C> {
    fn default() -> Self {
        Self::new()
    }
}

/// The server connections of one pool key.
pub struct Pool<C> {
    key: PoolKey,
    state: Mutex<PoolState<C>>,
    /// Signalled when a slot may have come free for a login (a connection forgotten, closed or idle).
    freed: Notify,
    /// Logins waiting in [`Pool::open`]. `freed` is signalled only when there are some: tokio's
    /// `notify_waiters` takes its list's lock even when nobody waits, and a connection comes back at the
    /// end of every transaction.
    logins_waiting: AtomicUsize,
    metrics: PoolMetrics,
}

/// Why a waiter could not open a connection in the room it was handed.
#[derive(Debug)]
pub enum OpenFailure {
    /// The server asks for a password (or another exchange only the client can make).
    NeedsCredentials,
    /// The connection failed; the waiter gets this error.
    Failed(SqlError),
}

impl<C: Send + Homed + 'static> Pool<C> {
    fn new(key: PoolKey, settings: PoolSettings) -> Self {
        let metrics = PoolMetrics::new(&key.database, &key.user);
        let state = Mutex::new(PoolState::new(settings));
        Pool { key, state, freed: Notify::new(), logins_waiting: AtomicUsize::new(0), metrics }
    }

    /// Runs `change` on the state under the lock, then moves the gauges by the difference between the
    /// figures they show and the state's: the gauges follow the state itself, whatever path changed it.
    fn change<R>(&self, change: impl FnOnce(&mut PoolState<C>) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = change(&mut s);
        let now = s.figures();
        self.metrics.publish(s.published, now);
        s.published = now;
        out
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn stats(&self) -> PoolStats {
        self.change(|s| {
            let f = s.figures();
            PoolStats {
                key: self.key.clone(),
                size: s.settings.size,
                active: f.active,
                idle: f.idle,
                waiting: f.waiting,
                pinned: f.pinned,
                max_wait: s.oldest_wait().map(|since| since.elapsed()).unwrap_or_default(),
            }
        })
    }

    /// A slot for a new connection (a client's authentication), within `size + reserve`: when the pool is
    /// at its limit an idle connection gives up its place (returned, for the caller to close), else the
    /// client waits for a slot to come free, up to the wait timeout.
    pub async fn open(self: &Arc<Self>) -> Result<(Slot<C>, Option<C>), SqlError> {
        let deadline = tokio::time::Instant::now() + self.change(|s| s.settings.wait_timeout);
        // Counted before the first look at the state: a connection that comes back after that look
        // sees the count (the state's lock orders the two), so its signal is not skipped.
        let _waiting = LoginWaiting::count(&self.logins_waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(evicted) = self.change(|s| s.open_slot()) {
                return Ok((Slot { pool: Some(Arc::clone(self)) }, evicted));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(wait_timeout_error());
            }
        }
    }

    /// Lends a connection for one transaction, waiting in line (first come, first served) up to the
    /// pool's wait timeout. When the waiter is handed room instead (a connection was closed and the pool
    /// is below its size), it opens a connection itself with `open`; if the server wants a password for
    /// that, it goes back to the head of the line. Cancel-safe: a waiter dropped leaves the line, and what
    /// it was handed meanwhile goes back to the pool.
    pub async fn acquire<F, Fut>(self: &Arc<Self>, mut open: F) -> Result<Lease<C>, SqlError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<C, OpenFailure>>,
    {
        let home = crate::session_threads::current();
        // The common case, an idle connection, without reading the clock (about 100 instructions).
        let (idle, wait_timeout) = self.change(|s| (s.lend_idle(home), s.settings.wait_timeout));
        if let Some(conn) = idle {
            self.metrics.waited(Duration::ZERO);
            return Ok(self.lease(conn));
        }
        let started = Instant::now();
        let (ticket, receiver) = match self.change(|s| s.lend(started, home)) {
            Ok(conn) => {
                self.metrics.waited(Duration::ZERO);
                return Ok(self.lease(conn));
            }
            Err(place) => place,
        };
        let deadline = tokio::time::Instant::now() + wait_timeout;
        let mut waiting = Waiting { pool: self, ticket, receiver: Some(receiver) };
        let outcome = loop {
            let handed = match waiting.handed(deadline).await {
                Some(handed) => handed,
                None => break Err(wait_timeout_error()),
            };
            match handed {
                Handed::Conn(conn) => break Ok(self.lease(conn)),
                Handed::Refused(err) => break Err(err),
                Handed::Room => {
                    let slot = Slot { pool: Some(Arc::clone(self)) };
                    match open().await {
                        Ok(conn) => {
                            self.change(|s| s.replacement_opened());
                            break Ok(slot.fill(conn));
                        }
                        Err(OpenFailure::Failed(err)) => break Err(err),
                        Err(OpenFailure::NeedsCredentials) => {
                            // The slot's place is given back inside `needs_credentials`, with the waiter's
                            // own place in line, in one step.
                            let mut slot = slot;
                            slot.pool = None;
                            let ((ticket, receiver), learned) = self.change(|s| s.needs_credentials(started, home));
                            if learned {
                                tracing::info!(
                                    database = %self.key.database,
                                    user = %self.key.user,
                                    "the server asks for a password to open a pool connection without a login: \
                                     closed connections of this pool are replaced by logins only"
                                );
                            }
                            waiting = Waiting { pool: self, ticket, receiver: Some(receiver) };
                        }
                    }
                }
            }
        };
        self.metrics.waited(started.elapsed());
        outcome
    }

    fn lease(self: &Arc<Self>, conn: C) -> Lease<C> {
        Lease { pool: Arc::clone(self), conn: Some(conn), pinned: false }
    }

    /// A lent connection comes back (counted active until here): to the longest-waiting client still
    /// waiting, else idle; beyond `size` (a reserve connection) it is returned for the caller to close.
    fn give_back(&self, conn: C) -> Option<C> {
        let surplus = self.change(|s| s.give_back(conn));
        self.signal_freed();
        surplus
    }

    fn signal_freed(&self) {
        if self.logins_waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// A lent connection is gone (broken or closed), or a slot was not filled: its place may serve a
    /// waiter, else a login.
    fn forget(&self) {
        self.change(|s| s.forget());
        self.signal_freed();
    }
}

/// One login counted in [`Pool::logins_waiting`] while it lives.
struct LoginWaiting<'p>(&'p AtomicUsize);

impl<'p> LoginWaiting<'p> {
    fn count(waiting: &'p AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        LoginWaiting(waiting)
    }
}

impl Drop for LoginWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client's place in line, left when dropped (the client went away, or its wait ran out): if it was
/// handed something meanwhile, that goes back to the pool.
struct Waiting<'p, C: Send + Homed + 'static> {
    pool: &'p Arc<Pool<C>>,
    ticket: u64,
    /// `None` once what was handed has been taken.
    receiver: Option<oneshot::Receiver<Handed<C>>>,
}

impl<C: Send + Homed + 'static> Waiting<'_, C> {
    /// What the waiter is handed, or `None` when the deadline passed first (it left the line then).
    async fn handed(&mut self, deadline: tokio::time::Instant) -> Option<Handed<C>> {
        let receiver = self.receiver.as_mut()?;
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(handed)) => {
                self.receiver = None;
                Some(handed)
            }
            // The sender is only dropped with the pool, or after the waiter left the line.
            Ok(Err(_)) => {
                self.receiver = None;
                None
            }
            // Handed something just as the wait ran out: it is ours after all.
            Err(_) => self.leave(),
        }
    }

    /// Leaves the line; what was handed before, if anything.
    fn leave(&mut self) -> Option<Handed<C>> {
        let mut receiver = self.receiver.take()?;
        // Under the lock: not in line any more means the hand-out is already in the receiver.
        self.pool.change(|s| if s.leave(self.ticket) { None } else { receiver.try_recv().ok() })
    }
}

impl<C: Send + Homed + 'static> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        match self.leave() {
            Some(Handed::Conn(conn)) => {
                // Dropped only in the rare case that no one waits and the pool is over its size.
                drop(self.pool.give_back(conn));
            }
            Some(Handed::Room) => self.pool.forget(),
            Some(Handed::Refused(_)) | None => {}
        }
    }
}

/// A place in a pool for a connection being opened (and authenticated): forgotten when dropped.
pub struct Slot<C: Send + Homed + 'static> {
    pool: Option<Arc<Pool<C>>>,
}

impl<C: Send + Homed + 'static> Slot<C> {
    /// The connection opened in this slot, lent to the client who opened it.
    pub fn fill(mut self, conn: C) -> Lease<C> {
        let pool = self.pool.take().expect("a slot is filled once");
        pool.lease(conn)
    }
}

impl<C: Send + Homed + 'static> Drop for Slot<C> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.forget();
        }
    }
}

/// A server connection lent to one client: given back with [`Lease::release`], forgotten when dropped
/// (a broken connection).
pub struct Lease<C: Send + Homed + 'static> {
    pool: Arc<Pool<C>>,
    conn: Option<C>,
    pinned: bool,
}

impl<C: Send + Homed + 'static> Lease<C> {
    pub fn conn(&mut self) -> &mut C {
        self.conn.as_mut().expect("a lease holds its connection until released")
    }

    pub fn pool(&self) -> &Arc<Pool<C>> {
        &self.pool
    }

    /// The client keeps this connection for the rest of its session (counted as pinned until released).
    pub fn pin(&mut self) {
        if !self.pinned {
            self.pinned = true;
            self.pool.change(|s| s.pinned += 1);
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Gives the connection back to the pool, ready for another client (the caller reset it first if
    /// it was pinned). A connection beyond the pool's size comes back to be closed by the caller.
    #[must_use = "a connection returned must be closed"]
    pub fn release(mut self) -> Option<C> {
        self.unpin();
        let conn = self.conn.take()?;
        self.pool.give_back(conn)
    }

    fn unpin(&mut self) {
        if std::mem::take(&mut self.pinned) {
            self.pool.change(|s| s.pinned -= 1);
        }
    }
}

impl<C: Send + Homed + 'static> Drop for Lease<C> {
    fn drop(&mut self) {
        self.unpin();
        if self.conn.take().is_some() {
            self.pool.forget();
        }
    }
}

/// Test connections are plain numbers, all of one thread.
#[cfg(test)]
impl Homed for u32 {
    fn home(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests;
