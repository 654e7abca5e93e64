//! Unit tests of the per-session version machine and its routes.

use std::collections::BTreeMap;

use super::*;
use crate::state::{BackfillProgress, MigrationState};
use SessionStatement::*;

const RULES: &str = r#"
[[migration]]
name = "users"
table = "users"
shadow = "users_v2"
key = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
[migration.backward]
id = "id"
name = "first_name"

[[migration]]
name = "orders"
table = "orders"
shadow = "orders_v3"
key = ["id"]
versions = { old = "v1", new = "v3" }
initial_phase = "off"
[migration.forward]
id = "id"
[migration.backward]
id = "id"
"#;

fn catalog() -> &'static RuleSet {
    static RULE_SET: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    RULE_SET.get_or_init(|| RuleSet::from_toml(RULES, "test").unwrap())
}

fn defaults() -> VersionDefaults {
    VersionDefaults {
        roles: [("reporter".to_string(), "v2".to_string())].into(),
        applications: [("billing".to_string(), "v3".to_string())].into(),
    }
}

fn session(params: &[(&str, &str)]) -> SessionVersion {
    SessionVersion::new(params.iter().copied(), &defaults(), catalog()).unwrap()
}

fn set(v: &str) -> SessionStatement {
    Set { local: false, setting: Setting::Value(v.into()) }
}

/// Send a batch, then answer every statement successfully and end it with ReadyForQuery.
fn run_ok(s: &mut SessionVersion, statements: &[SessionStatement], status: u8) {
    for st in statements {
        s.sent(st.clone());
    }
    s.sent_sync();
    for _ in statements {
        s.completed();
    }
    s.ready_for_query(status);
}

#[test]
fn resolution_order() {
    let s = session(&[("user", "app")]);
    assert_eq!((s.version(), s.source()), (None, VersionSource::MigrationDefault));
    let s = session(&[("user", "app"), ("application_name", "billing")]);
    assert_eq!((s.version(), s.source()), (Some("v3"), VersionSource::Application));
    let s = session(&[("user", "reporter"), ("application_name", "billing")]);
    assert_eq!((s.version(), s.source()), (Some("v2"), VersionSource::Role));
    let mut s = session(&[("user", "reporter"), ("options", "-c dualwrite.version=v1")]);
    assert_eq!((s.version(), s.source()), (Some("v1"), VersionSource::Startup));
    run_ok(&mut s, &[set("v3")], b'I');
    assert_eq!((s.version(), s.source()), (Some("v3"), VersionSource::Set));
    run_ok(&mut s, &[Set { local: false, setting: Setting::Default }], b'I');
    assert_eq!((s.version(), s.source()), (Some("v1"), VersionSource::Startup), "RESET returns to the startup value");
}

#[test]
fn unknown_startup_version_is_refused() {
    let err = SessionVersion::new([("options", "--dualwrite.version=v9")], &defaults(), catalog()).err().unwrap();
    assert_eq!(err.code, "22023");
    assert!(err.message.contains("v9") && err.detail.as_deref().unwrap().contains("v1, v2, v3"), "{err:?}");
}

#[test]
fn unknown_set_is_refused_and_changes_nothing() {
    let mut s = session(&[]);
    run_ok(&mut s, &[set("v2")], b'I');
    let err = SessionVersion::check(&set("nope"), catalog()).unwrap_err();
    assert_eq!(err.code, "22023");
    assert!(SessionVersion::check(&set("v3"), catalog()).is_ok());
    assert!(SessionVersion::check(&Other, catalog()).is_ok());
    assert_eq!(s.version(), Some("v2"));
}

#[test]
fn defaults_are_validated() {
    assert!(defaults().validate(catalog()).is_ok());
    let bad = VersionDefaults { roles: [("r".to_string(), "v7".to_string())].into(), applications: BTreeMap::new() };
    assert!(bad.validate(catalog()).unwrap_err().contains("v7"));
}

#[test]
fn defaults_parse_from_toml() {
    let d: VersionDefaults = toml::from_str("[roles]\nreporter = \"v2\"\n[applications]\nbilling = \"v3\"\n").unwrap();
    assert_eq!(d, defaults());
}

#[test]
fn pipelined_statement_after_set_sees_the_new_version() {
    let mut s = session(&[]);
    s.sent(set("v2"));
    assert_eq!(s.version(), Some("v2"), "projection applies the SET before its answer");
    s.sent(Other);
    s.sent_sync();
    s.completed();
    s.completed();
    s.ready_for_query(b'I');
    assert_eq!(s.version(), Some("v2"));
}

