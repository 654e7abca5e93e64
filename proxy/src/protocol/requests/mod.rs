//! The pure request machinery (client -> server direction): what the proxy does with each client message.
//! No I/O: the session's client direction reads bytes into a buffer and hands it to
//! [`RequestMachine::process`], which scans the frames in place and appends what goes upstream to an
//! output list (runs of frames that pass unchanged as one slice of the read buffer: no per-message
//! allocation or copy), records what each request expects back ([`Expect`], for the response queue) and
//! says when the shell must wait for something before going on ([`Outcome`]).
//!
//! It owns the session's request-side state: which prepared statements and portals the proxy rewrote or
//! answers itself, the skipping of a batch up to Sync after an error the proxy answered, whether the
//! client's extended batch is open upstream (for probes), and the re-preparing of a statement whose route
//! changed. Only Query and Parse SQL (when an interceptor judges the session), Describe, and
//! Bind/Execute/Close of statements the proxy rewrote or answers are looked into. What it needs of the
//! session around it (authentication progress, the transaction status, the interceptor, metrics) it asks
//! through [`Host`].

mod extended;
mod local;
mod pooled;
mod tee;
mod teeing;
mod verdict;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

pub use self::local::LocalStatement;
pub use self::pooled::Renamed;
pub use self::verdict::{
    LocalReply, LocalResult, Raise, Reprepare, Rewrite, SessionInterceptor, SqlOrigin, SqlRequest, StatementUse,
    TeeRewrite, Verdict,
};
use super::frame::{peek_header, FrameError};
use super::messages::{self, tag, SqlError};
use super::responses::{Expect, LocalAnswer, ResponseTransform};
use crate::copy_budget::CopyBudget;

/// Frames larger than this that pass unchanged are streamed instead of buffered whole.
pub const STREAM_THRESHOLD: usize = 64 * 1024;

/// Route label values of `dualwrite_queries_total`: how a client's statement was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Passthrough,
    Rewritten,
    Rejected,
    Control,
}

/// What the request machine asks of the session around it.
pub trait Host {
    /// Authentication finished and the server said ReadyForQuery.
    fn is_ready(&self) -> bool;
    /// Authentication requests the server sent that want an answer from the client (password, SASL, GSS).
    fn auth_requests(&self) -> u32;
    /// Transaction status of the last ReadyForQuery (`b'I'`, `b'T'`, `b'E'`).
    fn transaction_status(&self) -> u8;
    /// Whether an interceptor judges this session's SQL (it starts once the session is ready).
    fn intercepting(&mut self) -> bool;
    /// The session's interceptor, told first of the server's answers since its last call; `None` when the
    /// session is not intercepted.
    fn interceptor(&mut self) -> Option<&mut dyn SessionInterceptor>;
    /// One client statement handled by `route`.
    fn count_query(&mut self, route: Route);
    /// An error the proxy answered itself, by SQLSTATE.
    fn count_error(&mut self, code: &str);
    /// Transaction pooling: the session's server connection changes between transactions, so the
    /// client's Terminate stays with the proxy and the frames below are looked into.
    fn pooled(&self) -> bool {
        false
    }
    /// Transaction pooling: a Parse, Bind, Describe or Close naming one of the client's prepared
    /// statements, translated to the server connection's names; `None` leaves it as it is.
    fn rename_statement(&mut self, _frame: &[u8]) -> Option<Renamed> {
        None
    }
    /// Transaction pooling: client SQL about to run on the server connection (what pins the client to it
    /// is judged there).
    fn upstream_sql(&mut self, _sql: &[u8]) {}
    /// Transaction pooling: whether the pooler answers this simple Query itself (a `DEALLOCATE` of a
    /// statement the client prepared with a Parse, which the server knows by another name) with
    /// CommandComplete `DEALLOCATE`.
    fn deallocates_locally(&mut self, _sql: &[u8]) -> bool {
        false
    }
    /// A COPY that qualified for a dual write of COPYs alone ran as one (`staged` false) or through the
    /// staging path after all.
    fn count_copy_tee(&mut self, _staged: bool) {}
    /// Transaction pooling: the session holds no server connection, so a Sync reaching the machine ends a
    /// batch the proxy answered in full (Parses of statements the pool's server accepted): the proxy
    /// answers it with ReadyForQuery too.
    fn answers_sync(&mut self) -> bool {
        false
    }
}

