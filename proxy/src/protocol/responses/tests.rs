//! The response queue, message by message, against what Postgres sends.

use super::*;
use crate::protocol::messages;

fn now() -> Instant {
    Instant::now()
}

fn rewritten_update() -> Arc<ResponseTransform> {
    Arc::new(ResponseTransform {
        command_tag: Some(CommandTag::Update),
        suppress_rows: true,
        describe_no_data: true,
        ..ResponseTransform::default()
    })
}

fn feed(q: &mut ResponseQueue, tags: &[u8]) -> Vec<Action> {
    tags.iter().map(|&t| q.on_message(t)).collect()
}

fn is_ready(a: &Action) -> bool {
    matches!(a, Action::Ready { .. })
}

#[test]
fn command_tags_keep_the_row_count() {
    assert_eq!(CommandTag::Update.rewrite("SELECT 3"), "UPDATE 3");
    assert_eq!(CommandTag::Insert.rewrite("SELECT 3"), "INSERT 0 3");
    assert_eq!(CommandTag::Delete.rewrite("SELECT 0"), "DELETE 0");
    assert_eq!(CommandTag::Select.rewrite("INSERT 0 7"), "SELECT 7");
    assert_eq!(CommandTag::Fixed("TRUNCATE TABLE".into()).rewrite("SELECT 1"), "TRUNCATE TABLE");
    let frame = messages::command_complete("SELECT 3");
    let out = rewrite_command_complete(&frame, &CommandTag::Insert).unwrap();
    assert_eq!(messages::decode_command_tag(&out).as_deref(), Some("INSERT 0 3"));
}

#[test]
fn passthrough_simple_query_with_several_statements() {
    let mut q = ResponseQueue::new();
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    let actions = feed(&mut q, b"TDDCCITDC");
    assert!(actions.iter().all(|a| *a == Action::Forward));
    assert!(q.is_busy());
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(!q.is_busy());
}

#[test]
fn simple_query_transform_applies_to_its_statement_only() {
    let mut q = ResponseQueue::new();
    let transforms: Arc<[ResponseTransform]> =
        Arc::from(vec![ResponseTransform::default(), (*rewritten_update()).clone()]);
    q.push(Expect::SimpleQuery { transforms: Some(transforms), started: now() });
    // statement 0: SELECT with rows, untouched; statement 1: rewritten UPDATE, rows dropped, tag rewritten
    assert_eq!(feed(&mut q, b"TDC"), vec![Action::Forward; 3]);
    assert_eq!(
        feed(&mut q, b"TDDC"),
        vec![Action::Drop, Action::Drop, Action::Drop, Action::RewriteTag(CommandTag::Update)]
    );
    // a notice in between changes nothing
    assert_eq!(q.on_message(b'N'), Action::Forward);
    assert!(is_ready(&q.on_message(b'Z')));
}

#[test]
fn extended_batch_with_named_and_unnamed_statements() {
    let mut q = ResponseQueue::new();
    let t = rewritten_update();
    // Parse s1 (rewritten); Bind p1; Describe S s1; Describe P p1; Execute p1; Close S s1;
    // Parse unnamed (passthrough); Bind; Execute; Sync
    q.push(Expect::Parse);
    q.push(Expect::Bind);
    q.push(Expect::Describe { statement: true, transform: Some(t.clone()) });
    q.push(Expect::Describe { statement: false, transform: Some(t.clone()) });
    q.push(Expect::Execute { transform: Some(t.clone()) });
    q.push(Expect::Close);
    q.push(Expect::Parse);
    q.push(Expect::Bind);
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Sync { started: now() });
    let actions = feed(&mut q, b"12tTTDDC312DDC");
    assert_eq!(
        actions,
        vec![
            Action::Forward,       // 1
            Action::Forward,       // 2
            Action::Forward,       // t
            Action::NoDataInstead, // T at Describe S
            Action::NoDataInstead, // T at Describe P
            Action::Drop,          // D
            Action::Drop,          // D
            Action::RewriteTag(CommandTag::Update),
            Action::Forward, // 3
            Action::Forward, // 1
            Action::Forward, // 2
            Action::Forward, // D
            Action::Forward, // D
            Action::Forward, // C
        ]
    );
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(q.is_empty());
}

