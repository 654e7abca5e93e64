//! The plan's round-trip check, evaluated by Postgres on real rows inside one transaction that is always
//! rolled back: a sample of the old table is copied aside, the shadow is created from the plan's DDL (its
//! table, indexes built plainly, CHECK constraints; foreign keys are left out, so no other table is locked), the
//! sample is written into it through the forward mapping, then back into an unconstrained copy of the old
//! table's columns through the backward mapping, and every old column is compared with the original (as
//! text, so types without an equality operator compare too). A mapping that fails, a column that comes
//! back different, or a row that does not come back at all refuses the plan, naming the column.

use dualwrite_rules::migration_plan::{DdlStep, MigrationPlan};
use dualwrite_rules::quote_ident;
use tokio_postgres::{Client, Transaction};

use crate::check::schema::{db_message as describe, show};

/// What the round trip found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundTrip {
    /// Every sampled row came back the same.
    Clean { rows: i64 },
    /// The old table has no rows: nothing to check.
    NoRows,
    /// Refused: `column` (an old column, or the shadow column a mapping failed for) is at fault.
    Refused { column: Option<String>, reason: String },
}

const SAMPLE: &str = "__dw_plan_sample";
const RETURNED: &str = "__dw_plan_returned";
const PROBE: &str = "__dw_plan_probe";

/// Runs the check on up to `sample` rows of the plan's old table.
pub async fn check(client: &mut Client, plan: &MigrationPlan, sample: i64) -> anyhow::Result<RoundTrip> {
    let tx = client.transaction().await?;
    // Rolled back however it ends (dropping the transaction rolls back).
    let outcome = run(&tx, plan, sample).await;
    tx.rollback().await?;
    outcome
}

async fn run(tx: &Transaction<'_>, plan: &MigrationPlan, sample: i64) -> anyhow::Result<RoundTrip> {
    let m = &plan.migration;
    let (old, shadow) = (&m.table, &m.shadow);
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    tx.batch_execute(&format!("CREATE TEMP TABLE {SAMPLE} AS SELECT * FROM {old} LIMIT {}", sample.max(0))).await?;
    let rows: i64 = tx.query_one(&format!("SELECT count(*) FROM {SAMPLE}"), &[]).await?.get(0);
    if rows == 0 {
        return Ok(RoundTrip::NoRows);
    }
    for sql in plan.ddl.iter().filter_map(DdlStep::in_transaction) {
        if let Err(error) = tx.batch_execute(&sql).await {
            return Ok(refused(None, format!("the shadow's DDL fails: {}: {sql}", describe(&error))));
        }
    }

    let forward_columns: Vec<&(String, String)> = m.forward.iter().collect();
    let insert_forward = |target: &str, mapping: &[&(String, String)]| {
        format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {SAMPLE}",
            mapping.iter().map(|(c, _)| quote_ident(c)).collect::<Vec<_>>().join(", "),
            mapping.iter().map(|(_, e)| format!("({e})")).collect::<Vec<_>>().join(", "),
        )
    };
    if let Err(error) = in_savepoint(tx, &insert_forward(&shadow.to_string(), &forward_columns)).await {
        let probe = format!("CREATE TEMP TABLE {PROBE} AS SELECT * FROM {shadow} WITH NO DATA");
        let column = first_failing(tx, &probe, &forward_columns, |one| insert_forward(PROBE, one))
            .await?
            .or_else(|| error.as_db_error().and_then(|db| db.column()).map(str::to_owned));
        return Ok(refused(column.clone(), forward_failure(column.as_deref(), &error)));
    }

    let backward_columns: Vec<&(String, String)> = m.backward.iter().collect();
    tx.batch_execute(&format!("CREATE TEMP TABLE {RETURNED} AS SELECT * FROM {old} WITH NO DATA")).await?;
    let insert_backward = |mapping: &[&(String, String)]| {
        format!(
            "INSERT INTO {RETURNED} ({}) SELECT {} FROM {shadow}",
            mapping.iter().map(|(c, _)| quote_ident(c)).collect::<Vec<_>>().join(", "),
            mapping.iter().map(|(_, e)| format!("({e})")).collect::<Vec<_>>().join(", "),
        )
    };
    if let Err(error) = in_savepoint(tx, &insert_backward(&backward_columns)).await {
        let column = first_failing(tx, "", &backward_columns, |one| insert_backward(one)).await?;
        return Ok(refused(
            column.clone(),
            format!("the backward mapping fails on sampled rows: {}", describe(&error)),
        ));
    }
    compare(tx, plan, rows).await
}

