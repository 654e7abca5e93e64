//! Shared pieces of the report's tables (a leaf of `report`): the cells of a workload, table heads, and
//! the text of a figure, a ratio or a missing value.

use std::fmt::Write as _;

use crate::arms::Arm;
use crate::pgbench::{Mode, Workload};
use crate::results::Results;
use crate::stats::Stat;

pub(crate) const NA: &str = "n/a";

/// Every (workload, mode, clients) cell of the plan, in table order.
pub(crate) fn cells(r: &Results, workload: Workload) -> Vec<(Mode, u32)> {
    let mut cells = Vec::new();
    if !r.plan.workloads().contains(&workload) {
        return cells;
    }
    for &mode in &r.plan.modes {
        for clients in r.plan.clients_for(workload, mode) {
            cells.push((mode, clients));
        }
    }
    cells
}

pub(crate) fn stat_cell(stat: Stat) -> String {
    if !stat.median.is_finite() {
        return "failed".into();
    }
    format!("{:.0} ({:.0}–{:.0})", stat.median, stat.min, stat.max)
}

/// The arms a table of `workload` has columns for: those of the run (a partial run's selection, or every
/// arm but the reference ones that run only when chosen), measured or not.
pub(crate) fn arms_for(r: &Results, workload: Workload) -> Vec<Arm> {
    Arm::ALL.iter().copied().filter(|&a| a.runs(workload) && in_run(r, a)).collect()
}

/// Whether `arm` was part of the run's plan.
pub(crate) fn in_run(r: &Results, arm: Arm) -> bool {
    if r.plan.arms.is_empty() {
        !arm.only_when_chosen()
    } else {
        r.plan.arms.iter().any(|key| key == arm.key())
    }
}

pub(crate) fn table_head(out: &mut String, first: &str, columns: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
}

pub(crate) fn ratio_str(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| NA.into())
}

pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '|'], " ").chars().take(300).collect()
}
