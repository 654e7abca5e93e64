//! Everything one run measured (saved as results.json so the report can be regenerated), and the
//! per-cell aggregation the report and the plot share: median and range over the repetitions.

use serde::{Deserialize, Serialize};

use crate::arms::{Arm, ProxyKind};
use crate::bulk::{BulkArm, BulkRecord};
use crate::idle::IdleRecord;
use crate::pgbench::{Mode, RunOutcome, Workload};
use crate::procfs::Machine;
use crate::stats::{median, Stat};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    pub scale: u32,
    pub reps: u32,
    pub warmup_s: u32,
    pub measure_s: u32,
    pub modes: Vec<Mode>,
    /// Client counts every arm runs at.
    pub clients: Vec<u32>,
    /// Extra select-only client counts for the direct / pgbouncer / no-rules arms (issue 2's table).
    pub extra_select_clients: Vec<u32>,
    pub bulk_reps: u32,
    pub idle_counts: Vec<usize>,
    pub shared_buffers: String,
    /// Nice value every benchmark process ran at (see `procfs::raise_priority`).
    #[serde(default)]
    pub nice: i32,
    /// Scheduler time slice requested for every benchmark process (µs), when the kernel took it.
    #[serde(default)]
    pub slice_us: Option<u64>,
    /// The arms selected with `--arms` (empty: every arm, the full run).
    #[serde(default)]
    pub arms: Vec<String>,
    /// Only the TPC-B-like workload ran (`--tpcb-only`).
    #[serde(default)]
    pub tpcb_only: bool,
    /// Only the select-only workload ran (`--select-only`).
    #[serde(default)]
    pub select_only: bool,
    /// Only the COPY section ran (`--copy-only`).
    #[serde(default)]
    pub copy_only: bool,
}

