//! A write that names a shadow table itself is refused while the migration keeps both tables in step
//! (`dual_write`, `cutover`), whatever its form and whichever version the session is on: passed through, it
//! would change the shadow alone; mirrored, a hand-written `DELETE` or `TRUNCATE` of the shadow would take the
//! old table's rows with it. Reads of a shadow, and writes to it in `off` and `complete` or to another
//! relation of its name, pass through untouched. The one exception is a merge's shadow, the only name of its
//! new shape: its plain INSERT, UPDATE and DELETE are mirrored into the sources (`merge_mirror.rs`), every
//! other write form of it is refused here.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side};

const USERS: &str = include_str!("../examples/users_split_name.toml");
const SPLIT: &str = include_str!("../examples/users_split_tables.toml");
const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

/// The plan of `sql` in a session on `version` in `phase`; `shadow_elsewhere`: an unqualified shadow name
/// reaches another relation in the session.
fn plan(rules: &str, phase: Phase, version: Side, shadow_elsewhere: bool, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(rules, "example").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute::own(phase, version));
    if shadow_elsewhere {
        route.shadow_unqualified_elsewhere = vec![0];
    }
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = (*rewriter.rewrite(sql, &route)).clone();
    assert_eq!(rewriter.plan(sql, &route), plan, "the cache must not change the decision for {sql}");
    plan
}

fn assert_refused(plan: &Plan, reason: RejectReason, migration: &str, sql: &str) {
    match plan {
        Plan::Rejected(r) => {
            assert_eq!(r.reason, reason, "for {sql}: {}", r.message);
            assert_eq!(r.sqlstate, "0A000", "for {sql}");
            assert_eq!(r.migration, migration, "for {sql}");
        }
        other => panic!("expected a refusal of {sql}, got {other:?}"),
    }
}

const SHADOW_WRITES: [&str; 10] = [
    "INSERT INTO users_v2 (id, first_name, last_name, email) VALUES (1, 'a', 'b', 'x@y')",
    "INSERT INTO public.users_v2 (id, first_name, last_name, email) VALUES (1, 'a', 'b', 'x@y')",
    "UPDATE users_v2 SET email = 'z' WHERE id = 1",
    "UPDATE public.users_v2 AS u SET email = 'z' FROM orders o WHERE o.user_id = u.id",
    "DELETE FROM users_v2",
    "DELETE FROM \"users_v2\" WHERE id IN (SELECT id FROM users)",
    "TRUNCATE users_v2",
    "TRUNCATE orders, public.users_v2 CASCADE",
    "COPY users_v2 (id, first_name, last_name, email) FROM STDIN",
    "MERGE INTO users_v2 t USING users s ON t.id = s.id WHEN NOT MATCHED THEN DO NOTHING",
];

#[test]
fn every_write_form_naming_the_shadow_is_refused_while_both_tables_are_kept() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for version in [Side::Old, Side::New] {
            for sql in SHADOW_WRITES {
                let plan = plan(USERS, phase, version, false, sql);
                assert_refused(&plan, RejectReason::ShadowWrite, "users_split_name", sql);
                let Plan::Rejected(r) = plan else { unreachable!() };
                assert!(r.message.contains("public.users"), "names the old table: {}", r.message);
                assert!(r.message.contains(&format!("phase {phase}")), "names the phase: {}", r.message);
            }
        }
    }
}

#[test]
fn a_shadow_written_inside_a_with_clause_is_refused() {
    for sql in [
        "WITH gone AS (DELETE FROM users_v2 WHERE id = 1 RETURNING id) SELECT count(*) FROM gone",
        "WITH n AS (INSERT INTO users_v2 (id) VALUES (1) RETURNING id) INSERT INTO orders (user_id) SELECT id FROM n",
    ] {
        assert_refused(
            &plan(USERS, Phase::DualWrite, Side::Old, false, sql),
            RejectReason::ShadowWrite,
            "users_split_name",
            sql,
        );
    }
}

