//! The schema of the migrations' tables, watched while the proxy runs. Registration (at start, at every
//! rules reload and in `dualwrite apply`) refuses a schema that lets the dual write change the wrong rows or
//! that hides writers ([`refuse_unsafe_rules`]), but the schema can change after that: a default set
//! on a shadow's key, a `present` column's NOT NULL dropped, a trigger created, directly on the database or
//! through DDL the proxy lets pass (it refuses only DDL that breaks the sync statements). The watcher re-runs
//! the same checks (this module's [`safety`] and [`writers`]) on its control connection and publishes what
//! they find in the snapshot, per migration (`MigrationState::schema_findings`): DUALWRITE STATUS shows it
//! (`schema_findings`), `dualwrite_schema_findings{migration,kind}` counts it, it is logged when it
//! appears and when it clears, and the audit log records each change (action `schema_findings`, once
//! whatever the number of instances that see it).
//!
//! A finding that makes the proxy's own dual write change the wrong rows (key defaults that became separate
//! sources, a `present` column that may be NULL) refuses the migration's writes while it keeps both tables
//! in step: the sessions' routes carry it (`Route::unsafe_schema`, 55000), prepared statements are prepared
//! again as the refusal, and writes resume by themselves once a check finds the schema safe again; entering
//! `dual_write` or `cutover` without FORCE is refused meanwhile ([`refuse_entering`]). Unseen
//! writers write behind the proxy whatever it does, so they are reported, not refused: the change-data-capture
//! watch catches what they write. A change is acted on at the first check after it: writes that ran in
//! between are not undone (VERIFY finds what they did), which is why the cheap checks run every second.

use std::collections::BTreeMap;

use dualwrite_rules::{Phase, RuleSet};
use tokio_postgres::Client;

use super::snapshot::{SchemaFinding, SchemaFindingKind, StateSnapshot};
use super::store::{self, Actor};
use super::StateError;
use crate::sql_error::{codes, SqlError};

/// Per migration name, what was found wrong (migrations with nothing found are absent).
pub type SchemaFindings = BTreeMap<String, Vec<SchemaFinding>>;

/// The gauge of findings per migration and kind.
pub const SCHEMA_FINDINGS: &str = "dualwrite_schema_findings";

/// Records in the audit log, as `actor`, the findings of each migration whose last recorded findings
/// differ (`store::record_schema_findings` compares, so every migration can be passed: after a restart the
/// log may still hold findings fixed while no instance ran). Stops at the first error, which it returns.
pub(crate) async fn audit(
    client: &mut Client,
    actor: &Actor,
    rules: &RuleSet,
    findings: &SchemaFindings,
) -> Result<(), StateError> {
    for (migration, findings) in audit_entries(rules, findings) {
        store::record_schema_findings(client, &migration, actor, &findings).await?;
    }
    Ok(())
}

/// Moving a migration into `dual_write` or `cutover` (without FORCE) is refused while the schema watch
/// finds its schema unsafe for dual writes (every write would be refused from then on), or writers of its
/// old tables the proxy cannot see that its rules do not accept (as registration refuses them). (ROLLBACK, `off` and
/// `complete` stay open: they are the ways out; FORCE enters anyway, with writes refused.)
pub(crate) fn refuse_entering(
    snapshot: &StateSnapshot,
    migration: &str,
    phase: Phase,
    force: bool,
) -> Result<(), StateError> {
    if force || !matches!(phase, Phase::DualWrite | Phase::Cutover) {
        return Ok(());
    }
    let Some(state) = snapshot.migration(migration).filter(|s| s.phase != phase) else { return Ok(()) };
    if let Some(findings) = state.refusing_findings() {
        return Err(StateError::Refused(
            SqlError::new(
                codes::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "migration {migration} cannot enter {phase}: the schema of its tables is unsafe for dual writes: \
                     {findings}"
                ),
            )
            .with_hint(
                "Fix the schema first (DUALWRITE STATUS shows it in schema_findings); FORCE enters anyway, with every \
                 write of the migration refused.",
            ),
        ));
    }
    // As registration refuses them: a writer the proxy cannot see is listed before dual writes start.
    let unseen: Vec<&str> = state
        .schema_findings
        .iter()
        .filter(|f| f.kind == SchemaFindingKind::UnseenWriters)
        .map(|f| f.description.as_str())
        .collect();
    if unseen.is_empty() {
        return Ok(());
    }
    Err(StateError::Refused(
        SqlError::new(
            codes::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("migration {migration} cannot enter {phase}: {}", unseen.join("; ")),
        )
        .with_hint(
            "Remove the writers, or list them in accept_unseen_writers and reload; FORCE enters anyway, with their \
             writes caught only by the change-data-capture watch and VERIFY.",
        ),
    ))
}

