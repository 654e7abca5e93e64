//! Client -> upstream direction: the async shell around the pure [`RequestMachine`]. It reads client
//! bytes, lets the machine decide what goes upstream, publishes the requests' expectations on the response
//! queue before writing them, and waits where the machine says (for the end of the startup, a deferred
//! local answer, a probe's answer). The session's interceptor, its metrics and the state shared with the
//! upstream direction reach the machine through [`SessionHost`]. In transaction mode the server
//! connection comes from the pool ([`PooledLink`]) before the frames that need one are handled.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::pooled::{PooledLink, WriteError};
use super::{write_chunks, SessionShared, READ_CHUNK};
use crate::interceptor::{SessionEvent, SessionInfo, SessionInterceptor};
use crate::metrics::SessionMetrics;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{self, tag, SqlError};
use crate::protocol::requests::{Host, Outcome, Renamed, RequestMachine, Route, STREAM_THRESHOLD};
use crate::protocol::responses::{FallbackOutcome, ResponseQueue};
use crate::server_context::ServerContext;
use crate::stream::{ReadHalf, WriteHalf};
use tokio::sync::Notify;

/// Why the client direction stopped.
#[derive(Debug)]
pub enum FrontendEnd {
    /// The client sent Terminate (forwarded).
    Terminated,
    /// The client closed its socket or it failed.
    ClientGone,
    /// The client broke the protocol; it gets this error and the session closes.
    Violation(SqlError),
    /// Writing to the upstream failed; the other direction reports why.
    UpstreamBroken,
    /// Transaction mode: no server connection came free in time; the client gets this error.
    NoServer(SqlError),
}

/// Where the client's requests go.
pub enum Upstream<'a, 's> {
    /// Session mode: the session's own server connection.
    Fixed(&'a mut WriteHalf),
    /// Transaction mode: whichever connection the session holds now.
    Pooled(&'a PooledLink<'s>),
}

enum InterceptorSlot {
    /// Not created yet: the client is not authenticated.
    Pending,
    Active(Box<dyn SessionInterceptor>),
    Off,
}

/// The session as the request machine sees it.
struct SessionHost<'s> {
    shared: &'s SessionShared,
    ctx: &'s ServerContext,
    metrics: &'s SessionMetrics,
    info: SessionInfo,
    interceptor: InterceptorSlot,
    /// Reused buffer for the session events handed to the interceptor.
    events: Vec<SessionEvent>,
    /// Transaction mode: the pooled server connection.
    link: Option<&'s PooledLink<'s>>,
    /// Transaction mode: the frames being handled are a batch answered without a server connection
    /// ([`Frontend::prepares_detached`]).
    detached_batch: bool,
}

impl Host for SessionHost<'_> {
    fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    fn auth_requests(&self) -> u32 {
        self.shared.auth_requests.load(Ordering::Relaxed)
    }

    fn transaction_status(&self) -> u8 {
        self.shared.tx_status.load(Ordering::Relaxed)
    }

    fn intercepting(&mut self) -> bool {
        match &self.interceptor {
            InterceptorSlot::Active(_) => true,
            InterceptorSlot::Off => false,
            InterceptorSlot::Pending => {
                // Only an authenticated session's SQL is judged; before that it goes to the upstream, which
                // refuses it.
                if !self.shared.is_ready() {
                    return false;
                }
                self.info.backend_pid = self.shared.backend_pid.load(Ordering::Relaxed);
                self.interceptor = match self.ctx.interceptor.start_session(&self.info) {
                    Some(i) => {
                        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).record_events();
                        InterceptorSlot::Active(i)
                    }
                    None => InterceptorSlot::Off,
                };
                matches!(self.interceptor, InterceptorSlot::Active(_))
            }
        }
    }

    fn interceptor(&mut self) -> Option<&mut dyn SessionInterceptor> {
        let InterceptorSlot::Active(interceptor) = &mut self.interceptor else { return None };
        if self.shared.events_ready.load(Ordering::Acquire) && self.shared.events_ready.swap(false, Ordering::Acquire) {
            self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).take_events(&mut self.events);
        }
        if !self.events.is_empty() {
            interceptor.on_events(&self.events);
            self.events.clear();
        }
        Some(interceptor.as_mut())
    }

    fn count_query(&mut self, route: Route) {
        self.metrics.query(route);
    }

    fn count_error(&mut self, code: &str) {
        crate::metrics::count_error(code);
    }

    fn count_copy_tee(&mut self, staged: bool) {
        crate::metrics::count_copy_tee(staged);
    }

    fn pooled(&self) -> bool {
        self.link.is_some()
    }

    fn rename_statement(&mut self, frame: &[u8]) -> Option<Renamed> {
        self.link?.rename_statement(frame)
    }

    fn upstream_sql(&mut self, sql: &[u8]) {
        if let Some(link) = self.link {
            link.judge_pinning(sql);
            link.expect_resets(sql);
        }
    }

    fn deallocates_locally(&mut self, sql: &[u8]) -> bool {
        self.link.is_some_and(|link| link.deallocates_locally(sql))
    }

    fn answers_sync(&mut self) -> bool {
        self.detached_batch && self.link.is_some_and(|link| link.detached())
    }
}

