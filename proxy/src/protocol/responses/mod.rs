//! The pure response machinery: a queue of the responses each pipelined request still expects, and the
//! transforms that make a rewritten statement's responses look like the client's original statement's
//! (command tag, row suppression, NoData at Describe). No I/O: the relay pushes one [`Expect`] per request
//! it forwards (or answers itself), asks [`ResponseQueue::on_message`] what to do with each backend message
//! by its tag, and emits synthesized answers ([`ResponseQueue::take_local`]) once every response before
//! them has been relayed, so the client sees answers in request order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::messages::btag;

mod probe;
mod transform;

#[cfg(test)]
mod tests;

pub use self::transform::{rewrite_command_complete, CommandTag, LatencySink, ResponseTransform};

/// What one request forwarded upstream (or answered locally) still expects.
#[derive(Debug, Clone)]
pub enum Expect {
    /// A simple Query: results until ReadyForQuery. `transforms[i]` applies to the i-th statement's result
    /// (each statement ends with CommandComplete or EmptyQueryResponse); absent ones pass unchanged.
    SimpleQuery {
        transforms: Option<Arc<[ResponseTransform]>>,
        started: Instant,
    },
    /// A FunctionCall: FunctionCallResponse (or an error), then ReadyForQuery.
    FunctionCall {
        started: Instant,
    },
    Parse,
    Bind,
    Close,
    /// Describe of a statement (ParameterDescription, then RowDescription or NoData) or of a portal.
    Describe {
        statement: bool,
        transform: Option<Arc<ResponseTransform>>,
    },
    /// Execute: DataRows, then CommandComplete / EmptyQueryResponse / PortalSuspended (or COPY traffic).
    Execute {
        transform: Option<Arc<ResponseTransform>>,
    },
    Sync {
        started: Instant,
    },
    /// A Parse, Bind or Close the proxy injected itself (re-preparing a statement, or the setup of a
    /// refusal): its success answer is not relayed; an error is, and skips the batch like any error.
    Hidden,
    /// Transaction pooling: a Parse of a named statement under the server's name (`pool::statements`),
    /// answered like [`Expect::Parse`], or like [`Expect::Hidden`] when the proxy prepares it itself. The
    /// pooler records such a statement on the connection when it sends it; when the server fails or skips
    /// the Parse, the statement is not there, which the pooler learns from
    /// [`ResponseQueue::take_failed_prepares`].
    Prepare(PrepareTicket),
    /// An answer the proxy made itself, emitted once it reaches the head of the queue.
    Local(LocalAnswer),
    /// The simple Query before it was abandoned by the proxy (a COPY dual-written with COPYs alone, ended
    /// by a CopyFail of the proxy's once it passed the size limit): whatever error it answers and its
    /// ReadyForQuery are dropped, and nothing waits for its outcome (`requests::tee`).
    Abandoned,
    /// A probe the proxy sent on the session's connection to learn something of the session (how its
    /// `search_path` resolves a name; frames: `messages::probe`): its first row is kept for
    /// [`ResponseQueue::take_probe_answer`] and nothing of its answer reaches the client or the session
    /// events, except an error inside the client's open batch (`at_sync` false), which the client sees as
    /// its batch's error, since the server then skips the rest of the batch.
    Probe {
        at_sync: bool,
    },
}

/// A pooled Parse the pooler must forget if the server did not prepare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareTicket {
    /// The statement's name on the server connection.
    pub server_name: Arc<str>,
    /// The client's name for it, when the Parse is the client's own (the name is free again if it fails,
    /// as in Postgres).
    pub client_name: Option<Bytes>,
    /// The proxy sent it to prepare a statement before its use: its ParseComplete is not relayed.
    pub hidden: bool,
}

/// Bytes synthesized by the proxy for one request.
#[derive(Debug, Clone)]
pub struct LocalAnswer {
    pub bytes: Bytes,
    /// Follow the bytes with a ReadyForQuery carrying the session's transaction status at that moment
    /// (a simple Query answered locally).
    pub ready_for_query: bool,
    /// Part of an extended-protocol batch: the server's error-skipping up to Sync applies to it.
    pub extended: bool,
}