#[test]
fn shadow_writes_pass_through_when_the_migration_is_off_or_complete() {
    for sql in SHADOW_WRITES {
        assert_eq!(plan(USERS, Phase::Off, Side::Old, false, sql), Plan::PassThrough, "{sql}");
        // In `complete` the shadow is the only table: writing it by name is what migrated code does.
        let complete = plan(USERS, Phase::Complete, Side::New, false, sql);
        assert!(!matches!(complete, Plan::Rejected(_)), "{sql}: {complete:?}");
    }
}

#[test]
fn reads_of_the_shadow_pass_through() {
    for sql in [
        "SELECT * FROM users_v2 WHERE id = 1",
        "SELECT count(*) FROM public.users_v2",
        "COPY users_v2 TO STDOUT",
        "COPY (SELECT id FROM users_v2) TO STDOUT",
        "SELECT * FROM users_v2 FOR UPDATE",
    ] {
        for version in [Side::Old, Side::New] {
            assert_eq!(plan(USERS, Phase::DualWrite, version, false, sql), Plan::PassThrough, "{sql}");
        }
    }
}

#[test]
fn writes_to_other_relations_of_the_shadows_name_pass_through() {
    // An unqualified name that reaches another relation (a tenant schema's users_v2, a temporary table).
    let unqualified = "INSERT INTO users_v2 (id) VALUES (1)";
    assert_eq!(plan(USERS, Phase::DualWrite, Side::Old, true, unqualified), Plan::PassThrough);
    // ...while the qualified name still denotes the shadow.
    let qualified = "INSERT INTO public.users_v2 (id) VALUES (1)";
    assert_refused(
        &plan(USERS, Phase::DualWrite, Side::Old, true, qualified),
        RejectReason::ShadowWrite,
        "users_split_name",
        qualified,
    );
    for sql in [
        "INSERT INTO tenant.users_v2 (id) VALUES (1)",
        "INSERT INTO users_v2_archive (id) VALUES (1)",
        "DELETE FROM users_v3",
        "TRUNCATE tenant.users_v2",
    ] {
        assert_eq!(plan(USERS, Phase::DualWrite, Side::Old, false, sql), Plan::PassThrough, "{sql}");
    }
}

#[test]
fn writes_naming_a_target_of_a_split_are_refused() {
    for sql in [
        "INSERT INTO accounts (id, email) VALUES (1, 'x@y')",
        "UPDATE public.profiles SET bio = 'b' WHERE id = 1",
        "DELETE FROM profiles WHERE id = 1",
        "TRUNCATE accounts",
    ] {
        assert_refused(
            &plan(SPLIT, Phase::DualWrite, Side::Old, false, sql),
            RejectReason::ShadowWrite,
            "users_split_tables",
            sql,
        );
    }
}

/// What a merge's shadow write cannot be mirrored as: refused as `shadow_write`, naming the sources.
const MERGE_SHADOW_REFUSED: [&str; 9] = [
    "TRUNCATE users",
    "TRUNCATE orders, public.users CASCADE",
    "COPY users (id, email) FROM STDIN",
    "MERGE INTO users t USING accounts s ON t.id = s.id WHEN NOT MATCHED THEN DO NOTHING",
    "WITH gone AS (DELETE FROM users WHERE id = 1 RETURNING id) SELECT count(*) FROM gone",
    "WITH n AS (INSERT INTO public.users (id) VALUES (1) RETURNING id) INSERT INTO orders (user_id) SELECT id FROM n",
    "UPDATE users SET id = 2 WHERE id = 1",
    "UPDATE users SET (email, id) = ('a', 2) WHERE id = 1",
    "INSERT INTO users (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET id = 3",
];

