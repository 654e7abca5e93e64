//! A reference is rewritten, routed or refused for a migration only when it names the migrated relation in
//! the session: schema-qualified references by their schema, unqualified ones by what the session's
//! `search_path` reaches (`Route::unqualified_elsewhere`, which the proxy learns from the session's own
//! server connection). Everything that names another relation passes through untouched.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side};

const USERS: &str = include_str!("../examples/users_split_name.toml");
const ORDERS: &str = include_str!("../examples/orders_amount_numeric.toml");

/// Sessions on `version` reading their own version's table, in `phase`; `elsewhere`: unqualified `users`
/// reaches another relation (a tenant schema first on the path, a temporary table).
fn plan(rules: &str, phase: Phase, version: Side, elsewhere: bool, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(rules, "example").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute::own(phase, version));
    if elsewhere {
        route.unqualified_elsewhere = vec![0];
    }
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = (*rewriter.rewrite(sql, &route)).clone();
    assert_eq!(rewriter.plan(sql, &route), plan, "the cache must not change the decision for {sql}");
    plan
}

fn v1(elsewhere: bool, sql: &str) -> Plan {
    plan(USERS, Phase::DualWrite, Side::Old, elsewhere, sql)
}

fn v2(elsewhere: bool, sql: &str) -> Plan {
    plan(USERS, Phase::DualWrite, Side::New, elsewhere, sql)
}

fn assert_rewritten(plan: &Plan, sql: &str) {
    assert!(matches!(plan, Plan::Rewritten { .. }), "expected a rewrite of {sql}, got {plan:?}");
}

fn assert_refused(plan: &Plan, reason: RejectReason, sql: &str) {
    match plan {
        Plan::Rejected(r) => assert_eq!(r.reason, reason, "for {sql}: {}", r.message),
        other => panic!("expected a refusal of {sql}, got {other:?}"),
    }
}

#[test]
fn unqualified_writes_are_dual_written_only_where_the_name_reaches_the_migrated_table() {
    for sql in [
        "INSERT INTO users (id, name, email) VALUES (1, 'a b', 'x@y')",
        "UPDATE users SET email = 'z' WHERE id = 1",
        "DELETE FROM users WHERE id = 1",
        "INSERT INTO users (id, name, email) VALUES (1, 'a b', 'x') ON CONFLICT (id) DO UPDATE SET email = 'y'",
        "TRUNCATE users",
    ] {
        assert_rewritten(&v1(false, sql), sql);
        assert_eq!(v1(true, sql), Plan::PassThrough, "{sql} names another relation in that session");
    }
}

#[test]
fn qualified_references_denote_the_migrated_table_whatever_the_search_path() {
    let sql = "UPDATE public.users SET email = 'z' WHERE id = 1";
    assert_rewritten(&v1(false, sql), sql);
    assert_rewritten(&v1(true, sql), sql);
    let quoted = "DELETE FROM \"public\".\"users\" WHERE id = 1";
    assert_rewritten(&v1(true, quoted), quoted);
}

#[test]
fn other_schemas_and_temporary_tables_of_the_same_name_pass_through() {
    for elsewhere in [false, true] {
        for sql in [
            "INSERT INTO tenant_a.users (id, name) VALUES (1, 'x')",
            "UPDATE pg_temp.users SET name = 'x'",
            "DELETE FROM \"Users\" WHERE id = 1",
            "SELECT first_name FROM tenant_b.users",
            "DROP TABLE tenant_a.users",
        ] {
            assert_eq!(v1(elsewhere, sql), Plan::PassThrough, "{sql}");
            assert_eq!(v2(elsewhere, sql), Plan::PassThrough, "{sql}");
        }
    }
}

#[test]
fn v2_sessions_route_the_logical_name_only_where_it_reaches_the_migrated_table() {
    let write = "INSERT INTO users (id, first_name, last_name, email) VALUES (1, 'a', 'b', 'c')";
    assert_rewritten(&v2(false, write), write);
    assert_eq!(v2(true, write), Plan::PassThrough);
    let read = "SELECT first_name FROM users WHERE id = 1";
    assert_rewritten(&v2(false, read), read);
    assert_eq!(v2(true, read), Plan::PassThrough);
}

