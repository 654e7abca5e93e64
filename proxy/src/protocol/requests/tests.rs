//! The request machine, frame by frame: what goes upstream, what each request expects back, and the
//! state it keeps (statements, portals, discarding up to Sync, re-prepares, probes), with a scripted
//! interceptor standing in for the real one.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::protocol::messages;
use crate::protocol::responses::CommandTag;

/// An interceptor that answers from a script and logs what the machine tells it.
#[derive(Default)]
struct Script {
    /// Verdicts for the next `on_sql` calls, in order; `Forward` when empty.
    verdicts: VecDeque<Verdict>,
    /// One-shot re-prepares by statement name.
    reprepares: HashMap<Vec<u8>, Reprepare>,
    /// One-shot probes before a use, by statement name.
    probes: HashMap<Vec<u8>, String>,
    log: Vec<String>,
}

impl SessionInterceptor for Script {
    fn on_sql(&mut self, request: SqlRequest<'_>) -> Verdict {
        self.log.push(format!("sql {} probe={}", request.sql, request.can_probe));
        self.verdicts.pop_front().unwrap_or(Verdict::Forward)
    }
    fn on_bind(&mut self, portal: &[u8], statement: &[u8], _bind: &[u8]) {
        self.log.push(format!("bind {}<-{}", text(portal), text(statement)));
    }
    fn on_close_statement(&mut self, statement: &[u8]) {
        self.log.push(format!("close {}", text(statement)));
    }
    fn on_execute(&mut self, portal: &[u8]) {
        self.log.push(format!("execute {}", text(portal)));
    }
    fn on_sync(&mut self) {
        self.log.push("sync".into());
    }
    fn reprepare(&mut self, statement: &[u8], _at: StatementUse) -> Option<Reprepare> {
        self.reprepares.remove(statement)
    }
    fn probe_before_use(&mut self, statement: &[u8]) -> Option<String> {
        self.probes.remove(statement)
    }
}

struct FakeHost {
    ready: bool,
    auth_requests: u32,
    script: Option<Script>,
    routes: Vec<Route>,
    errors: Vec<String>,
}

impl FakeHost {
    /// An authenticated session judged by `script`.
    fn judged(script: Script) -> Self {
        FakeHost { ready: true, auth_requests: 0, script: Some(script), routes: Vec::new(), errors: Vec::new() }
    }

    /// An authenticated session nobody judges (the fast path).
    fn passthrough() -> Self {
        FakeHost { script: None, ..Self::judged(Script::default()) }
    }

    fn script(&mut self) -> &mut Script {
        self.script.as_mut().unwrap()
    }

    fn log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.script().log)
    }
}

