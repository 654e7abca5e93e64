//! Upstream -> client direction. During startup it relays authentication (taking SCRAM-SHA-256-PLUS off
//! the offered mechanisms, since channel binding cannot cross the proxy) and swaps the upstream's cancel
//! key for the proxy's own. Known limit: when both legs use TLS, a client that would bind if it could
//! (libpq's default `channel_binding=prefer`) announces that in its SCRAM header, and a TLS upstream then
//! refuses the login as a downgrade; such clients need `channel_binding=disable` (the header is covered by
//! the SCRAM proof, so the proxy cannot change it).
//!
//! Afterwards each message is classified by its tag through the response queue; runs of unchanged
//! messages are forwarded as slices of the read buffer, written once per upstream read (that is, at the
//! upstream's own flush points: ReadyForQuery, COPY start, full buffers, asynchronous messages), never
//! once per message.
//!
//! A session whose server reports `in_hot_standby = on` in its startup's ParameterStatus while the
//! upstream URL asks for `read-write` or `primary` is ended there with libpq's words (08001) instead of
//! running read-only, and the topology looks for the primary again.
//!
//! In transaction mode the upstream is whichever pooled connection the session holds ([`PooledLink`]):
//! this direction reads it from the moment the client direction attaches it, and gives it back to the pool
//! at the end of each transaction (a ReadyForQuery with status idle, nothing else expected of it).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::startup::Authentication;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::pooled::PooledLink;
use super::{write_chunks, SessionShared, READ_CHUNK, STREAM_THRESHOLD};
use crate::cancel::CancelRegistration;
use crate::metrics::{self, SessionMetrics};
use crate::pool::deallocate;
use crate::protocol::frame::{peek_header, BodyReader};
use crate::protocol::messages::{self, body, btag, SqlError};
use crate::protocol::responses::{rewrite_command_complete, Action, ResponseQueue};
use crate::protocol::startup::CancelKey;
use crate::server_context::ServerContext;
use crate::stream::{ReadHalf, WriteHalf};

/// Upstream frames may be as large as Postgres makes them (1 GB); they are streamed, not buffered.
const MAX_UPSTREAM_FRAME: usize = 1 << 30;

#[derive(Debug)]
pub enum BackendEnd {
    /// The upstream closed (its error, or ours, was relayed first).
    UpstreamClosed,
    /// Writing to the client failed.
    ClientGone,
    /// Shutdown while the session was idle; the client was told.
    ShutdownIdle,
}

pub struct Backend<'s> {
    shared: &'s SessionShared,
    ctx: &'s ServerContext,
    metrics: &'s SessionMetrics,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,
    /// Keeps the client's cancel key mapped while the session lives.
    registration: Option<CancelRegistration>,
    /// The last message relayed was an ErrorResponse (so an upstream close needs no error of ours).
    last_was_error: bool,
    stream_left: usize,
    stream_drop: bool,
    /// The last message of the upstream was a ReadyForQuery with status idle.
    server_idle: bool,
    /// Transaction mode: the pooled server connection.
    link: Option<&'s PooledLink<'s>>,
    /// Index of the upstream host this session is connected to (in `ctx.upstream`'s list).
    upstream_host: usize,
    /// The session's server was refused at startup (see the module docs): the session ends.
    refused: bool,
}

enum Step {
    Forward,
    Drop,
    Replace(Bytes),
    /// The error goes to the client instead, and the session ends.
    Refuse(SqlError),
}

impl<'s> Backend<'s> {
    pub fn new(
        shared: &'s SessionShared,
        ctx: &'s ServerContext,
        metrics: &'s SessionMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let shutting_down = *shutdown.borrow();
        Backend {
            shared,
            ctx,
            metrics,
            shutting_down,
            shutdown,
            registration: None,
            last_was_error: false,
            stream_left: 0,
            stream_drop: false,
            server_idle: false,
            link: None,
            upstream_host: 0,
            refused: false,
        }
    }

    /// The upstream host the session connected to (its index in `ctx.upstream`).
    pub fn with_upstream_host(mut self, index: usize) -> Self {
        self.upstream_host = index;
        self
    }

    /// Transaction mode: responses come from the connection `link` holds.
    pub fn pooled(mut self, link: &'s PooledLink<'s>) -> Self {
        self.link = Some(link);
        self
    }