impl Plan {
    /// Client counts of a workload and mode: issue 2's extra select-only counts run in -M simple and
    /// prepared (the modes it asks for), which keeps the full run near 25 minutes.
    pub fn clients_for(&self, workload: Workload, mode: Mode) -> Vec<u32> {
        let mut all = self.clients.clone();
        if workload == Workload::SelectOnly && mode != Mode::Extended {
            all.extend(&self.extra_select_clients);
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Every client count any mode of the workload runs at (the plot's x axis).
    pub fn all_clients(&self, workload: Workload) -> Vec<u32> {
        self.clients_for(workload, Mode::Simple)
    }

    /// The workloads of the pgbench matrix.
    pub fn workloads(&self) -> Vec<Workload> {
        Workload::ALL
            .into_iter()
            .filter(|&w| !self.tpcb_only || w == Workload::TpcB)
            .filter(|&w| !self.select_only || w == Workload::SelectOnly)
            .collect()
    }

    pub fn arm_runs_at(&self, arm: Arm, workload: Workload, mode: Mode, clients: u32) -> bool {
        arm.runs(workload) && arm.runs_mode(mode) && (self.clients.contains(&clients) || arm.in_extra_select_counts())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub arm: Arm,
    pub workload: Workload,
    pub mode: Mode,
    pub clients: u32,
    pub rep: u32,
    pub outcome: Option<RunOutcome>,
    pub error: Option<String>,
    /// CPU of the proxy or pgbouncer process (utime+stime over the whole pgbench run) per statement sent.
    pub hop_cpu_us_per_statement: Option<f64>,
    /// Rewrite-cache lookups during this run (deltas of the proxy's counters), proxy arms only.
    #[serde(default)]
    pub cache_hits: Option<f64>,
    #[serde(default)]
    pub cache_misses: Option<f64>,
    /// CPU of the walsender streaming the change-data-capture watch's slot per transaction (the
    /// watch arm only; Postgres's share of the watch's cost: decoding the WAL with pgoutput).
    #[serde(default)]
    pub walsender_cpu_us_per_transaction: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRecord {
    pub proxy: ProxyKind,
    pub hits: Option<f64>,
    pub misses: Option<f64>,
    pub queries_total: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub started_utc: String,
    pub wall_seconds: f64,
    pub load_before: String,
    pub load_after: String,
    pub git_commit: String,
    pub machine: Machine,
    pub plan: Plan,
    pub pg_settings: Vec<(String, String)>,
    /// `None`: available; `Some(reason)`: not available in this build, and why.
    pub availability: Vec<(Arm, Option<String>)>,
    pub runs: Vec<RunRecord>,
    pub bulk: Vec<BulkRecord>,
    pub idle: Vec<IdleRecord>,
    pub cache: Vec<CacheRecord>,
    /// Backfill, verify and TPS during a backfill (absent in results of older runs).
    #[serde(default)]
    pub jobs: Option<crate::jobs::JobsRecord>,
    /// Plain COPY vs COPY through the dual-writing proxy (absent in results of older runs).
    #[serde(default)]
    pub copy: Option<crate::copy::CopyRecord>,
}

/// Median and range of one cell (arm × workload × mode × clients) over its repetitions.
#[derive(Debug, Clone)]
pub struct Cell {
    pub tps: Stat,
    pub p50_us: f64,
    pub p99_us: f64,
    pub hop_cpu_us: Option<f64>,
    pub walsender_cpu_us: Option<f64>,
}

impl Results {
    pub fn unavailable(&self, arm: Arm) -> Option<&str> {
        self.availability.iter().find(|(a, _)| *a == arm).and_then(|(_, reason)| reason.as_deref())
    }

    /// `None` when the arm did not run in this cell at all; NaN figures when every repetition failed.
    pub fn cell(&self, arm: Arm, workload: Workload, mode: Mode, clients: u32) -> Option<Cell> {
        let runs: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| r.arm == arm && r.workload == workload && r.mode == mode && r.clients == clients)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let outcomes: Vec<&RunOutcome> = runs.iter().filter_map(|r| r.outcome.as_ref()).collect();
        let tps: Vec<f64> = outcomes.iter().map(|o| o.tps).collect();
        let Some(tps) = Stat::of(&tps) else {
            return Some(Cell {
                tps: Stat { median: f64::NAN, min: f64::NAN, max: f64::NAN },
                p50_us: f64::NAN,
                p99_us: f64::NAN,
                hop_cpu_us: None,
                walsender_cpu_us: None,
            });
        };
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.hop_cpu_us_per_statement).collect();
        let walsender: Vec<f64> = runs.iter().filter_map(|r| r.walsender_cpu_us_per_transaction).collect();
        Some(Cell {
            tps,
            p50_us: median(&outcomes.iter().map(|o| o.p50_us).collect::<Vec<_>>()).unwrap_or(f64::NAN),
            p99_us: median(&outcomes.iter().map(|o| o.p99_us).collect::<Vec<_>>()).unwrap_or(f64::NAN),
            hop_cpu_us: median(&cpu),
            walsender_cpu_us: median(&walsender),
        })
    }

    /// Median TPS of a cell, when it has at least one successful repetition.
    pub fn tps(&self, arm: Arm, workload: Workload, mode: Mode, clients: u32) -> Option<f64> {
        self.cell(arm, workload, mode, clients).map(|c| c.tps.median).filter(|t| t.is_finite())
    }

    /// Ratio of the median TPS of two arms in one cell.
    pub fn ratio(&self, num: Arm, den: Arm, workload: Workload, mode: Mode, clients: u32) -> Option<f64> {
        Some(self.tps(num, workload, mode, clients)? / self.tps(den, workload, mode, clients)?)
    }

    pub fn bulk_median(&self, arm: BulkArm) -> Option<f64> {
        let secs: Vec<f64> = self.bulk.iter().filter(|b| b.arm == arm).filter_map(|b| b.seconds).collect();
        median(&secs)
    }
}
