//! The immutable picture of the shared state that sessions read on the query path: one `MigrationState` per
//! migration (phase, read routing, backfill progress, last verify, what the schema watch found). Built by
//! `state::store` and `state::schema_watch`, published by `state::watcher`, never mutated once published.

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
    /// What the schema watch (`state::schema_watch`) last found wrong with the migration's tables, in
    /// this instance; empty when the schema is safe. Not stored in the database: every instance reads the
    /// catalog itself.
    pub schema_findings: Vec<SchemaFinding>,
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
            schema_findings: Vec::new(),
        }
    }

    /// The findings that refuse the migration's writes, as one sentence, while it keeps both tables in step
    /// (`dual_write`, `cutover`); `None` when its writes may run.
    pub fn unsafe_for_writes(&self) -> Option<String> {
        match self.phase {
            Phase::DualWrite | Phase::Cutover => self.refusing_findings(),
            Phase::Off | Phase::Complete => None,
        }
    }

    /// The findings that refuse writes in a phase that dual-writes, as one sentence, whatever the phase.
    pub fn refusing_findings(&self) -> Option<String> {
        let refusing: Vec<&str> =
            self.schema_findings.iter().filter(|f| f.kind.refuses_writes()).map(|f| f.description.as_str()).collect();
        (!refusing.is_empty()).then(|| refusing.join("; "))
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

/// What the schema watch can find wrong with a migration's tables after the migration was registered (the
/// same things registration refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaFindingKind {
    /// The key's defaults in the migration's tables became separate sources (`check::key_defaults`).
    KeyDefaults,
    /// A merge source's `present` column maps an old column that may now be NULL (`check::schema`).
    NullablePresent,
    /// The old table has writers the proxy cannot see that the rules do not accept (`check::writers`).
    UnseenWriters,
    /// A BEFORE row trigger of a table of the migration may assign the key and the rules do not accept it
    /// (`check::row_triggers`).
    KeyTrigger,
    /// A shadow is more open than its old tables under row-level security (`check::row_security`).
    RowSecurity,
    /// A key column's tables disagree on when two keys are equal (`check::key_equality`).
    KeyEquality,
}

impl SchemaFindingKind {
    pub const ALL: [SchemaFindingKind; 6] = [
        SchemaFindingKind::KeyDefaults,
        SchemaFindingKind::NullablePresent,
        SchemaFindingKind::UnseenWriters,
        SchemaFindingKind::KeyTrigger,
        SchemaFindingKind::RowSecurity,
        SchemaFindingKind::KeyEquality,
    ];

    /// The `kind` label of `dualwrite_schema_findings`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaFindingKind::KeyDefaults => "key_defaults",
            SchemaFindingKind::NullablePresent => "nullable_present",
            SchemaFindingKind::UnseenWriters => "unseen_writers",
            SchemaFindingKind::KeyTrigger => "key_trigger",
            SchemaFindingKind::RowSecurity => "row_security",
            SchemaFindingKind::KeyEquality => "key_equality",
        }
    }

    /// Whether the migration's writes are refused while such a finding stands. All but unseen writers make
    /// the proxy's own dual write change the wrong rows, so its writes stop. Unseen writers write behind the
    /// proxy's back whatever it does (refusing the application's writes would not stop them): they are
    /// reported, and the change-data-capture watch catches what they write.
    pub fn refuses_writes(self) -> bool {
        !matches!(self, SchemaFindingKind::UnseenWriters)
    }
}

/// One thing the schema watch found, as a sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFinding {
    pub kind: SchemaFindingKind,
    pub description: String,
}
