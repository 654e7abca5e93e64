//! Reading and changing the shared state. Every change runs in one transaction that locks the migration's
//! row, checks the phase rules, writes the new row, appends an `audit_log` row (time, role, client address,
//! before and after as jsonb; hash-chained by the schema's trigger, see `audit_chain`) and sends
//! `NOTIFY dualwrite_state, '<migration>'`, delivered at commit.

use dualwrite_rules::{Migration, Phase, RuleSet};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::phase::{check_rollback, check_route, check_transition, Readiness, Transition};
use super::snapshot::{BackfillProgress, MigrationState, StateSnapshot, VerifySummary};
use super::{sequences, StateError, NOTIFY_CHANNEL};
use crate::sql_error::{codes, SqlError};

/// Who asked for a change, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub role: String,
    pub client_addr: Option<String>,
}

/// The result of a PHASE or ROLLBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseChange {
    pub migration: String,
    pub before: Phase,
    pub after: Phase,
    /// False when the migration already was in the requested phase (nothing written, nothing audited).
    pub changed: bool,
    /// Sequences moved at cutover, with the value they were set to.
    pub sequences: Vec<(String, i64)>,
}

/// The result of a ROUTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub migration: String,
    pub read_source: Option<String>,
    pub read_percent: u8,
}

/// One `audit_log` row, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub migration: Option<String>,
    pub action: String,
    pub role: Option<String>,
    pub client_addr: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The whole state as one snapshot.
pub async fn load(client: &impl GenericClient) -> Result<StateSnapshot, StateError> {
    let rows = client
        .query(
            "SELECT m.name, m.phase, m.read_source, m.read_percent,
                    b.state, b.rows_done, b.rows_total,
                    v.id, v.finished_at IS NOT NULL, v.clean, v.rows_checked, v.missing, v.extra, v.different
             FROM dualwrite.migrations m
             LEFT JOIN dualwrite.backfill b ON b.migration = m.name
             LEFT JOIN LATERAL (SELECT * FROM dualwrite.verify_runs r WHERE r.migration = m.name
                                ORDER BY r.id DESC LIMIT 1) v ON true
             ORDER BY m.name",
            &[],
        )
        .await?;
    let mut snapshot = StateSnapshot::default();
    for row in rows {
        let name: String = row.get(0);
        let phase_text: String = row.get(1);
        let phase = phase_text.parse::<Phase>().map_err(|e| StateError::Corrupt(format!("migration {name}: {e}")))?;
        let percent: i32 = row.get(3);
        let backfill = row.get::<_, Option<String>>(4).map(|state| BackfillProgress {
            state,
            rows_done: row.get(5),
            rows_total: row.get(6),
        });
        let last_verify = row.get::<_, Option<i64>>(7).map(|id| VerifySummary {
            id,
            finished: row.get(8),
            clean: row.get(9),
            rows_checked: row.get(10),
            missing: row.get(11),
            extra: row.get(12),
            different: row.get(13),
        });
        let state = MigrationState {
            name: name.clone(),
            phase,
            read_source: row.get(2),
            read_percent: percent.clamp(0, 100) as u8,
            backfill,
            last_verify,
            schema_findings: Vec::new(),
        };
        snapshot.migrations.insert(name, state);
    }
    Ok(snapshot)
}

