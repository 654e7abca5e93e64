//! The per-session schema version (pure): which shape a session's SQL is written in, and from it plus the
//! shared state, the route the rewriter uses for each migration.
//!
//! Resolution, first match wins: `SET dualwrite.version` (with Postgres's transaction semantics, mirrored
//! by `txstack`) > the startup packet (`options=-c dualwrite.version=v2`) > a per-role default > a
//! per-application_name default (config) > each migration's default, its old version.
//!
//! The proxy forwards SET/RESET of `dualwrite.version` to Postgres (dotted placeholder settings are
//! accepted there) and feeds this machine what it sees, so the state here mirrors what Postgres holds:
//! - `sent(stmt)` for every statement sent upstream (each simple-Query statement, each Execute) and
//!   `sent_sync()` after each Query message and each Sync, in order;
//! - `completed()` for every CommandComplete / EmptyQueryResponse / PortalSuspended, `failed()` for every
//!   ErrorResponse, `ready_for_query(status)` for every ReadyForQuery.
//!
//! Statements sent but not yet answered are applied to a projection, so a statement pipelined after a SET
//! is rewritten with the version the SET will have set; the server's answers then confirm or undo them.

pub mod startup;
pub mod statement;
pub mod txstack;

use std::collections::VecDeque;

pub use crate::config::VersionDefaults;
use crate::result_set::ControlResponse;
use crate::sql_error::{codes, SqlError};
use dualwrite_rules::{MigrationRoute, Phase, Route, RuleSet, Side, UnsafeSchema};

use crate::state::{MigrationState, StateSnapshot};
pub use startup::{startup_version, VERSION_GUC};
pub use statement::{classify_query, classify_statement, SessionStatement, Setting};
use txstack::TxStack;

/// Is `version` one of the version names in the rules?
pub fn knows_version(rules: &RuleSet, version: &str) -> bool {
    rules.migrations.iter().any(|m| m.versions.old == version || m.versions.new == version)
}