#[test]
fn describe_with_nodata_and_portal_suspended() {
    let mut q = ResponseQueue::new();
    q.push(Expect::Describe { statement: true, transform: None });
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Sync { started: now() });
    assert_eq!(feed(&mut q, b"tn"), vec![Action::Forward; 2]);
    assert_eq!(feed(&mut q, b"DDs"), vec![Action::Forward; 3]);
    assert_eq!(q.len(), 2);
    assert_eq!(feed(&mut q, b"DC"), vec![Action::Forward; 2]);
    assert!(is_ready(&q.on_message(b'Z')));
}

#[test]
fn error_in_extended_batch_skips_to_sync_including_local_answers() {
    let mut q = ResponseQueue::new();
    q.push(Expect::Parse);
    q.push(Expect::Bind);
    q.push(Expect::Local(LocalAnswer { bytes: messages::parse_complete(), ready_for_query: false, extended: true }));
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Sync { started: now() });
    q.push(Expect::Local(LocalAnswer {
        bytes: messages::command_complete("SET"),
        ready_for_query: true,
        extended: false,
    }));
    assert_eq!(q.on_message(b'E'), Action::Forward);
    // the server answers nothing until Sync, so the local ParseComplete is never sent
    assert!(q.take_local().is_none());
    assert!(is_ready(&q.on_message(b'Z')));
    // the simple-query answer after the Sync is due now
    let local = q.take_local().unwrap();
    assert!(local.ready_for_query);
    assert!(q.is_empty());
}

#[test]
fn local_answers_wait_for_earlier_responses() {
    let mut q = ResponseQueue::new();
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    q.push(Expect::Local(LocalAnswer { bytes: Bytes::from_static(b"x"), ready_for_query: true, extended: false }));
    assert!(q.take_local().is_none());
    assert_eq!(feed(&mut q, b"TDC"), vec![Action::Forward; 3]);
    assert!(q.take_local().is_none());
    assert!(is_ready(&q.on_message(b'Z')));
    assert_eq!(&q.take_local().unwrap().bytes[..], b"x");
}

#[test]
fn error_in_simple_query_waits_for_ready() {
    let mut q = ResponseQueue::new();
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    assert_eq!(feed(&mut q, b"E"), vec![Action::Forward]);
    assert_eq!(q.len(), 2);
    assert!(is_ready(&q.on_message(b'Z')));
    assert_eq!(q.len(), 1);
}

#[test]
fn copy_traffic_and_function_calls_are_relayed() {
    let mut q = ResponseQueue::new();
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    q.push(Expect::FunctionCall { started: now() });
    assert_eq!(feed(&mut q, b"HddcC"), vec![Action::Forward; 5]);
    assert!(is_ready(&q.on_message(b'Z')));
    assert_eq!(q.on_message(b'V'), Action::Forward);
    assert!(is_ready(&q.on_message(b'Z')));
    // a ReadyForQuery nobody asked for (e.g. after a lost request) leaves the queue empty, not broken
    assert_eq!(q.on_message(b'Z'), Action::Ready { started: None, dual_write: None });
}

#[test]
fn a_probe_at_a_sync_point_is_answered_to_the_proxy_and_hidden_from_the_client_and_the_session_events() {
    let mut q = ResponseQueue::new();
    q.record_events();
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    q.push(Expect::Probe { at_sync: true });
    q.push(Expect::Parse);
    assert!(is_ready(&q.on_message(b'Z')));
    q.ready_status(b'I');
    let mut events = Vec::new();
    q.take_events(&mut events);
    assert_eq!(events, vec![SessionEvent::Ready(b'I')]);
    assert_eq!(feed(&mut q, b"312D"), vec![Action::Drop, Action::Drop, Action::Drop, Action::ProbeRow]);
    q.probe_row(Some(vec![Some("t".into()), None]));
    assert_eq!(q.on_message(b'N'), Action::Forward, "a notice during the probe still reaches the client");
    assert_eq!(feed(&mut q, b"C33"), vec![Action::Drop; 3]);
    assert!(!q.has_probe_answer(), "the probe's own ReadyForQuery is still due");
    assert_eq!(q.on_message(b'Z'), Action::Drop);
    assert!(!q.has_events(), "the probe's answers are no session events");
    assert_eq!(q.take_probe_answer(), Some(Some(vec![Some("t".into()), None])));
    assert_eq!(q.take_probe_answer(), None);
    assert_eq!(q.on_message(b'1'), Action::Forward, "the client's Parse is next");
}