/// Insert every migration of the rules that the state does not hold yet, in its initial phase (audited as
/// `register` by `actor`).
pub async fn register_migrations(client: &mut Client, rules: &RuleSet, actor: &Actor) -> Result<(), StateError> {
    let tx = client.transaction().await?;
    let mut registered = Vec::new();
    let mut redefined = Vec::new();
    let mut refused = Vec::new();
    for m in &rules.migrations {
        if let Some(after) = insert_if_absent(&tx, &m.name, m.initial_phase).await? {
            tracing::info!(migration = %m.name, phase = %m.initial_phase, "registered migration");
            registered.push((m, after));
        }
        match record_definition(&tx, m).await? {
            Definition::Same => {}
            Definition::Replaced { before, after } => redefined.push((m, before, after)),
            Definition::Refused(reason) => refused.push(reason),
        }
    }
    if !refused.is_empty() {
        return Err(StateError::Refused(SqlError::new(codes::OBJECT_NOT_IN_PREREQUISITE_STATE, refused.join("\n"))));
    }
    // Audit rows last: an append holds the chain head's row lock to the commit, so taking it before
    // another row lock could deadlock with a change that holds that row and waits for the head.
    for (m, after) in registered {
        audit(&tx, &m.name, "register", actor, None, Some(&after)).await?;
        notify(&tx, &m.name).await?;
    }
    for (m, before, after) in redefined {
        tracing::info!(migration = %m.name, "the migration's definition changed while it was off");
        audit(&tx, &m.name, "redefine", actor, Some(&before), Some(&after)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// How the rules' definition of a migration compares with the recorded one.
enum Definition {
    /// The same, or recorded now for the first time.
    Same,
    /// Different while the migration is off: the rules' replaced it (both as jsonb text, for the audit).
    Replaced { before: String, after: String },
    /// Different outside `off`: the reason, with what to do.
    Refused(String),
}

/// Records `m`'s definition (`check::definition`) unless one is recorded, and compares it with the
/// recorded one under the migration's row lock.
async fn record_definition(tx: &Transaction<'_>, m: &Migration) -> Result<Definition, StateError> {
    let now = crate::check::definition::definition(m);
    let phase: String =
        tx.query_one("SELECT phase FROM dualwrite.migrations WHERE name = $1 FOR UPDATE", &[&m.name]).await?.get(0);
    let phase: Phase = phase.parse().map_err(StateError::Corrupt)?;
    // A statement of its own, after the lock: its snapshot sees what an instance registering at the same
    // moment recorded before it let go of the row.
    let recorded: Option<String> = tx
        .query_opt("SELECT definition::text FROM dualwrite.migration_definitions WHERE migration = $1", &[&m.name])
        .await?
        .map(|row| row.get(0));
    let text = now.to_string();
    let Some(recorded) = recorded else {
        tx.execute(
            "INSERT INTO dualwrite.migration_definitions (migration, definition) VALUES ($1, $2::text::jsonb)",
            &[&m.name, &text],
        )
        .await?;
        return Ok(Definition::Same);
    };
    let recorded_value: serde_json::Value =
        serde_json::from_str(&recorded).map_err(|e| StateError::Corrupt(format!("recorded definition: {e}")))?;
    let changed = crate::check::definition::changed_parts(&recorded_value, &now);
    if changed.is_empty() {
        return Ok(Definition::Same);
    }
    if phase != Phase::Off {
        return Ok(Definition::Refused(format!(
            "migration `{}` is in {phase}, and the rules define it differently from when it was registered ({} \
             changed): its shadow holds rows the recorded definition made, and other instances may still run \
             it. To change it, set it off with the rules in force (DUALWRITE PHASE {} off FORCE), load the new \
             rules, then empty the shadow and enter dual_write again (the backfill rebuilds it)",
            m.name,
            changed.join(", "),
            m.name
        )));
    }
    tx.execute(
        "UPDATE dualwrite.migration_definitions SET definition = $2::text::jsonb, recorded_at = now()
          WHERE migration = $1",
        &[&m.name, &text],
    )
    .await?;
    Ok(Definition::Replaced { before: recorded, after: text })
}

/// The inserted row as jsonb text, or `None` when it was already there.
async fn insert_if_absent(tx: &Transaction<'_>, name: &str, phase: Phase) -> Result<Option<String>, StateError> {
    let row = tx
        .query_opt(
            "INSERT INTO dualwrite.migrations AS m (name, phase) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING to_jsonb(m)::text",
            &[&name, &phase.as_str()],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The migration of the rules named `name`, or 42704.
fn rule<'r>(rules: &'r RuleSet, name: &str) -> Result<&'r Migration, StateError> {
    rules.find(name).map(|(_, m)| m).ok_or_else(|| {
        let known: Vec<&str> = rules.migrations.iter().map(|m| m.name.as_str()).collect();
        StateError::Refused(
            SqlError::new(codes::UNDEFINED_OBJECT, format!("migration \"{name}\" does not exist"))
                .with_detail(format!("Migrations in the rules: {}.", known.join(", "))),
        )
    })
}

/// The migration's row, locked for the rest of the transaction.
struct LockedRow {
    phase: Phase,
    read_source: Option<String>,
    read_percent: i32,
    json: String,
}

async fn lock_row(tx: &Transaction<'_>, m: &Migration) -> Result<LockedRow, StateError> {
    insert_if_absent(tx, &m.name, m.initial_phase).await?;
    let row = tx
        .query_one(
            "SELECT phase, read_source, read_percent, to_jsonb(m)::text
             FROM dualwrite.migrations m WHERE name = $1 FOR UPDATE",
            &[&m.name],
        )
        .await?;
    let phase_text: String = row.get(0);
    Ok(LockedRow {
        phase: phase_text.parse().map_err(|e: String| StateError::Corrupt(e))?,
        read_source: row.get(1),
        read_percent: row.get(2),
        json: row.get(3),
    })
}

/// Write the row's new values and return it as jsonb text.
async fn write_row(
    tx: &Transaction<'_>,
    name: &str,
    phase: Phase,
    read_source: Option<&str>,
    read_percent: i32,
) -> Result<String, StateError> {
    let row = tx
        .query_one(
            "UPDATE dualwrite.migrations m SET phase = $2, read_source = $3, read_percent = $4, updated_at = now()
             WHERE name = $1 RETURNING to_jsonb(m)::text",
            &[&name, &phase.as_str(), &read_source, &read_percent],
        )
        .await?;
    Ok(row.get(0))
}

/// Appends an audit row. The schema's trigger gives it its id and chains its hash under the chain head's
/// row lock, held until the transaction ends: call it after the transaction's other locks are taken.
async fn audit(
    tx: &Transaction<'_>,
    migration: &str,
    action: &str,
    actor: &Actor,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO dualwrite.audit_log (migration, action, role, client_addr, before, after)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb)",
        &[&migration, &action, &actor.role, &actor.client_addr, &before, &after],
    )
    .await?;
    Ok(())
}

async fn notify(tx: &Transaction<'_>, migration: &str) -> Result<(), StateError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &migration]).await?;
    Ok(())
}

async fn readiness(tx: &Transaction<'_>, migration: &str) -> Result<Readiness, StateError> {
    let row = tx
        .query_one(
            // Only a verify that started after the backfill finished counts: one from before a migration
            // was turned off and on again compared tables that have drifted since.
            "SELECT coalesce((SELECT state = 'done' FROM dualwrite.backfill WHERE migration = $1), false),
                    coalesce((SELECT finished_at IS NOT NULL AND clean FROM dualwrite.verify_runs
                              WHERE migration = $1
                                AND started_at >= coalesce((SELECT finished_at FROM dualwrite.backfill
                                                             WHERE migration = $1), '-infinity')
                              ORDER BY id DESC LIMIT 1), false)",
            &[&migration],
        )
        .await?;
    Ok(Readiness { backfill_done: row.get(0), last_verify_clean: row.get(1) })
}

/// A migration entering `dual_write` from `off`: writes made while it was off reached the old table alone,
/// so rows the shadow holds (copied before it was turned off, or by a backfill run while off) may be stale,
/// and a backfill copies only the keys the shadow lacks. Without FORCE a shadow holding rows is refused
/// (empty it, then backfill); with FORCE its rows are kept, and the backfill repairs them (as VERIFY
/// REPAIR does) before it counts as done (`repair_kept_rows`). Either way the backfill starts over: until
/// it has finished, v2 writes and reads of the shadow wait, and no verify from before counts for cutover
/// (`readiness`).
async fn leave_off(tx: &Transaction<'_>, m: &Migration, force: bool) -> Result<(), StateError> {
    let mut kept = None;
    for shadow in m.shadow_tables() {
        let table = shadow.qualified().to_string();
        // (A shadow that does not exist holds nothing; the dual write reports it.)
        let found: Option<u32> = tx.query_one("SELECT to_regclass($1)::oid", &[&table]).await?.get(0);
        let holds_rows = match found {
            Some(_) => tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[]).await?.get(0),
            None => false,
        };
        if holds_rows {
            kept = Some(table);
            break;
        }
    }
    if let (Some(table), false) = (&kept, force) {
        return Err(refused(
            &m.name,
            "move to dual_write",
            format!(
                "its shadow {table} holds rows, and writes made while the migration was off reached the old table \
                 alone, so they may be stale (a backfill copies only the keys the shadow lacks); empty it (TRUNCATE \
                 {table}) and backfill after entering dual_write, or add FORCE to keep them: the backfill then \
                 repairs them before it is done"
            ),
        ));
    }
    let reset = match kept {
        // (A backfill row is made if none was: the flag must be there for the backfill to see.)
        Some(_) => {
            "INSERT INTO dualwrite.backfill AS b (migration, state, updated_at, repair_kept_rows)
             VALUES ($1, 'idle', now(), true)
             ON CONFLICT (migration) DO UPDATE SET state = 'idle', last_key = NULL, rows_done = 0,
                    rows_total = NULL, finished_at = NULL, updated_at = now(), repair_kept_rows = true"
        }
        None => {
            "UPDATE dualwrite.backfill SET state = 'idle', last_key = NULL, rows_done = 0, rows_total = NULL,
                    finished_at = NULL, updated_at = now(), repair_kept_rows = false
              WHERE migration = $1"
        }
    };
    tx.execute(reset, &[&m.name]).await?;
    Ok(())
}

