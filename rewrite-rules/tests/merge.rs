//! Merging several old tables into one shadow (`[[migration.sources]]`): the model, the exact dual-write SQL
//! of each write form on either source, reads of a source served from the shadow, and the refusals (what a
//! merge does not dual-write, malformed merges). The writes also run on real Postgres in
//! `tests/tests/merge_tables.rs`.

use std::sync::Arc;

use dualwrite_rules::RowsDisposition::*;
use dualwrite_rules::TagRewrite::*;
use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, StatementTransform};

mod plan_support;
use plan_support::DUAL_V1;

const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

fn plan(r: MigrationRoute, sql: &str) -> Plan {
    plan_support::plan(MERGE, "merge", r, sql)
}

fn rewritten(r: MigrationRoute, sql: &str, want: &str, transform: StatementTransform) {
    plan_support::rewritten(plan(r, sql), sql, want, transform)
}

fn refused(r: MigrationRoute, sql: &str) -> String {
    plan_support::refused(plan(r, sql), sql, RejectReason::MergedTablesWrite, "users_merge_tables")
}

const SUPPRESS: fn(dualwrite_rules::TagRewrite) -> StatementTransform =
    |tag| StatementTransform { command_tag: Some(tag), rows: Suppress };

/// The insert half of an accounts write fills the profile's columns from `profiles` as it is.
const ACCOUNTS_UPSERT: &str = "INSERT INTO public.users (id, email, display_name, bio) SELECT id, lower(email), \
     name, bio FROM (SELECT id, email FROM __dw_primary) AS __dw_s1 LEFT JOIN (SELECT id, name, bio FROM \
     public.profiles) AS __dw_s2 USING(id) ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email";

#[test]
fn the_model_merges_the_sources_mappings_key_first() {
    let rules = RuleSet::from_toml(MERGE, "merge").unwrap();
    let m = &rules.migrations[0];
    assert!(m.is_merge() && !m.is_split());
    assert_eq!(m.table.to_string(), "public.accounts");
    let old: Vec<String> = m.old_tables().iter().map(|t| t.to_string()).collect();
    assert_eq!(old, ["public.accounts", "public.profiles"]);
    assert_eq!(m.shadow_columns().collect::<Vec<_>>(), ["id", "email", "display_name", "bio"]);
    assert_eq!(m.old_columns().collect::<Vec<_>>(), ["id", "email", "name", "bio"]);
}

#[test]
fn an_insert_into_either_source_upserts_its_columns_of_the_shadow_row() {
    rewritten(
        DUAL_V1,
        "INSERT INTO accounts (id, email) VALUES (1, 'A@x')",
        &format!(
            "WITH __dw_primary AS (INSERT INTO accounts (id, email) VALUES (1, 'A@x') RETURNING accounts.*), \
             __dw_shadow AS ({ACCOUNTS_UPSERT}) SELECT FROM __dw_primary AS accounts"
        ),
        SUPPRESS(Insert),
    );
    rewritten(
        DUAL_V1,
        "INSERT INTO profiles (id, name, bio) VALUES (1, 'Ann', 'hi')",
        "WITH __dw_primary AS (INSERT INTO profiles (id, name, bio) VALUES (1, 'Ann', 'hi') RETURNING profiles.*), \
         __dw_shadow AS (INSERT INTO public.users (id, email, display_name, bio) SELECT id, lower(email), name, bio \
         FROM (SELECT id, name, bio FROM __dw_primary) AS __dw_s2 LEFT JOIN (SELECT id, email FROM public.accounts) \
         AS __dw_s1 USING(id) ON CONFLICT(id) DO UPDATE SET display_name = EXCLUDED.display_name, bio = EXCLUDED.bio) \
         SELECT FROM __dw_primary AS profiles",
        SUPPRESS(Insert),
    );
}

#[test]
fn an_update_re_derives_only_the_assigned_columns() {
    rewritten(
        DUAL_V1,
        "UPDATE profiles SET bio = 'new' WHERE id = 1",
        "WITH __dw_primary AS (UPDATE profiles SET bio = 'new' WHERE id = 1 RETURNING profiles.*), \
         __dw_shadow AS (INSERT INTO public.users (id, email, display_name, bio) SELECT id, lower(email), name, bio \
         FROM (SELECT id, name, bio FROM __dw_primary) AS __dw_s2 LEFT JOIN (SELECT id, email FROM public.accounts) \
         AS __dw_s1 USING(id) ON CONFLICT(id) DO UPDATE SET bio = EXCLUDED.bio) SELECT FROM __dw_primary AS profiles",
        SUPPRESS(Update),
    );
}

#[test]
fn a_delete_locks_the_shadow_row_then_deletes_it_or_nulls_its_columns() {
    rewritten(
        DUAL_V1,
        "DELETE FROM accounts WHERE id = 1",
        "WITH __dw_primary AS (DELETE FROM accounts WHERE id = 1 RETURNING accounts.*), \
         __dw_lock AS (SELECT __dw_t.id, (__dw_t.display_name IS NULL) AS __dw_gone FROM public.users AS __dw_t \
         JOIN (SELECT id AS id FROM __dw_primary) AS __dw_k ON __dw_t.id = __dw_k.id FOR UPDATE OF __dw_t), \
         __dw_shadow AS (DELETE FROM public.users AS __dw_t USING __dw_lock AS __dw_l WHERE __dw_t.id = __dw_l.id \
         AND __dw_l.__dw_gone), \
         __dw_shadow_null AS (UPDATE public.users AS __dw_t SET email = NULL FROM __dw_lock AS __dw_l \
         WHERE __dw_t.id = __dw_l.id AND NOT __dw_l.__dw_gone) SELECT FROM __dw_primary AS accounts",
        SUPPRESS(Delete),
    );
}

