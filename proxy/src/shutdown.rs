//! Process signals: the future `main` hands to `Server::run` resolves on the first SIGTERM or SIGINT.

use std::future::Future;

/// A future that resolves when the process receives SIGTERM or SIGINT (Ctrl-C). The handlers are
/// installed by this call, not at the future's first poll: until a handler is installed, the signal's
/// default action ends the process at once, without the graceful shutdown, so `main` calls this before
/// the proxy says it is listening.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
