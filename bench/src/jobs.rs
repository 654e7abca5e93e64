//! The background jobs under load: the backfill of the dual-write arm's migration (pgbench_accounts into
//! pgbench_accounts_v2) unthrottled against a plain `INSERT ... SELECT` of the same mapping (the limit), a
//! verify of the whole table, and pgbench TPC-B-like TPS through the dual-writing proxy while a backfill
//! runs against the same without one. Both jobs run in this process through `dualwrite_proxy::jobs`, the
//! code `dualwrite backfill` / `dualwrite verify` and the control SQL run.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use dualwrite_proxy::jobs::{run_backfill, run_verify, BackfillOptions, BackfillOutcome, TableMapping, VerifyOptions};
use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_rules::RuleSet;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::db::{self, Sql, DATABASE, USER};
use crate::pgbench::{self, Mode, RunSpec, Script, Workload};
use crate::stats::Stat;

const MIGRATION: &str = "accounts_balance_bigint";
/// pgbench clients of the TPS comparison.
pub const CLIENTS: u32 = 4;

/// What the section measured; seconds per repetition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobsRecord {
    pub rows: i64,
    pub insert_select_s: Vec<f64>,
    pub backfill_s: Vec<f64>,
    pub verify_s: Vec<f64>,
    /// Divergent rows every verify found (0 expected: also after the backfill that raced pgbench).
    pub divergent: Vec<i64>,
    pub pgbench_s: u32,
    pub tps_without: Vec<f64>,
    pub tps_during: Vec<f64>,
    /// Whether the backfill was still running when each "during" pgbench run ended.
    pub overlapped: Vec<bool>,
    pub error: Option<String>,
}

/// Runs the section; a failure is recorded, not fatal to the rest of the report.
pub fn run(rt: &Runtime, admin: &Sql, port: u16, proxy_port: Option<u16>, reps: u32, work: &Path) -> JobsRecord {
    let mut record = JobsRecord::default();
    if let Err(err) = run_inner(rt, admin, port, proxy_port, reps, work, &mut record) {
        record.error = Some(format!("{err:#}"));
    }
    record
}

fn run_inner(
    rt: &Runtime,
    admin: &Sql,
    port: u16,
    proxy_port: Option<u16>,
    reps: u32,
    work: &Path,
    record: &mut JobsRecord,
) -> Result<()> {
    let rules = RuleSet::from_toml(db::DUAL_WRITE_RULES, "bench rules")?;
    let mapping = TableMapping::from_rules(&rules, MIGRATION)?;
    let config = PgTarget::from_str(&format!("postgres://{USER}@127.0.0.1:{port}/{DATABASE}"))?;
    {
        let mut client = rt.block_on(db::connect(port, DATABASE))?;
        rt.block_on(dualwrite_proxy::state::schema::ensure_schema(&mut client))?;
    }
    let columns: Vec<&str> = mapping.forward.iter().map(|(c, _)| c.as_str()).collect();
    let exprs: Vec<&str> = mapping.forward.iter().map(|(_, e)| e.as_str()).collect();
    let insert_select = format!(
        "INSERT INTO pgbench_accounts_v2 ({}) SELECT {} FROM pgbench_accounts",
        columns.join(", "),
        exprs.join(", ")
    );
    record.rows = admin.scalar_i64(rt, "SELECT count(*) FROM pgbench_accounts")?;
    let backfill = |rt: &Runtime| -> Result<tokio::task::JoinHandle<Result<f64>>> {
        let (config, mapping) = (config.clone(), mapping.clone());
        Ok(rt.spawn(async move {
            let options = BackfillOptions { restart: true, ..BackfillOptions::default() };
            let started = Instant::now();
            let outcome = run_backfill(&config, &mapping, &options, &|_| {}).await?;
            ensure!(matches!(outcome, BackfillOutcome::Done { .. }), "backfill ended as {outcome:?}");
            Ok(started.elapsed().as_secs_f64())
        }))
    };
    let verify = |rt: &Runtime, record: &mut JobsRecord| -> Result<()> {
        let started = Instant::now();
        let report = rt.block_on(run_verify(&config, &mapping, &VerifyOptions::default(), &|_, _| {}))?;
        record.verify_s.push(started.elapsed().as_secs_f64());
        record.divergent.push(report.divergent_rows());
        Ok(())
    };

    for rep in 0..reps {
        eprintln!("[jobs] repetition {}/{reps}: INSERT ... SELECT, backfill, verify", rep + 1);
        fresh_shadow(rt, admin)?;
        let started = Instant::now();
        admin.batch(rt, &insert_select)?;
        record.insert_select_s.push(started.elapsed().as_secs_f64());
        fresh_shadow(rt, admin)?;
        record.backfill_s.push(rt.block_on(backfill(rt)?)??);
        verify(rt, record)?;
    }

    let Some(proxy_port) = proxy_port else {
        anyhow::bail!("pgbench through the proxy: not available in this build (the dual-writing proxy did not start)");
    };
    // pgbench runs for most of an unloaded backfill, so it overlaps a backfill slowed down by it.
    let backfill_s = Stat::of(&record.backfill_s).map(|s| s.median).unwrap_or(1.0);
    record.pgbench_s = ((backfill_s * 0.8).floor() as u32).clamp(1, 30);
    for rep in 0..reps {
        eprintln!("[jobs] repetition {}/{reps}: pgbench {CLIENTS} clients without and during a backfill", rep + 1);
        let (without_dir, during_dir) = (work.join("jobs-without"), work.join("jobs-during"));
        let spec = |log_dir| RunSpec {
            port: proxy_port,
            user: USER,
            database: DATABASE,
            script: Script::Builtin(Workload::TpcB),
            mode: Mode::Prepared,
            clients: CLIENTS,
            warmup_s: 0,
            measure_s: record.pgbench_s,
            log_dir,
        };
        admin.batch(rt, "CHECKPOINT")?;
        record.tps_without.push(pgbench::run(&spec(&without_dir)).context("pgbench without a backfill")?.tps);
        fresh_shadow(rt, admin)?;
        let task = backfill(rt)?;
        let during = pgbench::run(&spec(&during_dir)).context("pgbench during a backfill")?;
        record.overlapped.push(!task.is_finished());
        record.tps_during.push(during.tps);
        rt.block_on(task)??;
        verify(rt, record)?;
    }
    Ok(())
}

