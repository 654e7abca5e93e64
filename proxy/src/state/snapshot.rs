//! The immutable picture of the shared state that sessions read on the query path: one `MigrationState` per
//! migration (phase, read routing, backfill progress, last verify). Built by `state::store`, published by
//! `state::watcher`, never mutated once published.

use std::collections::BTreeMap;

use super::phase::Phase;

/// Everything the proxy knows about the migrations at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateSnapshot {
    /// Keyed by migration name.
    pub migrations: BTreeMap<String, MigrationState>,
}

impl StateSnapshot {
    pub fn migration(&self, name: &str) -> Option<&MigrationState> {
        self.migrations.get(name)
    }
}

/// One row of `dualwrite.migrations` with its backfill row and last verify run.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationState {
    pub name: String,
    pub phase: Phase,
    /// `None`: each session reads its own version's table; else the version every routed session reads.
    pub read_source: Option<String>,
    /// Share of sessions (0..=100) routed to `read_source`.
    pub read_percent: u8,
    pub backfill: Option<BackfillProgress>,
    pub last_verify: Option<VerifySummary>,
}

impl MigrationState {
    pub fn new(name: impl Into<String>, phase: Phase) -> Self {
        MigrationState {
            name: name.into(),
            phase,
            read_source: None,
            read_percent: 100,
            backfill: None,
            last_verify: None,
        }
    }

    /// The backfill has copied every row (state `done`).
    pub fn backfill_done(&self) -> bool {
        self.backfill.as_ref().is_some_and(|b| b.state == "done")
    }

    /// Every read is served by the old tables, whatever the session's version and the routing say: in
    /// `dual_write` until the backfill is done, the shadow lacks the rows not copied yet.
    pub fn reads_wait_for_backfill(&self) -> bool {
        self.phase == Phase::DualWrite && !self.backfill_done()
    }
}

/// A `dualwrite.backfill` row.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillProgress {
    /// idle | running | paused | done
    pub state: String,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
}

/// The newest `dualwrite.verify_runs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifySummary {
    pub id: i64,
    pub finished: bool,
    pub clean: Option<bool>,
    pub rows_checked: Option<i64>,
    pub missing: Option<i64>,
    pub extra: Option<i64>,
    pub different: Option<i64>,
}
