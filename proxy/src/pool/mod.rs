//! Server-connection pools for transaction pooling, one per (database, user, startup parameters): a pool
//! holds at most `size` authenticated server connections (`size + reserve` while clients authenticate on
//! a full pool), idle or lent to a client for one transaction, and a fair FIFO queue of the clients
//! waiting for one. A client authenticates on a connection of its own, opened in a slot of the pool
//! ([`Pool::open`]; an idle connection is closed to make room when the pool is at its limit): authentication
//! is always the client's own exchange with the server, relayed, never a stored password. That connection
//! is the client's first lease. A connection given back goes to the longest-waiting client, else idle,
//! else (beyond `size`) is closed. Clients pinned to their connection ([`pinning`]) keep their lease to the
//! end of their session and are counted. Named prepared statements follow their clients across
//! connections ([`statements`]).
//!
//! Generic over the connection type so that its rules are tested without sockets; the session layer lends
//! its server connections through it.

pub mod metrics;
pub mod pinning;
pub mod registry;
pub mod statements;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use self::metrics::PoolMetrics;
use crate::protocol::messages::SqlError;

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

/// A pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Server connections kept (idle and lent).
    pub size: usize,
    /// Connections beyond `size` opened for clients authenticating on a full pool.
    pub reserve: usize,
    /// How long a client waits for a connection before it is refused.
    pub wait_timeout: Duration,
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

impl<C: Send + 'static> Pools<C> {
    pub fn new() -> Self {
        Pools { pools: Mutex::new(HashMap::new()) }
    }

    /// The pool of `key`, created with `settings` if it does not exist yet, else given them (a reload may
    /// have changed them).
    pub fn pool(&self, key: &PoolKey, settings: PoolSettings) -> Arc<Pool<C>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(key.clone()).or_insert_with(|| Arc::new(Pool::new(key.clone(), settings)));
        pool.state().settings = settings;
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

impl<C: Send + 'static> Default for Pools<C> {
    fn default() -> Self {
        Self::new()
    }
}

struct Waiter<C> {
    ticket: u64,
    since: Instant,
    sender: oneshot::Sender<C>,
}

struct PoolState<C> {
    settings: PoolSettings,
    idle: Vec<C>,
    /// Connections lent to clients, or being opened in a slot.
    active: usize,
    /// Clients waiting, oldest first.
    waiting: VecDeque<Waiter<C>>,
    next_ticket: u64,
    pinned: usize,
}

impl<C> PoolState<C> {
    fn total(&self) -> usize {
        self.idle.len() + self.active
    }
}

/// The server connections of one pool key.
pub struct Pool<C> {
    key: PoolKey,
    state: Mutex<PoolState<C>>,
    /// Signalled when a slot may have come free (a connection forgotten, closed or idle).
    freed: Notify,
    metrics: PoolMetrics,
}

