//! Server-connection pools for transaction pooling, one per (database, user): a pool holds at most `size`
//! authenticated server connections, idle or lent to a client for one transaction, and a fair FIFO queue of
//! the clients waiting for one. A connection a client authenticated on joins its pool (or is closed when
//! the pool is full): authentication is always the client's own exchange with the server, relayed, never a
//! stored password. Clients pinned to their connection ([`pinning`]) keep their lease to the end of their
//! session and are counted. Named prepared statements follow their clients across connections
//! ([`statements`]).
//!
//! Generic over the connection type so that its rules are tested without sockets; the session layer lends
//! its server connections through it.

pub mod pinning;
pub mod statements;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::protocol::messages::SqlError;

/// Which pool a client's transactions run in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// A pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Server connections at most (idle and lent).
    pub size: usize,
    /// How long a client waits for a connection before it is refused.
    pub wait_timeout: Duration,
}

/// One pool's figures (what `DUALWRITE POOLS` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub key: PoolKey,
    pub size: usize,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    pub pinned: usize,
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

    /// The pool of `key`, created with `settings` if it does not exist yet.
    pub fn pool(&self, key: &PoolKey, settings: PoolSettings) -> Arc<Pool<C>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pools.entry(key.clone()).or_insert_with(|| Arc::new(Pool::new(key.clone(), settings))))
    }

    /// Every pool's figures, in (database, user) order.
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

struct PoolState<C> {
    idle: Vec<C>,
    /// Connections lent to clients.
    active: usize,
    /// Clients waiting, oldest first, each with its ticket.
    waiting: VecDeque<(u64, oneshot::Sender<C>)>,
    next_ticket: u64,
    pinned: usize,
}

/// The server connections of one (database, user).
pub struct Pool<C> {
    key: PoolKey,
    settings: PoolSettings,
    state: Mutex<PoolState<C>>,
}