fn refused(migration: &str, what: &str, reason: String) -> StateError {
    StateError::Refused(SqlError::new(
        codes::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("cannot {what} migration \"{migration}\": {reason}"),
    ))
}

/// `DUALWRITE PHASE <migration> <phase> [FORCE]`.
pub async fn change_phase(
    client: &mut Client,
    rules: &RuleSet,
    migration: &str,
    to: Phase,
    force: bool,
    actor: &Actor,
) -> Result<PhaseChange, StateError> {
    let m = rule(rules, migration)?;
    if to == Phase::Complete && m.is_split() {
        // After `complete` only new-shape writes are taken, which a split refuses: the table would be read-only.
        return Err(refused(
            &m.name,
            "move to complete",
            "it splits its table into several shadow tables, whose new shape takes no writes through the proxy; \
             it stays in cutover (or rolls back) until its writers move to the targets"
                .into(),
        ));
    }
    if to == Phase::Complete && m.is_merge() {
        // After `complete` the sources are no longer written, and a source's old-shaped write would be
        // retargeted at the merged shadow as if it were the shadow's shape, which it is not.
        return Err(refused(
            &m.name,
            "move to complete",
            "it merges several old tables into one shadow; `complete` would retire the sources while their \
             old-shaped writes have no form on the shadow alone. It stays in cutover (the sources and the shadow \
             kept in step both ways) or rolls back, until its writers have moved to the shadow and the sources \
             are dropped by hand"
                .into(),
        ));
    }
    let tx = client.transaction().await?;
    let row = lock_row(&tx, m).await?;
    let ready = readiness(&tx, &m.name).await?;
    let mut change =
        PhaseChange { migration: m.name.clone(), before: row.phase, after: to, changed: false, sequences: Vec::new() };
    match check_transition(row.phase, to, force, ready) {
        Transition::Unchanged => {
            tx.commit().await?;
            return Ok(change);
        }
        Transition::Refused(reason) => return Err(refused(&m.name, &format!("move to {to}"), reason)),
        Transition::Allowed => {}
    }
    let (read_source, read_percent) = match to {
        // the old table stops being written: every read must come from the new one
        Phase::Complete => (Some(m.versions.new.clone()), 100),
        Phase::Cutover => (row.read_source.clone(), row.read_percent),
        Phase::DualWrite | Phase::Off => (None, 100),
    };
    if to == Phase::Cutover {
        change.sequences = sequences::bump_past_largest_key(&tx, m).await?;
    }
    if row.phase == Phase::Off {
        leave_off(&tx, m, force).await?;
    }
    let after = write_row(&tx, &m.name, to, read_source.as_deref(), read_percent).await?;
    let action = if force { "phase force" } else { "phase" };
    audit(&tx, &m.name, action, actor, Some(&row.json), Some(&after)).await?;
    notify(&tx, &m.name).await?;
    tx.commit().await?;
    change.changed = true;
    tracing::info!(migration = %m.name, from = %row.phase, to = %to, role = %actor.role, "phase changed");
    Ok(change)
}

