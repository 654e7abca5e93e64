//! The proxy's metric names (README: Metrics) and the session's metric handles (the HTTP endpoint that
//! serves them is `exporter`). Hot-path cost is kept tiny:
//! each session resolves its metric handles once ([`SessionMetrics`]) and adds to them per read or per
//! completed request, never per message and never with a label lookup (except for errors, which are rare).

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub const CLIENT_CONNECTIONS: &str = "dualwrite_client_connections";
pub const UPSTREAM_CONNECTIONS: &str = "dualwrite_upstream_connections";
pub const QUERIES_TOTAL: &str = "dualwrite_queries_total";
pub const QUERY_DURATION_SECONDS: &str = "dualwrite_query_duration_seconds";
/// Per migration: latency of the requests that dual-wrote it (up to ReadyForQuery).
pub const DUAL_WRITE_DURATION_SECONDS: &str = "dualwrite_dual_write_duration_seconds";
pub const BYTES_TOTAL: &str = "dualwrite_bytes_total";
pub const ERRORS_TOTAL: &str = "dualwrite_errors_total";
/// Connections closed before their session started, by `reason` (`too_many_clients`, `startup_timeout`).
pub const REFUSED_CONNECTIONS_TOTAL: &str = "dualwrite_refused_connections_total";
pub const CONFIG_RELOADS_TOTAL: &str = "dualwrite_config_reloads_total";
/// CancelRequests received, by `outcome`: `local` (this instance's key, sent to the upstream), `forwarded`
/// (another instance's key, sent to that peer), `unknown` (dropped), `failed` (the upstream or the peer
/// could not be reached).
pub const CANCEL_REQUESTS_TOTAL: &str = "dualwrite_cancel_requests_total";
/// COPY FROM STDIN dual writes that qualified for COPYs alone, by the `path` that wrote them: `copy` (the
/// rows sent twice, as COPYs) or `staging` (the staging table after all: the catalog check or the second
/// COPY failed, the data passed `limits.copy_buffer_mb` or `limits.copy_buffer_total_mb`, or the client gave up).
pub const COPY_TEE_TOTAL: &str = "dualwrite_copy_tee_total";
/// Per migration: sampled reads compared in both shapes, by `result` (match, mismatch, error, skipped).
pub const SHADOW_READS_TOTAL: &str = "dualwrite_shadow_reads_total";

pub use crate::protocol::requests::Route;

/// Counts a proxy- or server-reported error by SQLSTATE.
pub fn count_error(sqlstate: &str) {
    counter!(ERRORS_TOTAL, "sqlstate" => sqlstate.to_owned()).increment(1);
}

/// Counts a COPY that qualified for a dual write of COPYs alone by the path that wrote it.
pub fn count_copy_tee(staged: bool) {
    counter!(COPY_TEE_TOTAL, "path" => if staged { "staging" } else { "copy" }).increment(1);
}

/// Counts a connection closed before its session started (`reason`: `too_many_clients`, `startup_timeout`).
pub fn count_refused(reason: &'static str) {
    counter!(REFUSED_CONNECTIONS_TOTAL, "reason" => reason).increment(1);
}

/// Counts a CancelRequest by what became of it (see [`CANCEL_REQUESTS_TOTAL`]).
pub fn count_cancel(outcome: &'static str) {
    counter!(CANCEL_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
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
