//! COPY into a migrated table: a plain `COPY pgbench_accounts FROM STDIN` straight to Postgres against the
//! same COPY through the dual-writing proxy, which stages the rows in a temporary table and dual-writes
//! them into pgbench_accounts and pgbench_accounts_v2 with one INSERT, run in a `DO` block that syncs the
//! shadow with a plain INSERT and falls back to the upsert on a conflict (README: COPY). A third arm is
//! the ceiling of any dual write: two plain COPYs of the same rows, one into each table, in one
//! transaction, straight to Postgres (no mapping evaluated, no staging); a fourth, the same two COPYs through
//! the proxy without rules. Every arm is psql's `\copy` (a
//! simple Query, which the proxy needs) of batches of new accounts read from the same file; each arm
//! copies for at least `seconds` after one discarded warm-up batch, the arms rotate their order every
//! repetition, and between runs the copied rows are deleted from both tables and both are vacuumed
//! (untimed), so every run starts from the same tables.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::db::{Sql, DATABASE, USER};
use crate::stats::Stat;

/// What the section measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyRecord {
    pub batch_rows: u64,
    /// Minimum measured seconds per arm and repetition.
    pub seconds: f64,
    /// Rows per second of each repetition, per arm.
    pub direct_rows_per_s: Vec<f64>,
    pub proxy_rows_per_s: Vec<f64>,
    /// Two plain COPYs (old table, then shadow) in one transaction, straight to Postgres: the ceiling.
    #[serde(default)]
    pub two_copies_rows_per_s: Vec<f64>,
    /// The same two COPYs through the proxy without rules (a pure relay): the ceiling of a dual write the
    /// proxy would make with COPYs alone, the client's rows relayed into the old table and sent again into
    /// the shadow.
    #[serde(default)]
    pub two_copies_relayed_rows_per_s: Vec<f64>,
    pub error: Option<String>,
}

/// How the section runs.
pub struct CopyPlan<'a> {
    pub psql: &'a Path,
    pub direct_port: u16,
    /// The dual-writing proxy; `None` when it did not start in this build.
    pub proxy_port: Option<u16>,
    /// The proxy without rules; `None` when it did not start.
    pub relay_port: Option<u16>,
    pub reps: u32,
    pub seconds: f64,
    pub batch_rows: u64,
    /// Where each batch's CSV is written for psql to read.
    pub work_dir: &'a Path,
}

/// The arms of the section.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CopyArm {
    /// One plain COPY into pgbench_accounts, straight to Postgres.
    Direct,
    /// The same COPY through the dual-writing proxy.
    Proxy,
    /// The same rows copied into pgbench_accounts and into pgbench_accounts_v2, one transaction, direct.
    TwoCopies,
    /// The same two COPYs through the proxy without rules.
    TwoCopiesRelayed,
}

impl CopyArm {
    const ALL: [CopyArm; 4] = [CopyArm::Direct, CopyArm::Proxy, CopyArm::TwoCopies, CopyArm::TwoCopiesRelayed];

    /// psql's commands for a batch in `file`.
    fn commands(self, file: &Path) -> Vec<String> {
        let file = file.display().to_string().replace('\'', "''");
        let copy = |table: &str, columns: &str| format!("\\copy {table} ({columns}) from '{file}' csv");
        match self {
            CopyArm::Direct | CopyArm::Proxy => vec![copy("pgbench_accounts", "aid, bid, abalance")],
            CopyArm::TwoCopies | CopyArm::TwoCopiesRelayed => vec![
                "BEGIN".into(),
                copy("pgbench_accounts", "aid, bid, abalance"),
                copy("pgbench_accounts_v2", "aid, bid, balance"),
                "COMMIT".into(),
            ],
        }
    }
}

/// Runs the section; a failure is recorded, not fatal to the rest of the report.
pub fn run(rt: &Runtime, admin: &Sql, plan: &CopyPlan) -> CopyRecord {
    let mut record = CopyRecord { batch_rows: plan.batch_rows, seconds: plan.seconds, ..CopyRecord::default() };
    if let Err(err) = run_inner(rt, admin, plan, &mut record) {
        record.error = Some(format!("{err:#}"));
    }
    record
}