impl Host for FakeHost {
    fn is_ready(&self) -> bool {
        self.ready
    }
    fn auth_requests(&self) -> u32 {
        self.auth_requests
    }
    fn transaction_status(&self) -> u8 {
        if self.ready {
            b'I'
        } else {
            0
        }
    }
    fn intercepting(&mut self) -> bool {
        self.ready && self.script.is_some()
    }
    fn interceptor(&mut self) -> Option<&mut dyn SessionInterceptor> {
        if !self.ready {
            return None;
        }
        self.script.as_mut().map(|s| s as &mut dyn SessionInterceptor)
    }
    fn count_query(&mut self, route: Route) {
        self.routes.push(route);
    }
    fn count_error(&mut self, code: &str) {
        self.errors.push(code.to_owned());
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut f = BytesMut::new();
    f.put_u8(tag);
    f.put_i32(body.len() as i32 + 4);
    f.put_slice(body);
    f.freeze()
}

fn sync() -> Bytes {
    frame(b'S', b"")
}

fn flush() -> Bytes {
    frame(b'H', b"")
}

fn describe(kind: u8, name: &str) -> Bytes {
    frame(b'D', &[&[kind], name.as_bytes(), b"\0"].concat())
}

fn close_portal(name: &str) -> Bytes {
    frame(b'C', &[b"P", name.as_bytes(), b"\0"].concat())
}

fn execute_limited(portal: &str, rows: i32) -> Bytes {
    frame(b'E', &[portal.as_bytes(), b"\0", &rows.to_be_bytes()].concat())
}

fn parse(name: &str, sql: &str) -> Bytes {
    messages::parse((!name.is_empty()).then(|| name.to_owned()), sql, Vec::new())
}

fn cat(frames: &[Bytes]) -> Vec<u8> {
    frames.concat()
}

/// One `process` call over `input`: the outcome, the bytes sent upstream, the expectations recorded.
struct Turn {
    outcome: Outcome,
    sent: Vec<u8>,
    chunks: usize,
    expects: Vec<String>,
    local_queued: bool,
}

fn turn(m: &mut RequestMachine, host: &mut FakeHost, buf: &mut BytesMut) -> Turn {
    let mut out = Vec::new();
    let outcome = m.process(host, buf, &mut out);
    let (expects, local_queued) = m.take_expects();
    let expects = expects.map(|e| describe_expect(&e)).collect();
    Turn { outcome, sent: cat(&out), chunks: out.len(), expects, local_queued }
}

fn run(m: &mut RequestMachine, host: &mut FakeHost, input: &[Bytes]) -> Turn {
    let mut buf = BytesMut::from(&cat(input)[..]);
    let t = turn(m, host, &mut buf);
    assert!(buf.is_empty() || !matches!(t.outcome, Outcome::NeedInput), "whole frames left unhandled");
    t
}

/// A readable summary of an expectation.
fn describe_expect(e: &Expect) -> String {
    let t = |t: &Option<Arc<ResponseTransform>>| if t.is_some() { "+t" } else { "" };
    match e {
        Expect::SimpleQuery { transforms, .. } => {
            format!("Query{}", if transforms.is_some() { "+t" } else { "" })
        }
        Expect::FunctionCall { .. } => "FunctionCall".into(),
        Expect::Parse => "Parse".into(),
        Expect::Bind => "Bind".into(),
        Expect::Close => "Close".into(),
        Expect::Describe { statement, transform } => {
            format!("Describe{}{}", if *statement { "S" } else { "P" }, t(transform))
        }
        Expect::Execute { transform } => format!("Execute{}", t(transform)),
        Expect::Sync { .. } => "Sync".into(),
        Expect::Hidden => "Hidden".into(),
        Expect::Prepare(ticket) => {
            format!("Prepare({}{})", ticket.server_name, if ticket.hidden { ",hidden" } else { "" })
        }
        Expect::Local(l) => format!("Local({}{})", l.bytes[0] as char, if l.ready_for_query { ",Z" } else { "" }),
        Expect::Probe { at_sync } => format!("Probe({})", if *at_sync { "sync" } else { "flush" }),
        Expect::Abandoned => "Abandoned".into(),
    }
}

fn machine() -> RequestMachine {
    RequestMachine::new(1 << 20)
}

fn update_transform() -> ResponseTransform {
    ResponseTransform {
        command_tag: Some(CommandTag::Update),
        suppress_rows: true,
        describe_no_data: true,
        ..ResponseTransform::default()
    }
}

fn rewrite(sql: &str) -> Verdict {
    Verdict::Rewrite(Rewrite { sql: sql.into(), statements: vec![update_transform()], control: false, tee: None })
}

#[test]
fn a_passthrough_batch_goes_upstream_as_one_slice_of_the_read_buffer() {
    let (mut m, mut host) = (machine(), FakeHost::passthrough());
    let input = [
        messages::query("SELECT 1"),
        parse("", "SELECT $1"),
        messages::bind("", ""),
        describe(b'P', ""),
        messages::execute(""),
        flush(),
        sync(),
    ];
    let t = run(&mut m, &mut host, &input);
    assert!(matches!(t.outcome, Outcome::NeedInput));
    assert_eq!(t.sent, cat(&input));
    assert_eq!(t.chunks, 1, "no frame was copied apart");
    assert_eq!(t.expects, ["Query", "Parse", "Bind", "DescribeP", "Execute", "Sync"]);
    assert_eq!(host.routes, [Route::Passthrough, Route::Passthrough]);
}

#[test]
fn an_incomplete_frame_waits_for_its_rest() {
    let (mut m, mut host) = (machine(), FakeHost::passthrough());
    let q = messages::query("SELECT 1");
    let mut buf = BytesMut::from(&q[..q.len() - 2]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::NeedInput));
    assert!(t.sent.is_empty() && t.expects.is_empty());
    buf.extend_from_slice(&q[q.len() - 2..]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert_eq!(t.sent, q.to_vec());
    assert_eq!(t.expects, ["Query"]);
}

#[test]
fn a_large_passthrough_frame_is_streamed_as_it_arrives() {
    let (mut m, mut host) = (machine(), FakeHost::passthrough());
    let big = frame(b'd', &vec![b'x'; STREAM_THRESHOLD + 10]);
    let mut buf = BytesMut::from(&big[..1000]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::NeedInput));
    assert_eq!(t.sent.len(), 1000, "the first part goes on at once");
    buf.extend_from_slice(&big[1000..]);
    buf.extend_from_slice(&sync());
    let t = turn(&mut m, &mut host, &mut buf);
    assert_eq!(t.sent, [&big[1000..], &sync()[..]].concat());
    assert_eq!(t.expects, ["Sync"]);
}

