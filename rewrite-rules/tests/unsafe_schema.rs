//! Writes of a migration whose schema the proxy's schema watch found unsafe (`Route::unsafe_schema`: a key
//! whose defaults became separate sources, a merge's `present` column that may now be NULL) are refused
//! with 55000 naming the migration and the finding, in every write form and both shapes; reads, the other
//! migration's statements, and the same writes once the finding is gone are planned as before.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, UnsafeSchema};

const USERS: &str = include_str!("../examples/users_split_name.toml");
const ORDERS: &str = include_str!("../examples/orders_amount_numeric.toml");
const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

const FINDING: &str = "key column id draws from 2 sequences";

const OLD_SHAPE_WRITES: [&str; 6] = [
    "INSERT INTO users (name, email) VALUES ('Ada Lovelace', 'ada@example.org')",
    "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    "UPDATE users SET email = $1 WHERE id = $2",
    "DELETE FROM users WHERE id = 1 RETURNING id",
    "TRUNCATE users",
    "COPY users (id, name, email) FROM STDIN",
];

const NEW_SHAPE_WRITES: [&str; 3] = [
    "INSERT INTO users (first_name, last_name, email) VALUES ('Ada', 'Lovelace', 'ada@example.org')",
    "UPDATE users SET last_name = $1 WHERE id = $2",
    "DELETE FROM users WHERE email = $1",
];

/// Both example migrations (users is migration 0), every migration in `phase` and `version`, migration
/// `unsafe_index`'s schema found unsafe if given.
fn plan(toml: &str, version: Side, phase: Phase, unsafe_index: Option<usize>, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(toml, "example").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute { phase, version, read_source: version });
    if let Some(migration) = unsafe_index {
        route.unsafe_schema = vec![UnsafeSchema { migration, finding: FINDING.into() }];
    }
    let plan = Rewriter::new(Arc::new(rules), 16).rewrite(sql, &route);
    (*plan).clone()
}

fn both() -> String {
    format!("{USERS}\n{ORDERS}")
}

fn assert_refused(plan: Plan, migration: &str, sql: &str) {
    match plan {
        Plan::Rejected(r) => {
            assert_eq!((r.reason, r.sqlstate, r.migration.as_str()), (RejectReason::UnsafeSchema, "55000", migration));
            assert_eq!(r.reason.as_str(), "unsafe_schema");
            assert!(r.message.contains(&format!("migration \"{migration}\"")), "{sql}: {}", r.message);
            assert!(r.message.contains(FINDING), "the refusal names the finding: {sql}: {}", r.message);
            assert!(r.message.contains("writes resume by themselves"), "{sql}: {}", r.message);
        }
        other => panic!("{sql}: expected the unsafe-schema refusal, got {other:?}"),
    }
}

#[test]
fn every_write_of_the_migration_is_refused_in_dual_write_and_cutover() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for sql in OLD_SHAPE_WRITES {
            assert_refused(plan(&both(), Side::Old, phase, Some(0), sql), "users_split_name", sql);
        }
        for sql in NEW_SHAPE_WRITES {
            assert_refused(plan(&both(), Side::New, phase, Some(0), sql), "users_split_name", sql);
        }
    }
}

#[test]
fn a_write_in_a_string_of_several_statements_refuses_the_string() {
    let sql = "SELECT count(*) FROM users; UPDATE users SET email = 'x' WHERE id = 1";
    assert_refused(plan(&both(), Side::Old, Phase::DualWrite, Some(0), sql), "users_split_name", sql);
}

#[test]
fn reads_and_the_other_migrations_writes_are_planned_as_without_the_finding() {
    let unaffected = [
        (Side::Old, "SELECT name FROM users WHERE id = 1"),
        (Side::New, "SELECT first_name FROM users WHERE id = $1"),
        (Side::Old, "COPY users TO STDOUT"),
        (Side::Old, "UPDATE orders SET amount_cents = 1 WHERE shop_id = 1 AND id = 1"),
        (Side::Old, "INSERT INTO orders (shop_id, id, amount_cents) VALUES (1, 2, 3)"),
        (Side::Old, "UPDATE accounts SET balance = 0"),
    ];
    for (version, sql) in unaffected {
        let without = plan(&both(), version, Phase::DualWrite, None, sql);
        let with = plan(&both(), version, Phase::DualWrite, Some(0), sql);
        assert_eq!(with, without, "{sql}");
        assert!(!matches!(with, Plan::Rejected(_)), "{sql}: {with:?}");
    }
}

#[test]
fn the_writes_are_rewritten_again_once_the_finding_is_gone() {
    for sql in OLD_SHAPE_WRITES {
        assert!(
            matches!(plan(&both(), Side::Old, Phase::DualWrite, None, sql), Plan::Rewritten { writes: true, .. }),
            "{sql}"
        );
    }
}

#[test]
fn a_merge_is_refused_for_writes_of_its_sources_and_of_its_shadow() {
    let rules = RuleSet::from_toml(MERGE, "example").unwrap();
    let m = &rules.migrations[0];
    let source = &m.merge[0].table;
    let shadow = &m.shadow_tables()[0];
    let key = &m.key[0];
    let writes = [format!("DELETE FROM {source} WHERE {key} = 1"), format!("DELETE FROM {shadow} WHERE {key} = 1")];
    for sql in writes {
        // A merge's shadow is written by name once the backfill is done (the route here has none pending).
        assert_refused(plan(MERGE, Side::Old, Phase::DualWrite, Some(0), &sql), &m.name, &sql);
        let without = plan(MERGE, Side::Old, Phase::DualWrite, None, &sql);
        assert!(matches!(without, Plan::Rewritten { writes: true, .. }), "{sql}: {without:?}");
    }
}
