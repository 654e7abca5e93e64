//! Running a parsed control command for one client: the admin check (42501 for everyone else), the state
//! change through `StateHandle`, and the answer as a `ControlResponse` the session sends as RowDescription
//! and DataRows and CommandComplete (every column is `text`, so the text and binary formats carry the same
//! bytes). BACKFILL and VERIFY are dispatched to a `JobDispatch` (helper "jobs"); without one they answer
//! with 0A000.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::grammar::{BackfillAction, ControlCommand, ReadTarget};
use crate::result_set::{result_set, ControlResponse};
use crate::shadow::ShadowCounts;
use crate::sql_error::{codes, SqlError};
use crate::state::audit_chain::ChainCheck;
use crate::state::store::{AuditEntry, PhaseChange};
use crate::state::{Actor, MigrationState, StateHandle};

/// The backfill/verify jobs as seen by control SQL (`control::jobs_bridge` implements it over
/// `jobs::JobRunner`). Each successful command is audited by `execute`.
pub trait JobDispatch: Send + Sync {
    /// START / PAUSE / RESUME a backfill; answers with the backfill's state.
    fn backfill<'a>(
        &'a self,
        migration: &'a str,
        action: BackfillAction,
        batch: Option<u32>,
        rate: Option<u32>,
        actor: &'a Actor,
    ) -> BoxFuture<'a, Result<ControlResponse, SqlError>>;

    /// Compare the two tables (and repair if asked); returns when done, with the counts it found.
    fn verify<'a>(
        &'a self,
        migration: &'a str,
        repair: bool,
        actor: &'a Actor,
    ) -> BoxFuture<'a, Result<ControlResponse, SqlError>>;
}

/// What control execution needs besides the command.
#[derive(Clone)]
pub struct ControlContext {
    pub state: StateHandle,
    /// Roles allowed to run control SQL.
    pub admin_roles: Arc<Vec<String>>,
    pub jobs: Option<Arc<dyn JobDispatch>>,
    /// This instance's shadow-read counters (`None`: no migration samples reads), shown by STATUS.
    pub shadow: Option<Arc<ShadowCounts>>,
    /// The server-connection pools of the session's server, shown by POOLS.
    pub pools: Option<crate::pool::PoolView>,
}

impl ControlContext {
    pub fn is_admin(&self, role: &str) -> bool {
        self.admin_roles.iter().any(|r| r == role)
    }
}

/// Run `command` for `actor` (the session's role and client address).
pub async fn execute(
    ctx: &ControlContext,
    command: &ControlCommand,
    actor: &Actor,
) -> Result<ControlResponse, SqlError> {
    if !ctx.is_admin(&actor.role) {
        return Err(SqlError::new(
            codes::INSUFFICIENT_PRIVILEGE,
            format!("permission denied for DUALWRITE {}", command.verb()),
        )
        .with_hint("Control commands are reserved to the proxy's admin roles (--admin-role)."));
    }
    let state_err = |e: crate::state::StateError| e.to_sql_error();
    match command {
        ControlCommand::Status => {
            let snapshot = ctx.state.refresh().await.map_err(state_err)?;
            let mut response = status_response(snapshot.migrations.values(), ctx.shadow.as_deref());
            crate::cdc::status::add_status_columns(&mut response, ctx.state.pg_target()).await;
            Ok(response)
        }
        ControlCommand::Route { migration, target, percent } => {
            let version = match target {
                ReadTarget::Version(v) => Some(v.as_str()),
                ReadTarget::SessionVersion => None,
            };
            let change = ctx.state.route_reads(migration, version, *percent, actor).await.map_err(state_err)?;
            let waits = ctx.state.snapshot().migration(&change.migration).is_some_and(|m| m.reads_wait_for_backfill());
            Ok(result_set(
                &["migration", "read_source", "read_percent", "takes_effect"],
                vec![vec![
                    Some(change.migration),
                    Some(change.read_source.unwrap_or_else(|| "session version".to_string())),
                    Some(change.read_percent.to_string()),
                    Some(if waits { "when the backfill is done" } else { "now" }.to_string()),
                ]],
            ))
        }
        ControlCommand::Phase { migration, phase, force } => {
            let change = ctx.state.change_phase(migration, *phase, *force, actor).await.map_err(state_err)?;
            Ok(phase_response(change))
        }
        ControlCommand::Rollback { migration } => {
            let change = ctx.state.rollback(migration, actor).await.map_err(state_err)?;
            Ok(phase_response(change))
        }
        ControlCommand::Audit { migration, limit } => {
            let entries = ctx.state.audit(migration.as_deref(), *limit).await.map_err(state_err)?;
            Ok(audit_response(entries))
        }
        ControlCommand::Pools => {
            let stats = ctx.pools.as_ref().map(|p| p.stats()).unwrap_or_default();
            Ok(pools_response(&stats))
        }
        ControlCommand::AuditVerify => {
            let check = ctx.state.verify_audit().await.map_err(state_err)?;
            Ok(audit_verify_response(check))
        }
        ControlCommand::Backfill { migration, action, batch, rate } => {
            check_migration(ctx, migration)?;
            let jobs = ctx.jobs.as_ref().ok_or_else(|| not_available("backfill"))?;
            let response = jobs.backfill(migration, *action, *batch, *rate, actor).await?;
            let details = serde_json::json!({ "batch": batch, "rate": rate, "result": row_json(&response) });
            let action = format!("backfill {}", action.as_str());
            ctx.state.record_action(migration, &action, actor, &details.to_string()).await.map_err(state_err)?;
            Ok(response)
        }
        ControlCommand::Verify { migration, repair } => {
            check_migration(ctx, migration)?;
            let jobs = ctx.jobs.as_ref().ok_or_else(|| not_available("verify"))?;
            let response = jobs.verify(migration, *repair, actor).await?;
            let action = if *repair { "verify repair" } else { "verify" };
            let details = row_json(&response).to_string();
            ctx.state.record_action(migration, action, actor, &details).await.map_err(state_err)?;
            Ok(response)
        }
    }
}

