//! Schema-qualified column references to the migrated table (`public.users.col`, `public.users.*`) bind
//! where Postgres binds them: to the nearest query level whose FROM holds `public.users` unaliased. The
//! rewrite drops the schema only where the bare `users.col` then binds to that same level; where a nearer
//! level exposes another `users` (another schema's table, an alias, a CTE, a derived table) the statement is
//! refused, `unsupported_returning` in a write's RETURNING list and `unresolved_name` elsewhere. A reference
//! whose table the rewrite leaves in place (an old-version session reading the old table) stays as written.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side};

const USERS: &str = include_str!("../examples/users_split_name.toml");

fn plan(phase: Phase, version: Side, read_source: Side, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(USERS, "example").unwrap();
    let route = Route::uniform(&rules, MigrationRoute { phase, version, read_source });
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = (*rewriter.rewrite(sql, &route)).clone();
    assert_eq!(rewriter.plan(sql, &route), plan, "the cache must not change the decision for {sql}");
    plan
}

fn v1(sql: &str) -> Plan {
    plan(Phase::DualWrite, Side::Old, Side::Old, sql)
}

fn v2(sql: &str) -> Plan {
    plan(Phase::DualWrite, Side::New, Side::New, sql)
}

/// An old-version session reading the shadow through the old shape.
fn v1_reading_v2(sql: &str) -> Plan {
    plan(Phase::DualWrite, Side::Old, Side::New, sql)
}

#[track_caller]
fn assert_sql(plan: Plan, want: &str) {
    match plan {
        Plan::Rewritten { sql, .. } => assert_eq!(sql, want),
        other => panic!("expected {want}, got {other:?}"),
    }
}

#[track_caller]
fn assert_refused(plan: Plan, reason: RejectReason) {
    match plan {
        Plan::Rejected(r) => {
            assert_eq!(r.reason, reason, "{}", r.message);
            assert_eq!(r.sqlstate, "0A000");
            assert!(r.message.contains(&format!("migration \"{}\"", r.migration)), "{}", r.message);
        }
        other => panic!("expected a refusal ({reason:?}), got {other:?}"),
    }
}

const UPDATE: &str = "UPDATE public.users SET email = 'x' WHERE id = 1 RETURNING";

/// The rewrite of `UPDATE ... RETURNING <returning>` in a v1 session, returning `select`.
fn v1_update(select: &str) -> String {
    format!(
        "WITH __dw_primary AS (UPDATE public.users SET email = 'x' WHERE id = 1 RETURNING users.*), __dw_shadow AS \
         (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), \
         split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = \
         EXCLUDED.email) SELECT {select} FROM __dw_primary AS users"
    )
}

/// The same in a v2 session (its sync into the old table, the source of truth in dual_write, updates only
/// the rows there).
fn v2_update(select: &str) -> String {
    format!(
        "WITH __dw_primary AS (UPDATE public.users_v2 AS users SET email = 'x' WHERE id = 1 RETURNING users.*), \
         __dw_old AS (UPDATE public.users AS __dw_t SET email = __dw_u.email FROM (SELECT id, first_name || ' ' || \
         last_name, email FROM __dw_primary) AS __dw_u (id, name, email) WHERE __dw_t.id = __dw_u.id) SELECT \
         {select} FROM __dw_primary AS users"
    )
}

const V1_VIEW: &str = "(SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2)";