pub struct Frontend<'s> {
    host: SessionHost<'s>,
    machine: RequestMachine,
}

impl<'s> Frontend<'s> {
    pub fn new(
        shared: &'s SessionShared,
        ctx: &'s ServerContext,
        metrics: &'s SessionMetrics,
        info: SessionInfo,
    ) -> Self {
        Frontend {
            host: SessionHost {
                shared,
                ctx,
                metrics,
                info,
                interceptor: InterceptorSlot::Pending,
                events: Vec::new(),
                link: None,
                detached_batch: false,
            },
            machine: RequestMachine::new(ctx.config.limits.max_message_size)
                .with_copy_tee_limit(ctx.config.limits.copy_tee_buffer_bytes())
                .with_copy_budget(Arc::clone(&ctx.copy_budget)),
        }
    }

    /// Transaction mode: requests go to the connection `link` holds.
    pub fn pooled(mut self, link: &'s PooledLink<'s>) -> Self {
        self.host.link = Some(link);
        self
    }

    pub async fn run(mut self, mut client: ReadHalf, mut upstream: Upstream<'_, 's>) -> FrontendEnd {
        let shared = self.host.shared;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out: Vec<Bytes> = Vec::with_capacity(4);
        loop {
            super::prepare_read_buffer(&mut buf);
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return FrontendEnd::ClientGone,
                Ok(n) => self.host.metrics.to_upstream.increment(n as u64),
            }
            loop {
                if let Upstream::Pooled(link) = &upstream {
                    if !self.machine.is_streaming() && self.needs_server(&buf) {
                        self.host.detached_batch = self.prepares_detached(link, &buf);
                        if !self.host.detached_batch {
                            if let Err(end) = attach_watching(link, &mut client, &mut buf, self.host.metrics).await {
                                return end;
                            }
                        }
                    }
                }
                let outcome = self.machine.process(&mut self.host, &mut buf, &mut out);
                self.host.detached_batch = false;
                self.publish_expects();
                let written = match &mut upstream {
                    Upstream::Fixed(w) => write_chunks(w, &mut out).await.map_err(|_| WriteError::Broken),
                    Upstream::Pooled(link) => link.write(&mut out).await,
                };
                match written {
                    Ok(()) => {}
                    Err(WriteError::Broken) => return FrontendEnd::UpstreamBroken,
                    Err(WriteError::NoServer(err)) => return FrontendEnd::NoServer(err),
                }
                match outcome {
                    Outcome::NeedInput => {
                        if let Upstream::Pooled(link) = &upstream {
                            link.check_release();
                        }
                        break;
                    }
                    Outcome::AwaitStartup => {
                        let ready = shared.startup_done.notified();
                        tokio::pin!(ready);
                        ready.as_mut().enable();
                        if !shared.is_ready()
                            && shared.auth_requests.load(Ordering::Relaxed) <= self.machine.auth_answers()
                        {
                            ready.await;
                        }
                    }
                    Outcome::Terminate => return FrontendEnd::Terminated,
                    Outcome::Violation(err) => return FrontendEnd::Violation(err),
                    Outcome::Defer(reply, pending) => {
                        let reply = reply.await;
                        self.machine.finish_deferred(&mut self.host, pending, reply);
                    }
                    Outcome::Probe => {
                        let answer = probe_answer(shared).await;
                        if let Some(interceptor) = self.host.interceptor() {
                            interceptor.on_probe(answer);
                        }
                    }
                    Outcome::AwaitTee => {
                        // The fallback (if any) goes out with what the next `process` adds.
                        let outcome = fallback_outcome(shared).await;
                        self.machine.finish_tee(&mut self.host, outcome, &mut out);
                    }
                }
            }
        }
    }

    /// Transaction mode: whether the frames at the head of `buf` need a server connection: any whole frame
    /// up to a Terminate but a simple Query the interceptor answers itself (a control command, so that an
    /// admin sees the pools even when they are exhausted), or a large one that starts streaming.
    fn needs_server(&mut self, buf: &[u8]) -> bool {
        let mut rest = buf;
        loop {
            let Ok(Some(header)) = peek_header(rest, usize::MAX) else { return false };
            let total = header.total_len();
            if rest.len() < total {
                return total > STREAM_THRESHOLD;
            }
            match header.tag {
                tag::TERMINATE => return false,
                tag::QUERY if self.answered_itself(&rest[..total]) => {}
                _ => return true,
            }
            rest = &rest[total..];
        }
    }

    /// Transaction mode, no connection held: whether the whole frames in `buf` are exactly a batch of
    /// Parses of named statements and a Sync (libpq's `PQprepare`) that the proxy answers itself, outside a
    /// transaction: each Parse would be forwarded unchanged (the interceptor says so, and it pins nothing),
    /// its name is free and the pool's server accepted its statement (`pool::statements`). A client that
    /// prepares synchronously while its other connections hold every pooled connection then does not wait
    /// for itself.
    fn prepares_detached(&mut self, link: &PooledLink<'_>, buf: &[u8]) -> bool {
        let shared = self.host.shared;
        // (Whether the session holds a connection is asked per Parse, by `answers_parse_detached`.)
        if !shared.is_ready() || shared.tx_status.load(Ordering::Relaxed) != b'I' || self.machine.is_skipping_to_sync()
        {
            return false;
        }
        let mut names: Vec<&[u8]> = Vec::new();
        let mut rest = buf;
        loop {
            let Ok(Some(header)) = peek_header(rest, usize::MAX) else { return false };
            let total = header.total_len();
            if rest.len() < total {
                return false;
            }
            match header.tag {
                tag::SYNC => return !names.is_empty() && rest.len() == total,
                tag::PARSE => {
                    let Some(view) = messages::parse_view(messages::body(&rest[..total])) else { return false };
                    // Unnamed statements, the usual first frame of a transaction, leave at once.
                    if view.statement.is_empty() || names.contains(&view.statement) {
                        return false;
                    }
                    let Ok(sql) = std::str::from_utf8(view.sql) else { return false };
                    if crate::pool::pinning::pin_reason(view.sql).is_some()
                        || !self.forwards_parse(sql)
                        || !link.answers_parse_detached(view.statement, sql, &view.param_type_oids())
                    {
                        return false;
                    }
                    names.push(view.statement);
                }
                _ => return false,
            }
            rest = &rest[total..];
        }
    }

    /// Whether the request machine would forward a Parse of `sql` unchanged, with no probe.
    fn forwards_parse(&mut self, sql: &str) -> bool {
        if !self.host.intercepting() {
            return true;
        }
        self.host.interceptor().is_some_and(|i| i.forwards_parse(sql))
    }

    fn answered_itself(&mut self, query: &[u8]) -> bool {
        if !self.host.intercepting() {
            return false;
        }
        let Some(sql) = messages::query_sql(messages::body(query)).and_then(|s| std::str::from_utf8(s).ok()) else {
            return false;
        };
        self.host.interceptor().is_some_and(|i| i.answers_itself(sql))
    }

    /// Moves the expectations of the frames handled since the last call to the response queue, under one
    /// lock per client read instead of one per message.
    fn publish_expects(&mut self) {
        if !self.machine.has_expects() {
            return;
        }
        let shared = self.host.shared;
        let (expects, local_queued) = self.machine.take_expects();
        {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            for expect in expects {
                queue.push(expect);
            }
        }
        if local_queued {
            shared.local_ready.signal();
        }
    }
}