#[test]
fn a_frame_over_the_size_limit_is_a_violation() {
    let mut m = RequestMachine::new(100);
    let mut host = FakeHost::passthrough();
    let t = run(&mut m, &mut host, &[messages::query(&"x".repeat(200))]);
    let Outcome::Violation(err) = t.outcome else { panic!("expected a violation") };
    assert_eq!(err.code, "54000");
}

#[test]
fn statements_before_the_end_of_authentication_wait_for_it_and_terminate_ends() {
    let (mut m, mut host) = (machine(), FakeHost::judged(Script::default()));
    host.ready = false;
    host.auth_requests = 1;
    let password = frame(b'p', b"secret\0");
    let t = run(&mut m, &mut host, &[password.clone(), messages::query("SELECT 1")]);
    assert!(matches!(t.outcome, Outcome::AwaitStartup), "the Query waits for ReadyForQuery");
    assert_eq!(t.sent, password.to_vec(), "the password answer goes on");
    assert_eq!(m.auth_answers(), 1);
    host.ready = true;
    let mut buf = BytesMut::from(&messages::query("SELECT 1")[..]);
    buf.extend_from_slice(&frame(b'X', b""));
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::Terminate));
    assert_eq!(host.log(), ["sql SELECT 1 probe=true"], "judged once the session is ready");
    assert_eq!(t.expects, ["Query"]);
}

#[test]
fn a_simple_query_is_rewritten_raised_or_answered_locally() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("WITH x AS (SELECT 1) SELECT 1"));
    script.verdicts.push_back(Verdict::Raise(Raise { sql: "SELECT raise()".into(), control: false }));
    script.verdicts.push_back(Verdict::Respond(LocalReply::command("SET")));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[messages::query("UPDATE t SET a = 1"), messages::query("DELETE FROM t")]);
    assert_eq!(t.sent, cat(&[messages::query("WITH x AS (SELECT 1) SELECT 1"), messages::query("SELECT raise()")]));
    assert_eq!(t.expects, ["Query+t", "Query"]);
    let t = run(&mut m, &mut host, &[messages::query("SET dualwrite.version = 'new'")]);
    assert!(t.sent.is_empty(), "a local answer sends nothing upstream");
    assert_eq!(t.expects, ["Local(C,Z)"]);
    assert!(t.local_queued);
    assert_eq!(host.routes, [Route::Rewritten, Route::Rejected, Route::Control]);
}