#[test]
fn error_later_in_an_implicit_batch_undoes_the_set() {
    let mut s = session(&[]);
    s.sent(set("v2"));
    s.sent(Other);
    s.sent_sync();
    s.completed();
    s.failed(); // the Other failed: the implicit transaction rolls back, SET included
    s.ready_for_query(b'I');
    assert_eq!(s.version(), None);
}

#[test]
fn set_skipped_after_an_earlier_error_never_applies() {
    let mut s = session(&[]);
    s.sent(Other);
    s.sent(set("v2"));
    s.sent_sync();
    assert_eq!(s.version(), Some("v2"));
    s.failed(); // the first statement failed; the SET was never executed
    assert_eq!(s.version(), None);
    s.ready_for_query(b'I');
    assert_eq!(s.version(), None);
}

#[test]
fn transaction_rollback_undoes_set() {
    let mut s = session(&[]);
    run_ok(&mut s, &[Begin], b'T');
    run_ok(&mut s, &[set("v2")], b'T');
    assert_eq!(s.version(), Some("v2"));
    run_ok(&mut s, &[Rollback { chain: false }], b'I');
    assert_eq!(s.version(), None);
}

#[test]
fn set_local_ends_at_commit_and_savepoints_undo() {
    let mut s = session(&[]);
    run_ok(&mut s, &[set("v2"), Begin, Set { local: true, setting: Setting::Value("v3".into()) }], b'T');
    assert_eq!(s.version(), Some("v3"));
    run_ok(&mut s, &[Savepoint("a".into()), set("v1"), RollbackTo("a".into())], b'T');
    assert_eq!(s.version(), Some("v3"));
    run_ok(&mut s, &[Commit { chain: false }], b'I');
    assert_eq!(s.version(), Some("v2"));
}

#[test]
fn error_in_block_then_commit_reports_rollback() {
    let mut s = session(&[]);
    run_ok(&mut s, &[Begin, set("v2")], b'T');
    s.sent(Other);
    s.sent_sync();
    s.failed();
    s.ready_for_query(b'E');
    assert!(s.transaction_aborted());
    run_ok(&mut s, &[Commit { chain: false }], b'I');
    assert_eq!(s.version(), None);
    assert!(!s.transaction_aborted());
}

#[test]
fn two_pipelined_batches() {
    let mut s = session(&[]);
    s.sent(set("v2"));
    s.sent_sync();
    s.sent(set("v3"));
    s.sent_sync();
    assert_eq!(s.version(), Some("v3"));
    s.completed();
    s.ready_for_query(b'I');
    assert_eq!(s.version(), Some("v3"), "the second batch is still pending");
    s.failed();
    s.ready_for_query(b'I');
    assert_eq!(s.version(), Some("v2"));
}

#[test]
fn reset_all_and_discard() {
    let mut s = session(&[("application_name", "billing")]);
    run_ok(&mut s, &[set("v2")], b'I');
    run_ok(&mut s, &[ResetAll], b'I');
    assert_eq!((s.version(), s.source()), (Some("v3"), VersionSource::Application));
}

#[test]
fn show_value() {
    let s = session(&[]);
    assert_eq!(s.show_value(catalog()), "v1");
    let s = session(&[("user", "reporter")]);
    assert_eq!(s.show_value(catalog()), "v2");
    let mixed =
        RuleSet::from_toml(&RULES.replacen("old = \"v1\", new = \"v3\"", "old = \"b1\", new = \"b2\"", 1), "mixed")
            .unwrap();
    let s = SessionVersion::new([], &VersionDefaults::default(), &mixed).unwrap();
    assert_eq!(s.show_value(&mixed), "");
}

fn snapshot(rows: &[MigrationState]) -> StateSnapshot {
    StateSnapshot { migrations: rows.iter().map(|r| (r.name.clone(), r.clone())).collect() }
}

fn users_route(s: &SessionVersion, state: &StateSnapshot, id: u64) -> MigrationRoute {
    s.route(catalog(), state, id).per_migration[0]
}

/// A migration in `phase` whose backfill has copied every row.
fn backfilled(phase: Phase) -> MigrationState {
    let mut row = MigrationState::new("users", phase);
    row.backfill = Some(BackfillProgress { state: "done".into(), rows_done: 0, rows_total: Some(0) });
    row
}

#[test]
fn route_follows_version_by_default() {
    let state = snapshot(&[backfilled(Phase::DualWrite)]);
    let mut s = session(&[]);
    let r = users_route(&s, &state, 1);
    assert_eq!(r, MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source: Side::Old });
    run_ok(&mut s, &[set("v2")], b'I');
    let all = s.route(catalog(), &state, 1);
    assert_eq!(all.per_migration.len(), 2);
    assert_eq!(all.per_migration[0], MigrationRoute::own(Phase::DualWrite, Side::New));
    // v2 is not a version of "orders": it keeps its default shape, and its initial phase when absent
    assert_eq!(all.per_migration[1], MigrationRoute::own(Phase::Off, Side::Old));
}