    /// Relays until the session ends. `upstream` is the connection read (in transaction mode, `None` while
    /// the session holds none); it stays with the caller, which gives it back to the pool at the end.
    pub async fn run(mut self, upstream: &mut Option<ReadHalf>, client: &mut WriteHalf) -> BackendEnd {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out: Vec<Bytes> = Vec::with_capacity(4);
        // The shutdown future lives across iterations: re-creating it per loop registered and removed a
        // waiter (a mutex and a list walk) for every relayed response; it completes once and is not polled
        // again. Like the waits for local answers and the pool's events (`Signal`), polling it costs next to
        // nothing while nothing happened (`shutdown_signal`).
        let shared = self.shared;
        let mut shutdown = super::shared::shutdown_signal(&self.shutdown);
        let link = self.link;
        loop {
            super::prepare_read_buffer(&mut buf);
            if let (Some(link), None) = (link, &upstream) {
                if let Some(read) = link.take_read() {
                    *upstream = Some(read);
                    // A connection comes from the pool idle (or, at the startup, not ready at all).
                    self.server_idle = true;
                }
            }
            let detached = upstream.is_none();
            tokio::select! {
                biased;
                read = read_upstream(upstream, &mut buf) => match read {
                    Ok(0) | Err(_) => return self.upstream_closed(&mut out, client).await,
                    Ok(n) => {
                        self.metrics.to_client.increment(n as u64);
                        if let Err(e) = self.process(&mut buf, &mut out) {
                            tracing::warn!(error = %e, "upstream broke the protocol; closing the session");
                            out.push(messages::error_response(&SqlError::fatal("08P01", e)));
                            let _ = write_chunks(client, &mut out).await;
                            return BackendEnd::UpstreamClosed;
                        }
                        if self.refused {
                            let _ = write_chunks(client, &mut out).await;
                            return BackendEnd::UpstreamClosed;
                        }
                    }
                },
                () = std::future::poll_fn(|cx| shared.local_ready.poll_take(cx)) => {
                    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                    self.take_locals(&mut queue, &mut out);
                }
                _ = pool_event(link, detached) => {}
                _ = &mut shutdown, if !self.shutting_down => self.shutting_down = true,
            }
            if let Some(link) = link {
                link.rest(self.server_idle && buf.is_empty() && self.stream_left == 0, upstream);
            }
            if write_chunks(client, &mut out).await.is_err() {
                return BackendEnd::ClientGone;
            }
            if self.shutting_down && self.is_idle() {
                let err = SqlError::fatal("57P01", "terminating connection because the proxy is shutting down");
                out.push(messages::error_response(&err));
                let _ = write_chunks(client, &mut out).await;
                return BackendEnd::ShutdownIdle;
            }
        }
    }