#[test]
fn create_table_never_denotes_the_existing_relation() {
    for elsewhere in [false, true] {
        for sql in [
            "CREATE TEMP TABLE users (id int PRIMARY KEY, name text)",
            "CREATE TABLE tenant_c.users (id int)",
            "CREATE TABLE users_archive (LIKE users)",
            "CREATE TABLE orders_local (user_id int REFERENCES users (id))",
        ] {
            assert_eq!(v1(elsewhere, sql), Plan::PassThrough, "{sql}");
        }
    }
    let inherits = "CREATE TABLE users_2026 () INHERITS (users)";
    assert_refused(&v1(false, inherits), RejectReason::Ddl, inherits);
    assert_eq!(v1(true, inherits), Plan::PassThrough);
    let partition = "CREATE TABLE users_p1 PARTITION OF public.users FOR VALUES FROM (1) TO (10)";
    assert_refused(&v1(true, partition), RejectReason::Ddl, partition);
}

#[test]
fn create_table_as_routes_its_query_like_any_read() {
    let sql = "CREATE TABLE snapshot AS SELECT first_name FROM users";
    match v2(false, sql) {
        Plan::Rewritten { sql: rewritten, .. } => {
            assert!(rewritten.contains("users_v2"), "{rewritten}");
            assert!(rewritten.starts_with("CREATE TABLE snapshot AS"), "{rewritten}");
        }
        other => panic!("expected the query routed, got {other:?}"),
    }
    assert_eq!(v2(true, sql), Plan::PassThrough);
}

#[test]
fn ddl_is_refused_only_on_the_migrated_relation() {
    for sql in ["DROP TABLE users", "ALTER TABLE users ADD COLUMN age int", "CREATE INDEX ON users (email)"] {
        assert_refused(&v1(false, sql), RejectReason::Ddl, sql);
        assert_eq!(v1(true, sql), Plan::PassThrough, "{sql} names another relation in that session");
    }
    let qualified = "ALTER TABLE public.users ADD COLUMN age int";
    assert_refused(&v1(true, qualified), RejectReason::Ddl, qualified);
    let rename_to = "ALTER TABLE tenant_c.people RENAME TO users";
    assert_eq!(v1(false, rename_to), Plan::PassThrough, "the new name of a rename is no reference");
    let inherit = "ALTER TABLE people INHERIT users";
    assert_refused(&v1(false, inherit), RejectReason::Ddl, inherit);
}

#[test]
fn statements_the_parser_rejects_follow_the_same_resolution() {
    // sqlparser does not take `FOR NO KEY UPDATE OF`-less row locks with SKIP LOCKED in this position;
    // the tokenizer-level fallback decides.
    let sql = "UPDATE users SET name = 'x' WHERE id = 1 RETURNING *, (SELECT 1 FROM ROWS FROM (f()) AS r)";
    assert_refused(&v1(false, sql), RejectReason::Unparseable, sql);
    assert_eq!(v1(true, sql), Plan::PassThrough);
    let qualified = "UPDATE public.users SET name = 'x' RETURNING (SELECT 1 FROM ROWS FROM (f()) AS r)";
    assert!(matches!(v1(true, qualified), Plan::Rejected(_)), "a qualified reference is still the migrated table");
}

#[test]
fn an_unqualified_rules_table_is_the_one_in_public() {
    let sql = "UPDATE public.orders SET meta = 'x' WHERE shop_id = 1 AND id = 2";
    assert_rewritten(&plan(ORDERS, Phase::DualWrite, Side::Old, true, sql), sql);
    let other = "UPDATE shop.orders SET meta = 'x' WHERE shop_id = 1 AND id = 2";
    assert_eq!(plan(ORDERS, Phase::DualWrite, Side::Old, false, other), Plan::PassThrough);
}

