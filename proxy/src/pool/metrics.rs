//! The pools' metrics (README: Metrics), as handles resolved once per pool and moved by deltas, so that
//! pools of one (database, user) that differ only by startup parameters add up in one series:
//! `dualwrite_pool_server_connections{database,user,state="active|idle"}`,
//! `dualwrite_pool_clients_waiting`, `dualwrite_pinned_clients` (gauges, same labels) and
//! `dualwrite_pool_wait_seconds` (histogram of the time clients waited for a connection, zero included).
//! The gauges are moved from the pool's own figures after each change of its state, not per event, so
//! they always equal the state.

use std::time::Duration;

use metrics::{gauge, histogram, Gauge, Histogram};

use super::queue::Figures;

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

    /// Moves the gauges from the figures they show (`before`) to `now`.
    pub(super) fn publish(&self, before: Figures, now: Figures) {
        let delta = |gauge: &Gauge, before: usize, now: usize| {
            if before != now {
                gauge.increment(now as f64 - before as f64);
            }
        };
        delta(&self.active, before.active, now.active);
        delta(&self.idle, before.idle, now.idle);
        delta(&self.waiting, before.waiting, now.waiting);
        delta(&self.pinned, before.pinned, now.pinned);
    }

    pub(super) fn waited(&self, wait: Duration) {
        self.wait.record(wait.as_secs_f64());
    }
}