/// Requests of an extended batch that the server skips after an error in it.
fn is_skippable(expect: &Expect) -> bool {
    matches!(
        expect,
        Expect::Parse
            | Expect::Bind
            | Expect::Close
            | Expect::Hidden
            | Expect::Prepare(_)
            | Expect::Describe { .. }
            | Expect::Execute { .. }
            | Expect::Probe { at_sync: false }
            | Expect::Local(LocalAnswer { extended: true, .. })
    )
}

/// What the relay does with one backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Relay it unchanged.
    Forward,
    /// Relay it unchanged; it completed a request that started at `started` (ReadyForQuery), which
    /// dual-wrote if `dual_write` is set (the sink of its last dual-writing statement).
    Ready { started: Option<Instant>, dual_write: Option<LatencySink> },
    /// Do not relay it.
    Drop,
    /// Replace the CommandComplete by one with this tag (see [`rewrite_command_complete`]).
    RewriteTag(CommandTag),
    /// Replace the CommandComplete by this tag with this row count (read from the statement's row).
    TagWithRows(CommandTag, u64),
    /// The DataRow holding a statement's row count ([`ResponseTransform::count_from_row`]): not relayed;
    /// the relay hands its values to [`ResponseQueue::count_row`].
    CountRow,
    /// Replace the RowDescription by NoData.
    NoDataInstead,
    /// A DataRow of a probe: not relayed; the relay hands its values to [`ResponseQueue::probe_row`].
    ProbeRow,
    /// The CommandComplete of a hidden statement that keeps its row count for a later tag: not relayed;
    /// the relay hands its tag to [`ResponseQueue::keep_count`].
    KeepCount,
    /// An ErrorResponse of a statement that falls back: not relayed, unless the server ends the session
    /// with it (FATAL, PANIC), which the client must see as it would.
    FallingBack,
}

/// How a request that may fall back ended ([`ResponseTransform::falls_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackOutcome {
    /// It ran to its end (or failed with the client's own error, which the client got): nothing to do.
    Done,
    /// A statement that falls back failed: its error and the ReadyForQuery were dropped, and the fallback
    /// must run now.
    FallBack,
}

/// What a probe found: its first row's text values, or `None` when it failed (an aborted transaction) or
/// returned no row.
pub type ProbeAnswer = Option<Vec<Option<String>>>;

/// What the server answered, as far as session state is concerned (see [`ResponseQueue::record_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A statement finished (CommandComplete, EmptyQueryResponse or PortalSuspended).
    Completed,
    /// ErrorResponse: the rest of the batch is skipped.
    Failed,
    /// ReadyForQuery with this transaction status.
    Ready(u8),
}

/// The queue of expected responses of one session.
#[derive(Debug, Default)]
pub struct ResponseQueue {
    entries: VecDeque<Expect>,
    /// Session events since the last `take_events`, when recording is on.
    events: Option<Vec<SessionEvent>>,
    /// Index of the current statement inside the head SimpleQuery.
    statement: usize,
    /// The server reported an error in an extended-protocol batch and skips everything up to Sync.
    skipping_to_sync: bool,
    /// `Expect::Local` entries in `entries`: the relay looks for due local answers before every backend
    /// message, and almost never has one.
    locals: usize,
    /// `Expect::Probe` entries in `entries`: every backend message checks for one at the head only when
    /// there is one at all (almost never).
    probes: usize,
    /// The current request dual-wrote: where its latency also goes at ReadyForQuery.
    dual_write: Option<LatencySink>,
    /// The head probe's first row so far, whether it failed, and the CloseCompletes it received.
    probe_row: Option<Vec<Option<String>>>,
    probe_failed: bool,
    probe_closes: u8,
    /// The answer of the last probe, until the client direction takes it.
    probe_answer: Option<ProbeAnswer>,
    /// The row count read from the head statement's row ([`Action::CountRow`]), for its CommandComplete.
    counted: Option<u64>,
    /// Pooled Parses the server failed or skipped, until the pooler takes them.
    failed_prepares: Vec<PrepareTicket>,
    /// A statement that falls back failed in the head simple Query.
    falling_back: bool,
    /// How the last request that may fall back ended, until the client direction takes it.
    fallback: Option<FallbackOutcome>,
}