/// A local answer computed asynchronously (a long control command).
pub type DeferredReply = Pin<Box<dyn Future<Output = LocalReply> + Send>>;

/// What the shell does after [`RequestMachine::process`] (always after writing what it produced).
pub enum Outcome {
    /// Every whole frame was handled: read more.
    NeedInput,
    /// A statement arrived before the server's first ReadyForQuery: wait for it (or for an authentication
    /// request), then call `process` again.
    AwaitStartup,
    /// The client sent Terminate (forwarded).
    Terminate,
    /// The client broke the protocol; it gets this error and the session closes.
    Violation(SqlError),
    /// Await the reply, hand it to [`RequestMachine::finish_deferred`], then call `process` again. The
    /// session reads no further client messages meanwhile.
    Defer(DeferredReply, Pending),
    /// A probe went upstream: wait for its answer, hand it to the interceptor
    /// ([`SessionInterceptor::on_probe`]), then call `process` again: the frame that asked for it is still
    /// at the head of the buffer.
    Probe,
    /// A COPY dual-written with COPYs alone went upstream (`tee`): wait for its outcome on the response
    /// queue, hand it to [`RequestMachine::finish_tee`], then call `process` again.
    AwaitTee,
}

/// Where a deferred local reply goes once it is ready.
pub enum Pending {
    Simple,
    Parse { name: Vec<u8>, param_types: Vec<u32> },
}

/// What the proxy knows about a prepared statement or portal it does not simply pass through.
#[derive(Clone)]
enum Prepared {
    Rewritten(Arc<ResponseTransform>),
    Local(Arc<LocalStatement>),
}

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

/// The request-side state of one session.
pub struct RequestMachine {
    max_message_size: usize,
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
    /// Expectations of the requests handled so far, not yet on the response queue.
    expects: Vec<Expect>,
    /// `expects` holds a local answer: the upstream direction must be woken once they are queued.
    local_queued: bool,
    /// A COPY being dual-written with COPYs alone.
    tee: Option<tee::Tee>,
    /// Bytes of COPY data a tee keeps at most (0: no tee).
    tee_limit: usize,
    /// What all sessions' tees may keep together (`None`: no bound over them).
    tee_budget: Option<Arc<CopyBudget>>,
}

impl RequestMachine {
    /// A session's machine; frames longer than `max_message_size` are a protocol violation.
    pub fn new(max_message_size: usize) -> Self {
        RequestMachine {
            max_message_size,
            auth_answers: 0,
            statements: HashMap::new(),
            portals: HashMap::new(),
            discard_until_sync: false,
            unsynced: false,
            stream_left: 0,
            expects: Vec::with_capacity(8),
            local_queued: false,
            tee: None,
            tee_limit: 0,
            tee_budget: None,
        }
    }

    /// Lets a COPY FROM STDIN be dual-written with COPYs alone, keeping up to `limit` bytes of its data
    /// (past them, the staging path takes over).
    pub fn with_copy_tee_limit(mut self, limit: usize) -> Self {
        self.tee_limit = limit;
        self
    }

    /// Bounds what this session's tees keep together with every other session's of `budget` (past it,
    /// the staging path takes over).
    pub fn with_copy_budget(mut self, budget: Arc<CopyBudget>) -> Self {
        self.tee_budget = Some(budget);
        self
    }

    /// Authentication answers the client sent so far (while it owes one, a statement goes on at once).
    pub fn auth_answers(&self) -> u32 {
        self.auth_answers
    }

    /// Takes the expectations of the requests handled since the last call, in order, for the response
    /// queue (they must be on it before any of the requests is written upstream), and whether one of
    /// them is a local answer (the upstream direction must then be woken).
    pub fn take_expects(&mut self) -> (std::vec::Drain<'_, Expect>, bool) {
        let local = std::mem::take(&mut self.local_queued);
        (self.expects.drain(..), local)
    }