fn run_inner(rt: &Runtime, admin: &Sql, plan: &CopyPlan, record: &mut CopyRecord) -> Result<()> {
    let Some(proxy_port) = plan.proxy_port else {
        bail!("COPY through the proxy: not available in this build (the dual-writing proxy did not start)");
    };
    let Some(relay_port) = plan.relay_port else {
        bail!("the proxy without rules did not start");
    };
    let base = admin.scalar_i64(rt, "SELECT max(aid)::bigint FROM pgbench_accounts")?;
    let file = plan.work_dir.join("copy-batch.csv");
    for rep in 0..plan.reps {
        eprintln!(
            "[copy] repetition {}/{}: plain COPY, COPY through the dual-writing proxy, two plain COPYs direct and relayed",
            rep + 1,
            plan.reps
        );
        let mut arms = CopyArm::ALL;
        arms.rotate_left(rep as usize % CopyArm::ALL.len());
        for copy_arm in arms {
            let port = match copy_arm {
                CopyArm::Proxy => proxy_port,
                CopyArm::TwoCopiesRelayed => relay_port,
                CopyArm::Direct | CopyArm::TwoCopies => plan.direct_port,
            };
            let rows_per_s = arm(plan, copy_arm, port, base, &file)?;
            match copy_arm {
                CopyArm::Direct => record.direct_rows_per_s.push(rows_per_s),
                CopyArm::Proxy => record.proxy_rows_per_s.push(rows_per_s),
                CopyArm::TwoCopies => record.two_copies_rows_per_s.push(rows_per_s),
                CopyArm::TwoCopiesRelayed => record.two_copies_relayed_rows_per_s.push(rows_per_s),
            }
            clean(rt, admin, base)?;
        }
    }
    Ok(())
}

/// One arm's run: a warm-up batch, then batches until `seconds` of copying; rows per second.
fn arm(plan: &CopyPlan, copy_arm: CopyArm, port: u16, base: i64, file: &Path) -> Result<f64> {
    let mut next = base + 1;
    let mut next_batch = || -> Result<()> {
        std::fs::write(file, batch(next, plan.batch_rows)).with_context(|| format!("writing {}", file.display()))?;
        next += plan.batch_rows as i64;
        Ok(())
    };
    let commands = copy_arm.commands(file);
    next_batch()?;
    copy_batch(plan.psql, port, &commands).context("warm-up batch")?;
    let (mut rows, mut seconds) = (0u64, 0f64);
    while seconds < plan.seconds {
        next_batch()?;
        let started = Instant::now();
        copy_batch(plan.psql, port, &commands)?;
        seconds += started.elapsed().as_secs_f64();
        rows += plan.batch_rows;
    }
    Ok(rows as f64 / seconds)
}

/// CSV rows (aid, bid, abalance) of new accounts from `first`.
fn batch(first: i64, rows: u64) -> Vec<u8> {
    let mut out = String::with_capacity(rows as usize * 16);
    for aid in first..first + rows as i64 {
        let _ = writeln!(out, "{aid},{},{}", aid % 10 + 1, aid % 1000);
    }
    out.into_bytes()
}

