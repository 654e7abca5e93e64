//! The `dualwrite backfill` and `dualwrite verify` subcommands: run a job against the upstream database
//! (directly, not through a proxy) while proxies keep serving it, with an indicatif progress bar.
//!
//! Exit codes: 0 = done / verify found no divergence; 1 = verify found divergence (also when `--repair`
//! repaired it, so scripts notice); 2 = the job failed (bad arguments, rules, database error, or the job is
//! already running elsewhere).

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use dualwrite_rules::RuleSet;
use indicatif::{ProgressBar, ProgressStyle};

use crate::pg_client::PgTarget;

use super::backfill::{run_backfill, Activity, BackfillOptions, BackfillOutcome};
use super::throttle::Limits;
use super::verify::{run_verify, VerifyOptions};
use super::TableMapping;

/// Where the job runs: the rules file naming the migration and the upstream server (the job connects to
/// the migration's `database`, the URL's own when the rules name none).
#[derive(Debug, Clone, clap::Args)]
pub struct JobTarget {
    /// Name of the migration in the rules file.
    pub migration: String,
    /// The rules file (TOML).
    #[arg(long, env = "DUALWRITE_RULES")]
    pub rules: PathBuf,
    /// The upstream database, as a postgres:// URL or key=value string (not the proxy's address).
    #[arg(long, env = "DUALWRITE_UPSTREAM")]
    pub upstream: String,
}

/// `dualwrite backfill MIGRATION`: copy the rows that predate dual writes into the shadow table.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub target: JobTarget,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = 20_000)]
    pub batch: u32,
    /// At most this many rows per second (default: unthrottled).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Hold off while upstream replication replay lag exceeds this many seconds.
    #[arg(long)]
    pub max_replication_lag: Option<f64>,
    /// Start again from the first key even if an earlier backfill finished.
    #[arg(long)]
    pub restart: bool,
}

/// `dualwrite verify MIGRATION [--repair]`: compare the old table (mapped forward) with the shadow.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: JobTarget,
    /// Rewrite the divergent rows of the table behind the phase's source of truth (the shadow before
    /// cutover, the old table from cutover on) from the other one.
    #[arg(long)]
    pub repair: bool,
    /// Old-table rows per checksum chunk.
    #[arg(long, default_value_t = 100_000)]
    pub chunk_rows: i64,
}

fn load(target: &JobTarget) -> anyhow::Result<(PgTarget, TableMapping)> {
    let origin = target.rules.display().to_string();
    let text = std::fs::read_to_string(&target.rules).with_context(|| format!("reading {origin}"))?;
    let rules = RuleSet::from_toml(&text, &origin)?;
    let mapping = TableMapping::from_rules(&rules, &target.migration)?;
    let config = PgTarget::from_str(&target.upstream).context("parsing --upstream")?;
    let migration = rules.find(&target.migration).map(|(_, m)| m).context("no such migration")?;
    Ok((crate::databases::target_for(&config, migration), mapping))
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `dualwrite backfill`; returns the process exit code.
pub async fn backfill(args: BackfillArgs) -> ExitCode {
    ExitCode::from(backfill_status(args).await)
}

/// `dualwrite backfill` with its exit status as a number (0 done, 2 failed).
pub async fn backfill_status(args: BackfillArgs) -> u8 {
    match backfill_inner(args).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("dualwrite backfill: {error:#}");
            2
        }
    }
}

async fn backfill_inner(args: BackfillArgs) -> anyhow::Result<()> {
    let (config, mapping) = load(&args.target)?;
    let options = BackfillOptions {
        batch_size: args.batch,
        limits: Limits {
            rate: args.rate,
            max_replication_lag: args.max_replication_lag.map(Duration::from_secs_f64),
            ..Limits::default()
        },
        restart: args.restart,
        ..BackfillOptions::default()
    };
    let progress = bar(0);
    let shown = progress.clone();
    let outcome = run_backfill(&config, &mapping, &options, &move |p| {
        if let Some(total) = p.rows_total {
            shown.set_length(total.max(0) as u64);
        }
        shown.set_position(p.rows_done.max(0) as u64);
        shown.set_message(match p.activity {
            Activity::Copying => "copying".to_string(),
            Activity::Paused => "paused".to_string(),
            Activity::Holding(hold) => format!("holding: {hold:?}"),
            Activity::Repairing => "repairing the rows kept by a forced re-entry".to_string(),
            Activity::Done => "done".to_string(),
        });
    })
    .await?;
    progress.finish();
    match outcome {
        BackfillOutcome::Done { rows_done } => {
            println!("backfill of {} done: {rows_done} rows", mapping.migration);
            Ok(())
        }
        BackfillOutcome::Stopped { rows_done } => {
            anyhow::bail!("backfill of {} was stopped after {rows_done} rows", mapping.migration)
        }
    }
}

/// Runs `dualwrite verify`; returns the process exit code (1 when divergence was found).
pub async fn verify(args: VerifyArgs) -> ExitCode {
    ExitCode::from(verify_status(args).await)
}

/// `dualwrite verify` with its exit status as a number (0 clean, 1 divergence, 2 failed).
pub async fn verify_status(args: VerifyArgs) -> u8 {
    match verify_inner(args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            eprintln!("dualwrite verify: {error:#}");
            2
        }
    }
}

async fn verify_inner(args: VerifyArgs) -> anyhow::Result<bool> {
    let (config, mapping) = load(&args.target)?;
    let options = VerifyOptions { repair: args.repair, chunk_rows: args.chunk_rows, ..VerifyOptions::default() };
    let progress = bar(0);
    let shown = progress.clone();
    shown.set_message("checksums");
    let report = run_verify(&config, &mapping, &options, &move |checked, total| {
        shown.set_length(total.max(0) as u64);
        shown.set_position(checked.max(0) as u64);
    })
    .await?;
    progress.finish();
    println!(
        "verify of {} (run {}, against the {} table): {} rows checked, {} missing, {} extra, {} different{}",
        mapping.migration,
        report.run_id,
        report.source.as_str(),
        report.rows_checked,
        report.missing,
        report.extra,
        report.different,
        if args.repair { format!(", {} repaired", report.repaired) } else { String::new() }
    );
    for divergent in report.divergent.iter().take(20) {
        println!("  {:9} {}", divergent.kind.as_str(), divergent.key);
    }
    if report.divergent_rows() > 20 {
        println!("  ... (all recorded keys: dualwrite.divergent_keys where run_id = {})", report.run_id);
    }
    Ok(report.clean())
}
