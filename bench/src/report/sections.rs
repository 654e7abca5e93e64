//! The report's measured sections: TPS, ratio, latency and CPU tables, idle memory, the bulk dual write,
//! the rewrite cache and the errors of the run.

use std::fmt::Write as _;

use super::table::{arms_for, cells, in_run, one_line, ratio_str, stat_cell, table_head, NA};
use crate::arms::{Arm, Endpoint, ProxyKind};
use crate::bulk::BulkArm;
use crate::pgbench::Workload;
use crate::results::Results;
use crate::stats::Stat;

pub(crate) fn tps_tables(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Throughput (TPS): median (min–max) over repetitions\n");
    for workload in r.plan.workloads() {
        let arms = arms_for(r, workload);
        let _ = writeln!(out, "### {}\n", workload.label());
        table_head(out, "mode, clients", &arms.iter().map(|a| a.key().to_owned()).collect::<Vec<_>>());
        for (mode, clients) in cells(r, workload) {
            let row: Vec<String> = arms
                .iter()
                .map(|&arm| match (r.unavailable(arm), r.cell(arm, workload, mode, clients)) {
                    (_, Some(cell)) => stat_cell(cell.tps),
                    (Some(_), None) => "not available in this build".into(),
                    (None, None) => "–".into(),
                })
                .collect();
            let _ = writeln!(out, "| {} c={clients} | {} |", mode.arg(), row.join(" | "));
        }
        let _ = writeln!(out);
    }
}

pub(crate) fn ratio_tables(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Ratios of median TPS\n");
    let pairs: [(&str, Arm, Arm, bool); 15] = [
        ("dw-norules / direct", Arm::DwNoRules, Arm::Direct, false),
        ("dw-norules / pgbouncer", Arm::DwNoRules, Arm::Pgbouncer, false),
        ("pgbouncer / direct", Arm::Pgbouncer, Arm::Direct, false),
        ("dw-elsewhere / dw-norules", Arm::DwElsewhere, Arm::DwNoRules, false),
        ("dw-dualwrite / trigger-pgbouncer", Arm::DwDualWrite, Arm::TriggerPgbouncer, true),
        ("dw-dualwrite / trigger-direct", Arm::DwDualWrite, Arm::TriggerDirect, true),
        ("dw-dualwrite / cte-direct", Arm::DwDualWrite, Arm::CteDirect, true),
        ("dw-dualwrite-watch / dw-dualwrite", Arm::DwDualWriteWatch, Arm::DwDualWrite, true),
        ("trigger-pgbouncer / trigger-direct", Arm::TriggerPgbouncer, Arm::TriggerDirect, true),
        ("dw-tx / pgbouncer-tx", Arm::DwTx, Arm::PgbouncerTx, false),
        ("dw-norules-1 / pgbouncer", Arm::DwNoRules1, Arm::Pgbouncer, false),
        ("floor-tokio / pgbouncer", Arm::FloorTokio, Arm::Pgbouncer, false),
        ("floor-mio / floor-tokio", Arm::FloorMio, Arm::FloorTokio, false),
        ("floor-tokio-1 / pgbouncer", Arm::FloorTokio1, Arm::Pgbouncer, false),
        ("dw-norules / floor-tokio", Arm::DwNoRules, Arm::FloorTokio, false),
    ];
    for workload in r.plan.workloads() {
        let columns: Vec<_> =
            pairs.iter().filter(|p| (!p.3 || workload == Workload::TpcB) && in_run(r, p.1) && in_run(r, p.2)).collect();
        if columns.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {}\n", workload.label());
        table_head(out, "mode, clients", &columns.iter().map(|p| p.0.to_owned()).collect::<Vec<_>>());
        for (mode, clients) in cells(r, workload) {
            let row: Vec<String> =
                columns.iter().map(|p| ratio_str(r.ratio(p.1, p.2, workload, mode, clients))).collect();
            let _ = writeln!(out, "| {} c={clients} | {} |", mode.arg(), row.join(" | "));
        }
        let _ = writeln!(out);
    }
}

