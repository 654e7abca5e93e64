//! Writes naming a merge's shadow, mirrored into its sources (`src/mirror.rs`): the exact SQL of each
//! form, which sources an UPDATE reaches, the same plan for sessions of either version in `dual_write` and
//! `cutover`, and what happens outside those phases. What cannot be mirrored is refused: see
//! `shadow_writes.rs`. The statements also run on real Postgres in `tests/tests/merge_cutover.rs`.

use std::sync::Arc;

use dualwrite_rules::RowsDisposition::*;
use dualwrite_rules::TagRewrite::*;
use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, StatementTransform};

const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

fn plan(r: MigrationRoute, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(MERGE, "merge").unwrap();
    let route = Route::uniform(&rules, r);
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = (*rewriter.rewrite(sql, &route)).clone();
    assert_eq!(rewriter.plan(sql, &route), plan, "the cache must not change the plan of {sql}");
    plan
}

/// Checks `sql` becomes `want` with `transform`, the same in both phases and for both versions.
fn mirrored(sql: &str, want: &str, transform: StatementTransform) {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        for version in [Side::Old, Side::New] {
            match plan(MigrationRoute::own(phase, version), sql) {
                Plan::Rewritten { sql: got, statements, migrations, writes } => {
                    assert_eq!(got, want, "for {sql} ({phase}, {version:?})");
                    assert_eq!(statements, vec![transform], "for {sql}");
                    assert_eq!(migrations, [0], "for {sql}");
                    assert!(writes, "for {sql}");
                }
                other => panic!("unexpected plan for {sql} ({phase}, {version:?}): {other:?}"),
            }
        }
    }
}

const SUPPRESS: fn(dualwrite_rules::TagRewrite) -> StatementTransform =
    |tag| StatementTransform { command_tag: Some(tag), rows: Suppress };
const KEEP: fn(dualwrite_rules::TagRewrite) -> StatementTransform =
    |tag| StatementTransform { command_tag: Some(tag), rows: Keep };

/// The check each `_gone` CTE makes of the rows a source stops holding: some source must still hold them
/// (else the statement fails with 23514, raised by the proxy's `dualwrite.merge_row_held`).
macro_rules! held_by_a_source {
    () => {
        "dualwrite.merge_row_held((email IS NOT NULL) OR (display_name IS NOT NULL OR bio IS NOT NULL), \
         'users_merge_tables', 'public.users', 'public.accounts, public.profiles', 'id', ROW(id)::TEXT)"
    };
}

/// accounts' row upserted where the shadow row holds its column, deleted where it does not.
const ACCOUNTS: &str = concat!(
    "__dw_old AS (INSERT INTO public.accounts (id, email) SELECT id, email FROM __dw_primary WHERE email IS NOT \
     NULL ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email), __dw_old_gone AS (DELETE FROM public.accounts AS \
     __dw_t USING (SELECT id AS id FROM __dw_primary WHERE NOT (email IS NOT NULL) AND ",
    held_by_a_source!(),
    ") AS __dw_k WHERE __dw_t.id = __dw_k.id)"
);
/// profiles' row, the same way: upserted where either of its columns is set.
const PROFILES: &str = concat!(
    "__dw_old_2 AS (INSERT INTO public.profiles (id, name, bio) SELECT id, display_name, bio FROM __dw_primary \
     WHERE display_name IS NOT NULL OR bio IS NOT NULL ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name, bio = \
     EXCLUDED.bio), __dw_old_2_gone AS (DELETE FROM public.profiles AS __dw_t USING (SELECT id AS id FROM \
     __dw_primary WHERE NOT (display_name IS NOT NULL OR bio IS NOT NULL) AND ",
    held_by_a_source!(),
    ") AS __dw_k WHERE __dw_t.id = __dw_k.id)"
);
/// A DELETE of shadow rows deletes their keys from every source.
const DELETES: &str = "__dw_old AS (DELETE FROM public.accounts AS __dw_t USING (SELECT id AS id FROM __dw_primary) \
     AS __dw_k WHERE __dw_t.id = __dw_k.id), __dw_old_2 AS (DELETE FROM public.profiles AS __dw_t USING (SELECT id \
     AS id FROM __dw_primary) AS __dw_k WHERE __dw_t.id = __dw_k.id)";

#[test]
fn an_insert_into_the_shadow_upserts_or_deletes_each_sources_row() {
    mirrored(
        "INSERT INTO users (id, email, display_name) VALUES (1, 'a@x', 'Ann')",
        &format!(
            "WITH __dw_primary AS (INSERT INTO users (id, email, display_name) VALUES (1, 'a@x', 'Ann') RETURNING \
             users.*), {ACCOUNTS}, {PROFILES} SELECT FROM __dw_primary AS users"
        ),
        SUPPRESS(Insert),
    );
    // Qualified, aliased, from a query, with RETURNING: the client's statement and answer are its own.
    mirrored(
        "INSERT INTO public.users AS u (id, email) SELECT id, email FROM staging RETURNING u.id",
        &format!(
            "WITH __dw_primary AS (INSERT INTO public.users AS u (id, email) SELECT id, email FROM staging RETURNING \
             u.*), {ACCOUNTS}, {PROFILES} SELECT u.id FROM __dw_primary AS u"
        ),
        KEEP(Insert),
    );
}

