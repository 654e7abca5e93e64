//! Prometheus exporter and the proxy's metric names (DESIGN section 6). Hot-path cost is kept tiny:
//! each session resolves its metric handles once ([`SessionMetrics`]) and adds to them per read or per
//! completed request, never per message and never with a label lookup (except for errors, which are rare).

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const CLIENT_CONNECTIONS: &str = "dualwrite_client_connections";
pub const UPSTREAM_CONNECTIONS: &str = "dualwrite_upstream_connections";
pub const QUERIES_TOTAL: &str = "dualwrite_queries_total";
pub const QUERY_DURATION_SECONDS: &str = "dualwrite_query_duration_seconds";
pub const BYTES_TOTAL: &str = "dualwrite_bytes_total";
pub const ERRORS_TOTAL: &str = "dualwrite_errors_total";
/// Per migration: sampled reads compared in both shapes, by `result` (match, mismatch, error, skipped).
pub const SHADOW_READS_TOTAL: &str = "dualwrite_shadow_reads_total";

/// Route label values of `dualwrite_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Passthrough,
    Rewritten,
    Rejected,
    Control,
}

static INSTALLED: OnceLock<Result<SocketAddr, String>> = OnceLock::new();

/// Installs the global recorder and serves /metrics on `addr`. Once per process: a second call (another
/// in-process proxy) keeps the first exporter and says so.
pub fn install_exporter(addr: SocketAddr) -> anyhow::Result<()> {
    let installed = INSTALLED.get_or_init(|| {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(
                Matcher::Full(QUERY_DURATION_SECONDS.to_owned()),
                &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .map_err(|e| e.to_string())?
            .install()
            .map(|()| addr)
            .map_err(|e| e.to_string())
    });
    match installed {
        Ok(first) if *first == addr => Ok(()),
        Ok(first) => {
            tracing::warn!(%addr, %first, "metrics exporter already running in this process; keeping it");
            Ok(())
        }
        Err(e) => anyhow::bail!("cannot start the metrics exporter on {addr}: {e}"),
    }
}

/// Counts a proxy- or server-reported error by SQLSTATE.
pub fn count_error(sqlstate: &str) {
    counter!(ERRORS_TOTAL, "sqlstate" => sqlstate.to_owned()).increment(1);
}

/// Handles one session uses, resolved once.
pub struct SessionMetrics {
    pub passthrough: Counter,
    pub rewritten: Counter,
    pub rejected: Counter,
    pub control: Counter,
    pub duration: Histogram,
    pub to_upstream: Counter,
    pub to_client: Counter,
}

impl SessionMetrics {
    pub fn new() -> Self {
        SessionMetrics {
            passthrough: counter!(QUERIES_TOTAL, "route" => "passthrough"),
            rewritten: counter!(QUERIES_TOTAL, "route" => "rewritten"),
            rejected: counter!(QUERIES_TOTAL, "route" => "rejected"),
            control: counter!(QUERIES_TOTAL, "route" => "control"),
            duration: histogram!(QUERY_DURATION_SECONDS),
            to_upstream: counter!(BYTES_TOTAL, "direction" => "to_upstream"),
            to_client: counter!(BYTES_TOTAL, "direction" => "to_client"),
        }
    }

    pub fn query(&self, route: Route) {
        match route {
            Route::Passthrough => self.passthrough.increment(1),
            Route::Rewritten => self.rewritten.increment(1),
            Route::Rejected => self.rejected.increment(1),
            Route::Control => self.control.increment(1),
        }
    }
}

impl Default for SessionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds one unit of a connection gauge while alive.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn client() -> Self {
        Self::hold(gauge!(CLIENT_CONNECTIONS))
    }

    pub fn upstream() -> Self {
        Self::hold(gauge!(UPSTREAM_CONNECTIONS))
    }

    fn hold(g: Gauge) -> Self {
        g.increment(1.0);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