pub(crate) fn latency_tables(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Latency per transaction (µs): p50 / p99 from pgbench's per-transaction log, median over repetitions\n\n\
         The last columns are the latency each hop adds to a transaction over direct (p50 / p99).\n"
    );
    for workload in r.plan.workloads() {
        let arms = arms_for(r, workload);
        let mut columns: Vec<String> = arms.iter().map(|a| a.key().to_owned()).collect();
        columns.push("added by pgbouncer".into());
        columns.push("added by dw-norules".into());
        let _ = writeln!(out, "### {}\n", workload.label());
        table_head(out, "mode, clients", &columns);
        for (mode, clients) in cells(r, workload) {
            let mut row: Vec<String> = arms
                .iter()
                .map(|&arm| match r.cell(arm, workload, mode, clients) {
                    Some(c) if c.p50_us.is_finite() => format!("{:.0} / {:.0}", c.p50_us, c.p99_us),
                    _ => NA.into(),
                })
                .collect();
            let direct = r.cell(Arm::Direct, workload, mode, clients);
            for arm in [Arm::Pgbouncer, Arm::DwNoRules] {
                let added = match (&direct, r.cell(arm, workload, mode, clients)) {
                    (Some(d), Some(c)) if c.p50_us.is_finite() && d.p50_us.is_finite() => {
                        format!("{:+.0} / {:+.0}", c.p50_us - d.p50_us, c.p99_us - d.p99_us)
                    }
                    _ => NA.into(),
                };
                row.push(added);
            }
            let _ = writeln!(out, "| {} c={clients} | {} |", mode.arg(), row.join(" | "));
        }
        let _ = writeln!(out);
    }
}

pub(crate) fn cpu_table(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## CPU of the hop per statement (µs, median over repetitions)\n");
    // Every arm with a hop, but the dual-write arms that differ from theirs only by the watch.
    let hops: Vec<Arm> = Arm::ALL
        .iter()
        .copied()
        .filter(|&a| a.endpoint() != Endpoint::Postgres && a != Arm::DwDualWriteWatch && in_run(r, a))
        .collect();
    table_head(out, "workload, mode, clients", &hops.iter().map(|a| a.key().to_owned()).collect::<Vec<_>>());
    for workload in r.plan.workloads() {
        for (mode, clients) in cells(r, workload) {
            let row: Vec<String> = hops
                .iter()
                .map(|&arm| {
                    r.cell(arm, workload, mode, clients)
                        .and_then(|c| c.hop_cpu_us)
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_else(|| NA.into())
                })
                .collect();
            let _ = writeln!(out, "| {} -M {} c={clients} | {} |", workload.label(), mode.arg(), row.join(" | "));
        }
    }
    let _ = writeln!(out);
}

pub(crate) fn idle_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Memory with idle clients\n\nClients that completed startup (tokio-postgres) and then sit idle; RSS from /proc/<pid>/status.\n"
    );
    let counts: Vec<usize> = r.idle.first().map(|i| i.points.iter().map(|p| p.0).collect()).unwrap_or_default();
    let mut columns: Vec<String> = counts.iter().map(|n| format!("RSS at {n} clients")).collect();
    columns.push("KiB per idle client".into());
    table_head(out, "process", &columns);
    for record in &r.idle {
        let mut row: Vec<String> =
            record.points.iter().map(|(_, kib)| format!("{:.1} MiB", *kib as f64 / 1024.0)).collect();
        row.resize(counts.len(), NA.into());
        row.push(record.kib_per_client().map(|k| format!("{k:.1}")).unwrap_or_else(|| NA.into()));
        let _ = writeln!(out, "| {} | {} |", record.target, row.join(" | "));
        if let Some(err) = &record.error {
            let _ = writeln!(out, "\n{}: error: {}\n", record.target, one_line(err));
        }
    }
    if !r.idle.iter().any(|i| i.target.starts_with("dualwrite")) {
        let reason =
            format!("not available in this build: {}", r.unavailable(Arm::DwNoRules).map(one_line).unwrap_or_default());
        let _ = writeln!(out, "| dualwrite | {reason} |{}", " |".repeat(counts.len()));
    }
    let _ = writeln!(out);
}

