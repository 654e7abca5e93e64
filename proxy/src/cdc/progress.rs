//! Which WAL position the watch may confirm (pure): a transaction is confirmed only once it and every
//! transaction before it is handled, i.e. its candidates are confirmed or dismissed and its bypasses
//! recorded. Candidates wait briefly to be checked in one batch; candidates handed back for a later check
//! (see `bypass::handle`) hold every confirmation after them until they are settled.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::bypass::Seen;
use super::decoder::Lsn;

/// Candidates wait at most this long to be checked in one batch.
pub const BATCH_WAIT: Duration = Duration::from_millis(100);
/// How long a deferred candidate waits before it is checked again.
pub const DEFER: Duration = Duration::from_secs(3);
/// How many times a candidate may be deferred before it is judged as it stands.
pub const MAX_DEFERRALS: u32 = 5;

/// Candidates handed back for a later check.
#[derive(Debug, Clone)]
pub struct Deferred {
    pub due: Instant,
    pub deferrals: u32,
    pub seen: Vec<Seen>,
}

#[derive(Debug, Default)]
pub struct Progress {
    pending: Vec<Seen>,
    pending_since: Option<Instant>,
    /// End of the newest transaction whose candidates are pending.
    pending_end: Option<Lsn>,
    deferred: VecDeque<Deferred>,
    /// The newest handled position while deferred candidates hold confirmation back.
    held: Option<Lsn>,
}

impl Progress {
    /// Nothing waits: every transaction seen is handled.
    pub fn settled(&self) -> bool {
        self.pending.is_empty() && self.deferred.is_empty()
    }

    /// A committed transaction ending at `end` with its candidates; the position to confirm now, if any.
    pub fn committed(&mut self, end: Lsn, candidates: Vec<Seen>, now: Instant) -> Option<Lsn> {
        if !candidates.is_empty() || !self.pending.is_empty() {
            self.pending.extend(candidates);
            self.pending_since.get_or_insert(now);
            self.pending_end = Some(end);
            return None;
        }
        self.handled(Some(end))
    }

    /// The batch of candidates due for a check at `now`, with the position it covers.
    pub fn take_batch(&mut self, now: Instant) -> Option<(Vec<Seen>, Option<Lsn>)> {
        let since = self.pending_since?;
        if now.duration_since(since) < BATCH_WAIT {
            return None;
        }
        self.pending_since = None;
        Some((std::mem::take(&mut self.pending), self.pending_end.take()))
    }

    /// The deferred candidates due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Option<Deferred> {
        if self.deferred.front().is_some_and(|d| d.due <= now) {
            return self.deferred.pop_front();
        }
        None
    }

    /// A batch (or a deferred entry, `end` = None) was checked; `again` are the candidates handed back,
    /// `deferrals` how often they already were. The position to confirm now, if any.
    pub fn checked(&mut self, end: Option<Lsn>, again: Vec<Seen>, deferrals: u32, now: Instant) -> Option<Lsn> {
        if !again.is_empty() {
            self.deferred.push_back(Deferred { due: now + DEFER, deferrals: deferrals + 1, seen: again });
        }
        self.handled(end)
    }

    /// The server has sent everything before `wal_end`; confirmable when nothing waits.
    pub fn keepalive(&self, wal_end: Lsn, in_transaction: bool) -> Option<Lsn> {
        (self.settled() && !in_transaction).then_some(wal_end)
    }

    fn handled(&mut self, end: Option<Lsn>) -> Option<Lsn> {
        if !self.pending.is_empty() {
            // A later transaction still waits in the batch; its end will be confirmed with it.
            self.held = self.held.max(end);
            return None;
        }
        if self.deferred.is_empty() {
            return end.max(self.held.take());
        }
        self.held = self.held.max(end);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::pairing::{Candidate, Side};
    use crate::cdc::transaction::Op;

    fn seen() -> Seen {
        let candidate =
            Candidate { migration: 0, side: Side::Old, table: 0, op: Op::Delete, key: Some(vec!["1".into()]) };
        Seen { candidate, xid: 1, commit_lsn: Lsn(1), committed_at: 0.0 }
    }

    #[test]
    fn transactions_without_candidates_confirm_at_once() {
        let mut p = Progress::default();
        assert_eq!(p.committed(Lsn(10), vec![], Instant::now()), Some(Lsn(10)));
        assert_eq!(p.keepalive(Lsn(12), false), Some(Lsn(12)));
        assert_eq!(p.keepalive(Lsn(12), true), None);
    }

    #[test]
    fn candidates_hold_confirmation_until_their_batch_is_checked() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        assert_eq!(p.committed(Lsn(10), vec![seen()], t0), None);
        assert_eq!(p.committed(Lsn(20), vec![], t0), None, "a later transaction waits for the batch");
        assert_eq!(p.keepalive(Lsn(25), false), None);
        assert!(p.take_batch(t0).is_none(), "the batch waits a little");
        let (batch, end) = p.take_batch(t0 + BATCH_WAIT).unwrap();
        assert_eq!((batch.len(), end), (1, Some(Lsn(20))));
        assert_eq!(p.checked(end, vec![], 0, t0), Some(Lsn(20)));
        assert!(p.settled());
    }

    #[test]
    fn deferred_candidates_hold_later_positions_until_settled() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        p.committed(Lsn(10), vec![seen()], t0);
        let (batch, end) = p.take_batch(t0 + BATCH_WAIT).unwrap();
        assert_eq!(p.checked(end, batch, 0, t0), None, "handed back: nothing confirmed");
        assert_eq!(p.committed(Lsn(30), vec![], t0), None);
        assert_eq!(p.keepalive(Lsn(35), false), None);
        assert!(p.take_due(t0).is_none());
        let due = p.take_due(t0 + DEFER).unwrap();
        assert_eq!(due.deferrals, 1);
        assert_eq!(p.checked(None, vec![], due.deferrals, t0 + DEFER), Some(Lsn(30)));
        assert!(p.settled());
    }
}