/// The first row of a response as a JSON object (column -> text), for the audit log.
/// One row per pool: who it serves, its size and figures, and the longest current wait.
pub fn pools_response(stats: &[crate::pool::PoolStats]) -> ControlResponse {
    let rows = stats
        .iter()
        .map(|p| {
            let parameters: Vec<String> = p.key.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                p.key.database.clone(),
                p.key.user.clone(),
                "transaction".to_owned(),
                p.size.to_string(),
                p.active.to_string(),
                p.idle.to_string(),
                p.waiting.to_string(),
                p.pinned.to_string(),
                format!("{:.3}", p.max_wait.as_secs_f64()),
                parameters.join(" "),
            ]
            .into_iter()
            .map(Some)
            .collect()
        })
        .collect();
    let columns =
        ["database", "user", "mode", "size", "active", "idle", "waiting", "pinned", "max_wait_seconds", "parameters"];
    result_set(&columns, rows)
}

fn row_json(response: &ControlResponse) -> serde_json::Value {
    let row = response.rows.first().cloned().unwrap_or_default();
    serde_json::Value::Object(
        response
            .columns
            .iter()
            .cloned()
            .zip(row.into_iter().map(|v| v.map_or(serde_json::Value::Null, serde_json::Value::String)))
            .collect(),
    )
}

fn not_available(what: &str) -> SqlError {
    SqlError::new(codes::FEATURE_NOT_SUPPORTED, format!("{what} is not available in this build"))
}

fn check_migration(ctx: &ControlContext, migration: &str) -> Result<(), SqlError> {
    if ctx.state.rules().find(migration).is_some() {
        Ok(())
    } else {
        Err(SqlError::new(codes::UNDEFINED_OBJECT, format!("migration \"{migration}\" does not exist")))
    }
}

/// Columns of `DUALWRITE STATUS`.
pub const STATUS_COLUMNS: &[&str] = &[
    "migration",
    "phase",
    "read_source",
    "read_percent",
    "backfill_state",
    "backfill_rows_done",
    "backfill_rows_total",
    "backfill_progress",
    "last_verify",
    "verify_rows_checked",
    "divergent_rows",
    "shadow_reads_compared",
    "shadow_reads_mismatched",
    "shadow_reads_errors",
    "shadow_reads_skipped",
    "reads_wait_for_backfill",
    "writes_refused",
    "schema_findings",
];

/// One row per migration. Shadow-read figures are this instance's since it started (NULL when no
/// migration samples reads).
pub fn status_response<'a>(
    migrations: impl Iterator<Item = &'a MigrationState>,
    shadow: Option<&ShadowCounts>,
) -> ControlResponse {
    let rows = migrations
        .map(|m| {
            let progress = m.backfill.as_ref().and_then(|b| match (b.state.as_str(), b.rows_total) {
                ("done", _) => Some("100.0%".to_string()),
                (_, Some(total)) if total > 0 => {
                    Some(format!("{:.1}%", (b.rows_done as f64 / total as f64 * 100.0).min(100.0)))
                }
                _ => None,
            });
            let verify = m.last_verify.as_ref().map(|v| match (v.finished, v.clean) {
                (false, _) => "running",
                (true, Some(true)) => "clean",
                (true, Some(false)) => "divergent",
                (true, None) => "unknown",
            });
            let divergent = m.last_verify.as_ref().and_then(|v| {
                let parts = [v.missing, v.extra, v.different];
                parts.iter().any(Option::is_some).then(|| parts.iter().map(|p| p.unwrap_or(0)).sum::<i64>().to_string())
            });
            let figures = shadow.map(|s| s.figures(&m.name));
            let figure = |f: fn(&crate::shadow::ShadowFigures) -> u64| figures.as_ref().map(|x| f(x).to_string());
            vec![
                Some(m.name.clone()),
                Some(m.phase.to_string()),
                Some(m.read_source.clone().unwrap_or_else(|| "session version".to_string())),
                Some(m.read_percent.to_string()),
                Some(m.backfill.as_ref().map(|b| b.state.clone()).unwrap_or_else(|| "idle".to_string())),
                Some(m.backfill.as_ref().map(|b| b.rows_done).unwrap_or(0).to_string()),
                m.backfill.as_ref().and_then(|b| b.rows_total).map(|t| t.to_string()),
                progress,
                Some(verify.unwrap_or("never").to_string()),
                m.last_verify.as_ref().and_then(|v| v.rows_checked).map(|r| r.to_string()),
                divergent,
                figure(|f| f.compared),
                figure(|f| f.mismatched),
                figure(|f| f.errors),
                figure(|f| f.skipped),
                Some(if m.reads_wait_for_backfill() { "t" } else { "f" }.to_string()),
                Some(if m.unsafe_for_writes().is_some() { "t" } else { "f" }.to_string()),
                (!m.schema_findings.is_empty())
                    .then(|| m.schema_findings.iter().map(|f| f.description.as_str()).collect::<Vec<_>>().join("; ")),
            ]
        })
        .collect();
    result_set(STATUS_COLUMNS, rows)
}