#[test]
fn top_level_qualified_columns_and_wildcards_name_the_written_row() {
    let sql = format!("{UPDATE} public.users.id, public.users.*");
    assert_sql(v1(&sql), &v1_update("users.id, users.*"));
    assert_sql(v2(&sql), &v2_update("users.id, users.*"));
    let delete = "DELETE FROM public.users WHERE id = 1 RETURNING public.users.*";
    match v2(delete) {
        Plan::Rewritten { sql, .. } => assert!(sql.ends_with("SELECT users.* FROM __dw_primary AS users"), "{sql}"),
        other => panic!("{other:?}"),
    }
    let insert = "INSERT INTO public.users (id, name, email) VALUES (1, 'a b', 'c') RETURNING public.users.id";
    match v1(insert) {
        Plan::Rewritten { sql, .. } => assert!(sql.ends_with("SELECT users.id FROM __dw_primary AS users"), "{sql}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_correlated_subquery_names_the_written_row() {
    let sql = format!("{UPDATE} (SELECT count(*) FROM public.orders AS o WHERE o.user_id = public.users.id)");
    let want = "(SELECT count(*) FROM public.orders AS o WHERE o.user_id = users.id)";
    assert_sql(v1(&sql), &v1_update(want));
    assert_sql(v2(&sql), &v2_update(want));
}

#[test]
fn another_schemas_users_in_a_subquery_is_refused_in_returning() {
    let sql = format!("{UPDATE} (SELECT public.users.id FROM tenant.users LIMIT 1)");
    assert_refused(v1(&sql), RejectReason::UnsupportedReturning);
    assert_refused(v2(&sql), RejectReason::UnsupportedReturning);
    // Aliased, the other schema's table no longer exposes `users`.
    let aliased = format!("{UPDATE} (SELECT public.users.id FROM tenant.users AS t LIMIT 1)");
    assert_sql(v1(&aliased), &v1_update("(SELECT users.id FROM tenant.users AS t LIMIT 1)"));
}

#[test]
fn a_subquery_table_aliased_users_is_refused_in_returning() {
    let sql = format!("{UPDATE} (SELECT public.users.id FROM public.orders AS users LIMIT 1)");
    assert_refused(v1(&sql), RejectReason::UnsupportedReturning);
    assert_refused(v2(&sql), RejectReason::UnsupportedReturning);
}

#[test]
fn the_migrated_table_in_a_subquery_binds_the_reference_there() {
    let sql = format!("{UPDATE} (SELECT max(public.users.id) FROM public.users)");
    // v1 reads the old table in place: the reference stays as written and binds there.
    assert_sql(v1(&sql), &v1_update("(SELECT max(public.users.id) FROM public.users)"));
    assert_sql(v2(&sql), &v2_update("(SELECT max(users.id) FROM public.users_v2 AS users)"));
    assert_sql(v1_reading_v2(&sql), &v1_update(&format!("(SELECT max(users.id) FROM {V1_VIEW} AS users)")));
}

#[test]
fn nested_two_levels_deep_the_reference_binds_the_written_row_unless_a_level_between_exposes_users() {
    let sql =
        format!("{UPDATE} (SELECT (SELECT public.users.email FROM tenant.orders LIMIT 1) FROM public.orders LIMIT 1)");
    let want = "(SELECT (SELECT users.email FROM tenant.orders LIMIT 1) FROM public.orders LIMIT 1)";
    assert_sql(v1(&sql), &v1_update(want));
    assert_sql(v2(&sql), &v2_update(want));
    let aliased_between =
        format!("{UPDATE} (SELECT (SELECT public.users.email FROM tenant.orders LIMIT 1) FROM public.orders AS users)");
    assert_refused(v1(&aliased_between), RejectReason::UnsupportedReturning);
    assert_refused(v2(&aliased_between), RejectReason::UnsupportedReturning);
}

#[test]
fn an_aliased_target_is_not_named_by_its_table_and_the_reference_stays_as_written() {
    // Postgres refuses `public.users.id` here (the target is only `u`); so does the rewritten statement.
    let sql =
        "UPDATE public.users AS u SET email = 'x' WHERE id = 1 RETURNING (SELECT public.users.id FROM tenant.users)";
    match v2(sql) {
        Plan::Rewritten { sql, .. } => {
            assert!(sql.ends_with("SELECT (SELECT public.users.id FROM tenant.users) FROM __dw_primary AS u"), "{sql}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn writing_the_migrated_table_inside_a_with_clause_is_refused() {
    let cte = "WITH x AS (UPDATE public.users SET email = 'x' WHERE id = 1 \
               RETURNING (SELECT public.users.id FROM tenant.users LIMIT 1) AS v) INSERT INTO audit SELECT v FROM x";
    assert_refused(v1(cte), RejectReason::DataModifyingCte);
    assert_refused(v2(cte), RejectReason::DataModifyingCte);
}

#[test]
fn a_write_after_client_ctes_whose_returning_would_rebind_is_refused() {
    let sql = "WITH a AS (SELECT 1) UPDATE public.users SET email = 'x' WHERE id = 1 \
               RETURNING (SELECT public.users.id FROM tenant.users LIMIT 1)";
    assert_refused(v1(sql), RejectReason::UnsupportedReturning);
    assert_refused(v2(sql), RejectReason::UnsupportedReturning);
}

#[test]
fn a_data_modifying_cte_on_another_table_binds_references_by_its_own_level() {
    let sql =
        "WITH d AS (DELETE FROM audit USING public.users WHERE audit.user_id = public.users.id RETURNING audit.id) \
               SELECT count(*) FROM d";
    assert_eq!(v1(sql), Plan::PassThrough);
    assert_sql(
        v2(sql),
        "WITH d AS (DELETE FROM audit USING public.users_v2 AS users WHERE audit.user_id = users.id RETURNING audit.id) \
         SELECT count(*) FROM d",
    );
    let rebound = "WITH d AS (DELETE FROM audit USING public.users WHERE audit.user_id = public.users.id \
                   AND audit.note = (SELECT public.users.email FROM tenant.users LIMIT 1) RETURNING audit.id) \
                   SELECT count(*) FROM d";
    assert_refused(v2(rebound), RejectReason::UnresolvedName);
}

#[test]
fn a_subquery_in_a_writes_where_clause_follows_the_same_binding() {
    let sql = "UPDATE public.users SET email = 'x' WHERE id IN (SELECT public.users.id FROM tenant.users)";
    // v1 writes the old table in place: the reference stays and binds to the updated row.
    match v1(sql) {
        Plan::Rewritten { sql, .. } => assert!(sql.contains("(SELECT public.users.id FROM tenant.users)"), "{sql}"),
        other => panic!("{other:?}"),
    }
    assert_refused(v2(sql), RejectReason::UnresolvedName);
}

#[test]
fn after_complete_the_returning_list_stays_on_the_retargeted_statement() {
    let complete = |sql: &str| plan(Phase::Complete, Side::New, Side::New, sql);
    assert_sql(
        complete("UPDATE public.users SET email = 'x' WHERE id = 1 RETURNING public.users.id, (SELECT max(public.users.id) FROM public.users)"),
        "UPDATE public.users_v2 AS users SET email = 'x' WHERE id = 1 RETURNING users.id, (SELECT max(users.id) FROM public.users_v2 AS users)",
    );
    assert_refused(
        complete("UPDATE public.users SET email = 'x' WHERE id = 1 RETURNING (SELECT public.users.email FROM tenant.users LIMIT 1)"),
        RejectReason::UnsupportedReturning,
    );
}

#[test]
fn reads_drop_the_schema_only_where_the_reference_binds_the_same_level() {
    let plain = "SELECT public.users.* FROM public.users ORDER BY public.users.id";
    assert_eq!(v1(plain), Plan::PassThrough);
    assert_sql(v2(plain), "SELECT users.* FROM public.users_v2 AS users ORDER BY users.id");
    assert_sql(v1_reading_v2(plain), &format!("SELECT users.* FROM {V1_VIEW} AS users ORDER BY users.id"));

    let lateral = "SELECT x.e FROM public.users, LATERAL (SELECT public.users.email AS e) AS x";
    assert_sql(v2(lateral), "SELECT x.e FROM public.users_v2 AS users, LATERAL (SELECT users.email AS e) AS x");

    let aliased_inner = "SELECT (SELECT public.users.email FROM tenant.users AS t LIMIT 1) FROM public.users";
    assert_sql(
        v2(aliased_inner),
        "SELECT (SELECT users.email FROM tenant.users AS t LIMIT 1) FROM public.users_v2 AS users",
    );

    // A CTE named users elsewhere in the statement: the outer reference still binds the outer level.
    let cte =
        "WITH users AS (SELECT 1 AS id) SELECT public.users.email, (SELECT users.id FROM users) FROM public.users";
    assert_sql(
        v2(cte),
        "WITH users AS (SELECT 1 AS id) SELECT users.email, (SELECT users.id FROM users) FROM public.users_v2 AS users",
    );

    let merge = "MERGE INTO audit AS a USING public.users ON a.user_id = public.users.id \
                 WHEN MATCHED THEN UPDATE SET note = public.users.email";
    assert_sql(
        v2(merge),
        "MERGE INTO audit AS a USING public.users_v2 AS users ON a.user_id = users.id WHEN MATCHED THEN UPDATE SET note = users.email",
    );
}

#[test]
fn reads_whose_rewritten_reference_would_bind_a_nearer_users_are_refused() {
    for sql in [
        "SELECT (SELECT public.users.email FROM tenant.users LIMIT 1) FROM public.users",
        "SELECT (SELECT public.users.email FROM public.orders AS users LIMIT 1) FROM public.users",
        "SELECT (SELECT max(public.users.id) FROM (SELECT 1) AS users) FROM public.users",
        "WITH users AS (SELECT 1 AS id) SELECT (SELECT public.users.email FROM users) FROM public.users",
        "SELECT (SELECT (SELECT public.users.email FROM tenant.orders LIMIT 1) FROM tenant.users LIMIT 1) FROM public.users",
    ] {
        assert_eq!(v1(sql), Plan::PassThrough, "{sql}: nothing is rewritten for v1 reading the old table");
        assert_refused(v2(sql), RejectReason::UnresolvedName);
        assert_refused(v1_reading_v2(sql), RejectReason::UnresolvedName);
    }
}

#[test]
fn a_reference_to_the_inner_migrated_table_binds_the_inner_level() {
    // The inner `public.users` is unaliased, so the reference binds it, not the outer tenant table.
    let sql = "SELECT (SELECT max(public.users.id) FROM public.users) FROM tenant.users";
    assert_sql(v2(sql), "SELECT (SELECT max(users.id) FROM public.users_v2 AS users) FROM tenant.users");
}

const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

fn merge_v1(read_source: Side, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(MERGE, "example").unwrap();
    let route = Route::uniform(&rules, MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source });
    (*Rewriter::new(Arc::new(rules), 16).rewrite(sql, &route)).clone()
}

#[test]
fn a_merges_mirrored_shadow_write_returns_its_qualified_columns_from_the_written_row() {
    let sql = "UPDATE public.users SET email = 'x' WHERE id = 1 RETURNING public.users.id, public.users.*";
    match merge_v1(Side::Old, sql) {
        Plan::Rewritten { sql, .. } => {
            assert!(sql.ends_with("SELECT users.id, users.* FROM __dw_primary AS users"), "{sql}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_merge_sources_qualified_references_follow_the_same_binding() {
    let write = "UPDATE public.accounts SET email = 'x' WHERE id = 1 \
                 RETURNING (SELECT public.accounts.email FROM tenant.accounts LIMIT 1)";
    assert_refused(merge_v1(Side::Old, write), RejectReason::UnsupportedReturning);
    let view = "(SELECT id, display_name AS name, bio FROM public.users WHERE display_name IS NOT NULL)";
    let read =
        "SELECT public.profiles.name, (SELECT max(public.profiles.id) FROM public.profiles) FROM public.profiles";
    assert_eq!(merge_v1(Side::Old, read), Plan::PassThrough);
    assert_sql(
        merge_v1(Side::New, read),
        &format!("SELECT profiles.name, (SELECT max(profiles.id) FROM {view} AS profiles) FROM {view} AS profiles"),
    );
    let rebound = "SELECT (SELECT public.profiles.name FROM tenant.profiles LIMIT 1) FROM public.profiles";
    assert_refused(merge_v1(Side::New, rebound), RejectReason::UnresolvedName);
}

#[test]
fn another_unaliased_users_at_the_same_level_is_refused_once_the_table_is_replaced() {
    // Postgres tells `public.users` and `tenant.users` apart by schema; `users_v2 AS users` beside
    // `tenant.users` would be the same name twice.
    let read = "SELECT * FROM public.users, tenant.users WHERE public.users.id = tenant.users.id";
    assert_eq!(v1(read), Plan::PassThrough);
    assert_refused(v2(read), RejectReason::UnresolvedName);
    let write = "UPDATE public.users SET email = 'x' FROM tenant.users WHERE public.users.id = tenant.users.id \
                 RETURNING public.users.id";
    // v1 writes the old table in place; only the RETURNING list moves, to a level of its own.
    match v1(write) {
        Plan::Rewritten { sql, .. } => assert!(sql.ends_with("SELECT users.id FROM __dw_primary AS users"), "{sql}"),
        other => panic!("{other:?}"),
    }
    assert_refused(v2(write), RejectReason::UnresolvedName);
}