#[test]
fn a_read_of_a_source_routed_to_the_shadow_reads_the_rows_it_holds_there() {
    let v1_reads_v2 = MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source: Side::New };
    rewritten(
        v1_reads_v2,
        "SELECT name FROM profiles WHERE id = 1",
        "SELECT name FROM (SELECT id, display_name AS name, bio FROM public.users WHERE display_name IS NOT NULL) \
         AS profiles WHERE id = 1",
        StatementTransform::UNCHANGED,
    );
    // Old-version reads of the old tables are left alone.
    assert_eq!(plan(DUAL_V1, "SELECT * FROM accounts"), Plan::PassThrough);
}

#[test]
fn what_a_merge_does_not_dual_write_is_refused() {
    let v2 = MigrationRoute::own(Phase::DualWrite, Side::New);
    assert!(refused(v2, "INSERT INTO accounts (id, email) VALUES (1, 'a')").contains("a new-version session"));
    assert!(refused(v2, "SELECT * FROM profiles").contains("reads an old table of the merge"));
    let cutover_v2 = MigrationRoute::own(Phase::Cutover, Side::New);
    assert!(refused(cutover_v2, "DELETE FROM profiles WHERE id = 1").contains("a new-version session"));
    // TRUNCATE and COPY FROM of a source: see merge_copy_truncate.rs.
}

#[test]
fn in_cutover_the_sources_old_shaped_writes_are_dual_written_as_in_dual_write() {
    let cutover = MigrationRoute::own(Phase::Cutover, Side::Old);
    for sql in [
        "INSERT INTO accounts (id, email) VALUES (1, 'A@x')",
        "UPDATE profiles SET bio = 'b' WHERE id = 1",
        "DELETE FROM profiles WHERE id = 1",
        "DELETE FROM accounts WHERE id = 1 RETURNING email",
    ] {
        let dual = plan(DUAL_V1, sql);
        assert!(matches!(dual, Plan::Rewritten { .. }), "{sql}: {dual:?}");
        assert_eq!(plan(cutover, sql), dual, "{sql}");
    }
}

fn error_of(text: &str) -> String {
    RuleSet::from_toml(text, "rules.toml").unwrap_err().to_string()
}

#[test]
fn malformed_merges_are_refused_naming_the_field() {
    let t = |a: &str, b: &str| MERGE.replacen(a, b, 1);
    let cases = [
        (t("present = \"email\"", "present = \"id\""), "field `sources[1].present`: `id` must be a non-key"),
        (t("present = \"display_name\"", "present = \"email\""), "field `sources[2].present`"),
        (t("display_name = \"name\", bio", "email = \"name\", bio"), "field `sources[2].forward.email`: shadow column"),
        (
            t("name = \"display_name\", bio = \"bio\" }", "email = \"bio\" }"),
            "field `sources[2].backward.email`: old column",
        ),
        (
            t("forward  = { id = \"id\", display_name", "forward  = { id = \"id + 0\", display_name"),
            "field `sources[2].forward.id`: key column",
        ),
        (
            t("bio = \"bio\" }\nbackward", "bio = \"email\" }\nbackward"),
            "field `sources[2].forward.bio`: refers to `email`",
        ),
        (
            t("table   = \"public.profiles\"", "table   = \"public.users\""),
            "field `sources[2].table`: must differ from `shadow`",
        ),
        (
            t("table   = \"public.profiles\"", "table   = \"public.accounts\""),
            "field `sources[2].table`: `public.accounts` is already",
        ),
        (
            t("shadow = \"public.users\"", "table = \"public.users0\"\nshadow = \"public.users\""),
            "field `table`: a merge",
        ),
    ];
    for (text, want) in cases {
        let e = error_of(&text);
        assert!(e.contains(want), "{e}\n  wanted: {want}");
    }
    let one = MERGE.split("[[migration.sources]]\ntable   = \"public.profiles\"").next().unwrap().to_string();
    assert!(error_of(&one).contains("field `sources`: a merge needs at least two"), "{}", error_of(&one));
}

#[test]
fn an_unparseable_write_to_any_source_is_refused() {
    for sql in ["INSERT INTO profiles VALUES (1, 'a', 'b') ON CONFLIC", "UPDATE accounts SET email = 'x' WHERE"] {
        match plan(DUAL_V1, sql) {
            Plan::Rejected(r) => {
                assert_eq!((r.reason, r.migration.as_str()), (RejectReason::Unparseable, "users_merge_tables"), "{sql}")
            }
            other => panic!("unexpected plan for {sql}: {other:?}"),
        }
    }
}

#[test]
fn a_shadow_read_of_a_source_compares_it_with_its_rows_in_the_shadow() {
    let rules = RuleSet::from_toml(MERGE, "merge").unwrap();
    let route = Route::uniform(&rules, DUAL_V1);
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let r = rewriter.shadow_read("SELECT id, name FROM profiles WHERE id = $1", &route).unwrap();
    assert_eq!(r.old_sql, "SELECT __dw_row::TEXT FROM (SELECT id, name FROM profiles WHERE id = $1) AS __dw_row");
    assert_eq!(
        r.new_sql,
        "SELECT __dw_row::TEXT FROM (SELECT id, name FROM (SELECT id, display_name AS name, bio FROM public.users \
         WHERE display_name IS NOT NULL) AS profiles WHERE id = $1) AS __dw_row"
    );
    // A v2 session has no shape for a source's name: no shadow read.
    let v2 = Route::uniform(rewriter.rules(), MigrationRoute::own(Phase::DualWrite, Side::New));
    assert!(rewriter.shadow_read("SELECT * FROM profiles", &v2).is_none());
}