#[test]
fn a_named_statement_rewritten_at_parse_carries_its_transform_to_bind_describe_and_execute_until_closed() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("WITH u AS (UPDATE t2 SET a = $1) SELECT 1"));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(
        &mut m,
        &mut host,
        &[
            parse("s1", "UPDATE t SET a = $1"),
            messages::bind("p1", "s1"),
            describe(b'S', "s1"),
            describe(b'P', "p1"),
            execute_limited("p1", 1),
            sync(),
        ],
    );
    assert_eq!(t.expects, ["Parse", "Bind", "DescribeS+t", "DescribeP+t", "Execute+t", "Sync"]);
    let expected = cat(&[
        parse("s1", "WITH u AS (UPDATE t2 SET a = $1) SELECT 1"),
        messages::bind("p1", "s1"),
        describe(b'S', "s1"),
        describe(b'P', "p1"),
        // The client's UPDATE returns no rows: its rewrite runs to completion whatever the row limit.
        messages::execute("p1"),
        sync(),
    ]);
    assert_eq!(t.sent, expected);
    assert_eq!(host.log()[1..], ["bind p1<-s1", "execute p1", "sync"]);
    // Closed, the name is free: a Bind of it is the server's business again.
    let t = run(&mut m, &mut host, &[messages::close_statement("s1"), close_portal("p1"), messages::bind("", "s1")]);
    assert_eq!(t.expects, ["Close", "Close", "Bind"]);
    assert_eq!(host.log(), ["close s1", "bind <-s1"]);
    let t = run(&mut m, &mut host, &[describe(b'S', "s1")]);
    assert_eq!(t.expects, ["DescribeS"]);
}

#[test]
fn the_unnamed_statement_is_replaced_by_the_next_unnamed_parse() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("SELECT 1"));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[parse("", "UPDATE t SET a = 1"), messages::bind("", ""), describe(b'S', "")]);
    assert_eq!(t.expects, ["Parse", "Bind", "DescribeS+t"]);
    let t = run(&mut m, &mut host, &[parse("", "SELECT 2"), messages::bind("", ""), messages::execute(""), sync()]);
    assert_eq!(t.expects, ["Parse", "Bind", "Execute", "Sync"], "the forwarded Parse dropped the old transform");
    assert_eq!(t.chunks, 1);
}

#[test]
fn a_statement_answered_locally_is_answered_at_each_step_without_the_server() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Respond(LocalReply::rows(
        vec!["version".into()],
        vec![vec![Some("new".into())]],
        "SHOW",
    )));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(
        &mut m,
        &mut host,
        &[
            parse("v", "SHOW dualwrite.version"),
            messages::bind("pv", "v"),
            describe(b'S', "v"),
            describe(b'P', "pv"),
            messages::execute("pv"),
            close_portal("pv"),
            messages::close_statement("v"),
            sync(),
        ],
    );
    assert_eq!(t.sent, sync().to_vec(), "only the Sync goes upstream");
    assert_eq!(t.expects, ["Local(1)", "Local(2)", "Local(t)", "Local(T)", "Local(D)", "Local(3)", "Local(3)", "Sync"]);
    assert!(t.local_queued);
    assert_eq!(host.routes, [Route::Control, Route::Control]);
}

#[test]
fn an_error_answered_at_parse_discards_the_batch_up_to_sync() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Respond(LocalReply::error(SqlError::new("42601", "no"))));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(
        &mut m,
        &mut host,
        &[parse("", "DUALWRITE BAD"), messages::bind("", ""), messages::execute(""), parse("x", "SELECT 1")],
    );
    assert!(t.sent.is_empty(), "the batch after the error is dropped");
    assert_eq!(t.expects, ["Local(E)"]);
    assert_eq!(host.errors, ["42601"]);
    assert_eq!(host.log(), ["sql DUALWRITE BAD probe=true"], "dropped frames are not judged");
    let t = run(&mut m, &mut host, &[flush(), sync(), messages::query("SELECT 2")]);
    assert_eq!(t.sent, cat(&[sync(), messages::query("SELECT 2")]), "the Sync ends the discarding");
    assert_eq!(t.expects, ["Sync", "Query"]);
}

#[test]
fn a_refusal_at_parse_is_raised_by_the_server_in_the_statements_place() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Raise(Raise { sql: "SELECT refuse()".into(), control: false }));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[parse("s", "DELETE FROM t"), messages::bind("", "s"), sync()]);
    let expected = cat(&[
        messages::parse(None, "SELECT refuse()", Vec::new()),
        messages::bind("", ""),
        messages::execute(""),
        messages::bind("", "s"),
        sync(),
    ]);
    assert_eq!(t.sent, expected);
    assert_eq!(t.expects, ["Hidden", "Hidden", "Execute", "Bind", "Sync"]);
    assert_eq!(host.routes, [Route::Rejected]);
}