#[test]
fn the_write_forms_of_a_merges_shadow_that_cannot_be_mirrored_are_refused() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for version in [Side::Old, Side::New] {
            for sql in MERGE_SHADOW_REFUSED {
                let plan = plan(MERGE, phase, version, false, sql);
                assert_refused(&plan, RejectReason::ShadowWrite, "users_merge_tables", sql);
                let Plan::Rejected(r) = plan else { unreachable!() };
                assert!(r.message.contains("merged shadow"), "says why: {}", r.message);
            }
        }
    }
    let Plan::Rejected(r) = plan(MERGE, Phase::DualWrite, Side::Old, false, "TRUNCATE users") else { unreachable!() };
    assert!(r.message.contains("public.accounts, public.profiles"), "names the sources: {}", r.message);
}

#[test]
fn plain_writes_of_a_merges_shadow_are_rewritten_not_refused() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for version in [Side::Old, Side::New] {
            for sql in [
                "INSERT INTO users (id) VALUES (1)",
                "UPDATE users SET bio = 'b' WHERE id = 1",
                "DELETE FROM public.users WHERE id = 1",
            ] {
                let got = plan(MERGE, phase, version, false, sql);
                assert!(matches!(got, Plan::Rewritten { writes: true, .. }), "{phase} {version:?} {sql}: {got:?}");
            }
        }
    }
}

#[test]
fn a_write_naming_the_shadow_that_the_parser_cannot_read_is_refused() {
    // sqlparser does not read `WHERE CURRENT OF`; the statement names only the shadow.
    let sql = "UPDATE users_v2 SET email = 'z' WHERE CURRENT OF c";
    assert_refused(
        &plan(USERS, Phase::DualWrite, Side::Old, false, sql),
        RejectReason::Unparseable,
        "users_split_name",
        sql,
    );
    // The same statement on another relation of the name passes through.
    assert_eq!(plan(USERS, Phase::DualWrite, Side::Old, true, sql), Plan::PassThrough);
}

#[test]
fn ddl_that_breaks_the_dual_write_on_a_shadow_is_refused_and_ddl_that_adds_to_it_passes() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for sql in [
            "DROP TABLE users_v2",
            "DROP TABLE IF EXISTS orders, public.users_v2 CASCADE",
            "ALTER TABLE users_v2 DROP COLUMN first_name",
            "ALTER TABLE public.users_v2 RENAME COLUMN email TO mail",
            "ALTER TABLE users_v2 RENAME TO users_v2_old",
            "ALTER TABLE users_v2 DROP CONSTRAINT users_v2_pkey",
            "ALTER TABLE users_v2 ALTER COLUMN email TYPE varchar(10)",
        ] {
            let plan = plan(USERS, phase, Side::Old, false, sql);
            assert_refused(&plan, RejectReason::Ddl, "users_split_name", sql);
            let Plan::Rejected(r) = plan else { unreachable!() };
            assert!(r.message.contains("set the migration off first"), "says what to do: {}", r.message);
        }
    }
    for sql in [
        "CREATE INDEX CONCURRENTLY users_v2_email ON users_v2 (email)",
        "ALTER TABLE users_v2 ADD COLUMN note text",
        "ALTER TABLE users_v2 ADD CONSTRAINT email_set CHECK (email IS NOT NULL) NOT VALID",
        "ALTER TABLE users_v2 VALIDATE CONSTRAINT email_set",
        "ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('users_id_seq')",
        "DROP TABLE tenant.users_v2",
        "ANALYZE users_v2",
    ] {
        assert_eq!(plan(USERS, Phase::DualWrite, Side::Old, false, sql), Plan::PassThrough, "{sql}");
    }
    for sql in ["DROP TABLE users_v2", "ALTER TABLE users_v2 DROP COLUMN first_name"] {
        assert_eq!(plan(USERS, Phase::Off, Side::Old, false, sql), Plan::PassThrough, "{sql}");
        let complete = plan(USERS, Phase::Complete, Side::New, false, sql);
        assert!(!matches!(complete, Plan::Rejected(_)), "{sql}: {complete:?}");
        // Another relation of the shadow's name is not the shadow.
        assert_eq!(plan(USERS, Phase::DualWrite, Side::Old, true, sql), Plan::PassThrough, "{sql}");
    }
}