#[test]
fn an_upsert_into_the_shadow_mirrors_the_rows_it_wrote() {
    mirrored(
        "INSERT INTO users (id, bio) VALUES (1, 'b') ON CONFLICT (id) DO UPDATE SET bio = EXCLUDED.bio",
        &format!(
            "WITH __dw_primary AS (INSERT INTO users (id, bio) VALUES (1, 'b') ON CONFLICT(id) DO UPDATE SET bio = \
             EXCLUDED.bio RETURNING users.*), {ACCOUNTS}, {PROFILES} SELECT FROM __dw_primary AS users"
        ),
        SUPPRESS(Insert),
    );
    mirrored(
        "INSERT INTO users (id, bio) VALUES (1, 'b') ON CONFLICT DO NOTHING",
        &format!(
            "WITH __dw_primary AS (INSERT INTO users (id, bio) VALUES (1, 'b') ON CONFLICT DO NOTHING RETURNING \
             users.*), {ACCOUNTS}, {PROFILES} SELECT FROM __dw_primary AS users"
        ),
        SUPPRESS(Insert),
    );
}

#[test]
fn an_update_of_the_shadow_mirrors_only_into_the_sources_whose_columns_it_assigns() {
    // bio is profiles': accounts is left alone, and profiles' upsert re-derives only bio.
    mirrored(
        "UPDATE users SET bio = 'b' WHERE id = 1",
        &format!(
            "WITH __dw_primary AS (UPDATE users SET bio = 'b' WHERE id = 1 RETURNING users.*), __dw_old_2 AS \
             (INSERT INTO public.profiles (id, name, bio) SELECT id, display_name, bio FROM __dw_primary WHERE \
             display_name IS NOT NULL OR bio IS NOT NULL ON CONFLICT(id) DO UPDATE SET bio = EXCLUDED.bio), \
             __dw_old_2_gone AS (DELETE FROM public.profiles AS __dw_t USING (SELECT id AS id FROM __dw_primary \
             WHERE NOT (display_name IS NOT NULL OR bio IS NOT NULL) AND {}) AS __dw_k WHERE __dw_t.id = \
             __dw_k.id) SELECT FROM __dw_primary AS users",
            held_by_a_source!()
        ),
        SUPPRESS(Update),
    );
    // Setting email to NULL takes the account away: its row is deleted by the `_gone` CTE.
    mirrored(
        "UPDATE users SET email = NULL WHERE id = 1",
        &format!(
            "WITH __dw_primary AS (UPDATE users SET email = NULL WHERE id = 1 RETURNING users.*), {ACCOUNTS} SELECT \
             FROM __dw_primary AS users"
        ),
        SUPPRESS(Update),
    );
    // Both sources' columns, through a tuple assignment and an alias with a FROM list.
    mirrored(
        "UPDATE users AS u SET (email, display_name) = (n.email, n.name) FROM new_names n WHERE n.id = u.id",
        &format!(
            "WITH __dw_primary AS (UPDATE users AS u SET (email, display_name) = (n.email, n.name) FROM new_names \
             n WHERE n.id = u.id RETURNING u.*), {ACCOUNTS}, __dw_old_2 AS (INSERT INTO public.profiles (id, name, \
             bio) SELECT id, display_name, bio FROM __dw_primary WHERE display_name IS NOT NULL OR bio IS NOT NULL \
             ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name), __dw_old_2_gone AS (DELETE FROM public.profiles AS \
             __dw_t USING (SELECT id AS id FROM __dw_primary WHERE NOT (display_name IS NOT NULL OR bio IS NOT \
             NULL) AND {}) AS __dw_k WHERE __dw_t.id = __dw_k.id) SELECT FROM __dw_primary AS u",
            held_by_a_source!()
        ),
        SUPPRESS(Update),
    );
}

#[test]
fn a_delete_of_shadow_rows_deletes_their_keys_from_every_source() {
    mirrored(
        "DELETE FROM users WHERE id = 1",
        &format!(
            "WITH __dw_primary AS (DELETE FROM users WHERE id = 1 RETURNING users.*), {DELETES} SELECT FROM \
             __dw_primary AS users"
        ),
        SUPPRESS(Delete),
    );
    mirrored(
        "DELETE FROM public.users WHERE bio IS NULL RETURNING id, email",
        &format!(
            "WITH __dw_primary AS (DELETE FROM public.users WHERE bio IS NULL RETURNING users.*), {DELETES} SELECT \
             id, email FROM __dw_primary AS users"
        ),
        KEEP(Delete),
    );
}