pub(crate) fn bulk_section(out: &mut String, r: &Results) {
    let rows = r.bulk.iter().map(|b| b.rows).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "## Bulk dual write: `UPDATE pgbench_accounts SET abalance = abalance + 1` over {rows} rows\n\n\
         One statement, every row, from a vacuumed table; the shadow is checked to agree afterwards. \
         Median and range over {} repetition(s) of the proxy and the trigger; the two references run once.\n",
        r.plan.bulk_reps
    );
    table_head(out, "how", &["seconds".to_owned(), "vs trigger".to_owned()]);
    let trigger = r.bulk_median(BulkArm::Trigger);
    for arm in BulkArm::ALL {
        let secs: Vec<f64> = r.bulk.iter().filter(|b| b.arm == arm).filter_map(|b| b.seconds).collect();
        let cell = match Stat::of(&secs) {
            Some(s) => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
            None => r
                .bulk
                .iter()
                .find(|b| b.arm == arm)
                .and_then(|b| b.error.as_deref())
                .map(one_line)
                .unwrap_or_else(|| NA.into()),
        };
        let speed = match (trigger, Stat::of(&secs)) {
            (Some(t), Some(s)) => format!("{:.2}x", t / s.median),
            _ => NA.into(),
        };
        let _ = writeln!(out, "| {} | {} | {} |", arm.label(), cell, speed);
    }
    let _ = writeln!(out);
}

pub(crate) fn cache_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Rewrite cache\n\nFrom each proxy's /metrics at the end of the pgbench matrix \
         (`dualwrite_rewrite_cache_hits_total`, `dualwrite_rewrite_cache_misses_total`).\n"
    );
    table_head(out, "proxy", &["hits".into(), "misses".into(), "hit rate".into(), "queries_total".into()]);
    for kind in ProxyKind::ALL {
        let Some(c) = r.cache.iter().find(|c| c.proxy == kind) else {
            let _ = writeln!(out, "| {kind:?} | not available in this build | | | |");
            continue;
        };
        let rate = match (c.hits, c.misses) {
            (Some(h), Some(m)) if h + m > 0.0 => format!("{:.2}%", h / (h + m) * 100.0),
            (Some(_), Some(_)) => "no lookups".into(),
            _ => "metric not exported by this build".into(),
        };
        let num = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| NA.into());
        let _ = writeln!(out, "| {kind:?} | {} | {} | {rate} | {} |", num(c.hits), num(c.misses), num(c.queries_total));
    }
    let _ = writeln!(
        out,
        "\nPer workload and mode (all client counts and repetitions; deltas of the counters around each run):\n"
    );
    table_head(out, "arm, workload, mode", &["hits".into(), "misses".into(), "hit rate".into()]);
    for arm in [Arm::DwElsewhere, Arm::DwDualWrite] {
        for workload in Workload::ALL {
            for &mode in &r.plan.modes {
                let runs: Vec<_> = r
                    .runs
                    .iter()
                    .filter(|x| x.arm == arm && x.workload == workload && x.mode == mode)
                    .filter_map(|x| Some((x.cache_hits?, x.cache_misses?)))
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let hits: f64 = runs.iter().map(|x| x.0).sum();
                let misses: f64 = runs.iter().map(|x| x.1).sum();
                let rate = if hits + misses > 0.0 {
                    format!("{:.1}%", hits / (hits + misses) * 100.0)
                } else {
                    "no lookups (statements skip the rewriter)".into()
                };
                let _ = writeln!(
                    out,
                    "| {} {} -M {} | {hits:.0} | {misses:.0} | {rate} |",
                    arm.key(),
                    workload.label(),
                    mode.arg()
                );
            }
        }
    }
    let _ = writeln!(out);
}

pub(crate) fn errors_section(out: &mut String, r: &Results) {
    let failed: Vec<_> = r.runs.iter().filter(|run| run.error.is_some()).collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Failed runs\n");
    for run in failed {
        let _ = writeln!(
            out,
            "- {} {} -M {} -c {} rep {}: {}",
            run.arm.key(),
            run.workload.label(),
            run.mode.arg(),
            run.clients,
            run.rep + 1,
            one_line(run.error.as_deref().unwrap_or_default())
        );
    }
    let _ = writeln!(out);
}