impl ResponseQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, expect: Expect) {
        match expect {
            Expect::Local(_) => self.locals += 1,
            // The batch it joins already failed: the server skips it and will not answer.
            Expect::Probe { at_sync: false } if self.skipping_to_sync => {
                self.probe_answer = Some(None);
                return;
            }
            Expect::Probe { .. } => self.probes += 1,
            _ => {}
        }
        self.entries.push_back(expect);
    }

    /// Removes the head entry, keeping the count of local answers; a probe removed unanswered (skipped by
    /// the server after an error) answers `None`; a pooled Parse removed unanswered (its error, or skipped
    /// after an earlier one) is a failed prepare. (A pooled Parse that succeeded leaves by
    /// [`prepared`](Self::prepared).)
    fn pop_front(&mut self) -> Option<Expect> {
        let entry = self.entries.pop_front();
        match &entry {
            Some(Expect::Local(_)) => self.locals -= 1,
            Some(Expect::Probe { .. }) => {
                self.probes -= 1;
                self.finish_probe();
            }
            Some(Expect::Prepare(ticket)) => self.failed_prepares.push(ticket.clone()),
            _ => {}
        }
        entry
    }

    /// The head pooled Parse got its ParseComplete.
    fn prepared(&mut self, hidden: bool) -> Action {
        self.entries.pop_front();
        self.statement = 0;
        if hidden {
            Action::Drop
        } else {
            Action::Forward
        }
    }

    /// True if a pooled Parse failed since the last [`take_failed_prepares`](Self::take_failed_prepares).
    pub fn has_failed_prepares(&self) -> bool {
        !self.failed_prepares.is_empty()
    }

    /// The pooled Parses the server failed or skipped since the last call.
    pub fn take_failed_prepares(&mut self) -> Vec<PrepareTicket> {
        std::mem::take(&mut self.failed_prepares)
    }

    /// Whether a local answer is queued (none, for almost every response: the relay asks before each
    /// message, so this stays one comparison).
    #[inline]
    pub fn has_locals(&self) -> bool {
        self.locals != 0
    }

    /// True if any session event waits for [`take_events`](Self::take_events).
    pub fn has_events(&self) -> bool {
        self.events.as_ref().is_some_and(|e| !e.is_empty())
    }

    /// From now on, remember [`SessionEvent`]s for [`take_events`](Self::take_events).
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call (empty unless recording).
    pub fn take_events(&mut self, into: &mut Vec<SessionEvent>) {
        if let Some(events) = &mut self.events {
            into.append(events);
        }
    }

    /// The transaction status of the ReadyForQuery just handled by [`on_message`](Self::on_message).
    pub fn ready_status(&mut self, status: u8) {
        self.event(SessionEvent::Ready(status));
    }

    fn event(&mut self, event: SessionEvent) {
        if let Some(events) = &mut self.events {
            events.push(event);
        }
    }

    /// True while any request still waits for a response.
    pub fn is_busy(&self) -> bool {
        !self.entries.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next local answer that is due (every response before it has been relayed).
    pub fn take_local(&mut self) -> Option<LocalAnswer> {
        // Without a local answer queued there is nothing to find: the entries the server skips after an
        // error are popped at ReadyForQuery anyway.
        if self.locals == 0 {
            return None;
        }
        loop {
            match self.entries.front() {
                Some(Expect::Local(local)) => {
                    let skip = self.skipping_to_sync && local.extended;
                    let Some(Expect::Local(local)) = self.pop_front() else { unreachable!() };
                    if skip {
                        continue;
                    }
                    return Some(local);
                }
                // Requests the server skips after an error answer nothing: drop them so that a local
                // answer behind them is not held back.
                Some(
                    Expect::Parse
                    | Expect::Bind
                    | Expect::Close
                    | Expect::Hidden
                    | Expect::Prepare(_)
                    | Expect::Describe { .. }
                    | Expect::Execute { .. }
                    | Expect::Probe { at_sync: false },
                ) if self.skipping_to_sync => {
                    self.pop_front();
                }
                _ => return None,
            }
        }
    }

    fn pop(&mut self) {
        self.pop_front();
        self.statement = 0;
    }

    fn head_transform(&self) -> Option<&ResponseTransform> {
        match self.entries.front()? {
            Expect::SimpleQuery { transforms: Some(t), .. } => t.get(self.statement),
            Expect::Execute { transform: Some(t) } | Expect::Describe { transform: Some(t), .. } => Some(t),
            _ => None,
        }
    }

    /// The tag of a CommandComplete that [`on_message`](Self::on_message) answered with
    /// [`Action::KeepCount`].
    pub fn keep_count(&mut self, tag: Option<String>) {
        self.counted = tag.and_then(|t| t.rsplit(' ').next().and_then(|n| n.parse().ok()));
    }

    /// True once a request that may fall back has ended (the relay then wakes the client direction).
    pub fn has_fallback_outcome(&self) -> bool {
        self.fallback.is_some()
    }

    /// How the last request that may fall back ended, once it has.
    pub fn take_fallback_outcome(&mut self) -> Option<FallbackOutcome> {
        self.fallback.take()
    }

    /// The values of a DataRow that [`on_message`](Self::on_message) answered with [`Action::CountRow`].
    pub fn count_row(&mut self, values: Option<Vec<Option<String>>>) {
        self.counted = values.and_then(|v| v.into_iter().next().flatten()).and_then(|n| n.trim().parse().ok());
    }

    /// Decides what to do with one backend message, by its tag, and advances the queue.
    pub fn on_message(&mut self, tag: u8) -> Action {
        match tag {
            // Asynchronous messages can arrive at any time and answer no request.
            btag::NOTICE_RESPONSE | btag::NOTIFICATION_RESPONSE | btag::PARAMETER_STATUS => Action::Forward,
            _ if self.probes > 0 && matches!(self.entries.front(), Some(Expect::Probe { .. })) => {
                let Some(&Expect::Probe { at_sync }) = self.entries.front() else { unreachable!() };
                self.on_probe_message(tag, at_sync)
            }
            btag::READY_FOR_QUERY => self.on_ready(),
            btag::ERROR_RESPONSE
                if self.head_transform().is_some_and(|t| t.falls_back)
                    || matches!(self.entries.get(1), Some(Expect::Abandoned)) =>
            {
                // The proxy's own attempt failed: the fallback answers the client instead.
                self.falling_back = true;
                Action::FallingBack
            }
            btag::ERROR_RESPONSE => {
                self.event(SessionEvent::Failed);
                // In an extended batch the server skips everything up to Sync; inside a simple Query the
                // error ends the statement list and ReadyForQuery follows, so the entry stays.
                if matches!(
                    self.entries.front(),
                    Some(
                        Expect::Parse
                            | Expect::Bind
                            | Expect::Close
                            | Expect::Hidden
                            | Expect::Prepare(_)
                            | Expect::Describe { .. }
                            | Expect::Execute { .. }
                    )
                ) {
                    self.pop();
                    self.skipping_to_sync = true;
                    self.skip_batch_probes();
                }
                Action::Forward
            }
            _ => {
                if matches!(tag, btag::COMMAND_COMPLETE | btag::EMPTY_QUERY_RESPONSE | btag::PORTAL_SUSPENDED)
                    && !self.head_transform().is_some_and(|t| t.hidden)
                {
                    self.event(SessionEvent::Completed);
                }
                self.on_result_message(tag)
            }
        }
    }

    fn on_ready(&mut self) -> Action {
        self.skipping_to_sync = false;
        // Pop through the first request that ends with ReadyForQuery; anything before it was skipped by the
        // server (after an error) or never answered.
        while let Some(entry) = self.pop_front() {
            match entry {
                Expect::SimpleQuery { transforms: Some(transforms), started }
                    if transforms.iter().any(|t| t.falls_back) =>
                {
                    self.statement = 0;
                    self.counted = None;
                    if matches!(self.entries.front(), Some(Expect::Abandoned)) {
                        // The staging path that took over answers the client.
                        self.entries.pop_front();
                        self.falling_back = false;
                        self.dual_write = None;
                        return Action::Drop;
                    }
                    if std::mem::take(&mut self.falling_back) {
                        // Not the client's ReadyForQuery: the fallback's answer ends the request.
                        self.dual_write = None;
                        self.fallback = Some(FallbackOutcome::FallBack);
                        return Action::Drop;
                    }
                    self.fallback = Some(FallbackOutcome::Done);
                    return Action::Ready { started: Some(started), dual_write: self.dual_write.take() };
                }
                Expect::SimpleQuery { started, .. } | Expect::Sync { started } | Expect::FunctionCall { started } => {
                    self.statement = 0;
                    return Action::Ready { started: Some(started), dual_write: self.dual_write.take() };
                }
                Expect::Local(local) if local.ready_for_query => {
                    // Cannot happen while locals are taken before each message; keep it for the next turn.
                    self.locals += 1;
                    self.entries.push_front(Expect::Local(local));
                    break;
                }
                _ => {}
            }
        }
        self.statement = 0;
        self.dual_write = None;
        Action::Ready { started: None, dual_write: None }
    }

    fn on_result_message(&mut self, tag: u8) -> Action {
        // One lookup of the head statement's transform per message (the relay's hot path).
        let (suppress, hidden, counting, keeping, copy_hidden) = self
            .head_transform()
            .map(|t| (t.suppress_rows, t.hidden, t.count_from_row, t.keeps_count, t.copy_response_hidden))
            .unwrap_or_default();
        let Some(head) = self.entries.front() else { return Action::Forward };
        match head {
            Expect::SimpleQuery { .. } => match tag {
                btag::DATA_ROW if counting => Action::CountRow,
                btag::COPY_IN_RESPONSE if copy_hidden => Action::Drop,
                btag::COMMAND_COMPLETE if hidden && keeping => {
                    self.note_dual_write();
                    self.statement += 1;
                    Action::KeepCount
                }
                btag::ROW_DESCRIPTION | btag::DATA_ROW if suppress || hidden => Action::Drop,
                btag::COMMAND_COMPLETE | btag::EMPTY_QUERY_RESPONSE if hidden => {
                    // A hidden statement that dual-writes still makes the request's latency a dual write's.
                    self.note_dual_write();
                    self.statement += 1;
                    Action::Drop
                }
                btag::COMMAND_COMPLETE => {
                    let action = self.tag_action();
                    self.statement += 1;
                    action
                }
                btag::EMPTY_QUERY_RESPONSE => {
                    self.statement += 1;
                    Action::Forward
                }
                _ => Action::Forward,
            },
            Expect::Parse if tag == btag::PARSE_COMPLETE => self.pop_forward(),
            Expect::Prepare(ticket) if tag == btag::PARSE_COMPLETE => {
                let hidden = ticket.hidden;
                self.prepared(hidden)
            }
            Expect::Bind if tag == btag::BIND_COMPLETE => self.pop_forward(),
            Expect::Close if tag == btag::CLOSE_COMPLETE => self.pop_forward(),
            Expect::Hidden if matches!(tag, btag::PARSE_COMPLETE | btag::BIND_COMPLETE | btag::CLOSE_COMPLETE) => {
                self.pop();
                Action::Drop
            }
            Expect::Describe { statement, transform } => match tag {
                btag::PARAMETER_DESCRIPTION if *statement => Action::Forward,
                btag::ROW_DESCRIPTION => {
                    let no_data = transform.as_ref().is_some_and(|t| t.no_data_at_describe());
                    self.pop();
                    if no_data {
                        Action::NoDataInstead
                    } else {
                        Action::Forward
                    }
                }
                btag::NO_DATA => self.pop_forward(),
                _ => Action::Forward,
            },
            Expect::Execute { .. } => match tag {
                btag::DATA_ROW if suppress => Action::Drop,
                btag::COMMAND_COMPLETE => {
                    let action = self.tag_action();
                    self.pop();
                    action
                }
                btag::EMPTY_QUERY_RESPONSE | btag::PORTAL_SUSPENDED => self.pop_forward(),
                _ => Action::Forward,
            },
            // FunctionCallResponse, COPY traffic, and anything unexpected are relayed as they are.
            _ => Action::Forward,
        }
    }

    /// The action for a CommandComplete of the head statement; notes a dual write for the request's latency.
    fn tag_action(&mut self) -> Action {
        self.note_dual_write();
        let counted = self.counted.take();
        match self.head_transform().map(|t| (t.command_tag.clone(), t.count_from_row)) {
            // A count the row did not carry (it cannot fail to: the proxy's own query of a bigint) reads 0.
            Some((Some(tag), true)) => Action::TagWithRows(tag, counted.unwrap_or(0)),
            Some((Some(tag), false)) => Action::RewriteTag(tag),
            _ => Action::Forward,
        }
    }

    /// The head statement completed: if it dual-writes, its sink records the request's latency.
    fn note_dual_write(&mut self) {
        if let Some(sink) = self.head_transform().and_then(|t| t.dual_write.clone()) {
            self.dual_write = Some(sink);
        }
    }

    fn pop_forward(&mut self) -> Action {
        self.pop();
        Action::Forward
    }
}
