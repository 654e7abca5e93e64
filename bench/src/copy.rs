//! COPY into a migrated table: a plain `COPY pgbench_accounts FROM STDIN` straight to Postgres against the
//! same COPY through the dual-writing proxy, which stages the rows in a temporary table and dual-writes
//! them into pgbench_accounts and pgbench_accounts_v2 with one INSERT, run in a `DO` block that syncs the
//! shadow with a plain INSERT and falls back to the upsert on a conflict (README: COPY). Both arms are
//! psql's `\copy` (a simple Query, which the proxy needs) of batches of new accounts; each arm copies
//! for at least `seconds` after one discarded warm-up batch, the arms alternate with their order flipped
//! every repetition, and between runs the copied rows are deleted from both tables and both are vacuumed
//! (untimed), so every run starts from the same tables.

use std::fmt::Write as _;
use std::io::Write as _;
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
    pub error: Option<String>,
}

/// How the section runs.
pub struct CopyPlan<'a> {
    pub psql: &'a Path,
    pub direct_port: u16,
    /// The dual-writing proxy; `None` when it did not start in this build.
    pub proxy_port: Option<u16>,
    pub reps: u32,
    pub seconds: f64,
    pub batch_rows: u64,
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
    let base = admin.scalar_i64(rt, "SELECT max(aid)::bigint FROM pgbench_accounts")?;
    for rep in 0..plan.reps {
        let proxy_first = rep % 2 == 1;
        eprintln!("[copy] repetition {}/{}: plain COPY and COPY through the dual-writing proxy", rep + 1, plan.reps);
        for proxy in [proxy_first, !proxy_first] {
            let port = if proxy { proxy_port } else { plan.direct_port };
            let rows_per_s = arm(plan, port, base)?;
            if proxy {
                record.proxy_rows_per_s.push(rows_per_s);
            } else {
                record.direct_rows_per_s.push(rows_per_s);
            }
            clean(rt, admin, base)?;
        }
    }
    Ok(())
}

/// One arm's run: a warm-up batch, then batches until `seconds` of copying; rows per second.
fn arm(plan: &CopyPlan, port: u16, base: i64) -> Result<f64> {
    let mut next = base + 1;
    let next_batch = |next: &mut i64| {
        let data = batch(*next, plan.batch_rows);
        *next += plan.batch_rows as i64;
        data
    };
    copy_batch(plan.psql, port, &next_batch(&mut next)).context("warm-up batch")?;
    let (mut rows, mut seconds) = (0u64, 0f64);
    while seconds < plan.seconds {
        let data = next_batch(&mut next);
        let started = Instant::now();
        copy_batch(plan.psql, port, &data)?;
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

/// One `\copy` by psql, the data on its standard input.
fn copy_batch(psql: &Path, port: u16, data: &[u8]) -> Result<()> {
    let mut child = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-d", DATABASE])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "\\copy pgbench_accounts (aid, bid, abalance) from pstdin csv"])
        // Same for every arm: no TLS or GSS negotiation round trip.
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", psql.display()))?;
    let mut stdin = child.stdin.take().context("psql's stdin")?;
    stdin.write_all(data).context("writing COPY data to psql")?;
    drop(stdin);
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
        "psql's `\\copy pgbench_accounts (aid, bid, abalance) from pstdin csv` of {}-row batches of new accounts: \
         straight to Postgres (a plain COPY, one table), and through the dual-writing proxy (the rows staged in \
         a temporary table, then one INSERT writes pgbench_accounts and pgbench_accounts_v2 through the \
         mapping, in a DO block that syncs the shadow with a plain INSERT and falls back to the upsert on a \
         conflict). Each arm copies for at least {:.0} s after a discarded warm-up batch; the arms alternate \
         (order flipped every repetition); the copied rows are deleted from both tables and both vacuumed \
         between runs. Rows per second, median (range) over {} repetitions. The psql process start (a few ms \
         per batch) is inside both arms' times.\n",
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
    let ratios: Vec<f64> = r.proxy_rows_per_s.iter().zip(&r.direct_rows_per_s).map(|(p, d)| p / d).collect();
    let ratio = Stat::of(&ratios).expect("as many repetitions as the arms");
    let _ = writeln!(out, "| arm | rows/s |\n|---|---|");
    let _ = writeln!(out, "| plain COPY, direct (one table) | {} |", rate(&direct));
    let _ = writeln!(out, "| COPY through the proxy, dual-writing (both tables) | {} |\n", rate(&proxy));
    let verdict = if ratio.median >= 0.5 { "met" } else { "missed" };
    let _ = writeln!(
        out,
        "Ratio proxy / direct per repetition: median {:.2} (range {:.2}–{:.2}); target ≥ 0.50 (issue 18): {verdict}.\n",
        ratio.median, ratio.min, ratio.max
    );
}