/// `DUALWRITE ROLLBACK <migration>`: back to dual_write, reads on each session's own version.
pub async fn rollback(
    client: &mut Client,
    rules: &RuleSet,
    migration: &str,
    actor: &Actor,
) -> Result<PhaseChange, StateError> {
    let m = rule(rules, migration)?;
    let tx = client.transaction().await?;
    let row = lock_row(&tx, m).await?;
    if let Transition::Refused(reason) = check_rollback(row.phase) {
        return Err(refused(&m.name, "roll back", reason));
    }
    let after = write_row(&tx, &m.name, Phase::DualWrite, None, 100).await?;
    audit(&tx, &m.name, "rollback", actor, Some(&row.json), Some(&after)).await?;
    notify(&tx, &m.name).await?;
    tx.commit().await?;
    tracing::info!(migration = %m.name, from = %row.phase, role = %actor.role, "rolled back");
    Ok(PhaseChange {
        migration: m.name.clone(),
        before: row.phase,
        after: Phase::DualWrite,
        changed: true,
        sequences: Vec::new(),
    })
}

/// `DUALWRITE ROUTE <migration> READS TO <version|DEFAULT> [PERCENT n]`. `version` None = each session's
/// own version.
pub async fn route_reads(
    client: &mut Client,
    rules: &RuleSet,
    migration: &str,
    version: Option<&str>,
    percent: u8,
    actor: &Actor,
) -> Result<RouteChange, StateError> {
    let m = rule(rules, migration)?;
    if let Some(v) = version {
        if v != m.versions.old && v != m.versions.new {
            return Err(StateError::Refused(
                SqlError::new(
                    codes::INVALID_PARAMETER_VALUE,
                    format!("migration \"{}\" has no version \"{v}\"", m.name),
                )
                .with_detail(format!("Its versions are {} and {}.", m.versions.old, m.versions.new)),
            ));
        }
    }
    let tx = client.transaction().await?;
    let row = lock_row(&tx, m).await?;
    if let Transition::Refused(reason) = check_route(row.phase) {
        return Err(refused(&m.name, "route reads of", reason));
    }
    let percent = if version.is_some() { percent } else { 100 };
    let after = write_row(&tx, &m.name, row.phase, version, i32::from(percent)).await?;
    audit(&tx, &m.name, "route", actor, Some(&row.json), Some(&after)).await?;
    notify(&tx, &m.name).await?;
    tx.commit().await?;
    tracing::info!(migration = %m.name, ?version, percent, role = %actor.role, "reads routed");
    Ok(RouteChange { migration: m.name.clone(), read_source: version.map(str::to_string), read_percent: percent })
}

