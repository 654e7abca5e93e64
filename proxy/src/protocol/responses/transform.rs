//! The transforms that make a rewritten statement's responses look like the client's original statement's:
//! the command tag it would have completed with, its rows suppressed, NoData at Describe, and the answers
//! of statements the proxy added hidden.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::protocol::messages;

/// The command tag the client must see for a statement whose upstream tag differs (a rewritten
/// `UPDATE` runs upstream as `WITH ... SELECT` and completes as `SELECT n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandTag {
    /// `INSERT 0 n`
    Insert,
    /// `UPDATE n`
    Update,
    /// `DELETE n`
    Delete,
    /// `MERGE n`
    Merge,
    /// `SELECT n`
    Select,
    /// `COPY n`
    Copy,
    /// A fixed tag without a row count (`TRUNCATE TABLE`, `SET`).
    Fixed(String),
}

impl CommandTag {
    /// The client's tag, keeping the row count of the upstream tag (its last word).
    pub fn rewrite(&self, upstream_tag: &str) -> String {
        let rows = upstream_tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        self.with_rows(rows)
    }

    /// The client's tag for `rows` rows.
    pub fn with_rows(&self, rows: u64) -> String {
        match self {
            CommandTag::Insert => format!("INSERT 0 {rows}"),
            CommandTag::Update => format!("UPDATE {rows}"),
            CommandTag::Delete => format!("DELETE {rows}"),
            CommandTag::Merge => format!("MERGE {rows}"),
            CommandTag::Select => format!("SELECT {rows}"),
            CommandTag::Copy => format!("COPY {rows}"),
            CommandTag::Fixed(tag) => tag.clone(),
        }
    }
}

/// How the responses of one rewritten statement are changed on their way to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseTransform {
    /// Replace the command tag (row count kept).
    pub command_tag: Option<CommandTag>,
    /// The client's statement returns no rows: drop RowDescription and DataRows.
    pub suppress_rows: bool,
    /// Answer NoData where upstream answers a Describe with a RowDescription (implied by `suppress_rows`).
    pub describe_no_data: bool,
    /// A statement the proxy added to a simple Query (COPY FROM STDIN's staging): its whole answer,
    /// command tag included, is dropped and it is no statement of the client's (no session event).
    pub hidden: bool,
    /// The row count for `command_tag` is one counted before: from the statement's one row, whose one
    /// value it is (a COPY FROM STDIN's, read back after its dual-write block; the row is dropped), or from
    /// an earlier statement that `keeps_count`.
    pub count_from_row: bool,
    /// A hidden statement whose row count a later statement's tag takes (the client's COPY among the
    /// statements of a dual write made of COPYs: the client sees its count, once every COPY is done).
    pub keeps_count: bool,
    /// Drop the statement's CopyInResponse: the proxy answered the client's COPY with one already.
    pub copy_response_hidden: bool,
    /// An error of this statement is the proxy's, not the client's: it and the ReadyForQuery after it are
    /// dropped, and the request machine runs the statement's fallback instead (a COPY dual-written with
    /// COPYs falls back to staging, `protocol::requests::tee`).
    pub falls_back: bool,
    /// The statement dual-writes: the latency of the request it completes in (up to ReadyForQuery) is
    /// also recorded here.
    pub dual_write: Option<LatencySink>,
}

/// Somewhere a request's latency is recorded besides the session's own figures (a per-migration
/// histogram); opaque here, so the response machinery stays free of the metrics facade. Two sinks are
/// equal when they are the same sink.
#[derive(Clone)]
pub struct LatencySink(Arc<dyn Fn(Duration) + Send + Sync>);

impl LatencySink {
    pub fn new(record: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        LatencySink(Arc::new(record))
    }

    pub fn record(&self, latency: Duration) {
        (self.0)(latency)
    }
}

impl PartialEq for LatencySink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LatencySink {}

impl std::fmt::Debug for LatencySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatencySink")
    }
}

impl ResponseTransform {
    pub(super) fn no_data_at_describe(&self) -> bool {
        self.describe_no_data || self.suppress_rows
    }
}

/// Rewrites a whole CommandComplete frame to the client's tag. Returns `None` if the frame does not decode.
pub fn rewrite_command_complete(frame: &[u8], tag: &CommandTag) -> Option<Bytes> {
    let upstream = messages::decode_command_tag(frame)?;
    Some(messages::command_complete(&tag.rewrite(&upstream)))
}
