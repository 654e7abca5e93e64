//! The accept loop: binds the listener, enforces the client-connection limit, spawns one session task per
//! client on one of the session threads (round-robin, see `session_threads`), and shuts down gracefully
//! (stop accepting, idle sessions closed, busy ones given the grace period, the rest closed). Each session
//! runs with the `ServerContext` in force when it was accepted; a reload (see `reload`) swaps in a new
//! one for the sessions that follow.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::health::Health;
use crate::interceptor::{Passthrough, SharedInterceptor};
use crate::live::{LiveDatabases, LiveInterceptor};
use crate::overload::{AcceptFailures, Refusals};
use crate::reload::Reloader;
use crate::server_context::ServerContext;
use crate::session;
use crate::session_threads::SessionThreads;

/// A bound proxy, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    context: Arc<ArcSwap<ServerContext>>,
    live: Option<Arc<LiveDatabases>>,
    health: Arc<Health>,
    threads: SessionThreads,
}

impl Server {
    /// Validates the config, prepares TLS, starts the metrics exporter (if `metrics_listen` is set) and
    /// binds `config.listen` (port 0 picks a free port; see [`local_addr`](Server::local_addr)).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let ctx = ServerContext::build(config, None, Arc::new(Passthrough), None)?;
        let health = Health::new();
        if let Some(addr) = ctx.config.metrics_listen {
            crate::exporter::install_exporter(addr, Arc::clone(&health))?;
        }
        // With a rules file, the migration state is read before the first client is accepted.
        let live = LiveDatabases::from_config(&ctx.config).await?;
        let interceptor: SharedInterceptor = match &live {
            Some(live) => {
                live.export_cache_metrics(Duration::from_secs(1));
                Arc::new(LiveInterceptor(Arc::clone(live)))
            }
            None => Arc::new(Passthrough),
        };
        crate::overload::ensure_fd_limit(ctx.config.limits.max_client_connections);
        let listener = crate::overload::listen(ctx.config.listen)
            .with_context(|| format!("cannot listen on {}", ctx.config.listen))?;
        let local_addr = listener.local_addr()?;
        let threads = SessionThreads::start(ctx.config.session_threads).context("cannot start the session threads")?;
        let (upstream, tls, session_threads) = (ctx.upstream.describe(), ctx.client_tls.is_some(), threads.count());
        let upstream_sslmode = ctx.upstream.tls.mode().as_str();
        tracing::info!(listen = %local_addr, %upstream, upstream_sslmode, tls, session_threads, "proxy listening");
        let context = Arc::new(ArcSwap::from_pointee(ServerContext { interceptor, ..ctx }));
        health.attach(Arc::clone(&context), live.as_ref().map(|l| l.states()).unwrap_or_default());
        Ok(Server { listener, local_addr, context, live, health, threads })
    }

    /// Replaces the default pass-through interceptor (see `interceptor`). A server with its own
    /// interceptor reloads limits but no rules.
    pub fn with_interceptor(mut self, interceptor: SharedInterceptor) -> Self {
        let ctx = ServerContext { interceptor, ..ServerContext::clone(&self.context.load()) };
        self.context.store(Arc::new(ctx));
        self.live = None;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.context.load().config.clone()
    }

    /// A handle that applies a new config to this server while it runs (see `reload`).
    pub fn reloader(&self) -> Reloader {
        Reloader::new(Arc::clone(&self.context), self.live.clone())
    }

    /// Serves clients until `shutdown` resolves, then stops accepting, closes idle sessions, lets busy
    /// ones finish for up to `limits.shutdown_grace_secs`, and closes whatever is left.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { listener, context, health, threads, .. } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let open_sessions = Arc::new(AtomicUsize::new(0));
        let mut sessions = JoinSet::new();
        let refusals = Refusals::default();
        let mut accept_failures = AcceptFailures::default();
        tokio::pin!(shutdown);
        health.serving();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        accept_failures.accepted();
                        let ctx = context.load_full();
                        // Only this loop takes slots, so the limit in force (a reload may change it) holds.
                        if open_sessions.load(Ordering::Relaxed) < ctx.config.limits.max_client_connections {
                            let slot = Slot::take(&open_sessions);
                            let stop = stop_rx.clone();
                            // The socket leaves this runtime's reactor for the one of the thread it is pinned to.
                            let Ok(tcp) = tcp.into_std() else { continue };
                            sessions.spawn_on(async move {
                                if let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) {
                                    session::run(tcp, peer, ctx, stop).await;
                                }
                                drop(slot);
                            }, threads.next_runtime());
                        } else {
                            refusals.refuse(tcp, &mut sessions);
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        accept_failures.failed(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        health.stopping();
        drop(listener);
        let open = sessions.len();
        tracing::info!(open, "shutting down: no longer accepting connections");
        let _ = stop_tx.send(true);
        let grace = context.load().config.limits.shutdown_grace();
        let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(left = sessions.len(), "shutdown grace period over; closing remaining sessions");
            sessions.shutdown().await;
        }
        drop(threads);
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// One client session counted against `limits.max_client_connections` while alive.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot(Arc::clone(open))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
