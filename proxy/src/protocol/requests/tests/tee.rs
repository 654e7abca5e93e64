//! The request machine's side of a COPY dual-written with COPYs alone (`requests::tee`): the tee's statements
//! at the client's Query, the rows relayed and kept, the second send at CopyDone, the fallback, the staging
//! path past the limit, a client that leaves mid-COPY.

use std::sync::Arc;

use super::*;
use crate::copy_budget::CopyBudget;
use crate::protocol::responses::FallbackOutcome;

/// A COPY whose staging path is `STAGING` and whose tee is `TEE` (one check, two COPYs).
fn tee_verdict() -> Verdict {
    let hidden = ResponseTransform { hidden: true, ..ResponseTransform::default() };
    Verdict::Rewrite(Rewrite {
        sql: "STAGING".into(),
        statements: vec![hidden.clone(), hidden.clone()],
        control: false,
        tee: Some(TeeRewrite {
            sql: "TEE".into(),
            statements: vec![ResponseTransform { falls_back: true, ..hidden.clone() }, hidden.clone(), hidden],
            columns: 3,
        }),
    })
}

fn copy_data(rows: &str) -> Bytes {
    frame(b'd', rows.as_bytes())
}

/// `m` with a tee started: the client's COPY sent and judged [`tee_verdict`].
fn teeing(mut m: RequestMachine) -> (RequestMachine, FakeHost) {
    let mut script = Script::default();
    script.verdicts.push_back(tee_verdict());
    let mut host = FakeHost::judged(script);
    run(&mut m, &mut host, &[messages::query("COPY t (a, b, c) FROM STDIN")]);
    (m, host)
}

/// `t` is the tee giving way to staging at `second` for `setting`: the tee's COPY failed by the proxy, then
/// the staging statements with the rows kept (`first`) and the rest of the COPY.
fn assert_gave_way(t: &Turn, setting: &str, first: Bytes, second: Bytes) {
    assert_eq!(t.expects, ["Abandoned", "Query+t"]);
    let fail = messages::copy_fail(&format!("dualwrite: the COPY passed limits.{setting}; written through staging"));
    let expected = cat(&[fail, messages::query("STAGING"), first, second, messages::copy_done()]);
    assert_eq!(t.sent, expected, "the tee's COPY failed, then staging with the rows kept and the rest");
}

#[test]
fn a_tee_relays_the_copy_as_it_comes_sends_the_rows_again_at_copy_done_and_falls_back_with_them() {
    let mut script = Script::default();
    script.verdicts.push_back(tee_verdict());
    let (mut m, mut host) = (machine().with_copy_tee_limit(1 << 20), FakeHost::judged(script));
    let t = run(&mut m, &mut host, &[messages::query("COPY t (a, b, c) FROM STDIN")]);
    assert_eq!(t.sent, messages::query("TEE").to_vec(), "the tee's statements at once");
    assert_eq!(t.expects, ["Local(G)", "Query+t"], "the client's CopyInResponse before the tee's answer");
    assert!(t.local_queued);
    let rows = [copy_data("1\t2\t3\n"), copy_data("4\t5\t6\n")];
    let t = run(&mut m, &mut host, &rows);
    assert_eq!(t.sent, cat(&rows), "relayed as they come");
    assert!(matches!(t.outcome, Outcome::NeedInput));
    // A Flush or Sync inside the COPY is not relayed (a server whose check failed would answer a Sync).
    assert!(run(&mut m, &mut host, &[flush(), sync()]).sent.is_empty());
    let t = run(&mut m, &mut host, &[messages::copy_done()]);
    assert!(matches!(t.outcome, Outcome::AwaitTee));
    assert_eq!(t.sent, cat(&[messages::copy_done(), cat(&rows).into(), messages::copy_done()]));
    let mut out = Vec::new();
    m.finish_tee(&mut host, FallbackOutcome::FallBack, &mut out);
    let (expects, _) = m.take_expects();
    assert_eq!(expects.map(|e| describe_expect(&e)).collect::<Vec<_>>(), ["Query+t"]);
    assert_eq!(cat(&out), cat(&[messages::query("STAGING"), cat(&rows).into(), messages::copy_done()]));
}

#[test]
fn a_tee_past_its_limit_gives_way_to_the_staging_path_which_the_rest_of_the_copy_streams_into() {
    let (mut m, mut host) = teeing(machine().with_copy_tee_limit(20));
    let first = copy_data("1\t2\t3\n");
    run(&mut m, &mut host, std::slice::from_ref(&first));
    let second = copy_data("4\t5\t6\n");
    let t = run(&mut m, &mut host, &[second.clone(), messages::copy_done()]);
    assert_gave_way(&t, "copy_buffer_mb", first, second);
    assert!(matches!(t.outcome, Outcome::NeedInput), "nothing to wait for");
}

#[test]
fn a_tee_whose_rows_do_not_fit_in_what_all_sessions_may_keep_gives_way_to_the_staging_path() {
    let budget = CopyBudget::new(40);
    let mut other_session = budget.reservation();
    assert!(other_session.grow(20));
    let (mut m, mut host) = teeing(machine().with_copy_tee_limit(1 << 20).with_copy_budget(Arc::clone(&budget)));
    let first = copy_data("1\t2\t3\n");
    let t = run(&mut m, &mut host, std::slice::from_ref(&first));
    assert_eq!(t.sent, first.to_vec(), "12 bytes fit beside the other session's 20");
    assert_eq!(budget.used(), 20 + first.len());
    let second = copy_data("4\t5\t6\n");
    let t = run(&mut m, &mut host, &[second.clone(), messages::copy_done()]);
    assert_gave_way(&t, "copy_buffer_total_mb", first, second);
    assert_eq!(budget.used(), 20, "the abandoned tee gave its bytes back");
    drop(other_session);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_tee_gives_its_bytes_back_when_it_ends_and_when_its_session_does() {
    let budget = CopyBudget::new(1 << 20);
    for ended in [FallbackOutcome::Done, FallbackOutcome::FallBack] {
        let (mut m, mut host) = teeing(machine().with_copy_tee_limit(1 << 20).with_copy_budget(Arc::clone(&budget)));
        run(&mut m, &mut host, &[copy_data("1\t2\t3\n"), messages::copy_done()]);
        assert!(budget.used() > 0, "kept until the tee's outcome");
        m.finish_tee(&mut host, ended, &mut Vec::new());
        assert_eq!(budget.used(), 0, "given back at {ended:?}");
    }
    let (mut m, mut host) = teeing(machine().with_copy_tee_limit(1 << 20).with_copy_budget(Arc::clone(&budget)));
    run(&mut m, &mut host, &[copy_data("1\t2\t3\n")]);
    assert!(budget.used() > 0);
    drop(m);
    assert_eq!(budget.used(), 0, "a session that ends mid-COPY gives its bytes back");
}

#[test]
fn a_client_leaving_in_the_middle_of_a_tee_fails_its_copy_before_its_terminate_goes_on() {
    let (mut m, mut host) = teeing(machine().with_copy_tee_limit(1 << 20));
    let mut buf = BytesMut::from(&cat(&[copy_data("1\t2\t3\n"), frame(b'X', b"")])[..]);
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::AwaitTee));
    let fail = messages::copy_fail("the client ended its session during COPY from stdin");
    assert_eq!(t.sent, cat(&[copy_data("1\t2\t3\n"), fail]), "never a CopyDone: nothing of it commits");
    m.finish_tee(&mut host, FallbackOutcome::Done, &mut Vec::new());
    let t = turn(&mut m, &mut host, &mut buf);
    assert!(matches!(t.outcome, Outcome::Terminate));
}