#[test]
fn a_statement_not_in_utf8_is_refused_rather_than_rewritten() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("SELECT 1"));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let bad = frame(b'Q', b"UPDATE t SET a = '\xff'\0");
    let t = run(&mut m, &mut host, &[bad]);
    let sent = String::from_utf8_lossy(&t.sent).into_owned();
    assert!(sent.contains("22021"), "the server raises Postgres's encoding error: {sent}");
    assert_eq!(t.expects, ["Query"]);
}

#[test]
fn a_deferred_reply_stops_the_batch_until_it_is_handed_back() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Defer(Box::pin(async { LocalReply::command("DUALWRITE") })));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let mut buf = BytesMut::from(&cat(&[messages::query("DUALWRITE BACKFILL x"), messages::query("SELECT 1")])[..]);
    let t = turn(&mut m, &mut host, &mut buf);
    let Outcome::Defer(_, pending) = t.outcome else { panic!("expected a deferral") };
    assert!(t.sent.is_empty() && t.expects.is_empty());
    m.finish_deferred(&mut host, pending, LocalReply::command("DUALWRITE"));
    let t = turn(&mut m, &mut host, &mut buf);
    assert_eq!(t.expects, ["Local(C,Z)", "Query"], "the answer comes before the next statement's");
    assert_eq!(t.sent, messages::query("SELECT 1").to_vec());

    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Defer(Box::pin(async { LocalReply::default() })));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[parse("d", "DUALWRITE STATUS")]);
    let Outcome::Defer(_, pending) = t.outcome else { panic!("expected a deferral") };
    m.finish_deferred(&mut host, pending, LocalReply::command("DUALWRITE"));
    let t = run(&mut m, &mut host, &[messages::bind("", "d"), sync()]);
    assert_eq!(t.expects, ["Local(1)", "Local(2)", "Sync"], "the deferred Parse prepared a local statement");
}

#[test]
fn a_statement_whose_route_changed_is_prepared_again_before_its_bind_and_describe() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("SELECT old()"));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    run(&mut m, &mut host, &[parse("s", "UPDATE t SET a = 1"), sync()]);
    host.script().reprepares.insert(
        b"s".to_vec(),
        Reprepare { sql: "SELECT new()".into(), param_types: vec![23], transform: update_transform() },
    );
    let t = run(&mut m, &mut host, &[messages::bind("p", "s"), messages::execute("p"), sync()]);
    let expected = cat(&[
        messages::close_statement("s"),
        messages::parse(Some("s".into()), "SELECT new()", vec![23]),
        messages::bind("p", "s"),
        messages::execute("p"),
        sync(),
    ]);
    assert_eq!(t.sent, expected);
    assert_eq!(t.expects, ["Hidden", "Hidden", "Bind", "Execute+t", "Sync"]);
    // Re-prepared to the client's own SQL (no transform): the statement passes through from then on.
    host.script().reprepares.insert(
        b"s".to_vec(),
        Reprepare { sql: "UPDATE t SET a = 1".into(), param_types: Vec::new(), transform: Default::default() },
    );
    let t = run(&mut m, &mut host, &[describe(b'S', "s"), messages::bind("p", "s"), messages::execute("p")]);
    assert_eq!(t.expects, ["Hidden", "Hidden", "DescribeS", "Bind", "Execute"]);
}

#[test]
fn a_probe_at_a_sync_point_brings_its_own_sync_and_the_frame_is_judged_again() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Forward);
    script.verdicts.push_back(Verdict::Probe("SELECT to_regclass('t')".into()));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let input = parse("s", "UPDATE t SET a = 1");
    let mut buf = BytesMut::from(&cat(&[messages::query("SELECT 0"), input.clone()])[..]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::Probe));
    assert_eq!(t.sent, cat(&[messages::query("SELECT 0"), messages::probe("SELECT to_regclass('t')", true)]));
    assert_eq!(t.expects, ["Query", "Probe(sync)"]);
    assert_eq!(&buf[..], &input[..], "the Parse waits in the buffer");
    let t = turn(&mut m, &mut host, &mut buf);
    assert_eq!(t.sent, input.to_vec());
    assert_eq!(t.expects, ["Parse"]);
    assert_eq!(host.log()[1..], ["sql UPDATE t SET a = 1 probe=true", "sql UPDATE t SET a = 1 probe=true"]);
}

