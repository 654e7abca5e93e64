//! What transaction pooling changes in the request machine: frames naming a client's prepared statement
//! are translated to the names the pooled server connection holds (the host decides, see
//! [`Host::rename_statement`]), and what each translated frame expects back is recorded in order.

use bytes::{Bytes, BytesMut};

use super::{Host, RequestMachine, Step};
use crate::protocol::messages;
use crate::protocol::responses::Expect;

/// What transaction pooling makes of a Parse, Bind, Describe or Close naming a client's statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Renamed {
    /// Answered by the proxy (ParseComplete, CloseComplete): nothing goes to the server.
    Local(Bytes),
    /// `frames` go to the server instead: `hidden` frames whose answers the client must not see (a Close
    /// of an evicted statement, a Parse preparing the statement on this connection), then the client's
    /// frame under the server's name.
    Send { frames: Bytes, hidden: usize },
    /// Refused as Postgres would (a duplicate name): the server runs this SQL, which raises the error, in
    /// the frame's place.
    Refuse { raise_sql: String },
}

impl RequestMachine {
    /// `frame` translated for a pooled server connection, with `own` (its expectation) recorded; `None`
    /// when the host leaves it as it is (session mode, unnamed statements).
    pub(super) fn renamed<H: Host>(&mut self, host: &mut H, frame: &[u8], own: Expect) -> Result<Step, Expect> {
        match host.rename_statement(frame) {
            None => Err(own),
            Some(Renamed::Local(answer)) => {
                self.answer(answer, false, true);
                Ok(Step::Drop)
            }
            Some(Renamed::Send { frames, hidden }) => {
                for _ in 0..hidden {
                    self.expect(Expect::Hidden);
                }
                self.expect(own);
                Ok(Step::Replace(frames))
            }
            Some(Renamed::Refuse { raise_sql }) => Ok(self.raise_in_place(&raise_sql)),
        }
    }

    /// `frame` forwarded to the server, translated when transaction pooling asks for it.
    pub(super) fn forward_named<H: Host>(&mut self, host: &mut H, frame: &[u8], own: Expect) -> Step {
        match self.renamed(host, frame, own) {
            Ok(step) => step,
            Err(own) => {
                self.expect(own);
                Step::Forward
            }
        }
    }

    /// `frame` (built by the proxy) sent to the server, translated when transaction pooling asks for it.
    pub(super) fn send_named<H: Host>(&mut self, host: &mut H, frame: Bytes, own: Expect) -> Step {
        match self.renamed(host, &frame, own) {
            Ok(step) => step,
            Err(own) => {
                self.expect(own);
                Step::Replace(frame)
            }
        }
    }

    /// Frames the proxy injects whose answers are hidden (a re-prepare's Close and Parse), translated for
    /// a pooled connection; the answers of their translations are hidden too.
    pub(super) fn hidden_named<H: Host>(&mut self, host: &mut H, frame: Bytes, into: &mut BytesMut) {
        match host.rename_statement(&frame) {
            None => {
                self.expect(Expect::Hidden);
                into.extend_from_slice(&frame);
            }
            Some(Renamed::Local(_)) | Some(Renamed::Refuse { .. }) => {}
            Some(Renamed::Send { frames, hidden }) => {
                for _ in 0..=hidden {
                    self.expect(Expect::Hidden);
                }
                into.extend_from_slice(&frames);
            }
        }
    }

    /// The server raises an error where a Parse stood: it then skips the batch up to Sync and aborts the
    /// (implicit) transaction, exactly as for a failing Parse.
    pub(super) fn raise_in_place(&mut self, raise_sql: &str) -> Step {
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&messages::parse(None, raise_sql, Vec::new()));
        frames.extend_from_slice(&messages::bind("", ""));
        frames.extend_from_slice(&messages::execute(""));
        self.expect(Expect::Hidden);
        self.expect(Expect::Hidden);
        self.expect(Expect::Execute { transform: None });
        Step::Replace(frames.freeze())
    }
}
