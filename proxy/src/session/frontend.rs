//! Client -> upstream direction. Scans frames in place; runs of frames that pass unchanged are forwarded
//! as one slice of the read buffer (no per-message allocation or copy). Only Query and Parse SQL (when an
//! interceptor is active), Describe, and Bind/Execute/Close of statements the proxy rewrote or answers are
//! looked into. Every request is recorded on the response queue before it is written upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::interceptor::{
    LocalReply, LocalResult, Raise, SessionEvent, SessionInfo, SessionInterceptor, SqlOrigin, SqlRequest, Verdict,
};
use super::local::{self, LocalStatement};
use super::stream::{ReadHalf, WriteHalf};
use super::{write_chunks, SessionShared, READ_CHUNK, STREAM_THRESHOLD};
use crate::metrics::{Route, SessionMetrics};
use crate::protocol::frame::{peek_header, FrameError};
use crate::protocol::messages::{self, body, tag, SqlError};
use crate::protocol::responses::{Expect, LocalAnswer, StatementTransform};
use crate::server::ServerContext;

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
}

/// What the proxy knows about a prepared statement or portal it does not simply pass through.
#[derive(Clone)]
enum Prepared {
    Rewritten(Arc<StatementTransform>),
    Local(Arc<LocalStatement>),
}

enum InterceptorSlot {
    /// Not created yet: the client is not authenticated.
    Pending,
    Active(Box<dyn SessionInterceptor>),
    Off,
}

type DeferredReply = Pin<Box<dyn Future<Output = LocalReply> + Send>>;

/// What to do with one client frame.
enum Step {
    Forward,
    Drop,
    Replace(Bytes),
    Terminate,
    Violation(SqlError),
    Defer(DeferredReply, Pending),
    /// Run the interceptor's probe query upstream, then handle the same frame again.
    Probe(String),
}

/// Where a deferred local reply goes once it is ready.
enum Pending {
    Simple,
    Parse { name: Vec<u8>, param_types: Vec<u32> },
}

enum Outcome {
    NeedInput,
    /// A statement arrived before the upstream's first ReadyForQuery: wait for it, then go on.
    AwaitStartup,
    End(FrontendEnd),
    Defer(DeferredReply, Pending),
    /// A probe went upstream: wait for its answer, hand it to the interceptor, then go on with the frame
    /// that asked for it (still at the head of the buffer).
    Probe,
}

pub struct Frontend<'s> {
    shared: &'s SessionShared,
    ctx: &'s ServerContext,
    metrics: &'s SessionMetrics,
    info: SessionInfo,
    interceptor: InterceptorSlot,
    /// Authentication answers (PasswordMessage and the SASL/GSS responses) relayed so far.
    auth_answers: u32,
    statements: HashMap<Vec<u8>, Prepared>,
    portals: HashMap<Vec<u8>, Prepared>,
    /// A local error in an extended batch: drop client messages up to Sync, as Postgres would.
    discard_until_sync: bool,
    /// Extended-protocol messages went upstream since the last Sync: the client's batch is open there.
    unsynced: bool,
    /// Bytes of a large passthrough frame still to forward as they arrive.
    stream_left: usize,
    /// Reused buffer for the session events handed to the interceptor.
    events: Vec<SessionEvent>,
    /// Expectations of the requests handled in this read, not yet on the response queue.
    expects: Vec<Expect>,
    /// `expects` holds a local answer: the upstream direction must be woken once they are queued.
    local_queued: bool,
}

impl<'s> Frontend<'s> {
    pub fn new(
        shared: &'s SessionShared,
        ctx: &'s ServerContext,
        metrics: &'s SessionMetrics,
        info: SessionInfo,
    ) -> Self {
        Frontend {
            shared,
            ctx,
            metrics,
            info,
            interceptor: InterceptorSlot::Pending,
            auth_answers: 0,
            statements: HashMap::new(),
            portals: HashMap::new(),
            discard_until_sync: false,
            unsynced: false,
            stream_left: 0,
            events: Vec::new(),
            expects: Vec::with_capacity(8),
            local_queued: false,
        }
    }