impl<C: Send + 'static> Pool<C> {
    fn new(key: PoolKey, settings: PoolSettings) -> Self {
        let state =
            PoolState { settings, idle: Vec::new(), active: 0, waiting: VecDeque::new(), next_ticket: 0, pinned: 0 };
        let metrics = PoolMetrics::new(&key.database, &key.user);
        Pool { key, state: Mutex::new(state), freed: Notify::new(), metrics }
    }

    fn state(&self) -> MutexGuard<'_, PoolState<C>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.state();
        PoolStats {
            key: self.key.clone(),
            size: s.settings.size,
            active: s.active,
            idle: s.idle.len(),
            waiting: s.waiting.len(),
            pinned: s.pinned,
            max_wait: s.waiting.front().map(|w| w.since.elapsed()).unwrap_or_default(),
        }
    }

    /// A slot for a new connection (a client's authentication), within `size + reserve`: when the pool is
    /// at its limit an idle connection gives up its place (returned, for the caller to close), else the
    /// client waits for a slot to come free, up to the wait timeout.
    pub async fn open(self: &Arc<Self>) -> Result<(Slot<C>, Option<C>), SqlError> {
        let deadline = tokio::time::Instant::now() + self.state().settings.wait_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.state();
                let limit = s.settings.size + s.settings.reserve;
                let evicted = if s.total() < limit { None } else { s.idle.pop() };
                if s.total() < limit || evicted.is_some() {
                    s.active += 1;
                    self.metrics.opened(evicted.is_some());
                    return Ok((Slot { pool: Some(Arc::clone(self)) }, evicted));
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(wait_timeout_error());
            }
        }
    }

    /// Lends a connection for one transaction, waiting in line (first come, first served) up to the
    /// pool's wait timeout.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<C>, SqlError> {
        let started = Instant::now();
        let (ticket, receiver, wait_timeout) = {
            let mut s = self.state();
            if let Some(conn) = s.idle.pop() {
                s.active += 1;
                self.metrics.lent_idle();
                self.metrics.waited(Duration::ZERO);
                drop(s);
                return Ok(self.lease(conn));
            }
            let (sender, receiver) = oneshot::channel();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back(Waiter { ticket, since: started, sender });
            self.metrics.waiting(1.0);
            (ticket, receiver, s.settings.wait_timeout)
        };
        let mut receiver = receiver;
        let outcome = match tokio::time::timeout(wait_timeout, &mut receiver).await {
            Ok(Ok(conn)) => Ok(self.lease(conn)),
            // The sender is only dropped after its removal below or with the pool; either way: refused.
            Ok(Err(_)) => Err(wait_timeout_error()),
            Err(_) => {
                let mut s = self.state();
                let before = s.waiting.len();
                s.waiting.retain(|w| w.ticket != ticket);
                if s.waiting.len() < before {
                    self.metrics.waiting(-1.0);
                }
                drop(s);
                // Handed a connection just as the wait ran out: it is ours after all.
                match receiver.try_recv() {
                    Ok(conn) => Ok(self.lease(conn)),
                    Err(_) => Err(wait_timeout_error()),
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
    fn give_back(&self, mut conn: C) -> Option<C> {
        let mut s = self.state();
        while let Some(waiter) = s.waiting.pop_front() {
            self.metrics.waiting(-1.0);
            match waiter.sender.send(conn) {
                Ok(()) => return None,
                Err(back) => conn = back,
            }
        }
        s.active -= 1;
        let surplus = if s.total() >= s.settings.size {
            self.metrics.closed_active();
            Some(conn)
        } else {
            s.idle.push(conn);
            self.metrics.returned_idle();
            None
        };
        drop(s);
        self.freed.notify_waiters();
        surplus
    }

    /// A lent connection is gone (broken or closed): its slot is free again.
    fn forget(&self) {
        self.state().active -= 1;
        self.metrics.closed_active();
        self.freed.notify_waiters();
    }
}

/// A place in a pool for a connection being opened (and authenticated): forgotten when dropped.
pub struct Slot<C: Send + 'static> {
    pool: Option<Arc<Pool<C>>>,
}

impl<C: Send + 'static> Slot<C> {
    /// The connection opened in this slot, lent to the client who opened it.
    pub fn fill(mut self, conn: C) -> Lease<C> {
        let pool = self.pool.take().expect("a slot is filled once");
        pool.lease(conn)
    }
}

impl<C: Send + 'static> Drop for Slot<C> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.forget();
        }
    }
}

/// A server connection lent to one client: given back with [`Lease::release`], forgotten when dropped
/// (a broken connection).
pub struct Lease<C: Send + 'static> {
    pool: Arc<Pool<C>>,
    conn: Option<C>,
    pinned: bool,
}

impl<C: Send + 'static> Lease<C> {
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
            self.pool.state().pinned += 1;
            self.pool.metrics.pinned(1.0);
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
            self.pool.state().pinned -= 1;
            self.pool.metrics.pinned(-1.0);
        }
    }
}