fn phase_response(change: PhaseChange) -> ControlResponse {
    let sequences = change.sequences.iter().map(|(seq, value)| format!("{seq}={value}")).collect::<Vec<_>>().join(", ");
    result_set(
        &["migration", "phase_before", "phase", "changed", "sequences_moved"],
        vec![vec![
            Some(change.migration),
            Some(change.before.to_string()),
            Some(change.after.to_string()),
            Some(if change.changed { "t" } else { "f" }.to_string()),
            (!sequences.is_empty()).then_some(sequences),
        ]],
    )
}

fn audit_response(entries: Vec<AuditEntry>) -> ControlResponse {
    let rows = entries
        .into_iter()
        .map(|e| {
            vec![
                Some(e.id.to_string()),
                Some(e.at),
                e.migration,
                Some(e.action),
                e.role,
                e.client_addr,
                e.before,
                e.after,
            ]
        })
        .collect();
    result_set(&["id", "at", "migration", "action", "role", "client_addr", "before", "after"], rows)
}

/// One row: rows checked, intact, and the first broken link (id, the row before it, what is wrong) or
/// NULLs with `problem` saying there is none, and the head hash to keep elsewhere.
fn audit_verify_response(check: ChainCheck) -> ControlResponse {
    let (id, previous, problem) = match check.broken {
        Some(link) => (Some(link.id.to_string()), link.previous_id.map(|p| p.to_string()), link.problem),
        None => (None, None, "none: every row matches its hash and links to the row before it".to_string()),
    };
    result_set(
        &["rows_checked", "intact", "first_broken_id", "previous_id", "problem", "head_hash"],
        vec![vec![
            Some(check.rows.to_string()),
            Some(if id.is_none() { "t" } else { "f" }.to_string()),
            id,
            previous,
            Some(problem),
            Some(check.head_hash),
        ]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot::{BackfillProgress, SchemaFinding, SchemaFindingKind, VerifySummary};
    use dualwrite_rules::Phase;

    #[test]
    fn status_rows_render_progress_and_verify() {
        let mut a = MigrationState::new("a", Phase::DualWrite);
        a.backfill = Some(BackfillProgress { state: "running".into(), rows_done: 25, rows_total: Some(100) });
        a.last_verify = Some(VerifySummary {
            id: 1,
            finished: true,
            clean: Some(false),
            rows_checked: Some(100),
            missing: Some(2),
            extra: Some(1),
            different: None,
        });
        let mut b = MigrationState::new("b", Phase::Cutover);
        b.read_source = Some("v2".into());
        b.read_percent = 40;
        b.schema_findings = vec![
            SchemaFinding { kind: SchemaFindingKind::KeyDefaults, description: "keys".into() },
            SchemaFinding { kind: SchemaFindingKind::UnseenWriters, description: "a trigger".into() },
        ];
        let r = status_response([a, b].iter(), None);
        assert_eq!(r.columns.len(), STATUS_COLUMNS.len());
        assert_eq!(r.tag, "SELECT 2");
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            r.rows[0],
            vec![
                s("a"),
                s("dual_write"),
                s("session version"),
                s("100"),
                s("running"),
                s("25"),
                s("100"),
                s("25.0%"),
                s("divergent"),
                s("100"),
                s("3"),
                None,
                None,
                None,
                None,
                s("t"),
                s("f"),
                None
            ]
        );
        assert_eq!(
            r.rows[1],
            vec![
                s("b"),
                s("cutover"),
                s("v2"),
                s("40"),
                s("idle"),
                s("0"),
                None,
                None,
                s("never"),
                None,
                None,
                None,
                None,
                None,
                None,
                s("f"),
                s("t"),
                s("keys; a trigger")
            ]
        );
    }

    #[test]
    fn phase_response_lists_sequences() {
        let r = phase_response(PhaseChange {
            migration: "m".into(),
            before: Phase::DualWrite,
            after: Phase::Cutover,
            changed: true,
            sequences: vec![("public.users_id_seq".into(), 42)],
        });
        assert_eq!(r.rows[0][4].as_deref(), Some("public.users_id_seq=42"));
        assert_eq!(r.tag, "SELECT 1");
    }
}
