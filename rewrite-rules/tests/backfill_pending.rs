//! Writes in the new version's shape while the backfill has not finished (`Route::backfill_pending`): their
//! primary is the shadow, which does not hold the rows not copied yet, so in `dual_write` every form is
//! refused (`backfill_pending`, 0A000) and nothing else changes: old-shaped writes, reads of either shape,
//! and every write once the backfill is done or in `cutover`, are planned as before.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side};

const USERS: &str = include_str!("../examples/users_split_name.toml");

const NEW_SHAPE_WRITES: [&str; 6] = [
    "INSERT INTO users (id, first_name, last_name, email) VALUES (1, 'Ada', 'Lovelace', 'ada@example.org')",
    "INSERT INTO users (first_name) VALUES ('Ada') ON CONFLICT (id) DO NOTHING",
    "UPDATE users SET last_name = $1 WHERE id = $2",
    "DELETE FROM users WHERE email = $1",
    "WITH gone AS (SELECT 1) DELETE FROM users WHERE id = 1 RETURNING id",
    "COPY users (id, first_name, last_name, email) FROM STDIN",
];

fn plan(version: Side, phase: Phase, pending: bool, sql: &str) -> Plan {
    plan_of(USERS, version, phase, pending, sql)
}

/// The plan of `sql` under the rules `toml`, every migration in `phase` and `version`, the first one's
/// backfill pending or not.
fn plan_of(toml: &str, version: Side, phase: Phase, pending: bool, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(toml, "example").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute { phase, version, read_source: version });
    if pending {
        route.backfill_pending = vec![0];
    }
    let plan = Rewriter::new(Arc::new(rules), 16).rewrite(sql, &route);
    (*plan).clone()
}

#[test]
fn new_shape_writes_in_dual_write_are_refused_while_the_backfill_is_pending() {
    for sql in NEW_SHAPE_WRITES {
        match plan(Side::New, Phase::DualWrite, true, sql) {
            Plan::Rejected(r) => {
                assert_eq!(
                    (r.reason, r.sqlstate, r.migration.as_str()),
                    (RejectReason::BackfillPending, "0A000", "users_split_name"),
                    "{sql}"
                );
                assert_eq!(r.reason.as_str(), "backfill_pending");
                assert!(r.message.contains("backfill has not finished"), "{sql}: {}", r.message);
                assert!(r.message.contains("write in the old version's shape"), "{sql}: {}", r.message);
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn the_same_writes_are_rewritten_once_the_backfill_is_done_and_in_cutover() {
    for sql in NEW_SHAPE_WRITES {
        for (phase, pending) in [(Phase::DualWrite, false), (Phase::Cutover, true), (Phase::Cutover, false)] {
            let plan = plan(Side::New, phase, pending, sql);
            assert!(matches!(plan, Plan::Rewritten { .. }), "{sql} in {phase} (pending {pending}): {plan:?}");
        }
    }
}

#[test]
fn old_shape_writes_and_reads_of_either_shape_are_unaffected_by_a_pending_backfill() {
    let old_shape = [
        "INSERT INTO users (name, email) VALUES ('Ada Lovelace', 'ada@example.org')",
        "UPDATE users SET email = $1 WHERE id = $2",
        "DELETE FROM users WHERE id = $1",
        "COPY users (id, name, email) FROM STDIN",
    ];
    for sql in old_shape {
        assert_eq!(
            plan(Side::Old, Phase::DualWrite, true, sql),
            plan(Side::Old, Phase::DualWrite, false, sql),
            "{sql}"
        );
        assert!(matches!(plan(Side::Old, Phase::DualWrite, true, sql), Plan::Rewritten { .. }), "{sql}");
    }
    for (version, sql) in
        [(Side::Old, "SELECT name FROM users WHERE id = 1"), (Side::New, "SELECT first_name FROM users WHERE id = 1")]
    {
        let pending = plan(version, Phase::DualWrite, true, sql);
        assert_eq!(pending, plan(version, Phase::DualWrite, false, sql), "{sql}");
        assert!(!matches!(pending, Plan::Rejected(_)), "{sql}: {pending:?}");
    }
}

const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

fn merge_plan(version: Side, phase: Phase, pending: bool, sql: &str) -> Plan {
    plan_of(MERGE, version, phase, pending, sql)
}

/// Reads naming a merge's shadow: the new shape's only name, which would answer with the rows copied so far.
const MERGED_SHADOW_READS: [&str; 5] = [
    "SELECT * FROM users",
    "SELECT u.bio FROM public.users u WHERE u.id = $1",
    "SELECT u.bio FROM (VALUES (1)) AS k (id) JOIN users u USING (id)",
    "WITH x AS (SELECT id FROM users) SELECT count(*) FROM x",
    "COPY users TO STDOUT",
];

#[test]
fn reads_of_a_merges_shadow_in_dual_write_are_refused_while_the_backfill_is_pending() {
    for version in [Side::Old, Side::New] {
        for sql in MERGED_SHADOW_READS {
            match merge_plan(version, Phase::DualWrite, true, sql) {
                Plan::Rejected(r) => {
                    assert_eq!(
                        (r.reason, r.sqlstate, r.migration.as_str()),
                        (RejectReason::BackfillPending, "0A000", "users_merge_tables"),
                        "{sql}"
                    );
                    assert!(
                        r.message.contains(
                            "would see only the rows copied so far; read public.accounts and \
                             public.profiles until DUALWRITE STATUS shows the backfill done"
                        ),
                        "{sql}: {}",
                        r.message
                    );
                }
                other => panic!("{sql} ({version:?}): {other:?}"),
            }
        }
    }
}

#[test]
fn reads_of_a_merges_shadow_are_planned_as_before_once_the_backfill_is_done_and_in_cutover() {
    for version in [Side::Old, Side::New] {
        for sql in MERGED_SHADOW_READS {
            for (phase, pending) in [(Phase::DualWrite, false), (Phase::Cutover, true), (Phase::Off, true)] {
                let plan = merge_plan(version, phase, pending, sql);
                assert!(!matches!(plan, Plan::Rejected(_)), "{sql} in {phase} (pending {pending}): {plan:?}");
            }
        }
    }
    // A CTE of the shadow's name hides it, and the sources are read as always.
    for sql in ["WITH users AS (SELECT 1 AS id) SELECT id FROM users", "SELECT email FROM accounts WHERE id = 1"] {
        let plan = merge_plan(Side::Old, Phase::DualWrite, true, sql);
        assert_eq!(plan, merge_plan(Side::Old, Phase::DualWrite, false, sql), "{sql}");
        assert!(!matches!(plan, Plan::Rejected(_)), "{sql}: {plan:?}");
    }
}
