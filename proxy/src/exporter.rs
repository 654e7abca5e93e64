//! The Prometheus exporter: installs the global recorder and serves `/metrics` beside liveness and
//! readiness (`/health`, `/ready`, answered by `health`) on the `metrics_listen` address, from a thread of
//! its own.

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
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Health;
use crate::metrics::{DUAL_WRITE_DURATION_SECONDS, QUERY_DURATION_SECONDS};

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