/// Append an audit row for an action that changed state elsewhere (a backfill command, a verify run):
/// `details` is jsonb text stored as `after`. Announced like every change.
pub async fn record_action(
    client: &mut Client,
    migration: &str,
    action: &str,
    actor: &Actor,
    details: &str,
) -> Result<(), StateError> {
    let tx = client.transaction().await?;
    audit(&tx, migration, action, actor, None, Some(details)).await?;
    notify(&tx, migration).await?;
    tx.commit().await?;
    Ok(())
}

/// Appends a `schema_findings` audit row for `migration` (`after`: what the schema watch finds now, as
/// `{"findings": [...]}`) unless its last such row says the same; no row while nothing was ever found.
/// Every instance watches the same catalog: under the migration's row lock the first to see a change
/// records it and the others find it recorded. Returns whether a row was appended.
pub async fn record_schema_findings(
    client: &mut Client,
    migration: &str,
    actor: &Actor,
    after: &str,
) -> Result<bool, StateError> {
    let tx = client.transaction().await?;
    let locked = tx.query_opt("SELECT 1 FROM dualwrite.migrations WHERE name = $1 FOR UPDATE", &[&migration]).await?;
    if locked.is_none() {
        return Ok(false);
    }
    let recorded: bool = tx
        .query_one(
            "SELECT coalesce((SELECT after FROM dualwrite.audit_log
                               WHERE migration = $1 AND action = 'schema_findings'
                               ORDER BY id DESC LIMIT 1),
                             '{\"findings\": []}'::jsonb) = $2::text::jsonb",
            &[&migration, &after],
        )
        .await?
        .get(0);
    if recorded {
        return Ok(false);
    }
    audit(&tx, migration, "schema_findings", actor, None, Some(after)).await?;
    tx.commit().await?;
    Ok(true)
}

/// Audit rows, oldest first: the last `limit` (all when `None`), of one migration or all.
pub async fn audit_entries(
    client: &impl GenericClient,
    migration: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<AuditEntry>, StateError> {
    let limit = limit.map(i64::from);
    let rows = client
        .query(
            "SELECT id, at::text, migration, action, role, client_addr, before::text, after::text FROM (
                 SELECT * FROM dualwrite.audit_log WHERE $1::text IS NULL OR migration = $1
                 ORDER BY id DESC LIMIT $2) newest
             ORDER BY id",
            &[&migration, &limit],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            at: r.get(1),
            migration: r.get(2),
            action: r.get(3),
            role: r.get(4),
            client_addr: r.get(5),
            before: r.get(6),
            after: r.get(7),
        })
        .collect())
}
