//! Running pgbench against one arm and reading its per-transaction log (-l): throughput over the measured
//! window (the warm-up seconds at the start are discarded) and latency percentiles from the same window.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Workload {
    SelectOnly,
    TpcB,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::SelectOnly, Workload::TpcB];

    pub fn label(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::TpcB => "TPC-B-like",
        }
    }

    /// Statements the client sends per transaction (BEGIN, 3 UPDATEs, SELECT, INSERT, END for TPC-B).
    pub fn statements_per_transaction(self) -> u64 {
        match self {
            Workload::SelectOnly => 1,
            Workload::TpcB => 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Mode {
    Simple,
    Extended,
    Prepared,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Simple, Mode::Extended, Mode::Prepared];

    pub fn arg(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Extended => "extended",
            Mode::Prepared => "prepared",
        }
    }
}

/// What pgbench runs: a builtin script or a script file.
#[derive(Debug, Clone)]
pub enum Script {
    Builtin(Workload),
    File(PathBuf),
}

pub struct RunSpec<'a> {
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
    pub script: Script,
    pub mode: Mode,
    pub clients: u32,
    pub warmup_s: u32,
    pub measure_s: u32,
    /// Directory for this run's per-transaction logs (emptied first).
    pub log_dir: &'a Path,
}

/// One pgbench run, measured over its window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Transactions pgbench completed in the whole run, warm-up included (for CPU per statement).
    pub transactions_total: u64,
    pub transactions_measured: u64,
}

pub fn run(spec: &RunSpec) -> Result<RunOutcome> {
    if spec.log_dir.exists() {
        fs::remove_dir_all(spec.log_dir)?;
    }
    fs::create_dir_all(spec.log_dir)?;
    let mut command = Command::new("pgbench");
    command
        .args(["-h", "127.0.0.1", "-p", &spec.port.to_string(), "-U", spec.user])
        .args(["-n", "-M", spec.mode.arg()])
        .args(["-c", &spec.clients.to_string()])
        .args(["-j", &spec.clients.min(2).to_string()])
        .args(["-T", &(spec.warmup_s + spec.measure_s).to_string()])
        .arg("-l")
        .arg(format!("--log-prefix={}", spec.log_dir.join("tx").display()))
        // Same for every arm: no TLS or GSS negotiation round trip (the proxy answers 'N' like Postgres).
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env_remove("PGOPTIONS")
        .current_dir(spec.log_dir);
    match &spec.script {
        Script::Builtin(Workload::SelectOnly) => command.args(["-b", "select-only"]),
        Script::Builtin(Workload::TpcB) => command.args(["-b", "tpcb-like"]),
        Script::File(path) => command.arg("-f").arg(path),
    };
    command.arg(spec.database);
    let output = command.output().context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        bail!("pgbench failed ({}): {}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    let transactions_total = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|v| v.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0);
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions:"))
        .and_then(|v| v.trim().split(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("pgbench reported {failed} failed transactions");
    }
    let transactions = read_logs(spec.log_dir)?;
    let outcome = measure(&transactions, spec.warmup_s, spec.measure_s, transactions_total)?;
    // The logs of a run can be large (tens of MB); keep disk use flat.
    let _ = fs::remove_dir_all(spec.log_dir);
    Ok(outcome)
}

/// One line of the per-transaction log: (completion time in µs since the epoch, latency in µs).
type Transaction = (u64, u64);

fn read_logs(dir: &Path) -> Result<Vec<Transaction>> {
    let mut transactions = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tx.")) {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        transactions.extend(text.lines().filter_map(parse_log_line));
    }
    Ok(transactions)
}

/// `client_id transaction_no time script_no time_epoch time_us [...]`; failed/skipped lines are dropped.
fn parse_log_line(line: &str) -> Option<Transaction> {
    let mut fields = line.split_whitespace();
    let latency: u64 = fields.nth(2)?.parse().ok()?;
    let epoch: u64 = fields.nth(1)?.parse().ok()?;
    let micros: u64 = fields.next()?.parse().ok()?;
    Some((epoch * 1_000_000 + micros, latency))
}

fn measure(transactions: &[Transaction], warmup_s: u32, measure_s: u32, transactions_total: u64) -> Result<RunOutcome> {
    let Some(start) = transactions.iter().map(|(end, lat)| end - lat).min() else {
        bail!("pgbench logged no transactions");
    };
    let from = start + u64::from(warmup_s) * 1_000_000;
    let to = from + u64::from(measure_s) * 1_000_000;
    let mut latencies: Vec<u64> =
        transactions.iter().filter(|(end, _)| (from..to).contains(end)).map(|&(_, lat)| lat).collect();
    if latencies.is_empty() {
        bail!("no transaction completed in the measured window");
    }
    latencies.sort_unstable();
    Ok(RunOutcome {
        tps: latencies.len() as f64 / f64::from(measure_s),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        transactions_total,
        transactions_measured: latencies.len() as u64,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_15_log_lines() {
        assert_eq!(parse_log_line("0 199 2241 0 1175850568 995598"), Some((1175850568995598, 2241)));
        assert_eq!(parse_log_line("3 12 failed 0 1175850568 995598 0"), None);
    }

    #[test]
    fn window_discards_warmup_and_percentiles_are_nearest_rank() {
        // One transaction per 10 ms over 3 s, latency growing with time.
        let txs: Vec<Transaction> = (1..=300u64).map(|i| (10_000_000 + i * 10_000, i)).collect();
        let out = measure(&txs, 1, 2, 300).unwrap();
        // start = 10_000_000 + 10_000 - 1; window [start + 1 s, start + 3 s) holds i = 101..=300 (200 tx).
        assert_eq!(out.transactions_measured, 200);
        assert_eq!(out.tps, 100.0);
        assert_eq!(out.p50_us, 200.0);
        assert_eq!(out.p99_us, 298.0);
    }
}