/// Compares each sampled row with the row that came back, column by column.
async fn compare(tx: &Transaction<'_>, plan: &MigrationPlan, rows: i64) -> anyhow::Result<RoundTrip> {
    let m = &plan.migration;
    let columns: Vec<String> = tx
        .query(
            &format!("SELECT attname::text FROM pg_attribute WHERE attrelid = '{SAMPLE}'::regclass AND attnum > 0 ORDER BY attnum"),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let join = m.key.iter().map(|k| format!("s.{0} = r.{0}", quote_ident(k))).collect::<Vec<_>>().join(" AND ");
    let differs =
        columns.iter().map(|c| format!("s.{0}::text IS DISTINCT FROM r.{0}::text", quote_ident(c))).collect::<Vec<_>>();
    let texts = |alias: &str| {
        columns.iter().map(|c| format!("{alias}.{}::text", quote_ident(c))).collect::<Vec<_>>().join(", ")
    };
    let sql = format!(
        "SELECT r.{first_key} IS NOT NULL, ARRAY[{differs}], ARRAY[{before}], ARRAY[{after}]
           FROM {SAMPLE} s LEFT JOIN {RETURNED} r ON {join}
          WHERE r.{first_key} IS NULL OR {any}",
        first_key = quote_ident(&m.key[0]),
        differs = differs.join(", "),
        before = texts("s"),
        after = texts("r"),
        any = differs.join(" OR "),
    );
    let found = tx.query(&sql, &[]).await?;
    if found.is_empty() {
        return Ok(RoundTrip::Clean { rows });
    }
    let key_of = |before: &[Option<String>]| {
        m.key
            .iter()
            .filter_map(|k| columns.iter().position(|c| c == k).map(|i| format!("{k}={}", show(&before[i]))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut counts: Vec<(usize, usize)> = Vec::new();
    let mut examples: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    for row in &found {
        let came_back: bool = row.get(0);
        let flags: Vec<bool> = row.get(1);
        let before: Vec<Option<String>> = row.get(2);
        let after: Vec<Option<String>> = row.get(3);
        if !came_back {
            missing.push(key_of(&before));
            continue;
        }
        for (i, _) in flags.iter().enumerate().filter(|(_, d)| **d) {
            match counts.iter_mut().find(|(c, _)| *c == i) {
                Some((_, n)) => *n += 1,
                None => counts.push((i, 1)),
            }
            if examples.len() < 3 {
                examples.push(format!(
                    "[{}] {}: {} -> {}",
                    key_of(&before),
                    columns[i],
                    show(&before[i]),
                    show(&after[i])
                ));
            }
        }
    }
    if let Some((first, _)) = counts.first() {
        let summary =
            counts.iter().map(|(c, n)| format!("{} ({n} row(s))", columns[*c])).collect::<Vec<_>>().join(", ");
        return Ok(refused(
            Some(columns[*first].clone()),
            format!(
                "the mappings do not round-trip: of {rows} sampled row(s), forward then backward changes {summary}; \
                 e.g. {} (a lossy type change, or a split/merge whose inverse does not give the value back)",
                examples.join("; ")
            ),
        ));
    }
    Ok(refused(
        Some(m.key.join(", ")),
        format!(
            "{} of {rows} sampled row(s) do not come back under the same key through forward then backward, e.g. [{}]",
            missing.len(),
            missing.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ),
    ))
}

/// Runs `sql` inside a savepoint, rolled back to on error so the transaction stays usable.
async fn in_savepoint(tx: &Transaction<'_>, sql: &str) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT __dw_plan").await?;
    match tx.batch_execute(sql).await {
        Ok(()) => tx.batch_execute("RELEASE SAVEPOINT __dw_plan").await,
        Err(error) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT __dw_plan").await?;
            Err(error)
        }
    }
}

/// The first mapped column whose expression alone fails to evaluate or to be assigned, tried one at a time
/// against an unconstrained copy (`setup` creates it when non-empty).
async fn first_failing(
    tx: &Transaction<'_>,
    setup: &str,
    mapping: &[&(String, String)],
    insert_one: impl Fn(&[&(String, String)]) -> String,
) -> anyhow::Result<Option<String>> {
    if !setup.is_empty() {
        tx.batch_execute(setup).await?;
    }
    for pair in mapping {
        tx.batch_execute("SAVEPOINT __dw_probe").await?;
        let failed = tx.batch_execute(&insert_one(&[pair])).await.is_err();
        tx.batch_execute("ROLLBACK TO SAVEPOINT __dw_probe").await?;
        if failed {
            return Ok(Some(pair.0.clone()));
        }
    }
    Ok(None)
}

fn forward_failure(column: Option<&str>, error: &tokio_postgres::Error) -> String {
    let constraint = error.as_db_error().and_then(|db| db.constraint()).map(|c| format!(" (constraint {c})"));
    match column {
        Some(_) => format!("the forward mapping fails on sampled rows: {}", describe(error)),
        None => format!(
            "sampled rows mapped forward do not fit the shadow{}: {}",
            constraint.unwrap_or_default(),
            describe(error)
        ),
    }
}

fn refused(column: Option<String>, reason: String) -> RoundTrip {
    RoundTrip::Refused { column, reason }
}
