//! The benchmark's Postgres: a throwaway cluster (dualwrite_proxy::pgcluster) tuned so the run is CPU-bound,
//! the pgbench data set, the shadow table with its mapping, the competing PL/pgSQL trigger, the rules files
//! of the proxy arms and the hand-written CTE script of the reference arm. Also a small SQL helper.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use dualwrite_proxy::pgcluster::{ClusterOptions, PgCluster};
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

pub const DATABASE: &str = "bench";
pub const USER: &str = "postgres";

/// Postgres settings of the run, listed in the report. fsync and full_page_writes are off in every
/// pgcluster cluster (throwaway data); the rest makes the run CPU-bound rather than I/O-bound.
pub fn settings(shared_buffers: &str) -> Vec<(String, String)> {
    [
        ("shared_buffers", shared_buffers),
        ("synchronous_commit", "off"),
        ("jit", "off"),
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "1200"),
        // Enough to keep checkpoints out of a pgbench run, small enough that the bulk UPDATEs do not
        // keep gigabytes of recycled WAL on a shared disk.
        ("max_wal_size", "1GB"),
        ("work_mem", "64MB"),
        ("checkpoint_timeout", "1h"),
        // The watch arm streams a logical slot; every arm runs with the same WAL so they compare.
        ("wal_level", "logical"),
        ("max_wal_senders", "4"),
        ("max_replication_slots", "4"),
        ("log_min_messages", "warning"),
        ("shared_preload_libraries", "pg_prewarm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub fn start_cluster(shared_buffers: &str, base_dir: &Path) -> Result<PgCluster> {
    let mut options = ClusterOptions { base_dir: Some(base_dir.to_owned()), ..ClusterOptions::default() };
    for (name, value) in settings(shared_buffers) {
        options = options.setting(name, value);
    }
    Ok(PgCluster::start_new(options)?)
}

/// One SQL connection straight to Postgres (loopback TCP), driven from synchronous code.
pub struct Sql {
    client: Client,
}

impl Sql {
    pub fn connect(rt: &Runtime, port: u16, database: &str) -> Result<Sql> {
        let client = rt.block_on(connect(port, database))?;
        Ok(Sql { client })
    }

    pub fn batch(&self, rt: &Runtime, sql: &str) -> Result<()> {
        rt.block_on(self.client.batch_execute(sql))
            .with_context(|| format!("running: {}", sql.chars().take(120).collect::<String>()))
    }

    pub fn scalar_i64(&self, rt: &Runtime, sql: &str) -> Result<i64> {
        let row = rt.block_on(self.client.query_one(sql, &[])).with_context(|| format!("running: {sql}"))?;
        Ok(row.get(0))
    }
}

pub async fn connect(port: u16, database: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(USER)
        .dbname(database)
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}/{database}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates the `bench` database and loads everything the arms need.
pub fn load(rt: &Runtime, cluster: &PgCluster, scale: u32) -> Result<Sql> {
    let admin = Sql::connect(rt, cluster.port(), "postgres")?;
    admin.batch(rt, &format!("CREATE DATABASE {DATABASE}"))?;
    let output = Command::new("pgbench")
        .args(["-i", "-q", "-I", "dtGvp", "-s", &scale.to_string()])
        .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string(), "-U", USER, DATABASE])
        .env("PGSSLMODE", "disable")
        .output()
        .context("pgbench -i")?;
    if !output.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let sql = Sql::connect(rt, cluster.port(), DATABASE)?;
    sql.batch(rt, SCHEMA)?;
    // One statement per call: VACUUM refuses the implicit transaction of a multi-statement string.
    sql.batch(rt, "VACUUM ANALYZE")?;
    sql.batch(rt, "CHECKPOINT")?;
    // Load the tables into shared_buffers now rather than in the first measured runs.
    let _ = sql.batch(
        rt,
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm; \
         SELECT pg_prewarm(c.oid) FROM pg_class c WHERE c.relname LIKE 'pgbench_%' AND c.relkind IN ('r', 'i')",
    );
    Ok(sql)
}

/// The shadow of pgbench_accounts (column renamed and widened), backfilled; the dual-write trigger a team
/// would write by hand (created disabled, switched per arm); the table of the "migration elsewhere" arm.
const SCHEMA: &str = r#"
CREATE TABLE pgbench_accounts_v2 (aid int PRIMARY KEY, bid int, balance bigint, filler char(84));
INSERT INTO pgbench_accounts_v2 (aid, bid, balance, filler) SELECT aid, bid, abalance, filler FROM pgbench_accounts;

CREATE FUNCTION pgbench_accounts_dual_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM pgbench_accounts_v2 WHERE aid = OLD.aid;
        RETURN OLD;
    END IF;
    INSERT INTO pgbench_accounts_v2 (aid, bid, balance, filler)
    VALUES (NEW.aid, NEW.bid, NEW.abalance, NEW.filler)
    ON CONFLICT (aid) DO UPDATE
        SET bid = EXCLUDED.bid, balance = EXCLUDED.balance, filler = EXCLUDED.filler;
    RETURN NEW;
