//! The exact SQL and response transform produced for every supported form, and every rejection, under
//! the example rules. Each rewritten write here also runs on real Postgres in
//! `tests/tests/rewrite_roundtrip.rs` (workspace tests crate).

use std::sync::Arc;

use dualwrite_rules::RowsDisposition::*;
use dualwrite_rules::TagRewrite::*;
use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, StatementTransform};

const USERS: &str = include_str!("../examples/users_split_name.toml");
const ORDERS: &str = include_str!("../examples/orders_amount_numeric.toml");

enum Expect {
    Pass,
    Rewrite(&'static str, Vec<StatementTransform>),
    Reject(RejectReason),
}

fn route(phase: Phase, version: Side, read_source: Side) -> MigrationRoute {
    MigrationRoute { phase, version, read_source }
}

fn check(rules: &str, migration_route: MigrationRoute, sql: &str, expect: Expect) {
    let rules = RuleSet::from_toml(rules, "example").unwrap();
    let route = Route::uniform(&rules, migration_route);
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = rewriter.rewrite(sql, &route);
    match (expect, &*plan) {
        (Expect::Pass, Plan::PassThrough) => {}
        (Expect::Rewrite(want_sql, want_transforms), Plan::Rewritten { sql: got, statements, migrations, .. }) => {
            assert_eq!(got, want_sql, "for {sql}");
            assert_eq!(statements, &want_transforms, "for {sql}");
            assert_eq!(migrations, &[0], "for {sql}");
        }
        (Expect::Reject(reason), Plan::Rejected(r)) => {
            assert_eq!(r.reason, reason, "for {sql}: {}", r.message);
            assert_eq!(r.sqlstate, "0A000");
            assert!(r.message.contains(&format!("\"{}\"", r.migration)), "{}", r.message);
            assert_eq!(plan.migrations(), &[0]);
        }
        (_, other) => panic!("unexpected plan for {sql}: {other:?}"),
    }
    // The same statement again is served from the cache.
    let before = rewriter.cache_stats();
    assert_eq!(rewriter.rewrite(sql, &route), plan);
    let after = rewriter.cache_stats();
    if rewriter.mentions_migrated_table(sql) && migration_route.phase != Phase::Off {
        assert_eq!(after.hits, before.hits + 1);
    }
}

#[test]
fn statements_naming_no_migrated_table_skip_the_parser() {
    let rules = RuleSet::from_toml(USERS, "example").unwrap();
    let route = Route::uniform(&rules, route(Phase::DualWrite, Side::New, Side::New));
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    assert!(!rewriter.mentions_migrated_table("SELECT * FROM accounts WHERE id = $1"));
    assert!(rewriter.mentions_migrated_table("select * from USERS"));
    // Not even valid SQL: never parsed, never refused.
    assert_eq!(*rewriter.rewrite("SELEKT * FROM accounts", &route), Plan::PassThrough);
    assert_eq!(rewriter.cache_stats().misses, 0);
}

#[test]
fn plan_reports_migrations_and_writes() {
    let rules = RuleSet::from_toml(USERS, "example").unwrap();
    let route = Route::uniform(&rules, route(Phase::DualWrite, Side::Old, Side::New));
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let write = rewriter.rewrite("DELETE FROM users WHERE id = 1", &route);
    assert!(write.is_write());
    assert_eq!(write.migrations(), &[0]);
    assert_eq!(write.route_label(), "rewritten");
    let read = rewriter.rewrite("SELECT * FROM users", &route);
    assert!(!read.is_write());
    assert_eq!(read.migrations(), &[0]);
    let rejected = rewriter.rewrite("MERGE INTO users u USING s ON u.id = s.id WHEN MATCHED THEN DELETE", &route);
    assert!(rejected.is_write());
    assert_eq!(rejected.route_label(), "rejected");
    let Plan::Rejected(refusal) = &*rejected else { panic!("MERGE not refused: {rejected:?}") };
    assert_eq!(
        (refusal.sqlstate, refusal.reason, refusal.migration.as_str()),
        ("0A000", RejectReason::Merge, "users_split_name")
    );
    assert_eq!(
        refusal.message, "dualwrite: statement refused for migration \"users_split_name\": MERGE is not supported",
        "the message names the migration and the reason"
    );
    assert_eq!(Update.tag(3), "UPDATE 3");
    assert_eq!(Insert.tag(1), "INSERT 0 1");
    assert_eq!(Delete.tag(0), "DELETE 0");
}

#[test]
fn a_route_shorter_than_the_rules_leaves_the_rest_off() {
    let rules = RuleSet::from_toml(USERS, "example").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    assert_eq!(*rewriter.rewrite("DELETE FROM users", &Route::default()), Plan::PassThrough);
}

#[test]
fn insert_values_rows() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3), ($4, $5, $6)",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO users (id, name, email) VALUES ($1, $2, $3), ($4, $5, $6) RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Suppress }]),
    );
}
#[test]
fn insert_returning_list() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id, users.name AS full_name",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO users (name, email) VALUES ($1, $2) RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT id, users.name AS full_name FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Keep }]),
    );
}
#[test]
fn insert_select() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO users (id, name, email) SELECT id, name, email FROM staging WHERE batch = $1",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO users (id, name, email) SELECT id, name, email FROM staging WHERE batch = $1 RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Suppress }]),
    );
}
#[test]
fn insert_default_values() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO users DEFAULT VALUES RETURNING *",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO users DEFAULT VALUES RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT * FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Keep }]),
    );
}
#[test]
fn insert_on_conflict_do_nothing() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Suppress }]),
    );
}
#[test]
fn insert_on_conflict_do_update_alias() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "INSERT INTO public.users AS u (id, name, email) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE u.email IS NULL RETURNING u.id",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO public.users AS u (id, name, email) VALUES ($1, $2, $3) ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name WHERE u.email IS NULL RETURNING u.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT u.id FROM __dw_primary AS u", vec![StatementTransform { command_tag: Some(Insert), rows: Keep }]),
    );
}
#[test]
fn update_params_partial_sync() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users SET name = $1 WHERE id = $2",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE users SET name = $1 WHERE id = $2 RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn update_tuple_assignment() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users SET (name, email) = ($1, $2) WHERE id = $3",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE users SET (name, email) = ($1, $2) WHERE id = $3 RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn update_from_returning_alias() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users u SET email = a.email FROM accounts a WHERE a.user_id = u.id RETURNING u.id, u.email",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE users u SET email = a.email FROM accounts a WHERE a.user_id = u.id RETURNING u.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email) SELECT u.id, u.email FROM __dw_primary AS u", vec![StatementTransform { command_tag: Some(Update), rows: Keep }]),
    );
}
#[test]
fn update_with_client_cte() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "WITH s AS (SELECT id FROM suspended) UPDATE users SET email = NULL WHERE id IN (SELECT id FROM s)",
        Expect::Rewrite("WITH s AS (SELECT id FROM suspended), __dw_primary AS (UPDATE users SET email = NULL WHERE id IN (SELECT id FROM s) RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn delete_params() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "DELETE FROM users WHERE id = $1",
        Expect::Rewrite("WITH __dw_primary AS (DELETE FROM users WHERE id = $1 RETURNING users.*), __dw_shadow AS (DELETE FROM public.users_v2 AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k WHERE __dw_t.id = __dw_k.id) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Delete), rows: Suppress }]),
    );
}
#[test]
fn delete_using_returning() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "DELETE FROM users USING banned b WHERE b.email = users.email RETURNING users.*",
        Expect::Rewrite("WITH __dw_primary AS (DELETE FROM users USING banned b WHERE b.email = users.email RETURNING users.*), __dw_shadow AS (DELETE FROM public.users_v2 AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k WHERE __dw_t.id = __dw_k.id) SELECT users.* FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Delete), rows: Keep }]),
    );
}
#[test]
fn truncate_both() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "TRUNCATE users, audit RESTART IDENTITY CASCADE",
        Expect::Rewrite(
            "TRUNCATE users, public.users_v2, audit RESTART IDENTITY CASCADE",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn comments_kept() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "/* controller='users',action='update' */ UPDATE users SET email = $1 WHERE id = $2 /*traceparent='00-ab-cd-01'*/",
        Expect::Rewrite("/* controller='users',action='update' */ WITH __dw_primary AS (UPDATE users SET email = $1 WHERE id = $2 RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email) SELECT FROM __dw_primary AS users /*traceparent='00-ab-cd-01'*/", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn multi_statement() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "BEGIN; UPDATE users SET email = 'x' WHERE id = 1; SELECT 1; COMMIT",
        Expect::Rewrite("BEGIN; WITH __dw_primary AS (UPDATE users SET email = 'x' WHERE id = 1 RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email) SELECT FROM __dw_primary AS users; SELECT 1; COMMIT", vec![StatementTransform { command_tag: None, rows: Keep }, StatementTransform { command_tag: Some(Update), rows: Suppress }, StatementTransform { command_tag: None, rows: Keep }, StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn v2_insert_cutover() {
    check(
        USERS,
        route(Phase::Cutover, Side::New, Side::New),
        "INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) RETURNING id",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO public.users_v2 AS users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) RETURNING users.*), __dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || last_name, email FROM __dw_primary ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email) SELECT id FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Insert), rows: Keep }]),
    );
}
#[test]
fn v2_update_cutover() {
    check(
        USERS,
        route(Phase::Cutover, Side::New, Side::New),
        "UPDATE users SET last_name = $1 WHERE email = $2",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE public.users_v2 AS users SET last_name = $1 WHERE email = $2 RETURNING users.*), __dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || last_name, email FROM __dw_primary ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn v2_delete_dual_write() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "DELETE FROM users WHERE id = $1",
        Expect::Rewrite("WITH __dw_primary AS (DELETE FROM public.users_v2 AS users WHERE id = $1 RETURNING users.*), __dw_old AS (DELETE FROM public.users AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k WHERE __dw_t.id = __dw_k.id) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Delete), rows: Suppress }]),
    );
}
#[test]
fn v1_update_cutover() {
    check(
        USERS,
        route(Phase::Cutover, Side::Old, Side::New),
        "UPDATE users SET email = $1 WHERE id = $2",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE users SET email = $1 WHERE id = $2 RETURNING users.*), __dw_shadow AS (UPDATE public.users_v2 AS __dw_t SET email = __dw_u.email FROM (SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary) AS __dw_u (id, first_name, last_name, email) WHERE __dw_t.id = __dw_u.id) SELECT FROM __dw_primary AS users", vec![StatementTransform { command_tag: Some(Update), rows: Suppress }]),
    );
}
#[test]
fn complete_v2_update() {
    check(
        USERS,
        route(Phase::Complete, Side::New, Side::New),
        "UPDATE users SET first_name = $1 WHERE id = $2",
        Expect::Rewrite(
            "UPDATE public.users_v2 AS users SET first_name = $1 WHERE id = $2",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn complete_v2_truncate() {
    check(
        USERS,
        route(Phase::Complete, Side::New, Side::New),
        "TRUNCATE users",
        Expect::Rewrite("TRUNCATE public.users_v2", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn complete_v2_copy_from() {
    check(
        USERS,
        route(Phase::Complete, Side::New, Side::New),
        "COPY users (id, first_name) FROM STDIN",
        Expect::Rewrite(
            "COPY public.users_v2 (id, first_name) FROM STDIN",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn read_own_old() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "SELECT id, name FROM users WHERE id = $1",
        Expect::Pass,
    );
}
#[test]
fn read_own_new() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "SELECT u.first_name, public.users.id FROM public.users JOIN users u ON u.id = users.id",
        Expect::Rewrite(
            "SELECT u.first_name, users.id FROM public.users_v2 AS users JOIN public.users_v2 u ON u.id = users.id",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn read_old_shape_from_shadow() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::New),
        "SELECT users.name FROM users WHERE users.id IN (SELECT id FROM users WHERE email LIKE $1) AND EXISTS (SELECT 1 FROM users x WHERE x.id = users.id)",
        Expect::Rewrite("SELECT users.name FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users WHERE users.id IN (SELECT id FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users WHERE email LIKE $1) AND EXISTS (SELECT 1 FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) x WHERE x.id = users.id)", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_new_shape_from_old_for_update() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::Old),
        "SELECT * FROM users u WHERE u.id = $1 FOR UPDATE OF u SKIP LOCKED",
        Expect::Rewrite("SELECT * FROM (SELECT id, split_part(name, ' ', 1) AS first_name, split_part(name, ' ', 2) AS last_name, lower(email) AS email FROM public.users) u WHERE u.id = $1 FOR UPDATE OF u SKIP LOCKED", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_cte_body_routed_cte_name_kept() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::New),
        "WITH users AS (SELECT * FROM public.users WHERE id > 10) SELECT * FROM users",
        Expect::Rewrite("WITH users AS (SELECT * FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users WHERE id > 10) SELECT * FROM users", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_table_function_named_like_table() {
    check(USERS, route(Phase::DualWrite, Side::New, Side::New), "SELECT * FROM users(1)", Expect::Pass);
}
#[test]
fn read_copy_to() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::New),
        "COPY users (id, name) TO STDOUT WITH (FORMAT csv)",
        Expect::Rewrite("COPY (SELECT id, name FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users) TO STDOUT (FORMAT csv)", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_copy_to_own_new() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "COPY users TO STDOUT",
        Expect::Rewrite("COPY public.users_v2 TO STDOUT", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_into_other_table() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::New),
        "INSERT INTO audit (user_id, name) SELECT id, name FROM users",
        Expect::Rewrite("INSERT INTO audit (user_id, name) SELECT id, name FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_string_literal_only() {
    check(USERS, route(Phase::DualWrite, Side::New, Side::New), "SELECT 'users' AS t", Expect::Pass);
}
#[test]
fn read_explain() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "EXPLAIN SELECT * FROM users",
        Expect::Rewrite(
            "EXPLAIN SELECT * FROM public.users_v2 AS users",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn read_lateral_join() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::New),
        "SELECT a.id, l.name FROM accounts a CROSS JOIN LATERAL (SELECT name FROM users WHERE users.id = a.user_id LIMIT 1) l",
        Expect::Rewrite("SELECT a.id, l.name FROM accounts a CROSS JOIN LATERAL (SELECT name FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2) AS users WHERE users.id = a.user_id LIMIT 1) l", vec![StatementTransform { command_tag: None, rows: Keep }]),
    );
}
#[test]
fn read_union() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "SELECT id FROM users UNION ALL SELECT id FROM archived_users",
        Expect::Rewrite(
            "SELECT id FROM public.users_v2 AS users UNION ALL SELECT id FROM archived_users",
            vec![StatementTransform { command_tag: None, rows: Keep }],
        ),
    );
}
#[test]
fn off_passes_everything() {
    check(USERS, route(Phase::Off, Side::New, Side::New), "ALTER TABLE users ADD COLUMN x int", Expect::Pass);
}
#[test]
fn reject_key_change() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users SET id = id + 1000 WHERE id = $1",
        Expect::Reject(RejectReason::KeyChangingUpdate),
    );
}
#[test]
fn reject_merge() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name",
        Expect::Reject(RejectReason::Merge),
    );
}
#[test]
fn reject_ddl_alter() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "ALTER TABLE users ADD COLUMN nickname text",
        Expect::Reject(RejectReason::Ddl),
    );
}
#[test]
fn reject_ddl_drop() {
    check(USERS, route(Phase::Cutover, Side::New, Side::New), "DROP TABLE users", Expect::Reject(RejectReason::Ddl));
}
#[test]
fn reject_ddl_index() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "CREATE INDEX users_email_idx ON users (email)",
        Expect::Reject(RejectReason::Ddl),
    );
}
#[test]
fn reject_data_modifying_cte() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "WITH gone AS (DELETE FROM users WHERE id = $1 RETURNING *) INSERT INTO archive SELECT * FROM gone",
        Expect::Reject(RejectReason::DataModifyingCte),
    );
}
#[test]
fn reject_returning_from_table() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users SET email = a.email FROM accounts a WHERE a.user_id = users.id RETURNING a.balance",
        Expect::Reject(RejectReason::UnsupportedReturning),
    );
}
#[test]
fn reject_complete_old_version() {
    check(
        USERS,
        route(Phase::Complete, Side::Old, Side::New),
        "INSERT INTO users (id, name) VALUES (1, 'a b')",
        Expect::Reject(RejectReason::RetiredVersionWrite),
    );
}
#[test]
fn reject_unparseable_write() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE users SET name = 'x' WHERE CURRENT OF users_cursor",
        Expect::Reject(RejectReason::Unparseable),
    );
}
#[test]
fn reject_unparseable_routed_read() {
    check(
        USERS,
        route(Phase::DualWrite, Side::New, Side::New),
        "SELECT * FROM users FOR NO KEY UPDATE",
        Expect::Reject(RejectReason::Unparseable),
    );
}
#[test]
fn unparseable_own_read_passes() {
    check(USERS, route(Phase::DualWrite, Side::Old, Side::Old), "SELECT * FROM users FOR NO KEY UPDATE", Expect::Pass);
}
#[test]
fn reject_prepare_write() {
    check(
        USERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "PREPARE upd (int) AS UPDATE users SET email = NULL WHERE id = $1",
        Expect::Reject(RejectReason::UnsupportedWrite),
    );
}
#[test]
fn composite_key_delete() {
    check(
        ORDERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "DELETE FROM orders WHERE placed_at < $1",
        Expect::Rewrite("WITH __dw_primary AS (DELETE FROM orders WHERE placed_at < $1 RETURNING orders.*), __dw_shadow AS (DELETE FROM public.orders_v2 AS __dw_t USING (SELECT shop_id AS shop_id, id AS id FROM __dw_primary) AS __dw_k WHERE __dw_t.shop_id = __dw_k.shop_id AND __dw_t.id = __dw_k.id) SELECT FROM __dw_primary AS orders", vec![StatementTransform { command_tag: Some(Delete), rows: Suppress }]),
    );
}
#[test]
fn composite_key_update() {
    check(
        ORDERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE orders SET amount_cents = amount_cents + 100 WHERE shop_id = $1 AND id = $2 RETURNING amount_cents",
        Expect::Rewrite("WITH __dw_primary AS (UPDATE orders SET amount_cents = amount_cents + 100 WHERE shop_id = $1 AND id = $2 RETURNING orders.*), __dw_shadow AS (INSERT INTO public.orders_v2 (shop_id, id, amount, attributes, placed_at) SELECT shop_id, id, amount_cents / 100.0, meta::JSONB, placed_at FROM __dw_primary ON CONFLICT(shop_id, id) DO UPDATE SET amount = EXCLUDED.amount) SELECT amount_cents FROM __dw_primary AS orders", vec![StatementTransform { command_tag: Some(Update), rows: Keep }]),
    );
}
#[test]
fn composite_key_change_rejected() {
    check(
        ORDERS,
        route(Phase::DualWrite, Side::Old, Side::Old),
        "UPDATE orders SET shop_id = 2 WHERE id = 1",
        Expect::Reject(RejectReason::KeyChangingUpdate),
    );
}
#[test]
fn composite_v2_insert() {
    check(
        ORDERS,
        route(Phase::Cutover, Side::New, Side::New),
        "INSERT INTO orders (shop_id, id, amount, attributes, placed_at) VALUES ($1, $2, $3, $4, now())",
        Expect::Rewrite("WITH __dw_primary AS (INSERT INTO public.orders_v2 AS orders (shop_id, id, amount, attributes, placed_at) VALUES ($1, $2, $3, $4, now()) RETURNING orders.*), __dw_old AS (INSERT INTO public.orders (shop_id, id, amount_cents, meta, placed_at) SELECT shop_id, id, round(amount * 100)::INT, attributes::TEXT, placed_at FROM __dw_primary ON CONFLICT(shop_id, id) DO UPDATE SET amount_cents = EXCLUDED.amount_cents, meta = EXCLUDED.meta, placed_at = EXCLUDED.placed_at) SELECT FROM __dw_primary AS orders", vec![StatementTransform { command_tag: Some(Insert), rows: Suppress }]),
    );
}
