//! What the request machine asks of the session's interceptor (the hook through which every Query and
//! Parse SQL passes, so migrations, control commands and `SET/SHOW dualwrite.version` act on a session
//! without the relay knowing about them), and the verdicts it answers with. Pure data and a trait.
//!
//! For each SQL string the session interceptor returns a [`Verdict`]:
//! - [`Verdict::Forward`]: the original frame goes upstream untouched (byte for byte);
//! - [`Verdict::Rewrite`]: other SQL goes upstream, and [`ResponseTransform`]s make its responses look
//!   like the original statement's (command tag, no rows, NoData at Describe);
//! - [`Verdict::Respond`]: the proxy answers itself (rows, a command tag or an error), nothing is sent
//!   upstream; [`Verdict::Defer`] does the same with an answer computed asynchronously (a long control
//!   command), during which the session reads no further client messages;
//! - [`Verdict::Probe`]: before judging, the interceptor must learn something only the session's own
//!   server connection knows (how its `search_path` resolves a table name): the relay runs the probe query
//!   there, hidden from the client, hands the answer to [`SessionInterceptor::on_probe`] and asks again.
//!   Probes are only asked for where [`SqlRequest::can_probe`] says the relay can run one.
//!
//! In the extended protocol the verdict is given at Parse and applies to every Bind/Describe/Execute of
//! that statement; a local answer to a Parse is computed once, at Parse time. An error answered at Parse
//! makes the session skip the client's messages up to Sync, as Postgres does.

use std::future::Future;
use std::pin::Pin;

use crate::protocol::messages::SqlError;
use crate::protocol::responses::{ResponseTransform, SessionEvent};

/// Judges the SQL of one session, in the order the client sent it.
///
/// Besides `on_sql`, the relay reports what else the session does, for interceptors that mirror session
/// state (the `dualwrite.version` setting follows Postgres's transaction semantics): which portal runs
/// which statement, each Execute and Sync sent upstream, and the server's answers ([`SessionEvent`]s,
/// delivered in order before the next call that follows them). All have no-op defaults.
pub trait SessionInterceptor: Send {
    fn on_sql(&mut self, request: SqlRequest<'_>) -> Verdict;

    /// A Bind of `statement` into `portal` goes upstream; `bind` is the message's body (parameter values:
    /// `protocol::messages::bind_params`).
    fn on_bind(&mut self, _portal: &[u8], _statement: &[u8], _bind: &[u8]) {}

    /// A Close of prepared statement `statement` goes upstream (the interceptor may forget it).
    fn on_close_statement(&mut self, _statement: &[u8]) {}

    /// An Execute of `portal` goes upstream.
    fn on_execute(&mut self, _portal: &[u8]) {}

    /// A Sync goes upstream.
    fn on_sync(&mut self) {}

    /// Whether the interceptor answers this simple-Query SQL itself whatever the session's state (a control
    /// command): transaction pooling then lends the session no server connection for it.
    fn answers_itself(&mut self, _sql: &str) -> bool {
        false
    }

    /// Whether a Parse of this SQL would be judged `Verdict::Forward` now, with no probe (it names no
    /// migrated table and is no control command or session-version statement): transaction pooling may
    /// then answer it without a server connection. Must be exact or err on `false`.
    fn forwards_parse(&mut self, _sql: &str) -> bool {
        false
    }

    /// The server's answers since the last call.
    fn on_events(&mut self, _events: &[SessionEvent]) {}

    /// Called before a Bind or Describe of a prepared statement the interceptor once judged: `Some` asks the
    /// relay to prepare it again upstream, under the same name, with this SQL and transform (the route it
    /// was rewritten for has changed since).
    fn reprepare(&mut self, _statement: &[u8], _at: StatementUse) -> Option<Reprepare> {
        None
    }

    /// Called before [`reprepare`](Self::reprepare) where the relay could run a probe (see
    /// [`Verdict::Probe`]): `Some(query)` asks for it first; the relay then calls this again.
    fn probe_before_use(&mut self, _statement: &[u8]) -> Option<String> {
        None
    }

    /// The answer to the probe last asked for: its first row's text values, `None` if it failed (in an
    /// aborted transaction) or returned no row.
    fn on_probe(&mut self, _answer: Option<Vec<Option<String>>>) {}
}

/// Which use of a prepared statement asks for [`SessionInterceptor::reprepare`].
///
/// A refusal prepared in a statement's place (a `DO` block that raises) must wait for a Bind: a Describe
/// of it would tell the client the refusal's placeholder parameter types instead of the statement's own,
/// and drivers check their arguments against the described types, so they would fail on their own side
/// without the refusal's SQLSTATE. Describing the statement as it was prepared is what Postgres would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementUse {
    Describe,
    Bind,
}

