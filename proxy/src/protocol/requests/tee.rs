//! A COPY FROM STDIN dual-written with COPYs alone (`dualwrite_rules::CopyTee`): the request side.
//!
//! At the client's Query the proxy sends the tee's statements (a catalog check, the client's COPY, the COPY
//! into the other table; in a transaction block behind a savepoint of their own) and answers the client's
//! COPY with a CopyInResponse of its own, queued before them, so the client starts sending at once. The
//! client's CopyData is relayed into the client's COPY as it comes, and a copy is kept. At the client's
//! CopyDone the proxy relays it, then sends the kept rows again, with a CopyDone, for the second COPY, and
//! the session waits for the outcome (`Outcome::AwaitTee`). Where the check or the second COPY failed (the
//! response side dropped that error and its ReadyForQuery, `ResponseTransform::falls_back`; a server whose
//! check failed ignored the CopyData and CopyDone that followed, as the protocol has it), the attempt is
//! undone (the savepoint rolled back; outside a block the failed statement list rolled back by itself) and
//! the staging path runs with the kept rows, ended as the client ended its COPY (CopyDone, or its CopyFail,
//! so that the server reports that as it would). Rows past the size limit abandon the tee at once: a CopyFail
//! of the proxy's ends its COPY (the response side drops what that answers, `Expect::Abandoned`), and the
//! staging path takes over with the rows kept, the rest of the COPY following as the relay forwards it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::verdict::{Rewrite, TeeRewrite};
use crate::copy_budget::Reservation;
use crate::protocol::messages;
use crate::protocol::responses::{Expect, LocalAnswer, ResponseTransform};

/// The savepoint the tee's statements run behind inside the client's transaction block.
const SAVEPOINT: &str = "__dw_tee";

/// One COPY being dual-written with COPYs alone.
pub(super) struct Tee {
    /// The staging path: its SQL and transforms, its COPY's CopyInResponse hidden (the client has one).
    staging_sql: String,
    staging: Vec<ResponseTransform>,
    /// The client is in a transaction block: the tee runs behind [`SAVEPOINT`].
    in_block: bool,
    /// The CopyData frames relayed, kept whole.
    rows: BytesMut,
    /// Past this many bytes kept, the staging path takes over.
    limit: usize,
    /// The rows' share of what all sessions may keep (`limits.copy_buffer_total_mb`); when the next rows do
    /// not fit, the staging path takes over too. `None`: no bound over all sessions.
    reservation: Option<Reservation>,
    /// The frame that ended the client's COPY (CopyDone, CopyFail, or another message), once it came.
    ended_by: Option<Bytes>,
}

/// What starts a tee: the Query that goes upstream, and the client's answer and the server's, in this order.
pub(super) struct Started {
    pub tee: Tee,
    pub query: Bytes,
    pub expects: [Expect; 2],
}

impl Tee {
    /// The tee of `rewrite`, whose own SQL is the staging path, for a client in a transaction block or not.
    /// `Err`: `rewrite` has no tee.
    pub fn start(
        mut rewrite: Rewrite,
        in_block: bool,
        limit: usize,
        reservation: Option<Reservation>,
    ) -> Result<Started, Rewrite> {
        let Some(TeeRewrite { sql, mut statements, columns }) = rewrite.tee.take() else { return Err(rewrite) };
        let sql = if in_block {
            statements.insert(0, hidden());
            statements.push(hidden());
            format!("SAVEPOINT {SAVEPOINT}; {sql}; RELEASE SAVEPOINT {SAVEPOINT}")
        } else {
            sql
        };
        // The client's CopyInResponse first: the tee's answer comes only once the client has sent its rows.
        let answer =
            LocalAnswer { bytes: messages::copy_in_response(columns), ready_for_query: false, extended: false };
        let staging = rewrite.statements.into_iter().map(|t| ResponseTransform { copy_response_hidden: true, ..t });
        let tee = Tee {
            staging_sql: rewrite.sql,
            staging: staging.collect(),
            in_block,
            rows: BytesMut::new(),
            limit,
            reservation,
            ended_by: None,
        };
        Ok(Started { tee, query: messages::query(&sql), expects: [Expect::Local(answer), simple_query(statements)] })
    }

    /// True until the client ended its COPY: its CopyData is kept as it is relayed.
    pub fn collecting(&self) -> bool {
        self.ended_by.is_none()
    }

    /// Whether keeping `more` bytes would pass the limit of one COPY.
    pub fn would_exceed(&self, more: usize) -> bool {
        self.rows.len() + more > self.limit
    }

    /// Keeps one whole CopyData frame (relayed by the caller); false, keeping nothing, when it does not fit
    /// in what all sessions together may keep.
    pub fn keep(&mut self, frame: &[u8]) -> bool {
        if let Some(reservation) = &mut self.reservation {
            if !reservation.grow(frame.len()) {
                return false;
            }
        }
        self.rows.extend_from_slice(frame);
        true
    }

    /// The client ended its COPY with `frame`: what goes upstream in its place, the frame itself for a
    /// CopyDone or CopyFail, and after a CopyDone the kept rows and a CopyDone again for the second COPY.
    /// Any other message ends it as Postgres would, with an error (a CopyFail of the proxy's saying so, where
    /// Postgres says 08P01): relayed, it would run as a statement on a server whose check failed. An empty
    /// `frame` (the client leaves) fails it too.
    pub fn end(&mut self, frame: &[u8]) -> Vec<Bytes> {
        let end = match frame.first() {
            Some(&messages::tag::COPY_DONE | &messages::tag::COPY_FAIL) => Bytes::copy_from_slice(frame),
            Some(other) => {
                messages::copy_fail(&format!("unexpected message type 0x{other:02X} during COPY from stdin"))
            }
            None => messages::copy_fail("the client ended its session during COPY from stdin"),
        };
        self.ended_by = Some(end.clone());
        if frame.first() != Some(&messages::tag::COPY_DONE) {
            return vec![end];
        }
        vec![end, self.rows.clone().freeze(), messages::copy_done()]
    }

    /// Rows past a limit (`setting`, for the CopyFail's reason): the tee's COPY ended by a CopyFail of the
    /// proxy's (what it answers dropped), then the staging statements with the rows kept; the rest of the
    /// client's COPY follows as relayed. The rows' reservation goes with the tee.
    pub fn abandon(self, setting: &str) -> (Vec<Bytes>, [Expect; 2]) {
        let fail =
            messages::copy_fail(&format!("dualwrite: the COPY passed limits.{setting}; written through staging"));
        let frames = vec![fail, messages::query(&self.staging_sql), self.rows.freeze()];
        (frames, [Expect::Abandoned, simple_query(self.staging)])
    }

    /// The staging path after the tee failed: the attempt undone, then the staging statements with every
    /// row kept, ended as the client ended its COPY.
    pub fn fall_back(self) -> (Vec<Bytes>, Expect) {
        let end = self.ended_by.unwrap_or_else(|| messages::copy_fail("dualwrite: the COPY did not end"));
        let mut statements = self.staging;
        let sql = if self.in_block {
            statements.splice(0..0, [hidden(), hidden()]);
            format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}; {}", self.staging_sql)
        } else {
            self.staging_sql
        };
        (vec![messages::query(&sql), self.rows.freeze(), end], simple_query(statements))
    }
}

fn hidden() -> ResponseTransform {
    ResponseTransform { hidden: true, ..ResponseTransform::default() }
}

fn simple_query(statements: Vec<ResponseTransform>) -> Expect {
    Expect::SimpleQuery { transforms: Some(Arc::from(statements)), started: Instant::now() }
}
