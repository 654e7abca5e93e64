//! Liveness and readiness, answered next to /metrics (`GET /health`, `GET /ready`). Liveness is "the process
//! answers". Readiness is "a client connecting now would be served": the accept loop runs (not starting, not
//! shutting down), the upstream accepts TCP connections, and, with rules, the migration state follows the
//! database (the state watcher's LISTEN connection is up and its last reload succeeded).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use crate::server_context::ServerContext;
use crate::state::StateHandle;

/// Longest a readiness probe waits for the upstream's TCP handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

/// A server's readiness, shared by the server (which moves it through its lifetime) and the HTTP endpoint.
#[derive(Default)]
pub struct Health {
    phase: AtomicU8,
    probes: OnceLock<Probes>,
}

struct Probes {
    context: Arc<ArcSwap<ServerContext>>,
    /// The migration state of each database that holds migrations.
    states: Vec<StateHandle>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// What readiness checks: the upstream of the context in force, and the migration state of every
    /// database holding migrations.
    pub fn attach(&self, context: Arc<ArcSwap<ServerContext>>, states: Vec<StateHandle>) {
        let _ = self.probes.set(Probes { context, states });
    }

    /// The accept loop runs.
    pub fn serving(&self) {
        self.phase.store(SERVING, Ordering::Relaxed);
    }

    /// Shutdown began: no longer ready, for good.
    pub fn stopping(&self) {
        self.phase.store(STOPPING, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the reason (one short line).
    pub async fn ready(&self) -> Result<(), String> {
        match self.phase.load(Ordering::Relaxed) {
            STARTING => return Err("starting".into()),
            STOPPING => return Err("shutting down".into()),
            _ => {}
        }
        let probes = self.probes.get().ok_or("starting")?;
        let upstream = probes.context.load().upstream.clone();
        // Several hosts: the primary sessions go to, or the first host while none is known.
        let host = upstream.topology.known_primary().unwrap_or(upstream.host(0)).clone();
        let addr = host.describe();
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect((host.host.as_str(), host.port))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("upstream {addr} unreachable: {e}")),
            Err(_) => return Err(format!("upstream {addr} unreachable: timed out")),
        }
        if let Some(state) = probes.states.iter().find(|s| !s.is_current()) {
            let database = state.pg_target().database().unwrap_or_default();
            return Err(format!(
                "migration state of database \"{database}\" is not current (state listener disconnected)"
            ));
        }
        Ok(())
    }
}