/// What a client may send while it waits for a pooled connection before the proxy stops reading it.
const WAITING_READ_LIMIT: usize = 1 << 20;

/// Waits for a pooled connection while reading the client: a client that goes away (end of stream or a
/// failed read) leaves the pool's line at once, instead of keeping its place and being lent a connection
/// later for a request no one waits for. What it sends meanwhile is kept for after the wait (reading
/// stops at [`WAITING_READ_LIMIT`], where only the wait timeout ends the wait).
async fn attach_watching(
    link: &PooledLink<'_>,
    client: &mut ReadHalf,
    buf: &mut BytesMut,
    metrics: &SessionMetrics,
) -> Result<(), FrontendEnd> {
    let attach = link.attach();
    tokio::pin!(attach);
    loop {
        let reading = buf.len() < WAITING_READ_LIMIT;
        tokio::select! {
            biased;
            attached = &mut attach => return attached.map_err(FrontendEnd::NoServer),
            read = client.read_buf(buf), if reading => match read {
                Ok(0) | Err(_) => return Err(FrontendEnd::ClientGone),
                Ok(n) => metrics.to_upstream.increment(n as u64),
            },
        }
    }
}

/// The answer of the probe just sent (the upstream direction notifies when it is on the queue).
async fn probe_answer(shared: &SessionShared) -> Option<Vec<Option<String>>> {
    from_queue(&shared.probe_ready, shared, ResponseQueue::take_probe_answer).await
}

/// How the request that may fall back, just sent, ended (the upstream direction notifies when it has).
async fn fallback_outcome(shared: &SessionShared) -> FallbackOutcome {
    from_queue(&shared.fallback_ready, shared, ResponseQueue::take_fallback_outcome).await
}

/// Waits until `take` finds what the upstream direction puts on the response queue, signalled by `ready`.
async fn from_queue<T>(ready: &Notify, shared: &SessionShared, take: fn(&mut ResponseQueue) -> Option<T>) -> T {
    loop {
        let notified = ready.notified();
        if let Some(found) = take(&mut shared.queue.lock().unwrap_or_else(|e| e.into_inner())) {
            return found;
        }
        notified.await;
    }
}
