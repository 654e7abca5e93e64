//! Syncs into the phase's source of truth (the old table for a v2 write in `dual_write`, the shadow for a
//! v1 write in `cutover`): never an upsert. An INSERT's is a plain INSERT (or `DO NOTHING` after the
//! client's), an UPDATE's updates only the rows there. The same writes into the other table keep their
//! upserts (`forms.rs`). Each also runs on Postgres through the proxy in
//! `tests/tests/new_shape_before_backfill.rs`.

use dualwrite_rules::RowsDisposition::*;
use dualwrite_rules::TagRewrite::*;
use dualwrite_rules::{MigrationRoute, Phase, Side, StatementTransform};

mod plan_support;

const USERS: &str = include_str!("../examples/users_split_name.toml");

fn route(phase: Phase, version: Side, read_source: Side) -> MigrationRoute {
    MigrationRoute { phase, version, read_source }
}

fn rewritten(r: MigrationRoute, sql: &str, want: &str, transform: StatementTransform) {
    plan_support::rewritten(plan_support::plan(USERS, "example", r, sql), sql, want, transform)
}

#[test]
fn v2_insert_dual_write_never_upserts_the_old_table() {
    // In dual_write the old table is the source of truth: a key it holds fails the INSERT (23505), as an
    // INSERT into the logical table would, instead of its row being replaced.
    rewritten(
        route(Phase::DualWrite, Side::New, Side::New),
        "INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) RETURNING id",
        "WITH __dw_primary AS (INSERT INTO public.users_v2 AS users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) RETURNING users.*), __dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || last_name, email FROM __dw_primary) SELECT id FROM __dw_primary AS users",
        StatementTransform { command_tag: Some(Insert), rows: Keep },
    );
    // The client's ON CONFLICT DO NOTHING skips a key the truth holds; its DO UPDATE sets there only the
    // columns its assignments feed (not the shadow's whole row, which may hold what the truth does not).
    rewritten(
        route(Phase::DualWrite, Side::New, Side::New),
        "INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        "WITH __dw_primary AS (INSERT INTO public.users_v2 AS users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) ON CONFLICT(id) DO NOTHING RETURNING users.*), __dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || last_name, email FROM __dw_primary ON CONFLICT DO NOTHING) SELECT FROM __dw_primary AS users",
        StatementTransform { command_tag: Some(Insert), rows: Suppress },
    );
    rewritten(
        route(Phase::DualWrite, Side::New, Side::New),
        "INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email",
        "WITH __dw_primary AS (INSERT INTO public.users_v2 AS users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4) ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email RETURNING users.*), __dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || last_name, email FROM __dw_primary ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email) SELECT FROM __dw_primary AS users",
        StatementTransform { command_tag: Some(Insert), rows: Suppress },
    );
}

#[test]
fn v2_update_dual_write_updates_only_the_rows_the_old_table_holds() {
    // The old table is the source of truth in dual_write: a row it lacks (deleted behind the proxy's back)
    // is not put back by the sync, as the upsert would.
    rewritten(
        route(Phase::DualWrite, Side::New, Side::New),
        "UPDATE users SET last_name = $1 WHERE email = $2",
        "WITH __dw_primary AS (UPDATE public.users_v2 AS users SET last_name = $1 WHERE email = $2 RETURNING users.*), __dw_old AS (UPDATE public.users AS __dw_t SET name = __dw_u.name FROM (SELECT id, first_name || ' ' || last_name, email FROM __dw_primary) AS __dw_u (id, name, email) WHERE __dw_t.id = __dw_u.id) SELECT FROM __dw_primary AS users",
        StatementTransform { command_tag: Some(Update), rows: Suppress },
    );
}

#[test]
fn v1_insert_cutover_never_upserts_the_shadow() {
    // From cutover on the shadow is the source of truth.
    rewritten(
        route(Phase::Cutover, Side::Old, Side::New),
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3)",
        "WITH __dw_primary AS (INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING users.*), __dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary) SELECT FROM __dw_primary AS users",
        StatementTransform { command_tag: Some(Insert), rows: Suppress },
    );
}