impl<C: Send + 'static> Drop for Lease<C> {
    fn drop(&mut self) {
        self.unpin();
        if self.conn.take().is_some() {
            self.pool.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize, reserve: usize, wait: Duration) -> Arc<Pool<u32>> {
        let pools = Pools::new();
        let key = PoolKey { database: "app".into(), user: "alice".into(), parameters: Vec::new() };
        pools.pool(&key, PoolSettings { size, reserve, wait_timeout: wait })
    }

    fn figures(p: &Pool<u32>) -> (usize, usize, usize, usize) {
        let s = p.stats();
        (s.active, s.idle, s.waiting, s.pinned)
    }

    /// A client authenticates on a new connection (its first lease) and gives it back.
    async fn authenticate(p: &Arc<Pool<u32>>, conn: u32) -> (Option<u32>, Option<u32>) {
        let (slot, evicted) = p.open().await.unwrap();
        (evicted, slot.fill(conn).release())
    }

    #[tokio::test]
    async fn authenticated_connections_stay_until_the_pool_is_full_then_make_room_by_closing_idle_ones() {
        let p = pool(2, 0, Duration::from_secs(60));
        assert_eq!(authenticate(&p, 1).await, (None, None));
        assert_eq!(authenticate(&p, 2).await, (None, None));
        assert_eq!(figures(&p), (0, 2, 0, 0));
        let (evicted, back) = authenticate(&p, 3).await;
        assert!(matches!(evicted, Some(1 | 2)), "an idle connection is closed to make room: {evicted:?}");
        assert_eq!(back, None);
        assert_eq!(figures(&p), (0, 2, 0, 0));
        let mut lease = p.acquire().await.unwrap();
        assert_eq!(figures(&p), (1, 1, 0, 0));
        let first = *lease.conn();
        assert_eq!(lease.release(), None);
        assert_eq!(figures(&p), (0, 2, 0, 0));
        assert!([1, 2, 3].contains(&first));
    }

    #[tokio::test]
    async fn reserve_connections_serve_authentications_on_a_full_pool_and_are_closed_when_given_back() {
        let p = pool(1, 1, Duration::ZERO);
        let (slot, _) = p.open().await.unwrap();
        let held = slot.fill(1);
        let (slot, evicted) = p.open().await.unwrap();
        assert_eq!(evicted, None, "the reserve opens a second connection");
        let reserve = slot.fill(2);
        assert_eq!(figures(&p), (2, 0, 0, 0));
        let Err(err) = p.open().await else { panic!("size + reserve reached: no slot") };
        assert_eq!(err.code, "08P01");
        assert_eq!(reserve.release(), Some(2), "beyond the size: closed");
        assert_eq!(held.release(), None);
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn an_authentication_on_a_full_pool_waits_for_a_slot_to_come_free() {
        let p = pool(1, 0, Duration::from_secs(60));
        let (slot, _) = p.open().await.unwrap();
        let held = slot.fill(1);
        let opening = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.open().await.map(|(slot, evicted)| (slot.fill(2), evicted)) }
        });
        tokio::task::yield_now().await;
        assert!(!opening.is_finished(), "no slot while the one connection is lent");
        drop(held);
        let (lease, evicted) = opening.await.unwrap().unwrap();
        assert_eq!(evicted, None, "the broken connection's slot was taken");
        assert_eq!(figures(&p), (1, 0, 0, 0));
        assert_eq!(lease.release(), None);
    }

    #[tokio::test]
    async fn waiting_clients_are_served_first_come_first_served() {
        let p = pool(1, 0, Duration::from_secs(60));
        authenticate(&p, 7).await;
        let held = p.acquire().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for client in 0..3 {
            let (pool, tx) = (Arc::clone(&p), tx.clone());
            tokio::spawn(async move {
                let lease = pool.acquire().await.unwrap();
                tx.send(client).unwrap();
                assert_eq!(lease.release(), None);
            });
            // Each client is in line before the next one starts.
            while p.stats().waiting < client + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(figures(&p), (1, 0, 3, 0));
        assert!(p.stats().max_wait <= Duration::from_secs(60));
        assert_eq!(held.release(), None);
        let order = [rx.recv().await.unwrap(), rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_client_that_waits_too_long_gets_pgbouncers_error_and_leaves_the_line() {
        // A zero wait: the client is refused as soon as it finds no connection free.
        let p = pool(1, 0, Duration::ZERO);
        authenticate(&p, 1).await;
        let held = p.acquire().await.unwrap();
        let Err(err) = p.acquire().await else { panic!("the wait must time out") };
        assert_eq!((err.code.as_str(), err.message.as_str()), ("08P01", "query_wait_timeout"));
        assert_eq!(figures(&p), (1, 0, 0, 0), "the client left the line");
        assert_eq!(held.release(), None);
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_broken_connection_frees_its_slot_and_pinned_clients_are_counted() {
        let p = pool(1, 0, Duration::from_secs(60));
        authenticate(&p, 1).await;
        let mut lease = p.acquire().await.unwrap();
        lease.pin();
        lease.pin();
        assert_eq!(figures(&p), (1, 0, 0, 1));
        drop(lease);
        assert_eq!(figures(&p), (0, 0, 0, 0), "dropped without release: the connection is gone");
        let (slot, evicted) = p.open().await.unwrap();
        assert_eq!(evicted, None, "its slot takes a new connection");
        drop(slot);
        assert_eq!(figures(&p), (0, 0, 0, 0), "a slot whose connection failed is freed");
        authenticate(&p, 2).await;
        let mut lease = p.acquire().await.unwrap();
        lease.pin();
        assert_eq!(lease.release(), None);
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }
}
