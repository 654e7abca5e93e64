//! The report's section on the change-data-capture watch's cost: TPS with the watch off and on, and where
//! the difference goes (the proxy's CPU per transaction in both arms, the walsender's for the watch).

use std::fmt::Write as _;

use super::table::{cells, ratio_str, table_head, NA};
use crate::arms::Arm;
use crate::pgbench::Workload;
use crate::results::Results;

/// Where the change-data-capture watch's cost goes, per TPC-B cell: the proxy's CPU per transaction with
/// the watch off and on (the difference is the watch's own work: decoding, pairing, confirming) and the
/// CPU of the walsender that decodes the WAL for it (Postgres's pgoutput).
pub fn section(out: &mut String, r: &Results) {
    if !r.runs.iter().any(|run| run.arm == Arm::DwDualWriteWatch && run.outcome.is_some()) {
        return;
    }
    let per_tx = Workload::TpcB.statements_per_transaction() as f64;
    let _ = writeln!(
        out,
        "## Change-data-capture watch: where its cost goes (TPC-B-like, medians over repetitions)\n\n\
         Proxy CPU per transaction is the proxy process's CPU over the run divided by its transactions \
         (the watch runs in the proxy: the difference between the arms is the watch's own decoding, pairing \
         and confirming); the walsender's is the CPU of the Postgres process streaming the slot (WAL \
         decoding by pgoutput), which the watch-off arm does not run at all.\n"
    );
    table_head(
        out,
        "mode, clients",
        &[
            "TPS off".into(),
            "TPS on".into(),
            "on / off".into(),
            "proxy µs/tx off".into(),
            "proxy µs/tx on".into(),
            "walsender µs/tx".into(),
        ],
    );
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| NA.into());
    for (mode, clients) in cells(r, Workload::TpcB) {
        let off = r.cell(Arm::DwDualWrite, Workload::TpcB, mode, clients);
        let on = r.cell(Arm::DwDualWriteWatch, Workload::TpcB, mode, clients);
        let tps = |c: &Option<crate::results::Cell>| {
            c.as_ref()
                .filter(|c| c.tps.median.is_finite())
                .map(|c| format!("{:.0} ({:.0}–{:.0})", c.tps.median, c.tps.min, c.tps.max))
                .unwrap_or_else(|| NA.into())
        };
        let _ = writeln!(
            out,
            "| {} c={clients} | {} | {} | {} | {} | {} | {} |",
            mode.arg(),
            tps(&off),
            tps(&on),
            ratio_str(r.ratio(Arm::DwDualWriteWatch, Arm::DwDualWrite, Workload::TpcB, mode, clients)),
            fmt(off.as_ref().and_then(|c| c.hop_cpu_us).map(|v| v * per_tx)),
            fmt(on.as_ref().and_then(|c| c.hop_cpu_us).map(|v| v * per_tx)),
            fmt(on.as_ref().and_then(|c| c.walsender_cpu_us)),
        );
    }
    let _ = writeln!(out);
}
