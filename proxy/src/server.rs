//! The accept loop: binds the listener, enforces the client-connection limit, spawns one session task per
//! client, and shuts down gracefully (stop accepting, idle sessions closed, busy ones given the grace
//! period, the rest closed).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use dualwrite_proxy::{Config, Server};
//! let config = Config::relay("127.0.0.1:0".parse()?, "postgres://app@127.0.0.1:5432/app");
//! let server = Server::bind(config).await?;
//! println!("connect to {}", server.local_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(server.run(async move { let _ = stopped.await; }));
//! // ... later
//! let _ = stop.send(());
//! running.await??;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::live::{Live, LiveInterceptor};
use crate::protocol::messages::{self, SqlError};
use crate::session;
use crate::session::interceptor::{Passthrough, SharedInterceptor};
use crate::tls::{self, TlsAcceptor, TlsConnector};
use crate::upstream::UpstreamTarget;

/// What every session of a server shares.
pub struct ServerContext {
    pub config: Config,
    pub upstream: UpstreamTarget,
    pub upstream_tls: Option<TlsConnector>,
    pub client_tls: Option<TlsAcceptor>,
    pub cancel: Arc<CancelRegistry>,
    pub interceptor: SharedInterceptor,
}

/// A bound proxy, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    ctx: ServerContext,
}

impl Server {
    /// Validates the config, prepares TLS, starts the metrics exporter (if `metrics_listen` is set) and
    /// binds `config.listen` (port 0 picks a free port; see [`local_addr`](Server::local_addr)).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let upstream = UpstreamTarget::from_url(&config.upstream, config.limits.connect_timeout())?;
        let upstream_tls = if upstream.wants_tls() { Some(tls::upstream_connector()?) } else { None };
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
        };
        anyhow::ensure!(config.limits.max_message_size >= 1024, "limits.max_message_size must be at least 1024 bytes");
        anyhow::ensure!(config.limits.startup_timeout_secs > 0, "limits.startup_timeout_secs must be at least 1");
        if let Some(addr) = config.metrics_listen {
            crate::metrics::install_exporter(addr)?;
        }
        // With a rules file, the migration state is read before the first client is accepted.
        let interceptor: SharedInterceptor = match Live::from_config(&config).await? {
            Some(live) => {
                live.export_cache_metrics(Duration::from_secs(1));
                Arc::new(LiveInterceptor(live))
            }
            None => Arc::new(Passthrough),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        tracing::info!(listen = %local_addr, upstream = %upstream.describe(), tls = client_tls.is_some(), "proxy listening");
        Ok(Server {
            listener,
            local_addr,
            ctx: ServerContext {
                config,
                upstream,
                upstream_tls,
                client_tls,
                cancel: CancelRegistry::new(),
                interceptor,
            },
        })
    }

    /// Replaces the default pass-through interceptor (see `session::interceptor`).
    pub fn with_interceptor(mut self, interceptor: SharedInterceptor) -> Self {
        self.ctx.interceptor = interceptor;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Serves clients until `shutdown` resolves, then stops accepting, closes idle sessions, lets busy
    /// ones finish for up to `limits.shutdown_grace_secs`, and closes whatever is left.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { listener, ctx, .. } = self;
        let ctx = Arc::new(ctx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(ctx.config.limits.max_client_connections));
        let refusals = Arc::new(Semaphore::new(ctx.config.limits.max_client_connections.max(MIN_DRAINING_REFUSALS)));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                        Ok(slot) => {
                            let ctx = Arc::clone(&ctx);
                            let stop = stop_rx.clone();
                            sessions.spawn(async move {
                                session::run(tcp, peer, ctx, stop).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            let drain = Arc::clone(&refusals).try_acquire_owned().ok();
                            sessions.spawn(refuse_too_many(tcp, drain, ctx.config.limits.startup_timeout()));
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        let open = sessions.len();
        tracing::info!(open, "shutting down: no longer accepting connections");
        let _ = stop_tx.send(true);
        let grace = ctx.config.limits.shutdown_grace();
        let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(left = sessions.len(), "shutdown grace period over; closing remaining sessions");
            sessions.shutdown().await;
        }
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Refused connections whose input is read until they close (see `refuse_too_many`), at least.
const MIN_DRAINING_REFUSALS: usize = 1024;

/// Tells a client beyond `max_client_connections` so (53300) and closes. Closing with the client's
/// startup packet unread would reset the connection, and the reset can overtake the error in the client's
/// receive buffer, so while `drain` holds a permit the client's input is read until it closes, for at most
/// the startup timeout (as Postgres reads the startup packet before it refuses); beyond that many
/// refusals at once (a flood), the error is sent and the connection dropped.
async fn refuse_too_many(mut tcp: TcpStream, drain: Option<OwnedSemaphorePermit>, timeout: Duration) {
    let err = SqlError::fatal("53300", "sorry, too many clients already");
    crate::metrics::count_error(&err.code);
    crate::metrics::count_refused("too_many_clients");
    let _ = tcp.write_all(&messages::error_response(&err)).await;
    let _ = tcp.shutdown().await;
    if drain.is_none() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(1..) = tcp.read(&mut sink).await {}
    })
    .await;
}