    fn is_idle(&self) -> bool {
        let status = self.shared.tx_status.load(Ordering::Relaxed);
        // Before authentication completes there is nothing to finish either.
        (status == b'I' || status == 0) && !self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).is_busy()
    }

    async fn upstream_closed(&mut self, out: &mut Vec<Bytes>, client: &mut WriteHalf) -> BackendEnd {
        if !self.last_was_error {
            metrics::count_error("08006");
            out.push(messages::error_response(&SqlError::fatal(
                "08006",
                "server closed the connection unexpectedly (the upstream connection behind the proxy was lost)",
            )));
        }
        let _ = write_chunks(client, out).await;
        BackendEnd::UpstreamClosed
    }

    fn take_locals(&self, queue: &mut ResponseQueue, out: &mut Vec<Bytes>) {
        if !queue.has_locals() {
            return;
        }
        while let Some(local) = queue.take_local() {
            out.push(local.bytes);
            if local.ready_for_query {
                out.push(messages::ready_for_query(self.shared.tx_status.load(Ordering::Relaxed)));
            }
        }
    }

    fn process(&mut self, buf: &mut BytesMut, out: &mut Vec<Bytes>) -> Result<(), String> {
        if self.stream_left > 0 {
            let k = self.stream_left.min(buf.len());
            let chunk = buf.split_to(k);
            if !self.stream_drop {
                out.push(chunk.freeze());
            }
            self.stream_left -= k;
            if self.stream_left > 0 {
                return Ok(());
            }
        }
        let shared = self.shared;
        let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut run = 0;
        // Transaction mode: `DEALLOCATE ALL` / `DISCARD ALL` tags, for the pooler after the queue's lock.
        let mut resets = 0;
        loop {
            let header = match peek_header(&buf[run..], MAX_UPSTREAM_FRAME) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            };
            let total = header.total_len();
            let available = buf.len() - run;
            let ready = shared.is_ready();
            if available < total {
                let large_rows = matches!(header.tag, btag::DATA_ROW | btag::COPY_DATA);
                if ready && total > STREAM_THRESHOLD && large_rows {
                    self.flush_locals(&mut queue, buf, &mut run, out);
                    let forward = matches!(queue.on_message(header.tag), Action::Forward);
                    self.last_was_error = false;
                    if forward {
                        run += available;
                    } else {
                        flush_run(buf, &mut run, out);
                        buf.advance(available);
                    }
                    self.stream_left = total - available;
                    self.stream_drop = !forward;
                    self.server_idle = false;
                }
                break;
            }
            let frame = &buf[run..run + total];
            self.server_idle = header.tag == btag::READY_FOR_QUERY && frame.get(5) == Some(&b'I');
            self.last_was_error = header.tag == btag::ERROR_RESPONSE;
            if header.tag == btag::COMMAND_COMPLETE && self.link.is_some() && deallocate::is_reset_tag(frame) {
                resets += 1;
            }
            if self.last_was_error {
                let code = messages::sqlstate(body(frame)).map(String::from_utf8_lossy);
                metrics::count_error(code.as_deref().unwrap_or(""));
            }
            let step = if ready {
                self.flush_locals(&mut queue, buf, &mut run, out);
                let frame = &buf[run..run + total];
                self.on_message(&mut queue, frame)
            } else {
                self.on_startup_message(frame)
            };
            match step {
                Step::Forward => run += total,
                Step::Drop | Step::Replace(_) => {
                    flush_run(buf, &mut run, out);
                    buf.advance(total);
                    if let Step::Replace(bytes) = step {
                        out.push(bytes);
                    }
                }
                Step::Refuse(err) => {
                    flush_run(buf, &mut run, out);
                    buf.clear();
                    metrics::count_error(&err.code);
                    out.push(messages::error_response(&err));
                    self.refused = true;
                    return Ok(());
                }
            }
        }
        flush_run(buf, &mut run, out);
        self.take_locals(&mut queue, out);
        if queue.has_events() {
            shared.events_ready.store(true, Ordering::Release);
        }
        if queue.has_probe_answer() {
            shared.probe_ready.notify_one();
        }
        if queue.has_fallback_outcome() {
            shared.fallback_ready.notify_one();
        }
        // Before the connection can go back to the pool (`rest`, after this), it must forget what it does
        // not hold. The link's lock is taken after the queue's is released, as everywhere else.
        let failed = queue.has_failed_prepares().then(|| queue.take_failed_prepares());
        drop(queue);
        if let (Some(failed), Some(link)) = (failed, self.link) {
            link.forget_failed_prepares(failed);
        }
        if let (true, Some(link)) = (resets > 0, self.link) {
            link.server_reset(resets);
        }
        Ok(())
    }

    /// Local answers due before the next upstream message go out first.
    fn flush_locals(&self, queue: &mut ResponseQueue, buf: &mut BytesMut, run: &mut usize, out: &mut Vec<Bytes>) {
        if !queue.has_locals() {
            return;
        }
        let before = out.len();
        let mut pending = Vec::new();
        self.take_locals(queue, &mut pending);
        if pending.is_empty() {
            return;
        }
        flush_run(buf, run, out);
        debug_assert!(out.len() >= before);
        out.extend(pending);
    }

    fn on_message(&mut self, queue: &mut ResponseQueue, frame: &[u8]) -> Step {
        match queue.on_message(frame[0]) {
            Action::Forward => Step::Forward,
            Action::Ready { started, dual_write } => {
                if let Some(&status) = frame.get(5) {
                    self.shared.tx_status.store(status, Ordering::Relaxed);
                    queue.ready_status(status);
                }
                if let Some(started) = started {
                    let latency = started.elapsed();
                    self.metrics.duration.record(latency.as_secs_f64());
                    if let Some(sink) = dual_write {
                        sink.record(latency);
                    }
                    crate::latency::RecentLatency::global().record(latency);
                }
                Step::Forward
            }
            Action::Drop => Step::Drop,
            Action::RewriteTag(tag) => match rewrite_command_complete(frame, &tag) {
                Some(bytes) => Step::Replace(bytes),
                None => Step::Forward,
            },
            Action::TagWithRows(tag, rows) => Step::Replace(messages::command_complete(&tag.with_rows(rows))),
            Action::CountRow => {
                queue.count_row(messages::data_row_texts(body(frame)));
                Step::Drop
            }
            Action::NoDataInstead => Step::Replace(messages::no_data()),
            Action::ProbeRow => {
                queue.probe_row(messages::data_row_texts(body(frame)));
                Step::Drop
            }
            Action::FallingBack => match messages::field(body(frame), b'S') {
                Some(b"FATAL" | b"PANIC") => Step::Forward,
                _ => Step::Drop,
            },
            Action::KeepCount => {
                queue.keep_count(messages::decode_command_tag(frame));
                Step::Drop
            }
        }
    }

    /// SCRAM-SHA-256-PLUS is taken off the upstream's list: channel binding cannot cross the proxy.
    fn on_authentication(&mut self, frame: &[u8]) -> Step {
        match messages::decode_authentication(frame) {
            Some(Authentication::SASL(mechanisms)) if mechanisms.iter().any(|m| m.ends_with("-PLUS")) => {
                let offered = mechanisms.into_iter().filter(|m| !m.ends_with("-PLUS")).collect();
                Step::Replace(messages::encode_authentication(&Authentication::SASL(offered)))
            }
            _ => Step::Forward,
        }
    }

    fn on_startup_message(&mut self, frame: &[u8]) -> Step {
        match frame[0] {
            btag::AUTHENTICATION => {
                if messages::auth_wants_answer(frame) {
                    self.shared.auth_requests.fetch_add(1, Ordering::Relaxed);
                    self.shared.startup_done.notify_waiters();
                }
                self.on_authentication(frame)
            }
            btag::BACKEND_KEY_DATA => {
                let Some((pid, secret)) = messages::decode_backend_key(frame) else { return Step::Forward };
                let upstream_key = CancelKey { pid, secret };
                *self.shared.upstream_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(upstream_key.clone());
                let target = Arc::clone(&self.shared.upstream_key);
                let registration = self.ctx.cancel.register_target(&upstream_key, target);
                let client_secret = registration.client_key().secret.clone();
                self.shared.backend_pid.store(pid, Ordering::Relaxed);
                match self.link {
                    Some(link) => link.authenticated(upstream_key, registration),
                    None => self.registration = Some(registration),
                }
                Step::Replace(messages::encode_backend_key(pid, client_secret))
            }
            btag::READY_FOR_QUERY => {
                let status = frame.get(5).copied().unwrap_or(b'I');
                self.shared.tx_status.store(status, Ordering::Relaxed);
                self.shared.startup_done.notify_waiters();
                Step::Forward
            }
            btag::PARAMETER_STATUS => self.on_parameter_status(frame),
            _ => Step::Forward,
        }
    }
}