#[test]
fn a_read_only_with_clause_is_kept_in_front_of_the_mirror() {
    mirrored(
        "WITH stale AS (SELECT id FROM orders WHERE total = 0) DELETE FROM users WHERE id IN (SELECT id FROM stale)",
        &format!(
            "WITH stale AS (SELECT id FROM orders WHERE total = 0), __dw_primary AS (DELETE FROM users WHERE id IN \
             (SELECT id FROM stale) RETURNING users.*), {DELETES} SELECT FROM __dw_primary AS users"
        ),
        SUPPRESS(Delete),
    );
}

#[test]
fn a_cte_named_like_the_shadow_hides_it() {
    let sql = "WITH users AS (SELECT 1 AS id) DELETE FROM orders WHERE user_id IN (SELECT id FROM users)";
    assert_eq!(plan(MigrationRoute::own(Phase::Cutover, Side::New), sql), Plan::PassThrough);
}

#[test]
fn outside_dual_write_and_cutover_the_shadow_is_written_as_the_client_wrote_it() {
    let sql = "UPDATE users SET bio = 'b' WHERE id = 1";
    for version in [Side::Old, Side::New] {
        assert_eq!(plan(MigrationRoute::own(Phase::Off, version), sql), Plan::PassThrough);
        assert_eq!(plan(MigrationRoute::own(Phase::Complete, version), sql), Plan::PassThrough);
    }
}

#[test]
fn a_v2_write_of_the_shadow_reading_an_old_table_is_refused_as_a_new_version_read_of_it() {
    let sql = "UPDATE users SET bio = p.bio FROM profiles p WHERE p.id = users.id";
    match plan(MigrationRoute::own(Phase::Cutover, Side::New), sql) {
        Plan::Rejected(r) => assert_eq!(r.reason, RejectReason::MergedTablesWrite, "{}", r.message),
        other => panic!("{other:?}"),
    }
    // A v1 session reads profiles as it is, and mirrors the shadow's write.
    assert!(matches!(plan(MigrationRoute::own(Phase::Cutover, Side::Old), sql), Plan::Rewritten { .. }));
}

#[test]
fn a_returning_naming_another_table_of_an_update_is_refused() {
    let sql = "UPDATE users SET bio = n.bio FROM new_names n WHERE n.id = users.id RETURNING n.bio";
    match plan(MigrationRoute::own(Phase::DualWrite, Side::New), sql) {
        Plan::Rejected(r) => assert_eq!(r.reason, RejectReason::UnsupportedReturning, "{}", r.message),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_shadows_unqualified_name_reaching_another_relation_is_not_mirrored() {
    let rules = RuleSet::from_toml(MERGE, "merge").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute::own(Phase::Cutover, Side::New));
    route.shadow_unqualified_elsewhere = vec![0];
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    assert_eq!(*rewriter.rewrite("DELETE FROM users WHERE id = 1", &route), Plan::PassThrough);
    assert!(matches!(*rewriter.rewrite("DELETE FROM public.users WHERE id = 1", &route), Plan::Rewritten { .. }));
}

#[test]
fn before_the_backfill_finished_a_write_of_the_shadow_is_refused_in_dual_write_and_the_sources_are_written() {
    let rules = RuleSet::from_toml(MERGE, "merge").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 16);
    for version in [Side::Old, Side::New] {
        let mut route = Route::uniform(&rules, MigrationRoute::own(Phase::DualWrite, version));
        route.backfill_pending = vec![0];
        for sql in [
            "INSERT INTO users (id, email) VALUES (1, 'a@b')",
            "UPDATE users SET bio = 'x' WHERE id = 1",
            "DELETE FROM public.users WHERE id = 1",
        ] {
            match &*rewriter.rewrite(sql, &route) {
                Plan::Rejected(r) => {
                    assert_eq!(
                        (r.reason, r.sqlstate, &*r.migration),
                        (RejectReason::ShadowWrite, "0A000", "users_merge_tables"),
                        "{sql}"
                    );
                    assert!(r.message.contains("backfill"), "{sql}: {}", r.message);
                }
                other => panic!("{sql} must be refused before the backfill finished, got {other:?}"),
            }
        }
        // The sources, which the backfill copies from, are written as always.
        if version == Side::Old {
            let plan = rewriter.rewrite("UPDATE accounts SET email = 'c@d' WHERE id = 1", &route);
            assert!(matches!(*plan, Plan::Rewritten { .. }), "{plan:?}");
        }
        // Once it finished, the shadow's writes are mirrored.
        route.backfill_pending.clear();
        let plan = rewriter.rewrite("UPDATE users SET bio = 'x' WHERE id = 1", &route);
        assert!(matches!(*plan, Plan::Rewritten { .. }), "{plan:?}");
    }
    // In cutover (reached after the backfill, unless forced) the shadow is the table of record: written.
    let mut route = Route::uniform(&rules, MigrationRoute::own(Phase::Cutover, Side::New));
    route.backfill_pending = vec![0];
    let plan = rewriter.rewrite("UPDATE users SET bio = 'x' WHERE id = 1", &route);
    assert!(matches!(*plan, Plan::Rewritten { .. }), "{plan:?}");
}