/// Every version name in the rules, sorted, without duplicates (for error details).
pub fn version_names(rules: &RuleSet) -> Vec<&str> {
    let mut names: Vec<&str> =
        rules.migrations.iter().flat_map(|m| [m.versions.old.as_str(), m.versions.new.as_str()]).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// 22023 unless `version` is a version in the rules.
pub fn validate_version(rules: &RuleSet, version: &str) -> Result<(), SqlError> {
    if knows_version(rules, version) {
        return Ok(());
    }
    Err(SqlError::new(
        codes::INVALID_PARAMETER_VALUE,
        format!("invalid value for parameter \"{VERSION_GUC}\": \"{version}\""),
    )
    .with_detail(format!("Known versions: {}.", version_names(rules).join(", "))))
}

impl VersionDefaults {
    /// Every configured default must name a known version.
    pub fn validate(&self, rules: &RuleSet) -> Result<(), String> {
        for (kind, map) in [("role", &self.roles), ("application_name", &self.applications)] {
            for (key, version) in map {
                if !knows_version(rules, version) {
                    return Err(format!(
                        "default version \"{version}\" for {kind} \"{key}\" is not a version in the rules ({})",
                        version_names(rules).join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where a session's version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    Set,
    Startup,
    Role,
    Application,
    /// No version anywhere: each migration uses its old version.
    MigrationDefault,
}

enum Pending {
    Statement(SessionStatement),
    Sync,
}

/// One session's `dualwrite.version`.
pub struct SessionVersion {
    /// The startup / role / application default, already validated.
    fallback: Option<(String, VersionSource)>,
    /// What the server has confirmed.
    confirmed: TxStack,
    /// Sent, not yet answered.
    pending: VecDeque<Pending>,
    /// `confirmed` with `pending` applied: what the next statement will run under.
    projected: TxStack,
}

impl SessionVersion {
    /// A new session. `startup_params` are the startup packet's parameters; an unknown version there is a
    /// 22023 (the session should be refused with it rather than run under a version that does not exist).
    pub fn new<'a>(
        startup_params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
        defaults: &VersionDefaults,
        rules: &RuleSet,
    ) -> Result<Self, SqlError> {
        let lookup =
            |name: &str| startup_params.clone().into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        let fallback = if let Some(v) = startup_version(startup_params.clone()) {
            validate_version(rules, &v)?;
            Some((v, VersionSource::Startup))
        } else if let Some(v) = lookup("user").and_then(|role| defaults.roles.get(role)) {
            Some((v.clone(), VersionSource::Role))
        } else {
            lookup("application_name")
                .and_then(|app| defaults.applications.get(app))
                .map(|v| (v.clone(), VersionSource::Application))
        };
        Ok(SessionVersion {
            fallback,
            confirmed: TxStack::default(),
            pending: VecDeque::new(),
            projected: TxStack::default(),
        })
    }

    /// Check a statement before it is sent: a SET naming an unknown version is a 22023 and must not be sent
    /// (nothing changes).
    pub fn check(statement: &SessionStatement, rules: &RuleSet) -> Result<(), SqlError> {
        match statement {
            SessionStatement::Set { setting: Setting::Value(v), .. } => validate_version(rules, v),
            _ => Ok(()),
        }
    }

    pub fn sent(&mut self, statement: SessionStatement) {
        self.projected.apply(&statement);
        self.pending.push_back(Pending::Statement(statement));
    }

    pub fn sent_sync(&mut self) {
        self.projected.end_of_batch();
        self.pending.push_back(Pending::Sync);
    }

    /// The oldest unanswered statement completed.
    pub fn completed(&mut self) {
        if let Some(Pending::Statement(_)) = self.pending.front() {
            if let Some(Pending::Statement(s)) = self.pending.pop_front() {
                self.confirmed.apply(&s);
            }
        }
    }

    /// The server reported an error: the rest of the batch is skipped and its transaction aborted.
    pub fn failed(&mut self) {
        self.confirmed.error();
        while let Some(Pending::Statement(_)) = self.pending.front() {
            self.pending.pop_front();
        }
        self.reproject();
    }

    /// ReadyForQuery with transaction status `I`, `T` or `E`.
    pub fn ready_for_query(&mut self, status: u8) {
        while let Some(p) = self.pending.pop_front() {
            if let Pending::Sync = p {
                break;
            }
        }
        self.confirmed.end_of_batch();
        self.confirmed.ready_for_query(status);
        self.reproject();
    }

    fn reproject(&mut self) {
        let mut projected = self.confirmed.clone();
        for p in &self.pending {
            match p {
                Pending::Statement(s) => projected.apply(s),
                Pending::Sync => projected.end_of_batch(),
            }
        }
        self.projected = projected;
    }

    /// The session's version now, or `None` when each migration's default (old version) applies.
    pub fn version(&self) -> Option<&str> {
        self.resolved().map(|(v, _)| v)
    }

    pub fn source(&self) -> VersionSource {
        self.resolved().map(|(_, s)| s).unwrap_or(VersionSource::MigrationDefault)
    }

    fn resolved(&self) -> Option<(&str, VersionSource)> {
        match self.projected.current() {
            Setting::Value(v) => Some((v.as_str(), VersionSource::Set)),
            Setting::Default => self.fallback.as_ref().map(|(v, s)| (v.as_str(), *s)),
        }
    }

    /// The current transaction is aborted (a SHOW answered by the proxy must then fail with 25P02).
    pub fn transaction_aborted(&self) -> bool {
        self.projected.aborted()
    }

    /// What `SHOW dualwrite.version` answers: the version, else the old version every migration shares,
    /// else an empty string.
    pub fn show_value(&self, rules: &RuleSet) -> String {
        if let Some(v) = self.version() {
            return v.to_string();
        }
        let mut olds = rules.migrations.iter().map(|m| m.versions.old.as_str());
        match olds.next() {
            Some(first) if olds.all(|o| o == first) => first.to_string(),
            _ => String::new(),
        }
    }

    /// The answer to `SHOW dualwrite.version` when the proxy answers it itself (Postgres would not know a
    /// version that comes from the config's defaults, and errors for a setting never SET): one `text`
    /// column named `dualwrite.version`, tag `SHOW`; 25P02 inside an aborted transaction, like Postgres.
    pub fn show_response(&self, rules: &RuleSet) -> Result<ControlResponse, SqlError> {
        if self.transaction_aborted() {
            return Err(SqlError::new(
                codes::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        Ok(ControlResponse {
            columns: vec![VERSION_GUC.to_string()],
            rows: vec![vec![Some(self.show_value(rules))]],
            tag: "SHOW".to_string(),
        })
    }

    /// The route for the next statement: the session's shape per migration, with reads following the admin
    /// routing (read_source for `read_percent`% of sessions, chosen by a stable hash of `session_id` so a
    /// session stays on one side while the percentage holds) and each migration's phase.
    pub fn route(&self, rules: &RuleSet, state: &StateSnapshot, session_id: u64) -> Route {
        let version = self.version();
        let bucket = session_bucket(session_id);
        let backfill_pending: Vec<usize> = rules
            .migrations
            .iter()
            .enumerate()
            .filter(|(_, m)| !backfill_done(state, &m.name))
            .map(|(index, _)| index)
            .collect();
        let per_migration = rules
            .migrations
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let side_of = |v: &str| {
                    if v == m.versions.new {
                        Some(Side::New)
                    } else if v == m.versions.old {
                        Some(Side::Old)
                    } else {
                        None
                    }
                };
                let shape = version.and_then(side_of).unwrap_or(Side::Old);
                let row = state.migration(&m.name);
                let phase = row.map(|r| r.phase).unwrap_or(m.initial_phase);
                let routed = row
                    .filter(|r| u32::from(bucket) < u32::from(r.read_percent))
                    .and_then(|r| r.read_source.as_deref())
                    .and_then(side_of);
                // Until the backfill has finished the shadow lacks the rows not copied yet: every read is
                // served by the old table, in the session's shape, whatever the routing says.
                let read_source = match phase {
                    Phase::Complete => Side::New,
                    Phase::DualWrite if backfill_pending.contains(&index) => Side::Old,
                    _ => routed.unwrap_or(shape),
                };
                MigrationRoute { phase, version: shape, read_source }
            })
            .collect();
        // A schema the schema watch found unsafe for dual writes refuses the migration's writes.
        let unsafe_schema = rules
            .migrations
            .iter()
            .enumerate()
            .filter_map(|(migration, m)| {
                let finding = state.migration(&m.name)?.unsafe_for_writes()?;
                Some(UnsafeSchema { migration, finding })
            })
            .collect();
        Route { per_migration, backfill_pending, unsafe_schema, ..Route::default() }
    }
}

/// Whether migration `name`'s backfill has copied every row (state `done`).
fn backfill_done(state: &StateSnapshot, name: &str) -> bool {
    state.migration(name).is_some_and(MigrationState::backfill_done)
}

/// A session's fixed bucket in 0..100 for percentage routing (FNV-1a then a splitmix64 finalizer, so
/// consecutive session ids spread evenly; stable across builds, unlike std's hasher).
pub fn session_bucket(session_id: u64) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session_id.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % 100) as u8
}

#[cfg(test)]
mod tests;
