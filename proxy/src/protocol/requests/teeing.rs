//! The request machine while a COPY is dual-written with COPYs alone (`tee`): the client's frames during its
//! COPY, the outcome of the tee once it ran, and the staging path taking over past a size limit (of the COPY,
//! or of all sessions' COPYs together).

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};

use super::{flush_run, Host, Outcome, RequestMachine};
use crate::protocol::messages::tag;
use crate::protocol::responses::FallbackOutcome;

impl RequestMachine {
    /// One client frame (tag `t`, `total` bytes, at `run` in `buf`) while its COPY is teed: CopyData relayed
    /// (in the run) and kept; at the limit, the staging path; a Flush or Sync dropped; anything else ends the
    /// COPY (`tee::Tee::end`) and the session awaits the tee's outcome. `None`: no COPY is teed, the frame is
    /// handled as usual; `Continue`: on to the next frame; `Break`: stop with that outcome.
    pub(super) fn on_tee_frame<H: Host>(
        &mut self,
        host: &mut H,
        t: u8,
        total: usize,
        buf: &mut BytesMut,
        run: &mut usize,
        out: &mut Vec<Bytes>,
    ) -> Option<ControlFlow<Outcome>> {
        let tee = self.tee.as_mut().filter(|t| t.collecting())?;
        let available = buf.len() - *run;
        match t {
            // The staging path takes over; the frame then goes on as the relay sends it.
            tag::COPY_DATA if tee.would_exceed(total) => {
                flush_run(buf, run, out);
                self.abandon_tee(host, out, "copy_buffer_mb");
            }
            _ if available < total => return Some(ControlFlow::Break(Outcome::NeedInput)),
            tag::COPY_DATA => {
                if tee.keep(&buf[*run..*run + total]) {
                    *run += total;
                } else {
                    flush_run(buf, run, out);
                    self.abandon_tee(host, out, "copy_buffer_total_mb");
                }
            }
            // Ignored by a server in COPY, answered by one whose check failed: never relayed.
            tag::FLUSH | tag::SYNC => {
                flush_run(buf, run, out);
                buf.advance(total);
            }
            // The client leaves mid-COPY: its COPY fails first, then the Terminate goes on as usual.
            tag::TERMINATE => {
                flush_run(buf, run, out);
                out.extend(tee.end(&[]));
                return Some(ControlFlow::Break(Outcome::AwaitTee));
            }
            _ => {
                flush_run(buf, run, out);
                out.extend(tee.end(&buf[..total]));
                buf.advance(total);
                return Some(ControlFlow::Break(Outcome::AwaitTee));
            }
        }
        Some(ControlFlow::Continue(()))
    }

    /// The outcome of the tee the machine sent ([`Outcome::AwaitTee`]): where it must fall back, the
    /// staging path goes to `out` now.
    pub fn finish_tee<H: Host>(&mut self, host: &mut H, outcome: FallbackOutcome, out: &mut Vec<Bytes>) {
        let Some(tee) = self.tee.take() else { return };
        host.count_copy_tee(outcome == FallbackOutcome::FallBack);
        if outcome == FallbackOutcome::FallBack {
            let (frames, expect) = tee.fall_back();
            self.expect(expect);
            out.extend(frames);
        }
    }

    /// Rows past the limit `setting`: the tee gives way to the staging path (`tee::Tee::abandon`).
    fn abandon_tee<H: Host>(&mut self, host: &mut H, out: &mut Vec<Bytes>, setting: &str) {
        if let Some(tee) = self.tee.take() {
            host.count_copy_tee(true);
            let (frames, expects) = tee.abandon(setting);
            for expect in expects {
                self.expect(expect);
            }
            out.extend(frames);
        }
    }
}