/// Refuses `rules` that would let the proxy write the wrong rows: a migration's old table with writers the
/// proxy cannot see that the migration does not accept (`accept_unseen_writers`), a merge source whose
/// `present` column may be NULL, a key whose defaults draw from more than one sequence (inserts without
/// a key through different tables would upsert over each other's rows), or a BEFORE row trigger that may
/// assign the key (the sync's upsert would land on another row) and that the rules do not accept; the error
/// lists each with what to do.
pub(crate) async fn refuse_unsafe_rules(client: &Client, rules: &RuleSet) -> Result<(), StateError> {
    let refused = crate::check::writers::unaccepted(client, rules).await?;
    if !refused.is_empty() {
        return Err(crate::check::writers::Refusal(refused).into());
    }
    let mut unsafe_schema = crate::check::schema::nullable_presents(client, rules).await?;
    unsafe_schema.extend(crate::check::key_defaults::refusals(client, rules).await?);
    for migration in &rules.migrations {
        let triggers = crate::check::row_triggers::refusals(client, migration).await?;
        let security = crate::check::row_security::findings(client, migration).await?;
        let equality = crate::check::key_equality::findings(client, migration).await?;
        unsafe_schema.extend(
            triggers
                .into_iter()
                .chain(security)
                .chain(equality)
                .map(|t| format!("migration `{}` cannot be registered: {t}", migration.name)),
        );
    }
    if !unsafe_schema.is_empty() {
        return Err(StateError::UnsafeSchema(unsafe_schema));
    }
    Ok(())
}

/// [`refuse_unsafe_rules`] for the migrations of `rules` that `registered` (the state as loaded before
/// registering) does not hold yet. A registered migration is not refused at an instance's start or at a
/// reload: what is unsafe in its schema is a finding of the schema watch, in force before the first session
/// (`StateHandle::connect`), which refuses that migration's writes and its entering a dual-writing phase
/// while the instance serves everything else; refusing the rules would stop every session of the instance,
/// or block every reload, over one migration's table.
pub(crate) async fn refuse_unsafe_new_migrations(
    client: &Client,
    rules: &RuleSet,
    registered: &StateSnapshot,
) -> Result<(), StateError> {
    let new = rules.migrations.iter().filter(|m| registered.migration(&m.name).is_none()).cloned().collect();
    refuse_unsafe_rules(client, &RuleSet { migrations: new }).await
}

/// The checks that decide whether the migrations' writes may run: each key's defaults and equality, each
/// merge source's `present` column, the BEFORE row triggers of its tables and their row-level security (a
/// few catalog lookups per migration).
pub(crate) async fn safety(client: &Client, rules: &RuleSet) -> Result<SchemaFindings, tokio_postgres::Error> {
    use crate::check::{key_defaults, key_equality, row_security, row_triggers, schema};
    let mut found = SchemaFindings::new();
    for migration in &rules.migrations {
        let separate = key_defaults::separate_sources(client, migration).await?;
        let by_kind = [
            (SchemaFindingKind::KeyDefaults, separate.iter().map(ToString::to_string).collect()),
            (SchemaFindingKind::KeyEquality, key_equality::findings(client, migration).await?),
            (SchemaFindingKind::NullablePresent, schema::nullable_presents_of(client, migration).await?),
            (SchemaFindingKind::KeyTrigger, row_triggers::refusals(client, migration).await?),
            (SchemaFindingKind::RowSecurity, row_security::findings(client, migration).await?),
        ];
        let findings: Vec<SchemaFinding> = by_kind
            .into_iter()
            .flat_map(|(kind, descriptions): (SchemaFindingKind, Vec<String>)| {
                descriptions.into_iter().map(move |description| SchemaFinding { kind, description })
            })
            .collect();
        if !findings.is_empty() {
            found.insert(migration.name.clone(), findings);
        }
    }
    Ok(found)
}

/// Writers of each migration's old tables that the proxy cannot see and its `accept_unseen_writers` does
/// not list (every function body of the database is read: the slower check).
pub(crate) async fn writers(client: &Client, rules: &RuleSet) -> Result<SchemaFindings, tokio_postgres::Error> {
    let mut found = SchemaFindings::new();
    for migration in &rules.migrations {
        let open: Vec<String> = crate::check::writers::find(client, migration)
            .await?
            .into_iter()
            .filter(|w| !migration.accept_unseen_writers.contains(&w.id))
            .map(|w| w.id)
            .collect();
        if !open.is_empty() {
            let description = format!(
                "writers the proxy cannot see write {} and the rules do not accept them: {} (the change-data-capture \
                 watch catches their writes; remove them, or list them in accept_unseen_writers and reload; \
                 `dualwrite check` says what each is)",
                migration.old_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                open.join(", ")
            );
            found.insert(
                migration.name.clone(),
                vec![SchemaFinding { kind: SchemaFindingKind::UnseenWriters, description }],
            );
        }
    }
    Ok(found)
}

/// The findings of both checks, per migration in the order safety then writers.
pub(crate) fn combine(mut safety: SchemaFindings, writers: &SchemaFindings) -> SchemaFindings {
    for (migration, findings) in writers {
        safety.entry(migration.clone()).or_default().extend(findings.iter().cloned());
    }
    safety
}