#[test]
fn admin_read_source_overrides_reads_not_shape() {
    let mut row = backfilled(Phase::DualWrite);
    row.read_source = Some("v2".into());
    let state = snapshot(&[row]);
    let s = session(&[]);
    let r = users_route(&s, &state, 7);
    assert_eq!((r.version, r.read_source), (Side::Old, Side::New));
}

/// Until the backfill is done the shadow lacks rows: in `dual_write` every read is served by the old table,
/// a v2 session's and a routed one's alike, while shapes and the pending flag stay as they are.
#[test]
fn reads_stay_on_the_old_table_in_dual_write_until_the_backfill_is_done() {
    let mut s = session(&[]);
    run_ok(&mut s, &[set("v2")], b'I');
    for backfill in [None, Some("running"), Some("paused"), Some("idle")] {
        let mut row = MigrationState::new("users", Phase::DualWrite);
        row.read_source = Some("v2".into());
        row.backfill = backfill.map(|state| BackfillProgress { state: state.into(), rows_done: 0, rows_total: None });
        let state = snapshot(&[row]);
        let r = users_route(&s, &state, 7);
        assert_eq!((r.version, r.read_source), (Side::New, Side::Old), "backfill {backfill:?}");
        assert!(s.route(catalog(), &state, 7).backfill_pending(0));
    }
    // Once done, the routing and the session's own version decide again; in cutover they always do.
    let mut row = backfilled(Phase::DualWrite);
    row.read_source = Some("v2".into());
    assert_eq!(users_route(&s, &snapshot(&[row]), 7).read_source, Side::New);
    let cutover = MigrationState::new("users", Phase::Cutover);
    assert_eq!(users_route(&s, &snapshot(&[cutover]), 7).read_source, Side::New);
}

#[test]
fn percentage_routing_is_sticky_and_proportional() {
    let mut row = MigrationState::new("users", Phase::Cutover);
    row.read_source = Some("v2".into());
    row.read_percent = 30;
    let state = snapshot(&[row.clone()]);
    let s = session(&[]);
    let routed: Vec<u64> = (0..10_000u64).filter(|id| users_route(&s, &state, *id).read_source == Side::New).collect();
    assert!((2_700..3_300).contains(&routed.len()), "{} of 10000", routed.len());
    for id in routed.iter().take(50) {
        assert_eq!(users_route(&s, &state, *id).read_source, Side::New, "same session, same answer");
    }
    // raising the percentage keeps every session already routed
    row.read_percent = 60;
    let wider = snapshot(&[row]);
    assert!(routed.iter().all(|id| users_route(&s, &wider, *id).read_source == Side::New));
}

#[test]
fn zero_percent_routes_nobody_and_complete_reads_new() {
    let mut row = MigrationState::new("users", Phase::DualWrite);
    row.read_source = Some("v2".into());
    row.read_percent = 0;
    let s = session(&[]);
    assert!((0..500).all(|id| users_route(&s, &snapshot(&[row.clone()]), id).read_source == Side::Old));
    let complete = MigrationState::new("users", Phase::Complete);
    assert_eq!(users_route(&s, &snapshot(&[complete]), 3).read_source, Side::New);
}

#[test]
fn buckets_are_stable() {
    assert_eq!(session_bucket(1), session_bucket(1));
    let distinct: std::collections::BTreeSet<u8> = (0..1000).map(session_bucket).collect();
    assert!(distinct.len() > 95);
}

#[test]
fn show_response_and_aborted_transaction() {
    let mut s = session(&[("user", "reporter")]);
    let r = s.show_response(catalog()).unwrap();
    assert_eq!((r.columns.as_slice(), r.tag.as_str()), (&["dualwrite.version".to_string()][..], "SHOW"));
    assert_eq!(r.rows, vec![vec![Some("v2".to_string())]]);
    run_ok(&mut s, &[Begin], b'T');
    s.sent(Other);
    s.sent_sync();
    s.failed();
    s.ready_for_query(b'E');
    assert_eq!(s.show_response(catalog()).unwrap_err().code, "25P02");
}

#[test]
fn config_carries_version_defaults() {
    let cfg = crate::config::Config::from_toml(
        "[versions.roles]\nreporter = \"v2\"\n[versions.applications]\nbilling = \"v3\"\n",
    )
    .unwrap();
    assert_eq!(cfg.versions, defaults());
    assert_eq!(crate::config::Config::default().versions, VersionDefaults::default());
}
