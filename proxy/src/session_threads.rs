//! The threads client sessions run on: N single-threaded tokio runtimes, one OS thread each, with every
//! session pinned for its whole life to the runtime the accept loop handed it to (round-robin).
//!
//! Why not the shared work-stealing runtime: a session is one task that alternates between two sockets,
//! and on a work-stealing runtime each readiness event may wake it on another worker: a futex wake-up, a
//! cross-core cache miss on the session's buffers and queue, and a worker thread parking and unparking
//! per message. Pinned, a message costs the epoll wake-up of the thread that owns the socket and nothing
//! else, which is pgbouncer's model, once per thread. Background work (state watcher, jobs, metrics,
//! shadow-read workers) stays on the runtime that started the server.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// The index of the session thread this is, 0 elsewhere.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The index of the session thread the caller runs on (0 off the session threads): sockets opened here
/// report readiness to this thread's reactor.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The session runtimes of one server; dropping it stops their threads (sessions still on them are
/// dropped, which closes their sockets).
pub struct SessionThreads {
    runtimes: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl SessionThreads {
    /// Starts `count` session threads; 0 means one per CPU the process may run on.
    pub fn start(count: usize) -> std::io::Result<SessionThreads> {
        let count = match count {
            0 => thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let mut runtimes = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            runtimes.push(runtime.handle().clone());
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stop.push(stop_tx);
            thread::Builder::new().name(format!("dualwrite-session-{index}")).spawn(move || {
                CURRENT.with(|current| current.set(index));
                // Resolves when the sender is dropped; the runtime then drops what is left on it.
                let _ = runtime.block_on(stop_rx);
            })?;
        }
        Ok(SessionThreads { runtimes, next: AtomicUsize::new(0), _stop: stop })
    }

    /// How many session threads run (at least one).
    pub fn count(&self) -> usize {
        self.runtimes.len()
    }

    /// The runtime the next session goes to.
    pub fn next_runtime(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        &self.runtimes[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_are_spread_round_robin_and_run_on_their_own_threads() {
        let threads = SessionThreads::start(2).unwrap();
        assert_eq!(threads.count(), 2);
        let mut names = Vec::new();
        for _ in 0..4 {
            let name = threads
                .next_runtime()
                .spawn(async { thread::current().name().unwrap_or_default().to_owned() })
                .await
                .unwrap();
            names.push(name);
        }
        assert_eq!(names, ["dualwrite-session-0", "dualwrite-session-1", "dualwrite-session-0", "dualwrite-session-1"]);
    }

    #[tokio::test]
    async fn each_session_thread_knows_its_index() {
        let threads = SessionThreads::start(2).unwrap();
        let mut indexes = Vec::new();
        for _ in 0..2 {
            indexes.push(threads.next_runtime().spawn(async { current() }).await.unwrap());
        }
        assert_eq!(indexes, [0, 1]);
    }

    #[tokio::test]
    async fn dropping_stops_the_threads_and_the_tasks_on_them() {
        let threads = SessionThreads::start(1).unwrap();
        let (_keep, never) = oneshot::channel::<()>();
        let task = threads.next_runtime().spawn(async move {
            let _ = never.await;
        });
        drop(threads);
        let err = task.await.unwrap_err();
        assert!(err.is_cancelled(), "{err}");
    }

    #[test]
    fn zero_means_one_per_cpu() {
        let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(SessionThreads::start(0).unwrap().count(), cpus);
    }
}
