//! Prometheus exporter (with the health endpoints beside /metrics, see `health`) and the proxy's metric
//! names (README: Metrics). Hot-path cost is kept tiny:
//! each session resolves its metric handles once ([`SessionMetrics`]) and adds to them per read or per
//! completed request, never per message and never with a label lookup (except for errors, which are rare).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Health;

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
/// Per migration: sampled reads compared in both shapes, by `result` (match, mismatch, error, skipped).
pub const SHADOW_READS_TOTAL: &str = "dualwrite_shadow_reads_total";

pub use crate::protocol::requests::Route;

/// Bucket bounds (seconds) of the latency histograms: exported as histograms (`_bucket` series), not
/// summaries, so dashboards can aggregate them across instances.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static INSTALLED: OnceLock<Result<SocketAddr, String>> = OnceLock::new();

/// How often histograms and idle series are maintained (the recorder leaves it to its owner).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global recorder and serves `/metrics`, `/health` and `/ready` (readiness of `health`) on
/// `addr`, from a thread of its own so the endpoint outlives whichever runtime called this. Once per
/// process: a second call (another in-process proxy) keeps the first exporter and says so.
pub fn install_exporter(addr: SocketAddr, health: Arc<Health>) -> anyhow::Result<()> {
    let installed = INSTALLED.get_or_init(|| {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(QUERY_DURATION_SECONDS.to_owned()), LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?
            .set_buckets_for_metric(Matcher::Full(DUAL_WRITE_DURATION_SECONDS.to_owned()), LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?
            .set_buckets_for_metric(Matcher::Full(crate::pool::metrics::POOL_WAIT_SECONDS.to_owned()), LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("dualwrite-metrics".into())
            .spawn(move || runtime.block_on(serve_http(listener, handle, health)))
            .map_err(|e| e.to_string())?;
        Ok(addr)
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

async fn serve_http(listener: std::net::TcpListener, handle: PrometheusHandle, health: Arc<Health>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (handle, health) = (handle.clone(), Arc::clone(&health));
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (handle, health) = (handle.clone(), Arc::clone(&health));
                async move { Ok::<_, Infallible>(answer(request.uri().path(), &handle, &health).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// `/metrics`: Prometheus text; `/health`: 200 while the process serves; `/ready`: 200 or 503 with why.
async fn answer(path: &str, handle: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/ready" => match health.ready().await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /health or /ready\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Counts a proxy- or server-reported error by SQLSTATE.
pub fn count_error(sqlstate: &str) {
    counter!(ERRORS_TOTAL, "sqlstate" => sqlstate.to_owned()).increment(1);
}

/// Counts a connection closed before its session started (`reason`: `too_many_clients`, `startup_timeout`).
pub fn count_refused(reason: &'static str) {
    counter!(REFUSED_CONNECTIONS_TOTAL, "reason" => reason).increment(1);
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