impl<C: Send + 'static> Pool<C> {
    fn new(key: PoolKey, settings: PoolSettings) -> Self {
        let state = PoolState { idle: Vec::new(), active: 0, waiting: VecDeque::new(), next_ticket: 0, pinned: 0 };
        Pool { key, settings, state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, PoolState<C>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.state();
        PoolStats {
            key: self.key.clone(),
            size: self.settings.size,
            active: s.active,
            idle: s.idle.len(),
            waiting: s.waiting.len(),
            pinned: s.pinned,
        }
    }

    /// A connection a client just authenticated on joins the pool: handed to the longest-waiting client, or
    /// kept idle. `Err` gives it back when the pool is full (the caller closes it).
    pub fn adopt(self: &Arc<Self>, conn: C) -> Result<(), C> {
        let mut s = self.state();
        if s.idle.len() + s.active >= self.settings.size {
            return Err(conn);
        }
        s.active += 1;
        drop(s);
        self.give_back(conn);
        Ok(())
    }

    /// Lends a connection for one transaction, waiting in line (first come, first served) up to the
    /// pool's wait timeout.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<C>, SqlError> {
        let (ticket, receiver) = {
            let mut s = self.state();
            if let Some(conn) = s.idle.pop() {
                s.active += 1;
                drop(s);
                return Ok(self.lease(conn));
            }
            let (sender, receiver) = oneshot::channel();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back((ticket, sender));
            (ticket, receiver)
        };
        let mut receiver = receiver;
        match tokio::time::timeout(self.settings.wait_timeout, &mut receiver).await {
            Ok(Ok(conn)) => Ok(self.lease(conn)),
            // The sender is only dropped after its removal below or with the pool; either way: refused.
            Ok(Err(_)) => Err(wait_timeout_error()),
            Err(_) => {
                let mut s = self.state();
                s.waiting.retain(|(t, _)| *t != ticket);
                drop(s);
                // Handed a connection just as the wait ran out: it is ours after all.
                match receiver.try_recv() {
                    Ok(conn) => Ok(self.lease(conn)),
                    Err(_) => Err(wait_timeout_error()),
                }
            }
        }
    }

    fn lease(self: &Arc<Self>, conn: C) -> Lease<C> {
        Lease { pool: Arc::clone(self), conn: Some(conn), pinned: false }
    }

    /// A lent connection comes back (counted active until here): to the longest-waiting client still
    /// waiting, else idle.
    fn give_back(&self, mut conn: C) {
        let mut s = self.state();
        while let Some((_, waiter)) = s.waiting.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        s.active -= 1;
        s.idle.push(conn);
    }

    /// A lent connection is gone (broken or closed): its slot is free again.
    fn forget(&self) {
        let mut s = self.state();
        s.active -= 1;
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

    /// The client keeps this connection for the rest of its session (counted as pinned until released).
    pub fn pin(&mut self) {
        if !self.pinned {
            self.pinned = true;
            self.pool.state().pinned += 1;
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Gives the connection back to the pool, ready for another client (the caller reset it first if
    /// it was pinned or used in session mode).
    pub fn release(mut self) {
        self.unpin();
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }

    fn unpin(&mut self) {
        if std::mem::take(&mut self.pinned) {
            self.pool.state().pinned -= 1;
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

    fn pool(size: usize, wait: Duration) -> Arc<Pool<u32>> {
        let pools = Pools::new();
        let key = PoolKey { database: "app".into(), user: "alice".into() };
        pools.pool(&key, PoolSettings { size, wait_timeout: wait })
    }

    fn figures(p: &Pool<u32>) -> (usize, usize, usize, usize) {
        let s = p.stats();
        (s.active, s.idle, s.waiting, s.pinned)
    }

    #[tokio::test]
    async fn authenticated_connections_join_until_the_pool_is_full() {
        let p = pool(2, Duration::from_secs(60));
        assert_eq!(p.adopt(1), Ok(()));
        assert_eq!(p.adopt(2), Ok(()));
        assert_eq!(p.adopt(3), Err(3), "a full pool gives the connection back to be closed");
        assert_eq!(figures(&p), (0, 2, 0, 0));
        let mut lease = p.acquire().await.unwrap();
        assert_eq!(figures(&p), (1, 1, 0, 0));
        let first = *lease.conn();
        lease.release();
        assert_eq!(figures(&p), (0, 2, 0, 0));
        assert!([1, 2].contains(&first));
    }

    #[tokio::test]
    async fn waiting_clients_are_served_first_come_first_served() {
        let p = pool(1, Duration::from_secs(60));
        p.adopt(7).unwrap();
        let held = p.acquire().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for client in 0..3 {
            let (pool, tx) = (Arc::clone(&p), tx.clone());
            tokio::spawn(async move {
                let lease = pool.acquire().await.unwrap();
                tx.send(client).unwrap();
                lease.release();
            });
            // Each client is in line before the next one starts.
            while p.stats().waiting < client + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(figures(&p), (1, 0, 3, 0));
        held.release();
        let order = [rx.recv().await.unwrap(), rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_client_that_waits_too_long_gets_pgbouncers_error_and_leaves_the_line() {
        // A zero wait: the client is refused as soon as it finds no connection free.
        let p = pool(1, Duration::ZERO);
        p.adopt(1).unwrap();
        let held = p.acquire().await.unwrap();
        let Err(err) = p.acquire().await else { panic!("the wait must time out") };
        assert_eq!((err.code.as_str(), err.message.as_str()), ("08P01", "query_wait_timeout"));
        assert_eq!(figures(&p), (1, 0, 0, 0), "the client left the line");
        held.release();
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_broken_connection_frees_its_slot_and_pinned_clients_are_counted() {
        let p = pool(1, Duration::from_secs(60));
        p.adopt(1).unwrap();
        let mut lease = p.acquire().await.unwrap();
        lease.pin();
        lease.pin();
        assert_eq!(figures(&p), (1, 0, 0, 1));
        drop(lease);
        assert_eq!(figures(&p), (0, 0, 0, 0), "dropped without release: the connection is gone");
        assert_eq!(p.adopt(2), Ok(()), "its slot takes a new connection");
        let mut lease = p.acquire().await.unwrap();
        lease.pin();
        lease.release();
        assert_eq!(figures(&p), (0, 1, 0, 0));
    }
}
