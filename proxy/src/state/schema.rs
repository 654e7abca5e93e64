//! The `dualwrite` schema as versioned forward migrations (tables and their meaning: ARCHITECTURE.md, `state`).
//! `ensure_schema` runs on every start: under a transaction-scoped advisory lock it creates the schema on first
//! start and applies the versions not yet recorded in `dualwrite.schema_version`, so two proxies starting at once
//! neither race on `CREATE` nor apply a version twice. Add a version by appending to `MIGRATIONS`; never edit one
//! that has shipped.

use tokio_postgres::Client;

use super::StateError;

/// Each entry is schema version `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the tables (their meaning: ARCHITECTURE.md, `state`)
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
    // 2: verify runs name their source of truth (what missing/extra are relative to); the audit log
    // becomes append-only and hash-chained (encoding and checks: `audit_chain`)
    r#"
    ALTER TABLE dualwrite.verify_runs ADD COLUMN source text CHECK (source IN ('old', 'shadow'));

    ALTER TABLE dualwrite.audit_log ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

    -- The canonical encoding of a row's fields, the bytes its hash covers (documented in `audit_chain`).
    CREATE FUNCTION dualwrite.audit_canonical(a dualwrite.audit_log) RETURNS bytea
    LANGUAGE sql STABLE AS $f$
        SELECT convert_to(jsonb_build_array(
                   a.id, to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   a.migration, a.action, a.role, a.client_addr, a.before, a.after)::text, 'UTF8')
    $f$;

    -- The last link of the chain: appends lock this one row, so two proxies cannot fork the chain, and
    -- AUDIT VERIFY compares it with the log's last row, so deleting rows at the end shows too.
    CREATE TABLE dualwrite.audit_chain_head (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        last_id  bigint,
        hash     bytea NOT NULL
    );

    -- Chain the rows written before this version, in id order.
    DO $chain$
    DECLARE
        r    dualwrite.audit_log;
        prev bytea := ''::bytea;
        last bigint;
    BEGIN
        FOR r IN SELECT * FROM dualwrite.audit_log ORDER BY id LOOP
            UPDATE dualwrite.audit_log SET prev_hash = prev, hash = sha256(prev || dualwrite.audit_canonical(r))
            WHERE id = r.id RETURNING hash INTO prev;
            last := r.id;
        END LOOP;
        INSERT INTO dualwrite.audit_chain_head (last_id, hash) VALUES (last, prev);
    END
    $chain$;

    -- Every append takes the next id and links to the head under the head's row lock.
    CREATE FUNCTION dualwrite.audit_chain() RETURNS trigger
    LANGUAGE plpgsql AS $f$
    DECLARE
        head dualwrite.audit_chain_head;
    BEGIN
        SELECT * INTO STRICT head FROM dualwrite.audit_chain_head FOR UPDATE;
        NEW.id := coalesce(head.last_id, 0) + 1;
        NEW.prev_hash := head.hash;
        NEW.hash := sha256(head.hash || dualwrite.audit_canonical(NEW));
        UPDATE dualwrite.audit_chain_head SET last_id = NEW.id, hash = NEW.hash;
        RETURN NEW;
    END
    $f$;
    CREATE TRIGGER audit_log_chain BEFORE INSERT ON dualwrite.audit_log
        FOR EACH ROW EXECUTE FUNCTION dualwrite.audit_chain();

    -- UPDATE, DELETE and TRUNCATE are refused for every role, the owner and superusers included; only
    -- the append trigger itself (one trigger level down) moves the head.
    CREATE FUNCTION dualwrite.audit_refuse() RETURNS trigger
    LANGUAGE plpgsql AS $f$
    BEGIN
        IF TG_TABLE_NAME = 'audit_chain_head' AND TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'dualwrite.% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The audit log is hash-chained; DUALWRITE AUDIT VERIFY checks it.';
    END
    $f$;
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON dualwrite.audit_log
        FOR EACH ROW EXECUTE FUNCTION dualwrite.audit_refuse();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON dualwrite.audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION dualwrite.audit_refuse();
    CREATE TRIGGER audit_chain_head_append_only BEFORE UPDATE OR DELETE ON dualwrite.audit_chain_head
        FOR EACH ROW EXECUTE FUNCTION dualwrite.audit_refuse();
    CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON dualwrite.audit_chain_head
        FOR EACH STATEMENT EXECUTE FUNCTION dualwrite.audit_refuse();

    REVOKE ALL ON dualwrite.audit_log, dualwrite.audit_chain_head FROM PUBLIC;
    REVOKE UPDATE, DELETE, TRUNCATE ON dualwrite.audit_log FROM CURRENT_USER;
    REVOKE DELETE, TRUNCATE ON dualwrite.audit_chain_head FROM CURRENT_USER;
    REVOKE ALL ON FUNCTION dualwrite.audit_canonical(dualwrite.audit_log), dualwrite.audit_chain(),
        dualwrite.audit_refuse() FROM PUBLIC;
    "#,
    // 3: the change-data-capture watch (one row for the database's watch) and the bypasses it found
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
    // 4: the check a write naming a merge's shadow runs in the client's statement (rewrite-rules'
    // `compiled::held_by_a_source_check`): a row it leaves with none of any source's columns has no image
    // in the old tables, so the statement fails with 23514. Client roles call it, hence USAGE on the
    // schema for PUBLIC; the state tables keep their own privileges (none for PUBLIC).
    r#"
    CREATE FUNCTION dualwrite.merge_row_held(held boolean, migration text, shadow text, sources text,
                                             key_columns text, key text) RETURNS boolean
    LANGUAGE plpgsql AS $$
    BEGIN
        IF held THEN
            RETURN true;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation',
            MESSAGE = format('dualwrite: migration "%s": a row of the merged table %s must hold a column of '
                             'one of its old tables (%s)', migration, shadow, sources),
            DETAIL = format('Key (%s)=%s would be held by none of them: the old tables cannot show it.',
                            key_columns, key),
            HINT = 'Set a column of one of the old tables in the row, or DELETE the row.';
    END
    $$;
    GRANT USAGE ON SCHEMA dualwrite TO PUBLIC;
    "#,
    // 5: what each migration was registered as (`state::definition`): its tables, key and mappings. Rules
    // that define a migration differently are refused outside `off` (the shadow holds rows the recorded
    // mappings made). Rows registered before this version adopt the definition of the next rules loaded.
    r#"
    CREATE TABLE dualwrite.migration_definitions (
        migration   text PRIMARY KEY REFERENCES dualwrite.migrations (name),
        definition  jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 6: a migration that left `off` with FORCE keeps the rows its shadow held, which may be stale (writes
    // made while off reached the old table alone); its next backfill repairs them before it is done.
    r#"
    ALTER TABLE dualwrite.backfill ADD COLUMN repair_kept_rows boolean NOT NULL DEFAULT false;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Advisory lock key serialising schema changes across proxies (same hashing scheme as the jobs' locks).
const SCHEMA_LOCK: &str = "dualwrite:schema";

/// Create or migrate the `dualwrite` schema; returns the version now in place. A database already at a
/// newer version (a newer proxy ran) is left alone.
pub async fn ensure_schema(client: &mut Client) -> Result<i32, StateError> {
    migrate_to(client, SCHEMA_VERSION).await
}

/// Like `ensure_schema`, but stops at version `target` (an upgrade from an older proxy's schema is
/// tested by stopping at that version first).
pub async fn migrate_to(client: &mut Client, target: i32) -> Result<i32, StateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&SCHEMA_LOCK]).await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS dualwrite;
         CREATE TABLE IF NOT EXISTS dualwrite.schema_version (version int NOT NULL);",
    )
    .await?;
    let current: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM dualwrite.schema_version", &[]).await?.get(0);
    let wanted = target.clamp(0, SCHEMA_VERSION) as usize;
    for (index, ddl) in MIGRATIONS.iter().enumerate().take(wanted).skip(current.max(0) as usize) {
        let version = index as i32 + 1;
        tracing::info!(version, "applying dualwrite schema version");
        tx.batch_execute(ddl).await?;
        tx.execute("INSERT INTO dualwrite.schema_version (version) VALUES ($1)", &[&version]).await?;
    }
    tx.commit().await?;
    Ok(current.max(wanted as i32))
}