/// `snapshot` with `findings` put on its migrations (a fresh load from the state tables has none).
pub(crate) fn apply(snapshot: &mut StateSnapshot, findings: &SchemaFindings) {
    for (name, state) in &mut snapshot.migrations {
        state.schema_findings = findings.get(name).cloned().unwrap_or_default();
    }
}

/// Every migration of `rules` with what the audit log records of its findings now (`{"findings": [{"kind",
/// "description"}]}`, empty when none).
pub(crate) fn audit_entries(rules: &RuleSet, after: &SchemaFindings) -> Vec<(String, String)> {
    rules
        .migrations
        .iter()
        .map(|m| {
            let findings: Vec<serde_json::Value> = after
                .get(&m.name)
                .into_iter()
                .flatten()
                .map(|f| serde_json::json!({ "kind": f.kind.as_str(), "description": f.description }))
                .collect();
            (m.name.clone(), serde_json::json!({ "findings": findings }).to_string())
        })
        .collect()
}

/// Sets the gauge of every migration of `rules` and kind (0 where nothing is found), and logs each finding
/// that appeared or cleared since `before`.
pub(crate) fn report(rules: &RuleSet, before: &SchemaFindings, after: &SchemaFindings) {
    // A migration a reload removed: its gauges go back to 0, or an alert would fire for it forever.
    for gone in before.keys().filter(|name| !rules.migrations.iter().any(|m| &m.name == *name)) {
        for kind in SchemaFindingKind::ALL {
            metrics::gauge!(SCHEMA_FINDINGS, "migration" => gone.clone(), "kind" => kind.as_str()).set(0.0);
        }
    }
    for migration in &rules.migrations {
        let now = after.get(&migration.name).map(Vec::as_slice).unwrap_or_default();
        let then = before.get(&migration.name).map(Vec::as_slice).unwrap_or_default();
        for kind in SchemaFindingKind::ALL {
            let count = now.iter().filter(|f| f.kind == kind).count();
            metrics::gauge!(SCHEMA_FINDINGS, "migration" => migration.name.clone(), "kind" => kind.as_str())
                .set(count as f64);
        }
        for finding in now.iter().filter(|f| !then.contains(f)) {
            if finding.kind.refuses_writes() {
                tracing::error!(
                    migration = %migration.name,
                    kind = finding.kind.as_str(),
                    "the schema of the migration's tables became unsafe for dual writes; its writes are refused \
                     while it keeps both tables in step, until the schema is fixed: {}",
                    finding.description
                );
            } else {
                tracing::warn!(migration = %migration.name, kind = finding.kind.as_str(), "{}", finding.description);
            }
        }
        for finding in then.iter().filter(|f| !now.contains(f)) {
            tracing::info!(
                migration = %migration.name,
                kind = finding.kind.as_str(),
                "schema finding cleared: {}",
                finding.description
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MigrationState, Phase};

    fn finding(kind: SchemaFindingKind, description: &str) -> SchemaFinding {
        SchemaFinding { kind, description: description.into() }
    }

    #[test]
    fn findings_of_both_checks_are_combined_per_migration_and_put_on_the_snapshot() {
        let safety = SchemaFindings::from([("a".into(), vec![finding(SchemaFindingKind::KeyDefaults, "keys")])]);
        let writers = SchemaFindings::from([
            ("a".into(), vec![finding(SchemaFindingKind::UnseenWriters, "a trigger")]),
            ("b".into(), vec![finding(SchemaFindingKind::UnseenWriters, "a rule")]),
        ]);
        let all = combine(safety, &writers);
        assert_eq!(all["a"].iter().map(|f| f.description.as_str()).collect::<Vec<_>>(), ["keys", "a trigger"]);
        assert_eq!(all["b"].len(), 1);

        let mut snapshot = StateSnapshot::default();
        for (name, phase) in [("a", Phase::DualWrite), ("b", Phase::DualWrite), ("c", Phase::DualWrite)] {
            snapshot.migrations.insert(name.into(), MigrationState::new(name, phase));
        }
        apply(&mut snapshot, &all);
        assert_eq!(snapshot.migrations["a"].unsafe_for_writes().as_deref(), Some("keys"));
        assert_eq!(snapshot.migrations["b"].unsafe_for_writes(), None, "unseen writers are reported only");
        assert_eq!(snapshot.migrations["b"].schema_findings.len(), 1);
        assert!(snapshot.migrations["c"].schema_findings.is_empty());
    }

    #[test]
    fn writes_are_refused_only_while_both_tables_are_kept_in_step() {
        for (phase, refused) in
            [(Phase::Off, false), (Phase::DualWrite, true), (Phase::Cutover, true), (Phase::Complete, false)]
        {
            let mut state = MigrationState::new("a", phase);
            state.schema_findings = vec![
                finding(SchemaFindingKind::KeyDefaults, "keys"),
                finding(SchemaFindingKind::NullablePresent, "present"),
            ];
            let expected = refused.then(|| "keys; present".to_string());
            assert_eq!(state.unsafe_for_writes(), expected, "{phase:?}");
        }
    }
}
