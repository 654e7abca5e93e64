//! `dualwrite-bench`: one command that starts a throwaway Postgres, pgbouncer and the dualwrite arms on
//! loopback TCP, runs pgbench and the bulk dual write side by side, and writes REPORT.md, a PNG plot and
//! results.json. Usually started through `bench/run`, which builds the release binaries first.

mod arms;
mod bulk;
mod copy;
mod db;
mod floor;
mod idle;
mod jobs;
mod pgbench;
mod pgbouncer;
mod plot;
mod procfs;
mod profile;
mod proxy;
mod report;
mod results;
mod runner;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "dualwrite benchmark: direct vs pgbouncer vs dualwrite vs trigger dual write")]
pub struct Args {
    /// Short smoke run: small data set, 1 and 4 clients, one repetition, 100 idle clients.
    #[arg(long)]
    pub quick: bool,
    /// The `dualwrite` binary under test.
    #[arg(long, env = "DUALWRITE_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// Where REPORT.md, tps.png and results.json go (default: bench/ for a full run, bench/quick/ for --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Repetitions of every cell (arms alternate within each repetition).
    #[arg(long)]
    pub reps: Option<u32>,
    /// Seconds of each pgbench run that are discarded.
    #[arg(long)]
    pub warmup: Option<u32>,
    /// Seconds of each pgbench run that are measured.
    #[arg(long)]
    pub duration: Option<u32>,
    /// pgbench scale (100,000 accounts per unit; 10 gives the 1,000,000-row bulk UPDATE).
    #[arg(long)]
    pub scale: Option<u32>,
    /// Nice value for every benchmark process (Postgres, pgbouncer, proxy, pgbench inherit it); negative
    /// values need root and keep other work on a shared machine from dominating the figures.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    pub nice: i32,
    /// Parent directory for the cluster, pgbouncer and pgbench logs.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// The command line to print in the report (bench/run passes its own).
    #[arg(long)]
    pub command: Option<String>,
    /// Regenerate REPORT.md and the plot from a results.json instead of running.
    #[arg(long)]
    pub report_from: Option<PathBuf>,
    /// Profile the proxy's passthrough hot path (perf + callgrind) into <out>/profile/ instead of benchmarking.
    #[arg(long)]
    pub profile: bool,
    /// Hand-written profile notes included in the report.
    #[arg(long)]
    pub profile_notes: Option<PathBuf>,
    /// Run only these arms (keys, comma-separated) and only the pgbench matrix (no bulk, jobs or idle
    /// sections), e.g. `--arms dw-dualwrite,dw-dualwrite-watch` for the watch's A/B.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Client counts of the pgbench matrix instead of the default (1,4,16 with 8,32 for issue 2's
    /// select-only arms), e.g. `--clients 1,4`.
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<u32>,
    /// Run only the TPC-B-like workload of the pgbench matrix (the dual-write and watch comparisons).
    #[arg(long, conflicts_with = "select_only")]
    pub tpcb_only: bool,
    /// Run only the select-only workload of the pgbench matrix (the relay and pooling comparisons).
    #[arg(long)]
    pub select_only: bool,
    /// pgbench query modes of the matrix instead of all three (simple, extended, prepared).
    #[arg(long, value_delimiter = ',', value_parser = ["simple", "extended", "prepared"])]
    pub modes: Vec<String>,
    /// Run only the COPY section (plain COPY vs COPY through the dual-writing proxy).
    #[arg(long)]
    pub copy_only: bool,
    /// Minimum seconds each COPY arm copies per repetition, after its warm-up batch.
    #[arg(long, default_value_t = 5.0)]
    pub copy_seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if args.quick {
            bench_dir.join("quick")
        } else {
            bench_dir
        }
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if args.profile {
        procfs::raise_priority(args.nice);
        let proxy_bin = args.proxy_bin.clone().unwrap_or_else(runner::default_proxy_bin);
        return profile::run(&proxy_bin, &out, &args.work_dir);
    }
    let results = match &args.report_from {
        Some(path) => {
            serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let results = runner::run(&args)?;
            std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
            results
        }
    };
    let notes_path =
        args.profile_notes.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("PROFILE.md"));
    let notes = std::fs::read_to_string(&notes_path).ok();
    let plot_name = "tps.png";
    // A COPY-only run has no TPS to plot.
    let plot_error = if results.plan.copy_only {
        Some(anyhow::anyhow!("no pgbench run"))
    } else {
        plot::draw(&results, &out.join(plot_name)).err()
    };
    if let Some(err) = &plot_error {
        eprintln!("plot not drawn: {err:#}");
    }
    let text = report::render(&results, notes.as_deref(), plot_error.is_none().then_some(plot_name));
    std::fs::write(out.join("REPORT.md"), text)?;
    eprintln!("wrote {}", out.join("REPORT.md").display());
    Ok(())
}