#[test]
fn a_failed_probe_at_a_sync_point_answers_none_and_leaves_the_queue_in_order() {
    let mut q = ResponseQueue::new();
    q.push(Expect::Probe { at_sync: true });
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    assert_eq!(feed(&mut q, b"3EZ"), vec![Action::Drop; 3]);
    assert_eq!(q.take_probe_answer(), Some(None));
    assert_eq!(feed(&mut q, b"E"), vec![Action::Forward]);
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(q.is_empty());
}

#[test]
fn a_probe_inside_the_clients_batch_ends_at_its_last_close_and_the_batch_goes_on() {
    let mut q = ResponseQueue::new();
    q.record_events();
    q.push(Expect::Parse);
    q.push(Expect::Bind);
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Probe { at_sync: false });
    q.push(Expect::Parse);
    q.push(Expect::Sync { started: now() });
    assert_eq!(feed(&mut q, b"12C"), vec![Action::Forward; 3]);
    assert_eq!(feed(&mut q, b"312DC33"), {
        let mut v = vec![Action::Drop; 7];
        v[3] = Action::ProbeRow;
        v
    });
    assert!(q.has_probe_answer());
    assert_eq!(q.take_probe_answer(), Some(None), "no row was handed over");
    assert_eq!(feed(&mut q, b"1"), vec![Action::Forward]);
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(q.is_empty());
}

#[test]
fn a_probe_inside_a_batch_that_failed_before_it_answers_none_at_once() {
    let mut q = ResponseQueue::new();
    q.push(Expect::Parse);
    q.push(Expect::Probe { at_sync: false });
    assert_eq!(q.on_message(b'E'), Action::Forward, "the client's own error");
    assert_eq!(q.take_probe_answer(), Some(None), "the server skips the probe: answered without it");
    // A probe sent after the error is known is answered at once too.
    q.push(Expect::Probe { at_sync: false });
    assert_eq!(q.take_probe_answer(), Some(None));
    q.push(Expect::Sync { started: now() });
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(q.is_empty());
}

#[test]
fn a_probe_failing_inside_the_clients_batch_is_the_batchs_error() {
    let mut q = ResponseQueue::new();
    q.record_events();
    q.push(Expect::Probe { at_sync: false });
    q.push(Expect::Bind);
    q.push(Expect::Execute { transform: None });
    q.push(Expect::Sync { started: now() });
    assert_eq!(feed(&mut q, b"3E"), vec![Action::Drop, Action::Forward]);
    assert_eq!(q.take_probe_answer(), Some(None));
    let mut events = Vec::new();
    q.take_events(&mut events);
    assert_eq!(events, vec![SessionEvent::Failed], "the client sees its batch fail");
    assert!(is_ready(&q.on_message(b'Z')));
    assert!(q.is_empty());
}

#[test]
fn a_dual_writing_request_hands_its_sink_to_ready_and_the_next_request_does_not() {
    let sink = LatencySink::new(|_| {});
    let dual_write = Arc::new(ResponseTransform { dual_write: Some(sink.clone()), ..(*rewritten_update()).clone() });
    let mut q = ResponseQueue::new();
    // Extended: the sink of the Execute's statement reaches the batch's ReadyForQuery.
    q.push(Expect::Bind);
    q.push(Expect::Execute { transform: Some(dual_write) });
    q.push(Expect::Sync { started: now() });
    feed(&mut q, b"2C");
    assert!(matches!(q.on_message(b'Z'), Action::Ready { started: Some(_), dual_write: Some(s) } if s == sink));
    // A plain request after it carries none.
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    feed(&mut q, b"TDC");
    assert!(matches!(q.on_message(b'Z'), Action::Ready { started: Some(_), dual_write: None }));
}

/// COPY FROM STDIN into a migrated table: staging CREATE, the client's COPY, the dual-write block, the
/// query of its row count and the DROP in one simple Query. The client sees CopyInResponse, `COPY n` made
/// from the count's row and ReadyForQuery only, and the session events count one statement.
fn copy_expansion(sink: &LatencySink) -> Arc<[ResponseTransform]> {
    let hidden = ResponseTransform { suppress_rows: true, describe_no_data: true, hidden: true, ..Default::default() };
    let count = ResponseTransform {
        command_tag: Some(CommandTag::Copy),
        suppress_rows: true,
        describe_no_data: true,
        count_from_row: true,
        dual_write: Some(sink.clone()),
        ..Default::default()
    };
    vec![hidden.clone(), hidden.clone(), hidden.clone(), count, hidden].into()
}