#[test]
fn a_probe_inside_an_open_batch_flushes_instead_of_syncing() {
    let mut script = Script::default();
    script.verdicts.push_back(rewrite("SELECT 1"));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    run(&mut m, &mut host, &[parse("s", "UPDATE t SET a = 1"), sync()]);
    host.script().probes.insert(b"s".to_vec(), "SELECT probe()".into());
    let mut buf = BytesMut::from(&cat(&[parse("", "SELECT 2"), messages::bind("p", "s"), sync()])[..]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::Probe));
    assert_eq!(t.sent, cat(&[parse("", "SELECT 2"), messages::probe("SELECT probe()", false)]));
    assert_eq!(t.expects, ["Parse", "Probe(flush)"]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert_eq!(t.expects, ["Bind", "Sync"]);
    // After the Sync the next probe is at a sync point again.
    host.script().probes.insert(b"s".to_vec(), "SELECT probe()".into());
    let t = run(&mut m, &mut host, &[describe(b'S', "s")]);
    assert_eq!(t.sent, messages::probe("SELECT probe()", true).to_vec());
}

#[test]
fn no_probe_is_offered_while_a_batch_is_discarded() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Respond(LocalReply::error(SqlError::new("42601", "no"))));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    run(&mut m, &mut host, &[parse("", "DUALWRITE BAD")]);
    assert!(!m.can_probe());
    host.script().probes.insert(b"s".to_vec(), "SELECT probe()".into());
    let t = run(&mut m, &mut host, &[messages::bind("", "s"), sync()]);
    assert_eq!(t.sent, sync().to_vec());
    assert!(m.can_probe());
}

#[test]
fn unreadable_frames_go_to_the_server_which_refuses_them() {
    let (mut m, mut host) = (machine(), FakeHost::judged(Script::default()));
    let bad_describe = frame(b'D', b"S");
    let bad_bind = frame(b'B', b"p");
    let t = run(&mut m, &mut host, &[bad_describe.clone(), bad_bind.clone()]);
    assert_eq!(t.sent, cat(&[bad_describe, bad_bind]));
    assert_eq!(t.expects, ["DescribeP", "Bind"]);
}

#[test]
fn function_calls_and_copy_traffic_pass_with_what_they_expect() {
    let (mut m, mut host) = (machine(), FakeHost::passthrough());
    let input = [frame(b'F', b"\0\0\0\x01\0\0\0\0\0\0"), frame(b'd', b"1\t2\n"), frame(b'c', b"")];
    let t = run(&mut m, &mut host, &input);
    assert_eq!(t.sent, cat(&input));
    assert_eq!(t.expects, ["FunctionCall"]);
}

#[test]
fn a_row_limit_is_kept_for_a_rewritten_statement_that_returns_rows() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Rewrite(Rewrite {
        sql: "SELECT a FROM t_new".into(),
        statements: vec![ResponseTransform { command_tag: Some(CommandTag::Select), ..Default::default() }],
        control: false,
        tee: None,
    }));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let input = [messages::bind("p", "s"), execute_limited("p", 10), sync()];
    run(&mut m, &mut host, &[parse("s", "SELECT a FROM t")]);
    let t = run(&mut m, &mut host, &input);
    assert_eq!(t.sent, cat(&input), "the client's Execute with its row limit goes as sent");
    assert_eq!(t.expects, ["Bind", "Execute+t", "Sync"]);
}

#[test]
fn terminate_ends_the_session_even_while_a_batch_is_discarded() {
    let mut script = Script::default();
    script.verdicts.push_back(Verdict::Respond(LocalReply::error(SqlError::new("42601", "no"))));
    let (mut m, mut host) = (machine(), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[parse("", "DUALWRITE BAD"), messages::execute(""), frame(b'X', b"")]);
    assert!(matches!(t.outcome, Outcome::Terminate));
    assert_eq!(t.sent, frame(b'X', b"").to_vec(), "only the Terminate goes upstream");
}

mod tee;
