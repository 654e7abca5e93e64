//! A COPY FROM STDIN dual-written with COPYs alone (`dualwrite_rules::CopyTee`): the request side.
//!
//! The proxy answers the client's COPY with a CopyInResponse of its own and keeps the CopyData the client
//! sends instead of relaying it. At CopyDone it sends the tee's statements (a catalog check, the client's
//! COPY, the COPY into the other table) with the rows twice, each time followed by CopyDone; in a
//! transaction block they run behind a savepoint of their own. Nothing went upstream before, so a client
//! that gives up (CopyFail, any other message) or rows past the size limit simply get the staging path
//! instead: its statements go up with the rows kept so far, and the rest of the COPY follows as the relay
//! forwards it. After the tee was sent, the session waits for its outcome (`Outcome::AwaitTee`): where the
//! check or the second COPY failed (the response side dropped that error and its ReadyForQuery,
//! `ResponseTransform::falls_back`), the attempt is undone (the savepoint rolled back; outside a block
//! the failed statement list rolled back by itself) and the staging path runs with the rows kept.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::verdict::{Rewrite, TeeRewrite};
use crate::protocol::messages;
use crate::protocol::responses::{Expect, ResponseTransform};

/// The savepoint the tee's statements run behind inside the client's transaction block.
const SAVEPOINT: &str = "__dw_tee";

/// One COPY being dual-written with COPYs alone.
pub(super) struct Tee {
    tee: TeeRewrite,
    /// The staging path: its SQL and transforms, its COPY's CopyInResponse hidden (the client has one).
    staging_sql: String,
    staging: Vec<ResponseTransform>,
    /// The client is in a transaction block: the tee runs behind [`SAVEPOINT`].
    in_block: bool,
    /// The CopyData frames kept, whole.
    rows: BytesMut,
    /// Past this many bytes kept, the staging path takes over.
    limit: usize,
    /// The rows sent with the tee, kept for its fallback.
    sent: Option<Bytes>,
}

impl Tee {
    /// The tee of `rewrite`, whose own SQL is the staging path, for a client in a transaction block or
    /// not; and the CopyInResponse that answers the client's COPY. `Err`: `rewrite` has no tee.
    pub fn start(mut rewrite: Rewrite, in_block: bool, limit: usize) -> Result<(Tee, Bytes), Rewrite> {
        let Some(tee) = rewrite.tee.take() else { return Err(rewrite) };
        let answer = messages::copy_in_response(tee.columns);
        let staging = rewrite.statements.into_iter().map(|t| ResponseTransform { copy_response_hidden: true, ..t });
        let tee = Tee {
            tee,
            staging_sql: rewrite.sql,
            staging: staging.collect(),
            in_block,
            rows: BytesMut::new(),
            limit,
            sent: None,
        };
        Ok((tee, answer))
    }

    /// True until the client's CopyDone was handled: its CopyData is kept, not relayed.
    pub fn collecting(&self) -> bool {
        self.sent.is_none()
    }

    /// Whether keeping `more` bytes would pass the limit.
    pub fn would_exceed(&self, more: usize) -> bool {
        self.rows.len() + more > self.limit
    }

    /// Keeps one whole CopyData frame.
    pub fn keep(&mut self, frame: &[u8]) {
        self.rows.extend_from_slice(frame);
    }

    /// At the client's CopyDone: the frames that run the tee, and what they expect back.
    pub fn send(&mut self) -> (Vec<Bytes>, Expect) {
        let rows = std::mem::take(&mut self.rows).freeze();
        self.sent = Some(rows.clone());
        let mut statements = self.tee.statements.clone();
        let sql = if self.in_block {
            statements.insert(0, hidden());
            statements.push(hidden());
            format!("SAVEPOINT {SAVEPOINT}; {}; RELEASE SAVEPOINT {SAVEPOINT}", self.tee.sql)
        } else {
            self.tee.sql.clone()
        };
        let frames = vec![messages::query(&sql), rows.clone(), messages::copy_done(), rows, messages::copy_done()];
        (frames, simple_query(statements))
    }

    /// The staging path instead, before anything of the tee went upstream: its statements and the rows
    /// kept so far (the rest of the client's COPY follows as it comes).
    pub fn staging_now(self) -> (Vec<Bytes>, Expect) {
        let frames = vec![messages::query(&self.staging_sql), self.rows.freeze()];
        (frames, simple_query(self.staging))
    }

    /// The staging path after the tee failed: the attempt undone, then the staging statements with every
    /// row and the CopyDone.
    pub fn fall_back(self) -> (Vec<Bytes>, Expect) {
        let rows = self.sent.unwrap_or_default();
        let mut statements = self.staging;
        let sql = if self.in_block {
            statements.splice(0..0, [hidden(), hidden()]);
            format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}; {}", self.staging_sql)
        } else {
            self.staging_sql
        };
        (vec![messages::query(&sql), rows, messages::copy_done()], simple_query(statements))
    }
}

fn hidden() -> ResponseTransform {
    ResponseTransform { hidden: true, ..ResponseTransform::default() }
}

fn simple_query(statements: Vec<ResponseTransform>) -> Expect {
    Expect::SimpleQuery { transforms: Some(Arc::from(statements)), started: Instant::now() }
}