impl Backend<'_> {
    /// Judges `in_hot_standby` against the URL's target_session_attrs.
    fn on_parameter_status(&mut self, frame: &[u8]) -> Step {
        let mut fields = BodyReader::new(body(frame));
        let (Some(name), Some(value)) = (fields.cstr(), fields.cstr()) else { return Step::Forward };
        let (name, value) = (String::from_utf8_lossy(name), String::from_utf8_lossy(value));
        let topology = &self.ctx.upstream.topology;
        let Some(reason) = topology.attrs().refuses_parameter(&name, &value) else { return Step::Forward };
        let host = self.ctx.upstream.host(self.upstream_host);
        tracing::warn!(host = %host.describe(), %reason, "session refused: its upstream server cannot serve target_session_attrs");
        topology.lost(self.upstream_host);
        let message = format!("{} (target_session_attrs={})", host.failed(reason), topology.attrs().as_str());
        Step::Refuse(SqlError::fatal("08001", message))
    }
}

/// Reads the upstream, or waits for ever while there is none (transaction mode between transactions).
async fn read_upstream(upstream: &mut Option<ReadHalf>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match upstream {
        Some(upstream) => upstream.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// Transaction mode: a connection was attached (when `detached`) or the client direction asks whether
/// the one held can go back to the pool. Never, in session mode.
async fn pool_event(link: Option<&PooledLink<'_>>, detached: bool) {
    match link {
        Some(link) => std::future::poll_fn(|cx| link.poll_event(detached, cx)).await,
        None => std::future::pending().await,
    }
}

fn flush_run(buf: &mut BytesMut, run: &mut usize, out: &mut Vec<Bytes>) {
    if *run > 0 {
        out.push(buf.split_to(*run).freeze());
        *run = 0;
    }
}