    /// A large frame is being forwarded as it arrives (the rest of it goes where its start went).
    pub fn is_streaming(&self) -> bool {
        self.stream_left > 0
    }

    /// The rest of an extended batch is being skipped after an error the proxy answered.
    pub fn is_skipping_to_sync(&self) -> bool {
        self.discard_until_sync
    }

    /// True when requests were handled whose expectations were not taken yet.
    pub fn has_expects(&self) -> bool {
        !self.expects.is_empty()
    }

    /// Handles every whole frame in `buf`, moving what goes upstream to `out` (in order).
    pub fn process<H: Host>(&mut self, host: &mut H, buf: &mut BytesMut, out: &mut Vec<Bytes>) -> Outcome {
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
            let header = match peek_header(&buf[run..], self.max_message_size) {
                Ok(Some(h)) => h,
                Ok(None) => break Outcome::NeedInput,
                Err(e) => break Outcome::Violation(frame_error(e)),
            };
            let ready = host.is_ready();
            // A statement pipelined behind the authentication waits for ReadyForQuery, so that the
            // interceptor (which starts there) judges it like any other instead of it slipping through
            // unjudged. While the upstream still waits for an authentication answer it goes on at once:
            // the upstream refuses it.
            if !ready
                && !matches!(header.tag, tag::PASSWORD | tag::TERMINATE)
                && host.auth_requests() <= self.auth_answers
            {
                break Outcome::AwaitStartup;
            }
            let total = header.total_len();
            let available = buf.len() - run;
            match self.on_tee_frame(host, header.tag, total, buf, &mut run, out) {
                None => {}
                Some(ControlFlow::Continue(())) => continue,
                Some(ControlFlow::Break(outcome)) => break outcome,
            }
            if !ready && header.tag == tag::PASSWORD && available >= total {
                self.auth_answers += 1;
            }
            if available < total {
                // A large frame that passes unchanged is forwarded as it arrives instead of buffered whole.
                if total > STREAM_THRESHOLD
                    && header.tag != tag::TERMINATE
                    && !self.discard_until_sync
                    && !self.needs_body(host, header.tag)
                {
                    if let Step::Forward = self.on_tag(host, header.tag) {
                        run += available;
                        self.stream_left = total - available;
                    }
                }
                break Outcome::NeedInput;
            }
            let step = if self.discard_until_sync || !self.needs_body(host, header.tag) {
                self.on_tag(host, header.tag)
            } else {
                self.on_frame(host, &buf[run..run + total])
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
                    flush_run(buf, &mut run, out);
                    let at_sync = !self.unsynced;
                    out.push(messages::probe(&sql, at_sync));
                    self.expect(Expect::Probe { at_sync });
                    break Outcome::Probe;
                }
                Step::Terminate => {
                    if host.pooled() {
                        // The server connection is the pool's, not the client's to end.
                        flush_run(buf, &mut run, out);
                        buf.advance(total);
                    } else {
                        run += total;
                    }
                    break Outcome::Terminate;
                }
                Step::Violation(e) => break Outcome::Violation(e),
                Step::Drop | Step::Replace(_) | Step::Defer(..) => {
                    flush_run(buf, &mut run, out);
                    buf.advance(total);
                    match step {
                        Step::Replace(bytes) => out.push(bytes),
                        Step::Defer(reply, pending) => break Outcome::Defer(reply, pending),
                        _ => {}
                    }
                }
            }
        };
        flush_run(buf, &mut run, out);
        outcome
    }

    /// Records what a request expects; the shell moves them to the response queue ([`Self::take_expects`])
    /// before anything of them is written upstream.
    fn expect(&mut self, expect: Expect) {
        self.expects.push(expect);
    }

    fn answer(&mut self, bytes: Bytes, ready_for_query: bool, extended: bool) {
        self.expect(Expect::Local(LocalAnswer { bytes, ready_for_query, extended }));
        self.local_queued = true;
    }

    fn needs_body<H: Host>(&mut self, host: &mut H, tag: u8) -> bool {
        match tag {
            tag::DESCRIBE => true,
            tag::QUERY => host.intercepting() || host.pooled(),
            tag::PARSE => host.intercepting() || host.pooled() || !self.statements.is_empty(),
            tag::BIND | tag::CLOSE if host.pooled() => true,
            // An active interceptor follows which portal runs which statement (session-state mirroring).
            tag::BIND | tag::EXECUTE | tag::CLOSE => {
                host.intercepting() || !self.statements.is_empty() || !self.portals.is_empty()
            }
            _ => false,
        }
    }

    /// A frame whose body the relay cannot read (a lying count, a missing terminator): forwarded as sent, so
    /// Postgres refuses it with its own error (08P01, as ERROR or FATAL as it decides) and nothing runs.
    /// Statements and portals stay as they were, as they do in Postgres.
    fn unreadable<H: Host>(&mut self, host: &mut H, t: u8) -> Step {
        if t == tag::DESCRIBE && !self.discard_until_sync {
            self.expect(Expect::Describe { statement: false, transform: None });
            return Step::Forward;
        }
        self.on_tag(host, t)
    }

    /// Frames decided by their tag alone.
    fn on_tag<H: Host>(&mut self, host: &mut H, t: u8) -> Step {
        if self.discard_until_sync {
            return match t {
                tag::SYNC => {
                    self.discard_until_sync = false;
                    return self.on_tag(host, tag::SYNC);
                }
                tag::TERMINATE => Step::Terminate,
                _ => Step::Drop,
            };
        }
        match t {
            tag::QUERY => {
                host.count_query(Route::Passthrough);
                self.expect(Expect::SimpleQuery { transforms: None, started: Instant::now() });
            }
            tag::PARSE => self.expect(Expect::Parse),
            tag::BIND => self.expect(Expect::Bind),
            tag::EXECUTE => {
                host.count_query(Route::Passthrough);
                self.expect(Expect::Execute { transform: None });
            }
            tag::CLOSE => self.expect(Expect::Close),
            tag::SYNC => {
                if let Some(interceptor) = host.interceptor() {
                    interceptor.on_sync();
                }
                if host.answers_sync() {
                    self.answer(Bytes::new(), true, false);
                    return Step::Drop;
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
    fn on_frame<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        match frame[0] {
            tag::QUERY => self.on_query(host, messages::body(frame)),
            tag::PARSE => self.on_parse(host, frame),
            tag::BIND => self.on_bind(host, frame),
            tag::DESCRIBE => self.on_describe(host, frame),
            tag::EXECUTE => self.on_execute(host, frame),
            tag::CLOSE => self.on_close(host, frame),
            other => self.on_tag(host, other),
        }
    }

    fn on_query<H: Host>(&mut self, host: &mut H, b: &[u8]) -> Step {
        let Some(sql) = messages::query_sql(b) else { return self.unreadable(host, tag::QUERY) };
        match self.verdict(host, sql, SqlOrigin::SimpleQuery, &[], true) {
            Verdict::Forward if host.deallocates_locally(sql) => {
                host.count_query(Route::Passthrough);
                self.answer(messages::command_complete("DEALLOCATE"), true, false);
                Step::Drop
            }
            Verdict::Forward => {
                host.upstream_sql(sql);
                self.on_tag(host, tag::QUERY)
            }
            Verdict::Raise(raise) => {
                count_raise(host, &raise);
                self.expect(Expect::SimpleQuery { transforms: None, started: Instant::now() });
                Step::Replace(messages::query(&raise.sql))
            }
            Verdict::Rewrite(mut rewrite) if rewrite.tee.is_some() && self.tee_limit > 0 && !host.pooled() => {
                let in_block = match host.transaction_status() {
                    b'I' => false,
                    b'T' => true,
                    // A failed transaction: the staging path's first statement reports it, as Postgres would.
                    _ => {
                        rewrite.tee = None;
                        return self.on_query_rewrite(host, sql, rewrite);
                    }
                };
                let reservation = self.tee_budget.as_ref().map(|budget| budget.reservation());
                match tee::Tee::start(rewrite, in_block, self.tee_limit, reservation) {
                    Ok(started) => {
                        host.count_query(Route::Rewritten);
                        self.tee = Some(started.tee);
                        for expect in started.expects {
                            self.expect(expect);
                        }
                        self.local_queued = true;
                        Step::Replace(started.query)
                    }
                    Err(rewrite) => self.on_query_rewrite(host, sql, rewrite),
                }
            }
            Verdict::Rewrite(rewrite) => self.on_query_rewrite(host, sql, rewrite),
            Verdict::Respond(reply) => {
                self.answer_simple(host, reply);
                Step::Drop
            }
            Verdict::Defer(reply) => Step::Defer(reply, Pending::Simple),
            Verdict::Probe(sql) => Step::Probe(sql),
        }
    }

    fn on_query_rewrite<H: Host>(&mut self, host: &mut H, sql: &[u8], rewrite: Rewrite) -> Step {
        if !rewrite.control {
            host.upstream_sql(sql);
        }
        host.count_query(if rewrite.control { Route::Control } else { Route::Rewritten });
        let transforms = (!rewrite.statements.is_empty()).then(|| Arc::from(rewrite.statements));
        self.expect(Expect::SimpleQuery { transforms, started: Instant::now() });
        Step::Replace(messages::query(&rewrite.sql))
    }

    /// The interceptor's verdict on `sql`; `name_utf8` says whether the statement name (if any) is UTF-8.
    fn verdict<H: Host>(
        &mut self,
        host: &mut H,
        sql: &[u8],
        origin: SqlOrigin<'_>,
        param_types: &[u32],
        name_utf8: bool,
    ) -> Verdict {
        let transaction_status = host.transaction_status();
        let can_probe = self.can_probe();
        let Some(interceptor) = host.interceptor() else { return Verdict::Forward };
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

    /// A probe can run before the frame at hand: at a sync point it brings its own Sync, inside the client's
    /// open batch a Flush; only while the proxy drops the rest of a batch it answered with an error (the
    /// frame is dropped anyway) is there no point.
    fn can_probe(&self) -> bool {
        !self.discard_until_sync
    }

    /// Hands the reply of an [`Outcome::Defer`] back; its answer is then among the expectations.
    pub fn finish_deferred<H: Host>(&mut self, host: &mut H, pending: Pending, reply: LocalReply) {
        match pending {
            Pending::Simple => self.answer_simple(host, reply),
            Pending::Parse { name, param_types } => self.answer_parse(host, name, param_types, reply),
        }
    }

    fn answer_simple<H: Host>(&mut self, host: &mut H, reply: LocalReply) {
        count_local(host, &reply);
        self.answer(local::simple_query(&reply), true, false);
    }
}

fn flush_run(buf: &mut BytesMut, run: &mut usize, out: &mut Vec<Bytes>) {
    if *run > 0 {
        out.push(buf.split_to(*run).freeze());
        *run = 0;
    }
}

fn count_raise<H: Host>(host: &mut H, raise: &Raise) {
    host.count_query(if raise.control { Route::Control } else { Route::Rejected });
}

fn count_local<H: Host>(host: &mut H, reply: &LocalReply) {
    if let Some(err) = &reply.error {
        host.count_error(&err.code);
    }
    host.count_query(if reply.control { Route::Control } else { Route::Rejected });
}

/// What replaces a statement the proxy would have to rewrite or answer but cannot read as UTF-8: the
/// error Postgres gives for such bytes in a UTF-8 session, raised by the server in the client's place.
fn not_utf8() -> Raise {
    let err = SqlError::new("22021", "invalid byte sequence for encoding \"UTF8\"")
        .with_detail("dualwrite rewrites statements on migrated tables and answers control commands only in UTF-8");
    Raise { sql: err.raise_statement(), control: false }
}

fn frame_error(e: FrameError) -> SqlError {
    match e {
        FrameError::TooLarge { .. } => SqlError::fatal("54000", format!("{e}")),
        FrameError::InvalidLength { .. } => SqlError::fatal("08P01", format!("{e}")),
    }
}