    pub async fn run(mut self, mut client: ReadHalf, upstream: &mut WriteHalf) -> FrontendEnd {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out: Vec<Bytes> = Vec::with_capacity(4);
        loop {
            super::prepare_read_buffer(&mut buf);
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return FrontendEnd::ClientGone,
                Ok(n) => self.metrics.to_upstream.increment(n as u64),
            }
            loop {
                let outcome = self.process(&mut buf, &mut out);
                self.publish_expects();
                if write_chunks(upstream, &mut out).await.is_err() {
                    return FrontendEnd::UpstreamBroken;
                }
                match outcome {
                    Outcome::NeedInput => break,
                    Outcome::AwaitStartup => {
                        let ready = self.shared.startup_done.notified();
                        tokio::pin!(ready);
                        ready.as_mut().enable();
                        if !self.shared.is_ready()
                            && self.shared.auth_requests.load(Ordering::Relaxed) <= self.auth_answers
                        {
                            ready.await;
                        }
                    }
                    Outcome::End(end) => return end,
                    Outcome::Defer(reply, pending) => {
                        let reply = reply.await;
                        self.finish_deferred(pending, reply);
                    }
                    Outcome::Probe => {
                        let answer = probe_answer(self.shared).await;
                        if let Some(interceptor) = self.active() {
                            interceptor.on_probe(answer);
                        }
                    }
                }
            }
        }
    }

    /// Handles every whole frame in `buf`, moving what goes upstream to `out`.
    fn process(&mut self, buf: &mut BytesMut, out: &mut Vec<Bytes>) -> Outcome {
        if self.stream_left > 0 {
            let k = self.stream_left.min(buf.len());
            out.push(buf.split_to(k).freeze());
            self.stream_left -= k;
            if self.stream_left > 0 {
                return Outcome::NeedInput;
            }
        }
        // `buf[..run]` holds frames to forward unchanged.
        let mut run = 0;
        let outcome = loop {
            let header = match peek_header(&buf[run..], self.ctx.config.limits.max_message_size) {
                Ok(Some(h)) => h,
                Ok(None) => break Outcome::NeedInput,
                Err(e) => break Outcome::End(FrontendEnd::Violation(frame_error(e))),
            };
            let ready = self.shared.is_ready();
            // A statement pipelined behind the authentication waits for ReadyForQuery, so that the
            // interceptor (which starts there) judges it like any other instead of it slipping through
            // unjudged. While the upstream still waits for an authentication answer it goes on at once:
            // the upstream refuses it.
            if !ready
                && !matches!(header.tag, tag::PASSWORD | tag::TERMINATE)
                && self.shared.auth_requests.load(Ordering::Relaxed) <= self.auth_answers
            {
                break Outcome::AwaitStartup;
            }
            let total = header.total_len();
            let available = buf.len() - run;
            if !ready && header.tag == tag::PASSWORD && available >= total {
                self.auth_answers += 1;
            }
            if available < total {
                // A large frame that passes unchanged is forwarded as it arrives instead of buffered whole.
                if total > STREAM_THRESHOLD
                    && header.tag != tag::TERMINATE
                    && !self.discard_until_sync
                    && !self.needs_body(header.tag)
                {
                    if let Step::Forward = self.on_tag(header.tag) {
                        run += available;
                        self.stream_left = total - available;
                    }
                }
                break Outcome::NeedInput;
            }
            let step = if self.discard_until_sync || !self.needs_body(header.tag) {
                self.on_tag(header.tag)
            } else {
                self.on_frame(&buf[run..run + total])
            };
            match header.tag {
                _ if matches!(step, Step::Probe(_)) => {}
                tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => self.unsynced = true,
                tag::SYNC => self.unsynced = false,
                _ => {}
            }
            match step {
                Step::Forward => run += total,
                Step::Probe(sql) => {
                    // The frame stays in `buf`: once the answer is in, it is handled again.
                    if run > 0 {
                        out.push(buf.split_to(run).freeze());
                        run = 0;
                    }
                    let at_sync = !self.unsynced;
                    out.push(messages::probe(&sql, at_sync));
                    self.expect(Expect::Probe { at_sync });
                    break Outcome::Probe;
                }
                Step::Terminate => {
                    run += total;
                    break Outcome::End(FrontendEnd::Terminated);
                }
                Step::Violation(e) => break Outcome::End(FrontendEnd::Violation(e)),
                Step::Drop | Step::Replace(_) | Step::Defer(..) => {
                    if run > 0 {
                        out.push(buf.split_to(run).freeze());
                        run = 0;
                    }
                    buf.advance(total);
                    match step {
                        Step::Replace(bytes) => out.push(bytes),
                        Step::Defer(reply, pending) => break Outcome::Defer(reply, pending),
                        _ => {}
                    }
                }
            }
        };
        if run > 0 {
            out.push(buf.split_to(run).freeze());
        }
        outcome
    }

    /// Records what a request expects; the batch reaches the response queue in `publish_expects`, before
    /// anything of it is written upstream.
    fn expect(&mut self, expect: Expect) {
        self.expects.push(expect);
    }

    fn answer(&mut self, bytes: Bytes, ready_for_query: bool, extended: bool) {
        self.expect(Expect::Local(LocalAnswer { bytes, ready_for_query, extended }));
        self.local_queued = true;
    }

    /// Moves the expectations of the frames handled since the last call to the response queue, under one
    /// lock per client read instead of one per message.
    fn publish_expects(&mut self) {
        if self.expects.is_empty() {
            return;
        }
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            for expect in self.expects.drain(..) {
                queue.push(expect);
            }
        }
        if std::mem::take(&mut self.local_queued) {
            self.shared.local_ready.notify_one();
        }
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

    fn needs_body(&mut self, tag: u8) -> bool {
        match tag {
            tag::DESCRIBE => true,
            tag::QUERY => self.intercepting(),
            tag::PARSE => self.intercepting() || !self.statements.is_empty(),
            // An active interceptor follows which portal runs which statement (session-state mirroring).
            tag::BIND | tag::EXECUTE | tag::CLOSE => {
                self.intercepting() || !self.statements.is_empty() || !self.portals.is_empty()
            }
            _ => false,
        }
    }

    /// A frame whose body the relay cannot read (a lying count, a missing terminator): forwarded as sent, so
    /// Postgres refuses it with its own error (08P01, as ERROR or FATAL as it decides) and nothing runs.
    /// Statements and portals stay as they were, as they do in Postgres.
    fn unreadable(&mut self, t: u8) -> Step {
        if t == tag::DESCRIBE && !self.discard_until_sync {
            self.expect(Expect::Describe { statement: false, transform: None });
            return Step::Forward;
        }
        self.on_tag(t)
    }

    /// Frames decided by their tag alone.
    fn on_tag(&mut self, t: u8) -> Step {
        if self.discard_until_sync {
            return match t {
                tag::SYNC => {
                    self.discard_until_sync = false;
                    return self.on_tag(tag::SYNC);
                }
                tag::TERMINATE => Step::Terminate,
                _ => Step::Drop,
            };
        }
        match t {
            tag::QUERY => {
                self.metrics.query(Route::Passthrough);
                self.expect(Expect::SimpleQuery { transforms: None, started: Instant::now() });
            }
            tag::PARSE => self.expect(Expect::Parse),
            tag::BIND => self.expect(Expect::Bind),
            tag::EXECUTE => {
                self.metrics.query(Route::Passthrough);
                self.expect(Expect::Execute { transform: None });
            }
            tag::CLOSE => self.expect(Expect::Close),
            tag::SYNC => {
                if let Some(interceptor) = self.active() {
                    interceptor.on_sync();
                }
                self.expect(Expect::Sync { started: Instant::now() })
            }
            tag::FUNCTION_CALL => self.expect(Expect::FunctionCall { started: Instant::now() }),
            tag::TERMINATE => return Step::Terminate,
            // Flush, COPY traffic, password messages, and types we do not know pass as they are.
            _ => {}
        }
        Step::Forward
    }

    /// Frames whose body matters (see `needs_body`).
    fn on_frame(&mut self, frame: &[u8]) -> Step {
        let b = body(frame);
        match frame[0] {
            tag::QUERY => self.on_query(b),
            tag::PARSE => self.on_parse(frame),
            tag::BIND => {
                let Some((portal, statement)) = messages::bind_names(b) else { return self.unreadable(tag::BIND) };
                if let Some(probe) = self.probe_before_use(statement) {
                    return Step::Probe(probe);
                }
                let reprepared = self.reprepare(statement);
                if let Some(interceptor) = self.active() {
                    interceptor.on_bind(portal, statement, b);
                }
                let step = match self.statements.get(statement).cloned() {
                    Some(Prepared::Local(l)) => {
                        self.portals.insert(portal.to_vec(), Prepared::Local(l));
                        self.answer(messages::bind_complete(), false, true);
                        Step::Drop
                    }
                    Some(p) => {
                        self.portals.insert(portal.to_vec(), p);
                        self.expect(Expect::Bind);
                        Step::Forward
                    }
                    None => {
                        self.portals.remove(portal);
                        self.expect(Expect::Bind);
                        Step::Forward
                    }
                };
                with_injected(reprepared, step, frame)
            }
            tag::DESCRIBE => {
                let Some((kind, name)) = messages::target_of(b) else { return self.unreadable(tag::DESCRIBE) };
                let statement = kind == b'S';
                if statement {
                    if let Some(probe) = self.probe_before_use(name) {
                        return Step::Probe(probe);
                    }
                }
                let reprepared = if statement { self.reprepare(name) } else { None };
                let step = match self.lookup(statement, name) {
                    Some(Prepared::Local(l)) => {
                        self.answer(l.describe(statement), false, true);
                        Step::Drop
                    }
                    Some(Prepared::Rewritten(t)) => {
                        self.expect(Expect::Describe { statement, transform: Some(t) });
                        Step::Forward
                    }
                    None => {
                        self.expect(Expect::Describe { statement, transform: None });
                        Step::Forward
                    }
                };
                with_injected(reprepared, step, frame)
            }
            tag::EXECUTE => {
                let Some(portal) = messages::execute_portal(b) else { return self.unreadable(tag::EXECUTE) };
                if let Some(interceptor) = self.active() {
                    interceptor.on_execute(portal);
                }
                match self.portals.get(portal).cloned() {
                    Some(Prepared::Local(l)) => {
                        self.metrics.query(Route::Control);
                        self.answer(l.execute(), false, true);
                        Step::Drop
                    }
                    Some(Prepared::Rewritten(t)) => {
                        self.metrics.query(Route::Rewritten);
                        let suppress = t.suppress_rows;
                        self.expect(Expect::Execute { transform: Some(t) });
                        if suppress && !messages::execute_runs_to_completion(b) {
                            // The client's statement returns no rows, so Postgres would run it to completion
                            // whatever row limit the Execute asks for (pgjdbc's executeUpdate asks for 1).
                            // Its rewrite is a query: without this it would stop at PortalSuspended and the
                            // client would never see the command tag with its row count. An Execute that
                            // already asks for every row is relayed as it is.
                            Step::Replace(messages::execute(&String::from_utf8_lossy(portal)))
                        } else {
                            Step::Forward
                        }
                    }
                    None => {
                        self.metrics.query(Route::Passthrough);
                        self.expect(Expect::Execute { transform: None });
                        Step::Forward
                    }
                }
            }
            tag::CLOSE => {
                let Some((kind, name)) = messages::target_of(b) else { return self.unreadable(tag::CLOSE) };
                if kind == b'S' {
                    if let Some(interceptor) = self.active() {
                        interceptor.on_close_statement(name);
                    }
                }
                let removed = if kind == b'S' { self.statements.remove(name) } else { self.portals.remove(name) };
                if let Some(Prepared::Local(_)) = removed {
                    self.answer(messages::close_complete(), false, true);
                    Step::Drop
                } else {
                    self.expect(Expect::Close);
                    Step::Forward
                }
            }
            other => self.on_tag(other),
        }
    }

    fn lookup(&self, statement: bool, name: &[u8]) -> Option<Prepared> {
        if statement {
            self.statements.get(name).cloned()
        } else {
            self.portals.get(name).cloned()
        }
    }

    /// The active interceptor, after handing it the session events that arrived since its last call.
    fn active(&mut self) -> Option<&mut Box<dyn SessionInterceptor>> {
        let InterceptorSlot::Active(interceptor) = &mut self.interceptor else { return None };
        if self.shared.events_ready.load(Ordering::Acquire) && self.shared.events_ready.swap(false, Ordering::Acquire) {
            self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).take_events(&mut self.events);
        }
        if !self.events.is_empty() {
            interceptor.on_events(&self.events);
            self.events.clear();
        }
        Some(interceptor)
    }

    /// The interceptor's verdict on `sql`; `name_utf8` says whether the statement name (if any) is UTF-8.
    fn verdict(&mut self, sql: &[u8], origin: SqlOrigin<'_>, param_types: &[u32], name_utf8: bool) -> Verdict {
        let transaction_status = self.shared.tx_status.load(Ordering::Relaxed);
        let can_probe = self.can_probe();
        let Some(interceptor) = self.active() else { return Verdict::Forward };
        // `str::from_utf8` validates ASCII a word at a time; the lossy decoder walks char chunks (~400
        // instructions per statement in callgrind), so it is only the fallback for bytes that are not UTF-8.
        let text = match std::str::from_utf8(sql) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(sql),
        };
        let utf8 = name_utf8 && matches!(text, std::borrow::Cow::Borrowed(_));
        let verdict = interceptor.on_sql(SqlRequest { sql: &text, origin, param_types, transaction_status, can_probe });
        match verdict {
            // Bytes that are not UTF-8 are forwarded as sent (Postgres judges them in the client's
            // encoding); anything the proxy would rewrite or answer itself it would have to re-encode.
            Verdict::Forward => Verdict::Forward,
            Verdict::Probe(sql) => Verdict::Probe(sql),
            _ if !utf8 => Verdict::Raise(not_utf8()),
            other => other,
        }
    }

    /// The interceptor's probe before a use of `statement`, where the relay can run one now.
    fn probe_before_use(&mut self, statement: &[u8]) -> Option<String> {
        if !self.can_probe() {
            return None;
        }
        self.active()?.probe_before_use(statement)
    }

    /// A probe can run before the frame at hand: at a sync point it brings its own Sync, inside the client's
    /// open batch a Flush; only while the proxy drops the rest of a batch it answered with an error (the
    /// frame is dropped anyway) is there no point.
    fn can_probe(&self) -> bool {
        !self.discard_until_sync
    }

    /// Frames that prepare `statement` again upstream when the interceptor asks for it (its route changed
    /// since it was prepared): Close and Parse under the same name, their answers hidden from the client.
    fn reprepare(&mut self, statement: &[u8]) -> Option<BytesMut> {
        let again = self.active()?.reprepare(statement)?;
        let name = String::from_utf8_lossy(statement).into_owned();
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&messages::close_statement(&name));
        frames.extend_from_slice(&messages::parse(
            (!name.is_empty()).then(|| name.clone()),
            &again.sql,
            again.param_types,
        ));
        self.expect(Expect::Hidden);
        self.expect(Expect::Hidden);
        if again.transform == StatementTransform::default() {
            self.statements.remove(statement);
        } else {
            self.statements.insert(statement.to_vec(), Prepared::Rewritten(Arc::new(again.transform)));
        }
        Some(frames)
    }

    fn on_query(&mut self, b: &[u8]) -> Step {
        let Some(sql) = messages::query_sql(b) else { return self.unreadable(tag::QUERY) };
        match self.verdict(sql, SqlOrigin::SimpleQuery, &[], true) {
            Verdict::Forward => self.on_tag(tag::QUERY),
            Verdict::Raise(raise) => {
                self.count_raise(&raise);
                self.expect(Expect::SimpleQuery { transforms: None, started: Instant::now() });
                Step::Replace(messages::query(&raise.sql))
            }
            Verdict::Rewrite(rewrite) => {
                self.metrics.query(if rewrite.control { Route::Control } else { Route::Rewritten });
                let transforms = (!rewrite.statements.is_empty()).then(|| Arc::from(rewrite.statements));
                self.expect(Expect::SimpleQuery { transforms, started: Instant::now() });
                Step::Replace(messages::query(&rewrite.sql))
            }
            Verdict::Respond(reply) => {
                self.answer_simple(reply);
                Step::Drop
            }
            Verdict::Defer(reply) => Step::Defer(reply, Pending::Simple),
            Verdict::Probe(sql) => Step::Probe(sql),
        }
    }

    fn on_parse(&mut self, frame: &[u8]) -> Step {
        let Some(view) = messages::parse_view(body(frame)) else { return self.unreadable(tag::PARSE) };
        let name = view.statement.to_vec();
        let statement = String::from_utf8_lossy(view.statement).into_owned();
        let param_types =
            if matches!(self.interceptor, InterceptorSlot::Active(_)) { view.param_type_oids() } else { Vec::new() };
        let name_utf8 = std::str::from_utf8(view.statement).is_ok();
        let verdict = self.verdict(view.sql, SqlOrigin::Parse { statement: &statement }, &param_types, name_utf8);
        if let Verdict::Probe(sql) = verdict {
            return Step::Probe(sql);
        }
        if matches!(verdict, Verdict::Forward) {
            self.statements.remove(&name);
            self.expect(Expect::Parse);
            return Step::Forward;
        }
        let parse = match &verdict {
            Verdict::Forward | Verdict::Raise(_) | Verdict::Probe(_) => None,
            _ => match messages::decode_parse(frame) {
                Some(parse) => Some(parse),
                None => return malformed("Parse"),
            },
        };
        match (verdict, parse) {
            (Verdict::Forward | Verdict::Probe(_), _) => unreachable!("handled above"),
            (Verdict::Raise(raise), _) => {
                // The server raises the refusal where the Parse stood: it then skips the batch up to Sync
                // and aborts the (implicit) transaction, exactly as for a failing Parse. The client's
                // statement does not exist afterwards, as after a failed Parse.
                self.count_raise(&raise);
                self.statements.remove(&name);
                let mut frames = BytesMut::new();
                frames.extend_from_slice(&messages::parse(None, &raise.sql, Vec::new()));
                frames.extend_from_slice(&messages::bind("", ""));
                frames.extend_from_slice(&messages::execute(""));
                self.expect(Expect::Hidden);
                self.expect(Expect::Hidden);
                self.expect(Expect::Execute { transform: None });
                Step::Replace(frames.freeze())
            }
            (_, None) => unreachable!("decoded above"),
            (Verdict::Rewrite(rewrite), Some(parse)) => {
                let transform = rewrite.statements.into_iter().next().unwrap_or_default();
                self.statements.insert(name, Prepared::Rewritten(Arc::new(transform)));
                self.expect(Expect::Parse);
                Step::Replace(messages::parse(parse.name, &rewrite.sql, parse.type_oids))
            }
            (Verdict::Respond(reply), Some(parse)) => {
                self.answer_parse(name, parse.type_oids, reply);
                Step::Drop
            }
            (Verdict::Defer(reply), Some(parse)) => {
                Step::Defer(reply, Pending::Parse { name, param_types: parse.type_oids })
            }
        }
    }

    fn finish_deferred(&mut self, pending: Pending, reply: LocalReply) {
        match pending {
            Pending::Simple => self.answer_simple(reply),
            Pending::Parse { name, param_types } => self.answer_parse(name, param_types, reply),
        }
    }

    fn answer_simple(&mut self, reply: LocalReply) {
        self.count_local(&reply);
        self.answer(local::simple_query(&reply), true, false);
    }

    fn answer_parse(&mut self, name: Vec<u8>, param_types: Vec<u32>, reply: LocalReply) {
        self.count_local(&reply);
        if let Some(err) = &reply.error {
            self.statements.remove(&name);
            self.answer(local::error(err), false, true);
            self.discard_until_sync = true;
            return;
        }
        let result = reply
            .results
            .into_iter()
            .next()
            .unwrap_or_else(|| LocalResult { tag: "SELECT 0".to_owned(), ..LocalResult::default() });
        self.statements.insert(name, Prepared::Local(Arc::new(LocalStatement { param_types, result })));
        self.answer(messages::parse_complete(), false, true);
    }

    fn count_raise(&self, raise: &Raise) {
        self.metrics.query(if raise.control { Route::Control } else { Route::Rejected });
    }

    fn count_local(&self, reply: &LocalReply) {
        if let Some(err) = &reply.error {
            crate::metrics::count_error(&err.code);
        }
        self.metrics.query(if reply.control { Route::Control } else { Route::Rejected });
    }
}