#[test]
fn the_statements_around_a_copy_are_hidden_from_the_client_and_the_session_events() {
    let sink = LatencySink::new(|_| {});
    let mut q = ResponseQueue::new();
    q.record_events();
    q.push(Expect::SimpleQuery { transforms: Some(copy_expansion(&sink)), started: now() });
    // CREATE TABLE AS (SELECT 0), CopyInResponse, COPY 2, DO, the count's RowDescription and row.
    let actions = feed(&mut q, b"CGCCTD");
    use Action::{CountRow, Drop, Forward};
    assert_eq!(actions, vec![Drop, Forward, Drop, Drop, Drop, CountRow]);
    q.count_row(Some(vec![Some("2".into())]));
    // The count's SELECT 1 becomes COPY 2, then the DROP TABLE.
    assert_eq!(q.on_message(b'C'), Action::TagWithRows(CommandTag::Copy, 2));
    assert_eq!(CommandTag::Copy.with_rows(2), "COPY 2");
    assert_eq!(q.on_message(b'C'), Drop);
    assert!(matches!(q.on_message(b'Z'), Action::Ready { started: Some(_), dual_write: Some(s) } if s == sink));
    let mut events = Vec::new();
    q.take_events(&mut events);
    assert_eq!(events, vec![SessionEvent::Completed]);
    assert!(q.is_empty());
}

#[test]
fn an_error_in_a_copy_expansion_reaches_the_client_without_a_copy_tag() {
    let sink = LatencySink::new(|_| {});
    let mut q = ResponseQueue::new();
    q.record_events();
    // Bad COPY data (or CopyFail): the server's error, then ReadyForQuery; nothing after it ran.
    q.push(Expect::SimpleQuery { transforms: Some(copy_expansion(&sink)), started: now() });
    assert_eq!(feed(&mut q, b"CGE"), vec![Action::Drop, Action::Forward, Action::Forward]);
    assert!(matches!(q.on_message(b'Z'), Action::Ready { started: Some(_), dual_write: None }));
    // The dual write fails (a unique violation) after the COPY completed: the client sees only the error.
    q.push(Expect::SimpleQuery { transforms: Some(copy_expansion(&sink)), started: now() });
    assert_eq!(feed(&mut q, b"CGCE"), vec![Action::Drop, Action::Forward, Action::Drop, Action::Forward]);
    assert!(is_ready(&q.on_message(b'Z')));
    let mut events = Vec::new();
    q.take_events(&mut events);
    assert_eq!(events, vec![SessionEvent::Failed, SessionEvent::Failed]);
}

fn ticket(name: &str, client: Option<&str>, hidden: bool) -> PrepareTicket {
    PrepareTicket {
        server_name: name.into(),
        client_name: client.map(|c| Bytes::copy_from_slice(c.as_bytes())),
        hidden,
    }
}

#[test]
fn pooled_parses_the_server_failed_or_skipped_are_reported_and_the_prepared_ones_are_not() {
    use btag::*;
    let mut q = ResponseQueue::new();
    // Prepared (hidden), then the client's own Parse: both ParseComplete.
    q.push(Expect::Prepare(ticket("dualwrite_s1", None, true)));
    q.push(Expect::Bind);
    q.push(Expect::Prepare(ticket("dualwrite_s2", Some("s2"), false)));
    q.push(Expect::Sync { started: now() });
    let actions = feed(&mut q, &[PARSE_COMPLETE, BIND_COMPLETE, PARSE_COMPLETE, READY_FOR_QUERY]);
    assert_eq!(actions[0], Action::Drop, "the proxy's own prepare is hidden");
    assert_eq!(actions[2], Action::Forward, "the client's ParseComplete is relayed");
    assert!(!q.has_failed_prepares());

    // The client's Parse fails; the Parse after it in the batch is skipped by the server.
    q.push(Expect::Prepare(ticket("dualwrite_s3", Some("bad"), false)));
    q.push(Expect::Bind);
    q.push(Expect::Prepare(ticket("dualwrite_s4", None, true)));
    q.push(Expect::Sync { started: now() });
    let actions = feed(&mut q, &[ERROR_RESPONSE, READY_FOR_QUERY]);
    assert_eq!(actions[0], Action::Forward, "the error reaches the client");
    assert!(is_ready(&actions[1]));
    assert_eq!(
        q.take_failed_prepares(),
        vec![ticket("dualwrite_s3", Some("bad"), false), ticket("dualwrite_s4", None, true)]
    );
    assert!(!q.has_failed_prepares(), "taken once");

    // An error before the Parse (a Bind of an unknown portal): the Parse is skipped, so it failed too.
    q.push(Expect::Bind);
    q.push(Expect::Prepare(ticket("dualwrite_s5", Some("s5"), false)));
    q.push(Expect::Sync { started: now() });
    feed(&mut q, &[ERROR_RESPONSE, READY_FOR_QUERY]);
    assert_eq!(q.take_failed_prepares(), vec![ticket("dualwrite_s5", Some("s5"), false)]);
    assert!(q.is_empty());
}

