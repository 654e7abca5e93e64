//! The pools' metrics (README: Metrics), as handles resolved once per pool and moved by deltas, so that
//! pools of one (database, user) that differ only by startup parameters add up in one series:
//! `dualwrite_pool_server_connections{database,user,state="active|idle"}`,
//! `dualwrite_pool_clients_waiting`, `dualwrite_pinned_clients` (gauges, same labels) and
//! `dualwrite_pool_wait_seconds` (histogram of the time clients waited for a connection, zero included).

use std::time::Duration;

use metrics::{gauge, histogram, Gauge, Histogram};

pub const POOL_SERVER_CONNECTIONS: &str = "dualwrite_pool_server_connections";
pub const POOL_CLIENTS_WAITING: &str = "dualwrite_pool_clients_waiting";
pub const POOL_PINNED_CLIENTS: &str = "dualwrite_pinned_clients";
pub const POOL_WAIT_SECONDS: &str = "dualwrite_pool_wait_seconds";

pub(super) struct PoolMetrics {
    active: Gauge,
    idle: Gauge,
    waiting: Gauge,
    pinned: Gauge,
    wait: Histogram,
}

impl PoolMetrics {
    pub(super) fn new(database: &str, user: &str) -> Self {
        let labels = [("database", database.to_owned()), ("user", user.to_owned())];
        let state = |s: &'static str| {
            let mut l = labels.to_vec();
            l.push(("state", s.to_owned()));
            gauge!(POOL_SERVER_CONNECTIONS, &l)
        };
        PoolMetrics {
            active: state("active"),
            idle: state("idle"),
            waiting: gauge!(POOL_CLIENTS_WAITING, &labels),
            pinned: gauge!(POOL_PINNED_CLIENTS, &labels),
            wait: histogram!(POOL_WAIT_SECONDS, &labels),
        }
    }

    /// A slot was opened, taking the place of an idle connection (closed) when `evicted`.
    pub(super) fn opened(&self, evicted: bool) {
        self.active.increment(1.0);
        if evicted {
            self.idle.decrement(1.0);
        }
    }

    pub(super) fn lent_idle(&self) {
        self.idle.decrement(1.0);
        self.active.increment(1.0);
    }

    pub(super) fn returned_idle(&self) {
        self.active.decrement(1.0);
        self.idle.increment(1.0);
    }

    pub(super) fn closed_active(&self) {
        self.active.decrement(1.0);
    }

    pub(super) fn waiting(&self, delta: f64) {
        self.waiting.increment(delta);
    }

    pub(super) fn pinned(&self, delta: f64) {
        self.pinned.increment(delta);
    }

    pub(super) fn waited(&self, wait: Duration) {
        self.wait.record(wait.as_secs_f64());
    }
}
