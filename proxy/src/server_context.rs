//! [`ServerContext`]: what every session of a server shares (config, upstream target, client TLS, cancel
//! registry, interceptor), built and validated from the config alone. The server holds it in an arc-swap;
//! a reload builds the next one; sessions and readiness probes read it.

use std::sync::Arc;

use crate::cancel::CancelRegistry;
use crate::config::{Config, Peering};
use crate::copy_budget::CopyBudget;
use crate::interceptor::SharedInterceptor;
use crate::libpq_tls::UpstreamTls;
use crate::tls::{self, TlsAcceptor};
use crate::upstream::UpstreamTarget;

/// What every session of a server shares (one generation of it: a reload builds the next).
#[derive(Clone)]
pub struct ServerContext {
    pub config: Config,
    pub upstream: UpstreamTarget,
    pub client_tls: Option<TlsAcceptor>,
    pub cancel: Arc<CancelRegistry>,
    /// `peer_id` and `peers` of `config`, validated: where a CancelRequest for another instance's key goes.
    pub peering: Arc<Peering>,
    pub interceptor: SharedInterceptor,
    /// Transaction mode's server-connection pools (kept across reloads).
    pub pools: Arc<crate::pool::registry::PoolRegistry>,
    /// What all sessions' COPYs may keep together (kept across reloads, which set its limit).
    pub copy_budget: Arc<CopyBudget>,
}

impl ServerContext {
    /// The parts of a context that follow from the config alone (validated), around the shared cancel
    /// registry and interceptor. Used at start (`cancel` `None`: a registry issuing keys that name this
    /// instance's `peer_id`) and by every reload, which keeps the registry and passes the upstream TLS
    /// settings loaded at start (`kept_upstream_tls`), neither of which it changes.
    pub fn build(
        config: Config,
        cancel: Option<Arc<CancelRegistry>>,
        interceptor: SharedInterceptor,
        kept_upstream_tls: Option<UpstreamTls>,
    ) -> anyhow::Result<Self> {
        let timeout = config.limits.connect_timeout();
        let upstream = match kept_upstream_tls {
            Some(tls) => UpstreamTarget::from_url_keeping_tls(&config.upstream, tls, timeout)?,
            None => UpstreamTarget::from_url(&config.upstream, timeout)?,
        }
        .with_tcp_options(config.limits.upstream_keepalive(), config.limits.upstream_tcp_user_timeout())
        .with_control_probe(|| config.control_connection())?;
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
        };
        anyhow::ensure!(config.limits.max_message_size >= 1024, "limits.max_message_size must be at least 1024 bytes");
        anyhow::ensure!(config.limits.startup_timeout_secs > 0, "limits.startup_timeout_secs must be at least 1");
        let peering = Arc::new(config.peering()?);
        let cancel = cancel.unwrap_or_else(|| CancelRegistry::new(peering.own_id()));
        let pools = Arc::new(crate::pool::registry::PoolRegistry::new());
        let copy_budget = CopyBudget::new(config.limits.copy_tee_total_bytes());
        Ok(ServerContext { config, upstream, client_tls, cancel, peering, interceptor, pools, copy_budget })
    }
}