/// A statement to prepare again upstream before it is used.
#[derive(Debug, Clone)]
pub struct Reprepare {
    pub sql: String,
    pub param_types: Vec<u32>,
    pub transform: ResponseTransform,
}

/// One SQL string to judge.
#[derive(Debug, Clone, Copy)]
pub struct SqlRequest<'a> {
    /// The SQL text. Invalid UTF-8 is replaced here, but a forwarded statement keeps its original bytes.
    pub sql: &'a str,
    pub origin: SqlOrigin<'a>,
    /// Parameter type OIDs a Parse declared (empty for a simple Query).
    pub param_types: &'a [u32],
    /// Transaction status at the last ReadyForQuery: `b'I'` idle, `b'T'` in a transaction, `b'E'` failed.
    pub transaction_status: u8,
    /// The relay can run a probe before this SQL ([`Verdict::Probe`]).
    pub can_probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlOrigin<'a> {
    /// A simple-protocol Query (may hold several statements).
    SimpleQuery,
    /// An extended-protocol Parse of this statement name (empty: the unnamed statement).
    Parse { statement: &'a str },
}

/// What to do with one SQL string.
pub enum Verdict {
    Forward,
    Rewrite(Rewrite),
    /// Refuse the statement by having the server raise `error`, so that Postgres itself aborts the
    /// transaction (or the implicit transaction of a pipelined batch) exactly as for any failing
    /// statement: a refused write inside a transaction must make a later COMMIT roll back.
    Raise(Raise),
    Respond(LocalReply),
    Defer(Pin<Box<dyn Future<Output = LocalReply> + Send>>),
    /// Run this query on the session's connection first (answer to `on_probe`), then judge the SQL again.
    Probe(String),
}

/// SQL to send instead, and how to present its results.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub sql: String,
    /// One per statement of `sql`, in order (a Parse has one); missing entries mean "unchanged".
    pub statements: Vec<ResponseTransform>,
    /// True for control-plane statements, so metrics count them as such.
    pub control: bool,
    /// A simple-Query COPY FROM STDIN that COPYs alone may dual-write: tried first, with `sql` (the
    /// staging path) as its fallback (`requests::tee`).
    pub tee: Option<TeeRewrite>,
}

/// The statements of a COPY dual-written with COPYs alone (`dualwrite_rules::CopyTee`): a check, the
/// client's COPY and the COPY into the other table, each with its transform (the check and the second COPY
/// fall back to the staging path on an error; the second COPY answers with the client COPY's count).
#[derive(Debug, Clone)]
pub struct TeeRewrite {
    pub sql: String,
    pub statements: Vec<ResponseTransform>,
    /// Columns of each row the client sends, for the CopyInResponse the proxy answers with.
    pub columns: usize,
}

/// A statement refused by having the server raise an error.
#[derive(Debug, Clone)]
pub struct Raise {
    /// A statement that fails with the error (see `SqlError::raise_statement`).
    pub sql: String,
    /// True for control-plane errors, so metrics count them as such (else `rejected`).
    pub control: bool,
}

/// An answer the proxy gives itself.
#[derive(Debug, Clone, Default)]
pub struct LocalReply {
    /// Result of each statement, in order.
    pub results: Vec<LocalResult>,
    /// An error after the results (for a Parse: instead of them).
    pub error: Option<SqlError>,
    /// True for control-plane statements (metrics route `control`, else `rejected` for errors).
    pub control: bool,
}

impl LocalReply {
    /// A result set of text columns.
    pub fn rows(columns: Vec<String>, rows: Vec<Vec<Option<String>>>, tag: impl Into<String>) -> Self {
        LocalReply { results: vec![LocalResult { columns, rows, tag: tag.into() }], error: None, control: true }
    }

    /// A command without rows (`SET`).
    pub fn command(tag: impl Into<String>) -> Self {
        Self::rows(Vec::new(), Vec::new(), tag)
    }

    pub fn error(error: SqlError) -> Self {
        LocalReply { results: Vec::new(), error: Some(error), control: false }
    }
}

/// One statement's result. No columns means no RowDescription (a command).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}
