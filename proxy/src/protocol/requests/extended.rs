//! The extended protocol's statements and portals: Parse, Bind, Describe, Execute and Close of statements
//! the proxy rewrote or answers itself, the probes before a statement's use, and the re-preparing of a
//! statement whose route changed since it was prepared.

use std::sync::Arc;

use bytes::BytesMut;

use super::local;
use super::{count_local, count_raise, Host, LocalResult, Pending, Prepared, RequestMachine, Route, SqlOrigin, Step};
use super::{LocalReply, LocalStatement, StatementUse, Verdict};
use crate::protocol::messages::{self, body, tag, SqlError};
use crate::protocol::responses::{Expect, ResponseTransform};

impl RequestMachine {
    pub(super) fn on_parse<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        let Some(view) = messages::parse_view(body(frame)) else { return self.unreadable(host, tag::PARSE) };
        let name = view.statement.to_vec();
        let statement = String::from_utf8_lossy(view.statement).into_owned();
        let param_types = if host.intercepting() { view.param_type_oids() } else { Vec::new() };
        let name_utf8 = std::str::from_utf8(view.statement).is_ok();
        let verdict = self.verdict(host, view.sql, SqlOrigin::Parse { statement: &statement }, &param_types, name_utf8);
        if let Verdict::Probe(sql) = verdict {
            return Step::Probe(sql);
        }
        if matches!(verdict, Verdict::Forward) {
            host.upstream_sql(view.sql);
            self.statements.remove(&name);
            return self.forward_named(host, frame, Expect::Parse);
        }
        let parse = match &verdict {
            Verdict::Forward | Verdict::Raise(_) | Verdict::Probe(_) => None,
            _ => match messages::decode_parse(frame) {
                Some(parse) => Some(parse),
                None => return malformed("Parse"),
            },
        };
        match (verdict, parse) {
            (Verdict::Forward | Verdict::Probe(_), _) => unreachable!("handled above"),
            (Verdict::Raise(raise), _) => {
                // The server raises the refusal where the Parse stood. The client's statement does not
                // exist afterwards, as after a failed Parse.
                count_raise(host, &raise);
                self.statements.remove(&name);
                self.raise_in_place(&raise.sql)
            }
            (_, None) => unreachable!("decoded above"),
            (Verdict::Rewrite(rewrite), Some(parse)) => {
                if !rewrite.control {
                    host.upstream_sql(view.sql);
                }
                let transform = rewrite.statements.into_iter().next().unwrap_or_default();
                self.statements.insert(name, Prepared::Rewritten(Arc::new(transform)));
                self.send_named(host, messages::parse(parse.name, &rewrite.sql, parse.type_oids), Expect::Parse)
            }
            (Verdict::Respond(reply), Some(parse)) => {
                self.answer_parse(host, name, parse.type_oids, reply);
                Step::Drop
            }
            (Verdict::Defer(reply), Some(parse)) => {
                Step::Defer(reply, Pending::Parse { name, param_types: parse.type_oids })
            }
        }
    }

    pub(super) fn on_bind<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        let b = body(frame);
        let Some((portal, statement)) = messages::bind_names(b) else { return self.unreadable(host, tag::BIND) };
        if let Some(probe) = self.probe_before_use(host, statement) {
            return Step::Probe(probe);
        }
        let reprepared = self.reprepare(host, statement, StatementUse::Bind);
        if let Some(interceptor) = host.interceptor() {
            interceptor.on_bind(portal, statement, b);
        }
        let step = match self.statements.get(statement).cloned() {
            Some(Prepared::Local(l)) => {
                self.portals.insert(portal.to_vec(), Prepared::Local(l));
                self.answer(messages::bind_complete(), false, true);
                Step::Drop
            }
            Some(p) => {
                self.portals.insert(portal.to_vec(), p);
                self.forward_named(host, frame, Expect::Bind)
            }
            None => {
                self.portals.remove(portal);
                self.forward_named(host, frame, Expect::Bind)
            }
        };
        with_injected(reprepared, step, frame)
    }

    pub(super) fn on_describe<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        let Some((kind, name)) = messages::target_of(body(frame)) else { return self.unreadable(host, tag::DESCRIBE) };
        let statement = kind == b'S';
        if statement {
            if let Some(probe) = self.probe_before_use(host, name) {
                return Step::Probe(probe);
            }
        }
        let reprepared = if statement { self.reprepare(host, name, StatementUse::Describe) } else { None };
        let step = match self.lookup(statement, name) {
            Some(Prepared::Local(l)) => {
                self.answer(l.describe(statement), false, true);
                Step::Drop
            }
            Some(Prepared::Rewritten(t)) => {
                self.forward_named(host, frame, Expect::Describe { statement, transform: Some(t) })
            }
            None => self.forward_named(host, frame, Expect::Describe { statement, transform: None }),
        };
        with_injected(reprepared, step, frame)
    }

    pub(super) fn on_execute<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        let b = body(frame);
        let Some(portal) = messages::execute_portal(b) else { return self.unreadable(host, tag::EXECUTE) };
        if let Some(interceptor) = host.interceptor() {
            interceptor.on_execute(portal);
        }
        match self.portals.get(portal).cloned() {
            Some(Prepared::Local(l)) => {
                host.count_query(Route::Control);
                self.answer(l.execute(), false, true);
                Step::Drop
            }
            Some(Prepared::Rewritten(t)) => {
                host.count_query(Route::Rewritten);
                let suppress = t.suppress_rows;
                self.expect(Expect::Execute { transform: Some(t) });
                if suppress && !messages::execute_runs_to_completion(b) {
                    // The client's statement returns no rows, so Postgres would run it to completion
                    // whatever row limit the Execute asks for (pgjdbc's executeUpdate asks for 1).
                    // Its rewrite is a query: without this it would stop at PortalSuspended and the
                    // client would never see the command tag with its row count. An Execute that
                    // already asks for every row is relayed as it is.
                    Step::Replace(messages::execute(&String::from_utf8_lossy(portal)))
                } else {
                    Step::Forward
                }
            }
            None => {
                host.count_query(Route::Passthrough);
                self.expect(Expect::Execute { transform: None });
                Step::Forward
            }
        }
    }

    pub(super) fn on_close<H: Host>(&mut self, host: &mut H, frame: &[u8]) -> Step {
        let Some((kind, name)) = messages::target_of(body(frame)) else { return self.unreadable(host, tag::CLOSE) };
        if kind == b'S' {
            if let Some(interceptor) = host.interceptor() {
                interceptor.on_close_statement(name);
            }
        }
        let removed = if kind == b'S' { self.statements.remove(name) } else { self.portals.remove(name) };
        if let Some(Prepared::Local(_)) = removed {
            self.answer(messages::close_complete(), false, true);
            Step::Drop
        } else {
            self.forward_named(host, frame, Expect::Close)
        }
    }

    fn lookup(&self, statement: bool, name: &[u8]) -> Option<Prepared> {
        if statement {
            self.statements.get(name).cloned()
        } else {
            self.portals.get(name).cloned()
        }
    }

    /// The interceptor's probe before a use of `statement`, where the relay can run one now.
    fn probe_before_use<H: Host>(&mut self, host: &mut H, statement: &[u8]) -> Option<String> {
        if !self.can_probe() {
            return None;
        }
        host.interceptor()?.probe_before_use(statement)
    }

    /// Frames that prepare `statement` again upstream when the interceptor asks for it (its route changed
    /// since it was prepared): Close and Parse under the same name, their answers hidden from the client.
    fn reprepare<H: Host>(&mut self, host: &mut H, statement: &[u8], at: StatementUse) -> Option<BytesMut> {
        let again = host.interceptor()?.reprepare(statement, at)?;
        let name = String::from_utf8_lossy(statement).into_owned();
        let mut frames = BytesMut::new();
        self.hidden_named(host, messages::close_statement(&name), &mut frames);
        let parse = messages::parse((!name.is_empty()).then(|| name.clone()), &again.sql, again.param_types);
        self.hidden_named(host, parse, &mut frames);
        if again.transform == ResponseTransform::default() {
            self.statements.remove(statement);
        } else {
            self.statements.insert(statement.to_vec(), Prepared::Rewritten(Arc::new(again.transform)));
        }
        Some(frames)
    }

    pub(super) fn answer_parse<H: Host>(
        &mut self,
        host: &mut H,
        name: Vec<u8>,
        param_types: Vec<u32>,
        reply: LocalReply,
    ) {
        count_local(host, &reply);
        if let Some(err) = &reply.error {
            self.statements.remove(&name);
            self.answer(local::error(err), false, true);
            self.discard_until_sync = true;
            return;
        }
        let result = reply
            .results
            .into_iter()
            .next()
            .unwrap_or_else(|| LocalResult { tag: "SELECT 0".to_owned(), ..LocalResult::default() });
        self.statements.insert(name, Prepared::Local(Arc::new(LocalStatement { param_types, result })));
        self.answer(messages::parse_complete(), false, true);
    }
}

/// `step`, preceded upstream by `injected` frames when there are any.
fn with_injected(injected: Option<BytesMut>, step: Step, frame: &[u8]) -> Step {
    match (injected, step) {
        (None, step) => step,
        (Some(mut frames), Step::Forward) => {
            frames.extend_from_slice(frame);
            Step::Replace(frames.freeze())
        }
        (Some(mut frames), Step::Replace(bytes)) => {
            frames.extend_from_slice(&bytes);
            Step::Replace(frames.freeze())
        }
        // The frame is answered locally; what was injected still goes upstream.
        (Some(frames), Step::Drop) => Step::Replace(frames.freeze()),
        (Some(_), other) => other,
    }
}

fn malformed(what: &str) -> Step {
    Step::Violation(SqlError::fatal("08P01", format!("invalid {what} message format")))
}