/// The statements of a COPY dual-written with COPYs alone: the check and the client's COPY hidden (its
/// count kept), the second COPY answering with that count; the check and the second COPY fall back.
fn tee() -> Expect {
    let hidden = ResponseTransform { hidden: true, suppress_rows: true, ..ResponseTransform::default() };
    let transforms = vec![
        ResponseTransform { falls_back: true, ..hidden.clone() },
        ResponseTransform { keeps_count: true, copy_response_hidden: true, ..hidden },
        ResponseTransform {
            command_tag: Some(CommandTag::Copy),
            count_from_row: true,
            copy_response_hidden: true,
            falls_back: true,
            ..ResponseTransform::default()
        },
    ];
    Expect::SimpleQuery { transforms: Some(Arc::from(transforms)), started: now() }
}

#[test]
fn a_tee_that_runs_to_its_end_answers_with_the_client_copys_count_and_says_done() {
    let mut q = ResponseQueue::new();
    q.push(tee());
    // DO; the client's COPY (CopyInResponse, CommandComplete); the second COPY; ReadyForQuery.
    assert_eq!(feed(&mut q, b"CGC"), vec![Action::Drop, Action::Drop, Action::KeepCount]);
    q.keep_count(Some("COPY 7".into()));
    assert_eq!(feed(&mut q, b"GC"), vec![Action::Drop, Action::TagWithRows(CommandTag::Copy, 7)]);
    assert!(is_ready(&q.on_message(b'Z')));
    assert_eq!(q.take_fallback_outcome(), Some(FallbackOutcome::Done));
    assert_eq!(q.take_fallback_outcome(), None);
}

#[test]
fn a_failing_check_or_second_copy_is_dropped_with_its_ready_for_query_and_falls_back() {
    for failing_at in [0, 2] {
        let mut q = ResponseQueue::new();
        q.push(tee());
        if failing_at == 2 {
            feed(&mut q, b"CGCG");
        }
        assert_eq!(q.on_message(b'E'), Action::FallingBack, "the proxy's error, at statement {failing_at}");
        assert_eq!(q.on_message(b'Z'), Action::Drop, "not the client's ReadyForQuery");
        assert_eq!(q.take_fallback_outcome(), Some(FallbackOutcome::FallBack));
        assert!(!q.is_busy());
    }
}

#[test]
fn an_error_of_the_clients_own_copy_reaches_it_and_nothing_falls_back() {
    let mut q = ResponseQueue::new();
    q.push(tee());
    assert_eq!(feed(&mut q, b"CG"), vec![Action::Drop, Action::Drop]);
    assert_eq!(q.on_message(b'E'), Action::Forward);
    assert!(is_ready(&q.on_message(b'Z')));
    assert_eq!(q.take_fallback_outcome(), Some(FallbackOutcome::Done));
}

#[test]
fn an_abandoned_tee_answers_nothing_and_the_staging_path_after_it_answers_the_client() {
    let mut q = ResponseQueue::new();
    q.push(tee());
    q.push(Expect::Abandoned);
    q.push(Expect::SimpleQuery { transforms: None, started: now() });
    // The proxy's CopyFail fails the client's COPY: dropped, with its ReadyForQuery.
    assert_eq!(feed(&mut q, b"CGE"), vec![Action::Drop, Action::Drop, Action::FallingBack]);
    assert_eq!(q.on_message(b'Z'), Action::Drop);
    assert_eq!(q.take_fallback_outcome(), None, "nothing waits for an abandoned tee");
    assert_eq!(feed(&mut q, b"GC"), vec![Action::Forward, Action::Forward]);
    assert!(is_ready(&q.on_message(b'Z')));
}
