//! Unit tests of the control grammar.

use super::*;

fn ok(sql: &str) -> ControlCommand {
    parse_control(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

fn err(sql: &str) -> SqlError {
    let e = parse_control(sql).expect_err(sql);
    assert_eq!(e.code, "42601", "{sql}: {e:?}");
    e
}

fn route(m: &str, v: &str, percent: u8) -> ControlCommand {
    ControlCommand::Route { migration: m.into(), target: ReadTarget::Version(v.into()), percent }
}

#[test]
fn status_in_any_case_with_optional_semicolon() {
    for sql in ["DUALWRITE STATUS", "dualwrite status;", "  DualWrite\n\tStatus ; ", "/* c */ dualwrite -- x\n status"]
    {
        assert_eq!(ok(sql), ControlCommand::Status, "{sql}");
    }
}

#[test]
fn route_forms() {
    assert_eq!(ok("DUALWRITE ROUTE users_split_name READS TO v2"), route("users_split_name", "v2", 100));
    assert_eq!(ok("dualwrite route Users READS to 'v2' percent 25;"), route("users", "v2", 25));
    assert_eq!(ok("DUALWRITE ROUTE \"Users\" READS TO \"V2\" PERCENT 0"), route("Users", "V2", 0));
    assert_eq!(ok("DUALWRITE ROUTE m READS TO v1 PERCENT 100"), route("m", "v1", 100));
    assert_eq!(
        ok("DUALWRITE ROUTE m READS TO DEFAULT"),
        ControlCommand::Route { migration: "m".into(), target: ReadTarget::SessionVersion, percent: 100 }
    );
}

#[test]
fn route_errors_name_the_expectation() {
    let e = err("DUALWRITE ROUTE m READ TO v2");
    assert!(e.message.contains("\"READ\"") && e.message.contains("expected READS"), "{e:?}");
    assert_eq!(e.position, Some(19));
    let e = err("DUALWRITE ROUTE m READS TO v2 PERCENT 101");
    assert!(e.message.contains("0 to 100"), "{e:?}");
    let e = err("DUALWRITE ROUTE m READS TO v2 PERCENT -5");
    assert!(e.message.contains("percentage"), "{e:?}");
    let e = err("DUALWRITE ROUTE m READS TO v2 PERCENT 2.5");
    assert!(e.message.contains("percentage"), "{e:?}");
    let e = err("DUALWRITE ROUTE m READS TO");
    assert!(e.message.contains("end of input") && e.message.contains("version name"), "{e:?}");
    let e = err("DUALWRITE ROUTE m READS TO v2 PERCENT 5 extra");
    assert!(e.message.contains("\"extra\"") && e.message.contains("end of the command"), "{e:?}");
    let e = err("DUALWRITE ROUTE m READS TO DEFAULT PERCENT 5");
    assert!(e.message.contains("DEFAULT"), "{e:?}");
    err("DUALWRITE ROUTE READS TO v2");
    err("DUALWRITE ROUTE 5 READS TO v2");
}

#[test]
fn phase_forms() {
    for (sql, phase, force) in [
        ("DUALWRITE PHASE m dual_write", Phase::DualWrite, false),
        ("DUALWRITE PHASE m CUTOVER", Phase::Cutover, false),
        ("dualwrite phase m cutover force;", Phase::Cutover, true),
        ("DUALWRITE PHASE m 'complete'", Phase::Complete, false),
        ("DUALWRITE PHASE m off FORCE", Phase::Off, true),
    ] {
        assert_eq!(ok(sql), ControlCommand::Phase { migration: "m".into(), phase, force }, "{sql}");
    }
}

#[test]
fn phase_errors() {
    let e = err("DUALWRITE PHASE m sideways");
    assert!(e.message.contains("\"sideways\"") && e.message.contains("dual_write, cutover, complete or off"), "{e:?}");
    assert_eq!(e.position, Some(19));
    let e = err("DUALWRITE PHASE m");
    assert!(e.message.contains("end of input") && e.message.contains("a phase"), "{e:?}");
    let e = err("DUALWRITE PHASE m cutover now");
    assert!(e.message.contains("FORCE or the end"), "{e:?}");
    let e = err("DUALWRITE PHASE m cutover FORCE FORCE");
    assert!(e.message.contains("expected the end of the command"), "{e:?}");
}

#[test]
fn rollback() {
    assert_eq!(
        ok("DUALWRITE ROLLBACK users_split_name;"),
        ControlCommand::Rollback { migration: "users_split_name".into() }
    );
    let e = err("DUALWRITE ROLLBACK");
    assert!(e.message.contains("migration name"), "{e:?}");
    err("DUALWRITE ROLLBACK a b");
}

#[test]
fn backfill_forms() {
    assert_eq!(
        ok("DUALWRITE BACKFILL m START"),
        ControlCommand::Backfill { migration: "m".into(), action: BackfillAction::Start, batch: None, rate: None }
    );
    assert_eq!(
        ok("dualwrite backfill m start batch 500 rate 10000"),
        ControlCommand::Backfill {
            migration: "m".into(),
            action: BackfillAction::Start,
            batch: Some(500),
            rate: Some(10000)
        }
    );
    assert_eq!(
        ok("DUALWRITE BACKFILL m RESUME RATE 5 BATCH 7;"),
        ControlCommand::Backfill {
            migration: "m".into(),
            action: BackfillAction::Resume,
            batch: Some(7),
            rate: Some(5)
        }
    );
    assert_eq!(
        ok("DUALWRITE BACKFILL m PAUSE"),
        ControlCommand::Backfill { migration: "m".into(), action: BackfillAction::Pause, batch: None, rate: None }
    );
}

#[test]
fn backfill_errors() {
    let e = err("DUALWRITE BACKFILL m STOP");
    assert!(e.message.contains("\"STOP\"") && e.message.contains("START, PAUSE or RESUME"), "{e:?}");
    let e = err("DUALWRITE BACKFILL m START BATCH 0");
    assert!(e.message.contains("batch size"), "{e:?}");
    let e = err("DUALWRITE BACKFILL m START BATCH 1 BATCH 2");
    assert!(e.message.contains("RATE or the end"), "{e:?}");
    let e = err("DUALWRITE BACKFILL m PAUSE BATCH 10");
    assert!(e.message.contains("expected the end of the command"), "{e:?}");
    let e = err("DUALWRITE BACKFILL m START RATE");
    assert!(e.message.contains("end of input") && e.message.contains("rows per second"), "{e:?}");
    err("DUALWRITE BACKFILL m START BATCH 99999999999");
}

#[test]
fn verify_forms() {
    assert_eq!(ok("DUALWRITE VERIFY m"), ControlCommand::Verify { migration: "m".into(), repair: false });
    assert_eq!(ok("dualwrite verify m repair;"), ControlCommand::Verify { migration: "m".into(), repair: true });
    let e = err("DUALWRITE VERIFY m FIX");
    assert!(e.message.contains("REPAIR or the end"), "{e:?}");
}

#[test]
fn audit_forms() {
    assert_eq!(ok("DUALWRITE AUDIT"), ControlCommand::Audit { migration: None, limit: None });
    assert_eq!(ok("DUALWRITE AUDIT;"), ControlCommand::Audit { migration: None, limit: None });
    assert_eq!(ok("DUALWRITE AUDIT m"), ControlCommand::Audit { migration: Some("m".into()), limit: None });
    assert_eq!(ok("DUALWRITE AUDIT LIMIT 3"), ControlCommand::Audit { migration: None, limit: Some(3) });
    assert_eq!(ok("DUALWRITE AUDIT m LIMIT 3"), ControlCommand::Audit { migration: Some("m".into()), limit: Some(3) });
    err("DUALWRITE AUDIT m n");
    assert_eq!(ok("DUALWRITE AUDIT VERIFY"), ControlCommand::AuditVerify);
    assert_eq!(ok("dualwrite pools;"), ControlCommand::Pools);
    assert_eq!(ok("dualwrite audit verify;"), ControlCommand::AuditVerify);
    // A migration named verify is reached by quoting it.
    assert_eq!(
        ok("DUALWRITE AUDIT \"verify\""),
        ControlCommand::Audit { migration: Some("verify".into()), limit: None }
    );
    assert_eq!(
        ok("DUALWRITE AUDIT 'verify' LIMIT 2"),
        ControlCommand::Audit { migration: Some("verify".into()), limit: Some(2) }
    );
    let e = err("DUALWRITE AUDIT VERIFY LIMIT 2");
    assert!(e.message.contains("AUDIT \"verify\""), "{e:?}");
    err("DUALWRITE AUDIT 5");
}

#[test]
fn unknown_or_missing_verb() {
    let e = err("DUALWRITE FLIP");
    assert!(e.message.contains("\"FLIP\"") && e.message.contains(VERBS), "{e:?}");
    assert_eq!(e.position, Some(11));
    let e = err("DUALWRITE");
    assert!(e.message.contains("end of input"), "{e:?}");
    let e = err("DUALWRITE;");
    assert!(e.message.contains("end of input"), "{e:?}");
    let e = err("SELECT 1");
    assert!(e.message.contains("expected DUALWRITE"), "{e:?}");
    let e = err("\"DUALWRITE\" STATUS");
    assert!(e.message.contains("expected DUALWRITE"), "{e:?}");
}

#[test]
fn only_one_statement() {
    let e = err("DUALWRITE STATUS; DUALWRITE STATUS");
    assert!(e.message.contains("\";\""), "{e:?}");
    err("DUALWRITE STATUS;;");
}

#[test]
fn lexical_errors_are_syntax_errors() {
    err("DUALWRITE ROUTE 'unterminated READS TO v2");
}

#[test]
fn cheap_check() {
    assert!(is_control_command("DUALWRITE STATUS"));
    assert!(is_control_command("  /* hi */ -- x\n dualwrite status"));
    assert!(is_control_command("dualwrite"));
    assert!(!is_control_command("dualwrite_x status"));
    assert!(!is_control_command("SELECT 'DUALWRITE STATUS'"));
    assert!(!is_control_command("\"dualwrite\" status"));
    assert!(!is_control_command(""));
}

#[test]
fn verbs() {
    assert_eq!(ok("DUALWRITE STATUS").verb(), "STATUS");
    assert_eq!(ok("DUALWRITE VERIFY m").verb(), "VERIFY");
}