/// One psql session running `commands` (each a `-c`, so a `\copy` and its transaction share the session).
fn copy_batch(psql: &Path, port: u16, commands: &[String]) -> Result<()> {
    let child = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-d", DATABASE])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(commands.iter().flat_map(|c| ["-c", c.as_str()]))
        // Same for every arm: no TLS or GSS negotiation round trip.
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", psql.display()))?;
    let output = child.wait_with_output().context("waiting for psql")?;
    if !output.status.success() {
        bail!("psql \\copy failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The copied rows out of both tables, both vacuumed and checkpointed, so the next run starts alike.
fn clean(rt: &Runtime, admin: &Sql, base: i64) -> Result<()> {
    admin.batch(rt, &format!("DELETE FROM pgbench_accounts WHERE aid > {base}"))?;
    admin.batch(rt, &format!("DELETE FROM pgbench_accounts_v2 WHERE aid > {base}"))?;
    // One statement per call: VACUUM refuses the implicit transaction of a multi-statement string.
    admin.batch(rt, "VACUUM pgbench_accounts")?;
    admin.batch(rt, "VACUUM pgbench_accounts_v2")?;
    admin.batch(rt, "CHECKPOINT")
}

fn rate(stat: &Stat) -> String {
    format!("{:.0} ({:.0}–{:.0})", stat.median, stat.min, stat.max)
}

/// The report's section.
pub fn section(out: &mut String, record: Option<&CopyRecord>) {
    let Some(r) = record else { return };
    let _ = writeln!(out, "## COPY into a migrated table\n");
    let _ = writeln!(
        out,
        "psql's `\\copy pgbench_accounts (aid, bid, abalance) from '<file>' csv` of {}-row batches of new accounts \
         (every arm reads the same file; psql sends COPY FROM STDIN): straight to Postgres (a plain COPY, one \
         table); through the dual-writing proxy (the rows staged in a temporary table, then one INSERT writes \
         pgbench_accounts and pgbench_accounts_v2 through the mapping, in a DO block that syncs the shadow with \
         a plain INSERT and falls back to the upsert on a conflict); and, as the ceiling of any dual write, two \
         plain COPYs of the batch, into pgbench_accounts and into pgbench_accounts_v2, in one transaction, \
         straight to Postgres (no mapping evaluated, no staging); the same two COPYs through the proxy without \
         rules, the ceiling of a dual write made of COPYs alone (the client's rows relayed into the old table \
         and sent again into the shadow). Each arm copies for at least {:.0} s after a \
         discarded warm-up batch; the arms rotate their order every repetition; the copied rows are deleted \
         from both tables and both vacuumed between runs. Rows per second, median (range) over {} \
         repetitions. The psql process start (a few ms per batch) is inside every arm's times.\n",
        r.batch_rows,
        r.seconds,
        r.direct_rows_per_s.len().max(r.proxy_rows_per_s.len()),
    );
    if let Some(err) = &r.error {
        let _ = writeln!(out, "Not measured: {err}\n");
        return;
    }
    let (Some(direct), Some(proxy)) = (Stat::of(&r.direct_rows_per_s), Stat::of(&r.proxy_rows_per_s)) else {
        let _ = writeln!(out, "Not measured.\n");
        return;
    };
    let per_rep = |over: &[f64]| Stat::of(&r.proxy_rows_per_s.iter().zip(over).map(|(p, d)| p / d).collect::<Vec<_>>());
    let ratio = per_rep(&r.direct_rows_per_s).expect("as many repetitions as the arms");
    let _ = writeln!(out, "| arm | rows/s |\n|---|---|");
    let _ = writeln!(out, "| plain COPY, direct (one table) | {} |", rate(&direct));
    if let Some(two) = Stat::of(&r.two_copies_rows_per_s) {
        let _ =
            writeln!(out, "| two plain COPYs in one transaction, direct (both tables; the ceiling) | {} |", rate(&two));
    }
    if let Some(relayed) = Stat::of(&r.two_copies_relayed_rows_per_s) {
        let _ = writeln!(
            out,
            "| two plain COPYs in one transaction, through the proxy without rules (the ceiling of COPYs alone) | {} |",
            rate(&relayed)
        );
    }
    let _ = writeln!(out, "| COPY through the proxy, dual-writing (both tables) | {} |\n", rate(&proxy));
    let verdict = if ratio.median >= 0.5 { "met" } else { "missed" };
    let _ = writeln!(
        out,
        "Ratio proxy / plain COPY per repetition: median {:.2} (range {:.2}–{:.2}); target ≥ 0.50 (issue 18): {verdict}.\n",
        ratio.median, ratio.min, ratio.max
    );
    if let (Some(ceiling), Some(two)) = (per_rep(&r.two_copies_rows_per_s), Stat::of(&r.two_copies_rows_per_s)) {
        let _ = writeln!(
            out,
            "Ratio two plain COPYs / plain COPY: {:.2} — no dual write can beat it. Ratio proxy / two plain COPYs per \
             repetition: median {:.2} (range {:.2}–{:.2}): the share of the ceiling the proxy reaches.\n",
            two.median / direct.median,
            ceiling.median,
            ceiling.min,
            ceiling.max
        );
    }
    let relayed = r.two_copies_relayed_rows_per_s.iter().zip(&r.direct_rows_per_s).map(|(t, d)| t / d);
    if let Some(relayed) = Stat::of(&relayed.collect::<Vec<_>>()) {
        let _ = writeln!(
            out,
            "Ratio two COPYs through the proxy without rules / plain COPY per repetition: median {:.2} (range \
             {:.2}–{:.2}): what a dual write made of COPYs alone could reach at best.\n",
            relayed.median, relayed.min, relayed.max
        );
    }
}
