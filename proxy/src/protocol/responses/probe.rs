//! The proxy's probes on the response queue (`Expect::Probe`): their answers kept for the session, hidden
//! from the client and from the session events, and what a probe inside the client's batch means when the
//! server skips the batch after an error.

use super::{is_skippable, Action, Expect, ProbeAnswer, ResponseQueue, SessionEvent};
use crate::protocol::messages::btag;

impl ResponseQueue {
    pub(super) fn finish_probe(&mut self) {
        let row = self.probe_row.take();
        self.probe_closes = 0;
        self.probe_answer = Some(if std::mem::take(&mut self.probe_failed) { None } else { row });
    }

    /// The values of a DataRow that [`on_message`](Self::on_message) answered with [`Action::ProbeRow`].
    pub fn probe_row(&mut self, values: Option<Vec<Option<String>>>) {
        match values {
            Some(values) if self.probe_row.is_none() => self.probe_row = Some(values),
            Some(_) => {}
            None => self.probe_failed = true,
        }
    }

    /// True once a probe's answer is in (the relay then wakes the client direction).
    pub fn has_probe_answer(&self) -> bool {
        self.probe_answer.is_some()
    }

    /// The answer of the last probe, once it is in.
    pub fn take_probe_answer(&mut self) -> Option<ProbeAnswer> {
        self.probe_answer.take()
    }

    /// Messages answering a probe at the head of the queue: CloseComplete, ParseComplete, BindComplete,
    /// DataRows, CommandComplete, two CloseCompletes, and ReadyForQuery when it brought its own Sync.
    pub(super) fn on_probe_message(&mut self, tag: u8, at_sync: bool) -> Action {
        match tag {
            btag::DATA_ROW => Action::ProbeRow,
            btag::ERROR_RESPONSE if at_sync => {
                // The probe's own Sync ends what it started; the ReadyForQuery follows.
                self.probe_failed = true;
                Action::Drop
            }
            btag::ERROR_RESPONSE => {
                // Inside the client's batch the server now skips everything up to the client's Sync: the
                // client gets the error as its batch's.
                self.probe_failed = true;
                self.pop();
                self.skipping_to_sync = true;
                self.event(SessionEvent::Failed);
                Action::Forward
            }
            btag::READY_FOR_QUERY if at_sync => {
                self.pop();
                Action::Drop
            }
            btag::CLOSE_COMPLETE => {
                self.probe_closes += 1;
                if !at_sync && self.probe_closes == 3 {
                    self.pop();
                }
                Action::Drop
            }
            _ => Action::Drop,
        }
    }

    /// Probes queued in a batch the server now skips get no answer from it: answer them `None` at once,
    /// since the client direction waits for them before it forwards the batch's Sync.
    pub(super) fn skip_batch_probes(&mut self) {
        if self.probes == 0 {
            return;
        }
        let end = self.entries.iter().position(|e| !is_skippable(e)).unwrap_or(self.entries.len());
        if self.entries.iter().take(end).any(|e| matches!(e, Expect::Probe { .. })) {
            let before = self.entries.len();
            self.entries.retain(|e| !matches!(e, Expect::Probe { at_sync: false }));
            self.probes -= before - self.entries.len();
            self.finish_probe_skipped();
        }
    }

    pub(super) fn finish_probe_skipped(&mut self) {
        self.probe_failed = true;
        self.finish_probe();
    }
}
