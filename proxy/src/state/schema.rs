//! The `dualwrite` schema as versioned forward migrations (contract: STATE_SCHEMA.md). `ensure_schema` runs
//! on every start: under a transaction-scoped advisory lock it creates the schema on first start and applies
//! the versions not yet recorded in `dualwrite.schema_version`, so two proxies starting at once neither
//! race on `CREATE` nor apply a version twice. Add a version by appending to `MIGRATIONS`; never edit one
//! that has shipped.

use tokio_postgres::Client;

use super::StateError;

/// Each entry is schema version `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of STATE_SCHEMA.md
    r#"
    CREATE TABLE dualwrite.migrations (
        name         text PRIMARY KEY,
        phase        text NOT NULL CHECK (phase IN ('off', 'dual_write', 'cutover', 'complete')),
        read_source  text,
        read_percent int NOT NULL DEFAULT 100 CHECK (read_percent BETWEEN 0 AND 100),
        updated_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE dualwrite.audit_log (
        id          bigserial PRIMARY KEY,
        at          timestamptz NOT NULL DEFAULT now(),
        migration   text,
        action      text NOT NULL,
        role        text,
        client_addr text,
        before      jsonb,
        after       jsonb
    );
    CREATE INDEX audit_log_migration_idx ON dualwrite.audit_log (migration, id);
    CREATE TABLE dualwrite.backfill (
        migration   text PRIMARY KEY,
        state       text NOT NULL CHECK (state IN ('idle', 'running', 'paused', 'done')),
        last_key    jsonb,
        rows_done   bigint NOT NULL DEFAULT 0,
        rows_total  bigint,
        batch_size  int,
        rate_limit  int,
        owner       text,
        started_at  timestamptz,
        updated_at  timestamptz,
        finished_at timestamptz
    );
    CREATE TABLE dualwrite.verify_runs (
        id           bigserial PRIMARY KEY,
        migration    text NOT NULL,
        started_at   timestamptz NOT NULL,
        finished_at  timestamptz,
        rows_checked bigint,
        missing      bigint,
        extra        bigint,
        different    bigint,
        repaired     bigint,
        clean        boolean
    );
    CREATE INDEX verify_runs_migration_idx ON dualwrite.verify_runs (migration, id);
    CREATE TABLE dualwrite.divergent_keys (
        run_id    bigint REFERENCES dualwrite.verify_runs (id) ON DELETE CASCADE,
        migration text,
        kind      text CHECK (kind IN ('missing', 'extra', 'different')),
        key       jsonb,
        sample    jsonb
    );
    CREATE INDEX divergent_keys_run_idx ON dualwrite.divergent_keys (run_id);
    "#,
    // 2: the change-data-capture watch (one row for the database's watch) and the bypasses it found
    r#"
    CREATE TABLE dualwrite.cdc_watch (
        id           int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
        state        text NOT NULL CHECK (state IN ('idle', 'watching', 'fallback', 'error')),
        detail       text,
        leader       text,
        slot         text,
        confirmed_lsn pg_lsn,
        lag_bytes    float8,
        lag_seconds  float8,
        updated_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE dualwrite.cdc_bypasses (
        id           bigserial PRIMARY KEY,
        seen_at      timestamptz NOT NULL DEFAULT now(),
        migration    text NOT NULL,
        kind         text NOT NULL CHECK (kind IN ('insert', 'update', 'delete', 'truncate')),
        side         text NOT NULL CHECK (side IN ('old', 'shadow')),
        key          jsonb,
        xid          bigint NOT NULL,
        commit_lsn   pg_lsn NOT NULL,
        committed_at timestamptz NOT NULL,
        repaired_at  timestamptz,
        resolved_at  timestamptz,
        UNIQUE NULLS NOT DISTINCT (commit_lsn, migration, side, kind, key)
    );
    CREATE INDEX cdc_bypasses_open_idx ON dualwrite.cdc_bypasses (migration, committed_at)
        WHERE resolved_at IS NULL;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Advisory lock key serialising schema changes across proxies (same hashing scheme as the jobs' locks).
const SCHEMA_LOCK: &str = "dualwrite:schema";

/// Create or migrate the `dualwrite` schema; returns the version now in place. A database already at a
/// newer version (a newer proxy ran) is left alone.
pub async fn ensure_schema(client: &mut Client) -> Result<i32, StateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&SCHEMA_LOCK]).await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS dualwrite;
         CREATE TABLE IF NOT EXISTS dualwrite.schema_version (version int NOT NULL);",
    )
    .await?;
    let current: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM dualwrite.schema_version", &[]).await?.get(0);
    for (index, ddl) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = index as i32 + 1;
        tracing::info!(version, "applying dualwrite schema version");
        tx.batch_execute(ddl).await?;
        tx.execute("INSERT INTO dualwrite.schema_version (version) VALUES ($1)", &[&version]).await?;
    }
    tx.commit().await?;
    Ok(current.max(SCHEMA_VERSION))
}