END
$$;
CREATE TRIGGER pgbench_accounts_dual_write AFTER INSERT OR UPDATE OR DELETE ON pgbench_accounts
    FOR EACH ROW EXECUTE FUNCTION pgbench_accounts_dual_write();
ALTER TABLE pgbench_accounts DISABLE TRIGGER pgbench_accounts_dual_write;

CREATE TABLE bench_untouched (id int PRIMARY KEY, name text, email text);
CREATE TABLE bench_untouched_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
"#;

pub fn set_trigger(sql: &Sql, rt: &Runtime, enabled: bool) -> Result<()> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    sql.batch(rt, &format!("ALTER TABLE pgbench_accounts {verb} TRIGGER pgbench_accounts_dual_write"))
}

/// The rules of the dual-write arm: the same mapping as the trigger.
pub const DUAL_WRITE_RULES: &str = include_str!("../../rewrite-rules/examples/pgbench_accounts_balance.toml");

/// The rules of the "migration elsewhere" arm: active, but on a table pgbench never names.
pub const ELSEWHERE_RULES: &str = r#"# written by dualwrite-bench: a migration on a table the workload does not touch
[[migration]]
name   = "untouched_split_name"
table  = "public.bench_untouched"
shadow = "public.bench_untouched_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }

[migration.forward]
id         = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
email      = "lower(email)"

[migration.backward]
id    = "id"
name  = "first_name || ' ' || last_name"
email = "email"
"#;

/// The UPDATE of pgbench_accounts as the dual-write CTE of rewrite-rules/README.md, with the shadow mapping.
pub fn cte_update(set: &str, filter: &str) -> String {
    format!(
        "WITH __dw_primary AS (UPDATE pgbench_accounts SET {set}{filter} RETURNING *), \
         __dw_shadow AS (INSERT INTO pgbench_accounts_v2 (aid, bid, balance, filler) \
         SELECT aid, bid, abalance::bigint, filler FROM __dw_primary \
         ON CONFLICT (aid) DO UPDATE SET bid = EXCLUDED.bid, balance = EXCLUDED.balance, filler = EXCLUDED.filler) \
         SELECT FROM __dw_primary"
    )
}

/// pgbench's builtin tpcb-like script with the account UPDATE in the CTE form (the reference arm).
pub fn write_cte_script(dir: &Path, scale: u32) -> Result<PathBuf> {
    let mut script = String::new();
    let _ = writeln!(script, "\\set aid random(1, 100000 * {scale})");
    let _ = writeln!(script, "\\set bid random(1, 1 * {scale})");
    let _ = writeln!(script, "\\set tid random(1, 10 * {scale})");
    let _ = writeln!(script, "\\set delta random(-5000, 5000)");
    script.push_str("BEGIN;\n");
    script.push_str(&cte_update("abalance = abalance + :delta", " WHERE aid = :aid"));
    script.push_str(";\n");
    script.push_str(
        "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n\
         UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\n\
         END;\n",
    );
    let path = dir.join("tpcb-cte.sql");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// The process id of the walsender streaming the watch's slot (armed), for its CPU time.
pub fn watch_walsender(admin: &Sql, rt: &Runtime) -> Result<Option<u32>> {
    let pid = admin.scalar_i64(
        rt,
        "SELECT coalesce(max(active_pid), 0)::int8 FROM pg_replication_slots WHERE slot_name LIKE 'dualwrite_cdc_%' AND active",
    )?;
    Ok((pid > 0).then_some(pid as u32))
}

/// Arms (`on`: the slot streamed) or pauses (the slot dropped, no decoding at all) the change-data-capture
/// watch of the watch arm's proxy, through its operator switch in `dualwrite.cdc_watch`, and waits until it
/// took effect, so that only the watch arm's runs pay for it.
pub fn set_watch(admin: &Sql, rt: &Runtime, on: bool) -> Result<()> {
    let state = if on { "idle" } else { "fallback" };
    admin.batch(rt, &format!("UPDATE dualwrite.cdc_watch SET state = '{state}'"))?;
    let check = if on {
        "SELECT count(*) FROM dualwrite.cdc_watch w JOIN pg_replication_slots s ON s.slot_name = w.slot \
         WHERE w.state = 'watching' AND s.active"
    } else {
        "SELECT 1 - count(*) FROM pg_replication_slots WHERE slot_name LIKE 'dualwrite_cdc_%'"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while admin.scalar_i64(rt, check)? != 1 {
        if std::time::Instant::now() > deadline {
            bail!("the change-data-capture watch did not {} within 30 s", if on { "stream" } else { "pause" });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