/// `database.schema.table` is a spelling Postgres accepts for the current database; a migrated table (or a
/// kept shadow) so named is refused rather than passed through unrouted and written on one side only.
#[test]
fn database_qualified_names_of_a_migrated_table_are_refused_and_of_others_pass_through() {
    for sql in [
        "UPDATE app.public.users SET email = 'z' WHERE id = 1",
        "DELETE FROM \"app\".\"public\".\"users\" WHERE id = 1",
        "INSERT INTO app.public.users (id, name, email) VALUES (1, 'a b', 'x')",
        "SELECT email FROM app.public.users WHERE id = 1",
        "SELECT u.id FROM orders o JOIN app.public.users u ON u.id = o.user_id",
        "UPDATE app.public.users_v2 SET email = 'z' WHERE id = 1",
        "TRUNCATE app.public.users",
        "COPY app.public.users FROM STDIN",
        "COPY app.public.users TO STDOUT",
        "MERGE INTO app.public.users u USING (SELECT 1 AS id) s ON u.id = s.id WHEN MATCHED THEN DELETE",
        "ALTER TABLE app.public.users DROP COLUMN email",
    ] {
        for elsewhere in [false, true] {
            assert_refused(&v1(elsewhere, sql), RejectReason::UnresolvedName, sql);
            assert_refused(&v2(elsewhere, sql), RejectReason::UnresolvedName, sql);
        }
        if let Plan::Rejected(r) = v1(false, sql) {
            assert!(r.message.contains("write it without the database"), "{}", r.message);
        }
    }
    for sql in ["UPDATE app.tenant_a.users SET email = 'z'", "SELECT * FROM app.public.orders_archive"] {
        assert_eq!(v1(false, sql), Plan::PassThrough, "{sql}");
        assert_eq!(v2(false, sql), Plan::PassThrough, "{sql}");
    }
    let drop = "DROP TABLE app.public.users";
    assert_refused(&v1(false, drop), RejectReason::Ddl, drop);
    let off = "UPDATE app.public.users SET email = 'z' WHERE id = 1";
    assert_eq!(plan(USERS, Phase::Off, Side::Old, false, off), Plan::PassThrough, "nothing is routed in off");
}

/// A Unicode-escaped identifier (`U&"\0075sers"` is `users`) names the table Postgres decodes it to; sqlparser
/// cannot parse one, so a write spelled so is refused as unparseable (it passed through, unrouted, before),
/// and one naming another relation passes through.
#[test]
fn unicode_escaped_identifiers_are_judged_by_the_name_they_spell() {
    for sql in [
        r#"UPDATE U&"\0075sers" SET email = 'z' WHERE id = 1"#,
        r#"DELETE FROM public.u&"\0075\0073ers" WHERE id = 1"#,
        r#"INSERT INTO U&"\+000075sers" (id, name, email) VALUES (1, 'a b', 'x')"#,
        r#"UPDATE U&"!0075sers" UESCAPE '!' SET email = 'z' WHERE id = 1"#,
        r#"UPDATE U&"public".U&"users_v2" SET email = 'z' WHERE id = 1"#,
    ] {
        assert_refused(&v1(false, sql), RejectReason::Unparseable, sql);
        assert_refused(&v2(false, sql), RejectReason::Unparseable, sql);
    }
    for sql in [
        r#"UPDATE U&"\0061ccounts" SET email = 'z' WHERE id = 1"#,
        r#"UPDATE tenant_a.U&"\0075sers" SET email = 'z' WHERE id = 1"#,
        r#"SELECT 1 FROM U&"\0075sers""#,
        // `u & "..."` apart is an operator between two columns, not an escaped name (the parser cannot
        // read `WHERE CURRENT OF`, so the token-level judge decides).
        r#"UPDATE accounts SET note = 'users', flags = u & "\0075sers" WHERE CURRENT OF c"#,
    ] {
        assert_eq!(v1(false, sql), Plan::PassThrough, "{sql}");
    }
    let read = r#"SELECT email FROM U&"\0075sers""#;
    assert_refused(&v2(false, read), RejectReason::Unparseable, read);
}