/// The answer of the probe just sent (the upstream direction notifies when it is on the queue).
async fn probe_answer(shared: &SessionShared) -> Option<Vec<Option<String>>> {
    loop {
        let ready = shared.probe_ready.notified();
        if let Some(answer) = shared.queue.lock().unwrap_or_else(|e| e.into_inner()).take_probe_answer() {
            return answer;
        }
        ready.await;
    }
}

/// `step`, preceded upstream by `injected` frames when there are any.
fn with_injected(injected: Option<BytesMut>, step: Step, frame: &[u8]) -> Step {
    match (injected, step) {
        (None, step) => step,
        (Some(mut frames), Step::Forward) => {
            frames.extend_from_slice(frame);
            Step::Replace(frames.freeze())
        }
        (Some(mut frames), Step::Replace(bytes)) => {
            frames.extend_from_slice(&bytes);
            Step::Replace(frames.freeze())
        }
        // The frame is answered locally; what was injected still goes upstream.
        (Some(frames), Step::Drop) => Step::Replace(frames.freeze()),
        (Some(_), other) => other,
    }
}

/// What replaces a statement the proxy would have to rewrite or answer but cannot read as UTF-8: the
/// error Postgres gives for such bytes in a UTF-8 session, raised by the server in the client's place.
fn not_utf8() -> Raise {
    let err = SqlError::new("22021", "invalid byte sequence for encoding \"UTF8\"")
        .with_detail("dualwrite rewrites statements on migrated tables and answers control commands only in UTF-8");
    Raise { sql: err.raise_statement(), control: false }
}

fn malformed(what: &str) -> Step {
    Step::Violation(SqlError::fatal("08P01", format!("invalid {what} message format")))
}

fn frame_error(e: FrameError) -> SqlError {
    match e {
        FrameError::TooLarge { .. } => SqlError::fatal("54000", format!("{e}")),
        FrameError::InvalidLength { .. } => SqlError::fatal("08P01", format!("{e}")),
    }
}