/// An empty shadow and no backfill state, vacuumed and checkpointed so every timed copy starts alike.
fn fresh_shadow(rt: &Runtime, admin: &Sql) -> Result<()> {
    admin.batch(
        rt,
        &format!("TRUNCATE pgbench_accounts_v2; DELETE FROM dualwrite.backfill WHERE migration = '{MIGRATION}'"),
    )?;
    // One statement per call: VACUUM refuses the implicit transaction of a multi-statement string.
    admin.batch(rt, "VACUUM pgbench_accounts")?;
    admin.batch(rt, "CHECKPOINT")
}

fn cell(values: &[f64], digits: usize) -> String {
    match Stat::of(values) {
        Some(s) => format!("{:.*} ({:.*}–{:.*})", digits, s.median, digits, s.min, digits, s.max),
        None => "n/a".into(),
    }
}

fn rate(rows: i64, seconds: &[f64]) -> Vec<f64> {
    seconds.iter().filter(|s| **s > 0.0).map(|s| rows as f64 / s).collect()
}

/// The report section.
pub fn section(out: &mut String, r: Option<&JobsRecord>) {
    let _ = writeln!(out, "## Backfill and verify\n");
    let Some(j) = r else {
        let _ = writeln!(out, "Not measured in this run.\n");
        return;
    };
    let _ = writeln!(
        out,
        "The dual-write arm's migration over {} rows of pgbench_accounts, nothing else running: the backfill \
         unthrottled (default batch size) against one plain `INSERT ... SELECT` of the same mapping into the \
         same empty shadow (the limit), then a verify of the whole table. Median (range) over {} repetition(s), \
         alternating.\n",
        j.rows,
        j.backfill_s.len()
    );
    let plain = rate(j.rows, &j.insert_select_s);
    let backfill = rate(j.rows, &j.backfill_s);
    let verify = rate(j.rows, &j.verify_s);
    let _ = writeln!(out, "| what | seconds | rows/s |\n|---|---|---|");
    let _ = writeln!(out, "| plain INSERT ... SELECT | {} | {} |", cell(&j.insert_select_s, 2), cell(&plain, 0));
    let _ = writeln!(out, "| backfill | {} | {} |", cell(&j.backfill_s, 2), cell(&backfill, 0));
    let _ = writeln!(out, "| verify | {} | {} |", cell(&j.verify_s, 2), cell(&verify, 0));
    let ratio = match (Stat::of(&backfill), Stat::of(&plain)) {
        (Some(b), Some(p)) => format!("{:.2}x", b.median / p.median),
        _ => "n/a".into(),
    };
    let verify_1m =
        Stat::of(&verify).map(|v| format!("{:.1} s", 1_000_000.0 / v.median)).unwrap_or_else(|| "n/a".into());
    let _ = writeln!(
        out,
        "\nBackfill speed relative to the plain copy: **{ratio}** (aim: >= 0.5x). Verify of 1,000,000 rows at that \
         rate: **{verify_1m}** (aim: under 10 s). Divergent rows found by the verifies: {:?} (0 expected, also \
         after the backfills that raced pgbench).\n",
        j.divergent
    );
    let _ = writeln!(
        out,
        "pgbench TPC-B-like, -M prepared, {CLIENTS} clients through the dual-writing proxy, {} s per run, \
         without a backfill and while one runs (unthrottled, from an empty shadow); alternating.\n",
        j.pgbench_s
    );
    let _ = writeln!(out, "| | TPS |\n|---|---|");
    let _ = writeln!(out, "| without a backfill | {} |", cell(&j.tps_without, 0));
    let _ = writeln!(out, "| during a backfill | {} |", cell(&j.tps_during, 0));
    if let (Some(d), Some(w)) = (Stat::of(&j.tps_during), Stat::of(&j.tps_without)) {
        let _ = writeln!(out, "\nTPS during a backfill: {:.2}x of TPS without.", d.median / w.median);
    }
    if j.overlapped.iter().any(|o| !o) {
        let _ = writeln!(
            out,
            "\nIn {} of the runs the backfill finished before pgbench did.",
            j.overlapped.iter().filter(|o| !**o).count()
        );
    }
    if let Some(error) = &j.error {
        let _ = writeln!(out, "\nNot completed: {}", error.lines().next().unwrap_or(""));
    }
    let _ = writeln!(out);
}
