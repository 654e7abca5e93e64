//! What both directions of a session share: the `SessionShared` state (response queue, wake-ups,
//! transaction status, authentication progress, upstream key) and the buffer and write helpers of the relay
//! loops.

use std::future::Future;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};

use crate::cancel::CancelTarget;
use crate::metrics;
use crate::protocol::messages::{self, SqlError};
use crate::protocol::responses::ResponseQueue;
use crate::stream::WriteHalf;

/// Read buffer growth step; also the initial capacity (an idle session holds two of these).
pub(crate) const READ_CHUNK: usize = 8 * 1024;
pub(crate) use crate::protocol::requests::STREAM_THRESHOLD;

/// State both directions of a session see.
pub(crate) struct SessionShared {
    pub queue: Mutex<ResponseQueue>,
    /// Signals the upstream direction that a local answer was queued.
    pub local_ready: Signal,
    /// Signals the client direction that the answer of its probe is on the queue.
    pub probe_ready: Notify,
    /// Signals the client direction that a request that may fall back has ended (its outcome is on the
    /// queue).
    pub fallback_ready: Notify,
    /// The queue holds session events for the interceptor (set by the upstream direction under the queue
    /// lock), so the client direction locks the queue for them only when there are some.
    pub events_ready: AtomicBool,
    /// Transaction status of the last ReadyForQuery; 0 until the first one (startup not finished).
    pub tx_status: AtomicU8,
    /// Signalled at the first ReadyForQuery (which the frontend awaits before relaying a statement) and
    /// at each authentication request.
    pub startup_done: Notify,
    /// Authentication requests the upstream sent that want an answer from the client (password, SASL,
    /// GSS): while the client owes one, the upstream refuses anything else.
    pub auth_requests: AtomicU32,
    pub backend_pid: AtomicI32,
    /// The key of the server connection the session holds, which the client's cancel reaches (the cancel
    /// registry shares the slot: [`crate::cancel::CancelTarget`]).
    pub upstream_key: CancelTarget,
}

impl SessionShared {
    pub(crate) fn new() -> Self {
        SessionShared {
            queue: Mutex::new(ResponseQueue::new()),
            local_ready: Signal::default(),
            probe_ready: Notify::new(),
            fallback_ready: Notify::new(),
            events_ready: AtomicBool::new(false),
            tx_status: AtomicU8::new(0),
            startup_done: Notify::new(),
            auth_requests: AtomicU32::new(0),
            backend_pid: AtomicI32::new(0),
            upstream_key: CancelTarget::default(),
        }
    }

    /// Authentication finished and the upstream said ReadyForQuery.
    pub fn is_ready(&self) -> bool {
        self.tx_status.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).is_busy()
    }
}

