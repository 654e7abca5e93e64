//! What transaction pooling changes in the request machine: frames naming a client's prepared statement
//! are translated to the names the pooled server connection holds (the host decides, see
//! [`Host::rename_statement`]), and what each translated frame expects back is recorded in order.

use bytes::{Bytes, BytesMut};

use super::{Host, RequestMachine, Step};
use crate::protocol::messages;
use crate::protocol::responses::{Expect, PrepareTicket};

/// What transaction pooling makes of a Parse, Bind, Describe or Close naming a client's statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Renamed {
    /// Answered by the proxy (ParseComplete, CloseComplete): nothing goes to the server.
    Local(Bytes),
    /// `frames` go to the server instead: one frame per entry of `hidden` whose answer the client must not
    /// see (a Close of an evicted statement, `None`; a Parse preparing the statement on this connection, its
    /// ticket), then the client's frame under the server's name (`own`: its ticket when it is a Parse).
    Send { frames: Bytes, hidden: Vec<Option<PrepareTicket>>, own: Option<PrepareTicket> },
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
            Some(Renamed::Send { frames, hidden, own: ticket }) => {
                for ticket in hidden {
                    self.expect(ticket.map_or(Expect::Hidden, Expect::Prepare));
                }
                self.expect(ticket.map_or(own, Expect::Prepare));
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
            Some(Renamed::Send { frames, hidden, own }) => {
                let own = own.map(|ticket| PrepareTicket { hidden: true, ..ticket });
                for ticket in hidden.into_iter().chain([own]) {
                    self.expect(ticket.map_or(Expect::Hidden, Expect::Prepare));
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

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::protocol::requests::{Outcome, Route, SessionInterceptor};

    /// A transaction-pooled session without an interceptor, renaming from a script and logging the SQL
    /// it would judge for pinning.
    #[derive(Default)]
    struct PooledHost {
        renames: std::collections::VecDeque<Option<Renamed>>,
        upstream_sql: Vec<String>,
    }

    impl Host for PooledHost {
        fn is_ready(&self) -> bool {
            true
        }
        fn auth_requests(&self) -> u32 {
            0
        }
        fn transaction_status(&self) -> u8 {
            b'I'
        }
        fn intercepting(&mut self) -> bool {
            false
        }
        fn interceptor(&mut self) -> Option<&mut dyn SessionInterceptor> {
            None
        }
        fn count_query(&mut self, _: Route) {}
        fn count_error(&mut self, _: &str) {}
        fn pooled(&self) -> bool {
            true
        }
        fn rename_statement(&mut self, _frame: &[u8]) -> Option<Renamed> {
            self.renames.pop_front().flatten()
        }
        fn upstream_sql(&mut self, sql: &[u8]) {
            self.upstream_sql.push(String::from_utf8_lossy(sql).into_owned());
        }
    }

    fn frame(tag: u8, body: &[u8]) -> Bytes {
        let mut f = BytesMut::new();
        f.put_u8(tag);
        f.put_i32(body.len() as i32 + 4);
        f.put_slice(body);
        f.freeze()
    }

    /// Runs `frames` through a pooled machine: what went upstream, in one piece, and the expectations.
    fn run(host: &mut PooledHost, frames: &[Bytes]) -> (Vec<u8>, Vec<String>, Outcome) {
        let mut machine = RequestMachine::new(1 << 20);
        let mut buf = BytesMut::from(&frames.concat()[..]);
        let mut out = Vec::new();
        let outcome = machine.process(host, &mut buf, &mut out);
        let expects =
            machine.take_expects().0.map(|e| format!("{e:?}").split([' ', '(', '{']).next().unwrap().to_owned());
        (out.concat(), expects.collect(), outcome)
    }

    #[test]
    fn a_terminate_stays_with_the_proxy_and_sql_going_upstream_is_shown_to_the_host() {
        let mut host = PooledHost::default();
        let query = messages::query("LISTEN x");
        let (sent, expects, outcome) = run(&mut host, &[query.clone(), frame(b'X', b"")]);
        assert_eq!(sent, query.to_vec(), "the Query goes, the Terminate does not");
        assert_eq!(expects, ["SimpleQuery"]);
        assert!(matches!(outcome, Outcome::Terminate));
        assert_eq!(host.upstream_sql, ["LISTEN x"]);
    }

    #[test]
    fn renamed_frames_are_sent_with_their_hidden_answers_expected_first_or_answered_locally() {
        let parse = messages::parse(Some("s".into()), "SELECT 1", Vec::new());
        let bind = messages::bind("", "s");
        let server_parse = messages::parse(Some("dualwrite_s1".into()), "SELECT 1", Vec::new());
        let server_bind = messages::bind("", "dualwrite_s1");
        let mut host = PooledHost::default();
        host.renames.push_back(Some(Renamed::Local(messages::parse_complete())));
        let frames = [server_parse.clone(), server_bind.clone()].concat();
        let ticket = PrepareTicket { server_name: "dualwrite_s1".into(), client_name: None, hidden: true };
        let send = Renamed::Send { frames: Bytes::from(frames.clone()), hidden: vec![Some(ticket)], own: None };
        host.renames.push_back(Some(send));
        let sync = frame(b'S', b"");
        let (sent, expects, _) = run(&mut host, &[parse, bind, sync.clone()]);
        assert_eq!(sent, [frames, sync.to_vec()].concat(), "the Parse answered locally, the Bind prepared first");
        assert_eq!(expects, ["Local", "Prepare", "Bind", "Sync"]);
        assert_eq!(host.upstream_sql, ["SELECT 1"], "the Parse's SQL is judged for pinning");
    }

    #[test]
    fn a_refused_name_is_raised_by_the_server_in_the_frames_place() {
        let mut host = PooledHost::default();
        host.renames.push_back(Some(Renamed::Refuse { raise_sql: "DO $$BEGIN RAISE 'x'; END$$".into() }));
        let (sent, expects, _) = run(&mut host, &[messages::parse(Some("s".into()), "SELECT 2", Vec::new())]);
        let raise = messages::parse(None, "DO $$BEGIN RAISE 'x'; END$$", Vec::new());
        assert!(sent.starts_with(&raise), "the raise replaces the Parse");
        assert_eq!(expects, ["Hidden", "Hidden", "Execute"]);
    }
}