/// One direction's signal to the other (the client direction's to the upstream direction that a local
/// answer is on the queue; in transaction mode, that a connection was attached or may go back to the pool):
/// a flag and the waker of the one waiting task, with a tokio `Notify`'s one stored permit. The upstream
/// direction waits for these at every wake-up of the session, for either direction's sake, so the wait must
/// cost next to nothing: a `Notify` took its waiter list's mutex at each such poll (about 310 instructions
/// per relayed statement for the local answers, about 1,000 for the pool's events).
#[derive(Default)]
pub(crate) struct Signal {
    queued: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Wakes the waiting task, or lets its next wait end at once (after what it signals is in place).
    pub(crate) fn signal(&self) {
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once a signal came since the last Ready; the signal is consumed.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.queued.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A signal between the check and the registration found no waker to wake.
        if self.queued.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Resolves once the server starts shutting down (its watch changes, or the sender is gone). The upstream
/// direction polls it at every wake-up of the session, and a tokio `Notified` takes its waiter list's mutex at
/// each poll (about 200 instructions per relayed statement): once registered with the task's waker, it is
/// polled again only when the watch's version says there is something to see.
pub(crate) fn shutdown_signal(shutdown: &watch::Receiver<bool>) -> impl Future<Output = ()> + Unpin {
    let probe = shutdown.clone();
    let mut receiver = shutdown.clone();
    let mut changed = Box::pin(async move {
        let _ = receiver.changed().await;
    });
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(move |cx| {
        let same_task = registered.as_ref().is_some_and(|waker| waker.will_wake(cx.waker()));
        // A change after this check wakes the task through the registered `Notified`.
        if same_task && matches!(probe.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        changed.as_mut().poll(cx)
    })
}

/// Makes room for the next read. Space is reclaimed in place once the frames split off the buffer have
/// been written and dropped; a buffer that grew for one large message is given back when empty, so an
/// idle session keeps only a small buffer per direction.
pub(crate) fn prepare_read_buffer(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > STREAM_THRESHOLD {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    } else if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
}

/// Writes and flushes every chunk, leaving `out` empty. Several chunks (a rewritten statement between
/// relayed frames, local answers) go out in one `writev`, so they cost one system call and, with
/// TCP_NODELAY, one packet, like a single relayed run.
pub(crate) async fn write_chunks(w: &mut WriteHalf, out: &mut Vec<Bytes>) -> std::io::Result<()> {
    match out.len() {
        0 => return Ok(()),
        1 => w.write_all(&out[0]).await?,
        _ => write_all_vectored(w, out).await?,
    }
    out.clear();
    w.flush().await
}

async fn write_all_vectored(w: &mut WriteHalf, chunks: &[Bytes]) -> std::io::Result<()> {
    const BATCH: usize = 16;
    for group in chunks.chunks(BATCH) {
        let mut storage = [IoSlice::new(&[]); BATCH];
        for (slot, chunk) in storage.iter_mut().zip(group) {
            *slot = IoSlice::new(chunk);
        }
        let mut slices = &mut storage[..group.len()];
        while !slices.is_empty() {
            let n = w.write_vectored(slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
    }
    Ok(())
}

pub(crate) async fn send_error(stream: &mut (impl AsyncWriteExt + Unpin), err: &SqlError) {
    metrics::count_error(&err.code);
    let _ = stream.write_all(&messages::error_response(err)).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_shutdown_signal_waits_for_the_watch_to_change_or_its_sender_to_go() {
        let (sender, receiver) = watch::channel(false);
        let mut signal = shutdown_signal(&receiver);
        assert!(futures::poll!(&mut signal).is_pending());
        assert!(futures::poll!(&mut signal).is_pending(), "polled again by the same task");
        sender.send(true).unwrap();
        assert!(futures::poll!(&mut signal).is_ready());

        let (sender, receiver) = watch::channel(false);
        let mut signal = shutdown_signal(&receiver);
        assert!(futures::poll!(&mut signal).is_pending());
        drop(sender);
        assert!(futures::poll!(&mut signal).is_ready(), "a server gone is a shutdown too");
    }

    #[tokio::test]
    async fn a_shutdown_while_the_session_waits_wakes_it() {
        let (sender, receiver) = watch::channel(false);
        let waiting = tokio::spawn(shutdown_signal(&receiver));
        tokio::task::yield_now().await;
        sender.send(true).unwrap();
        waiting.await.unwrap();
    }

    #[test]
    fn a_local_answer_signalled_before_the_wait_is_found_at_once_and_only_once() {
        let ready = Signal::default();
        let waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        ready.signal();
        ready.signal();
        assert!(ready.poll_take(&mut cx).is_ready());
        assert!(ready.poll_take(&mut cx).is_pending(), "two signals before one wait are one answer to look for");
    }

    #[test]
    fn a_signal_during_the_wait_wakes_the_waiting_task_and_is_then_found() {
        let ready = Signal::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(ready.poll_take(&mut cx).is_pending());
        ready.signal();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(ready.poll_take(&mut cx).is_ready());
    }
}
