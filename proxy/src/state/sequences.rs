//! The cutover sequence bump: on entering `cutover`, each key sequence of a migration's tables moves past
//! the largest key any of them holds.

use dualwrite_rules::{quote_ident, Migration};
use tokio_postgres::Transaction;

use super::StateError;

/// At cutover the shadow becomes the primary for inserts: move every sequence behind a key column's
/// default (serial, identity or a `DEFAULT nextval()`, in any of the tables: the old table or every source
/// of a merge, and every shadow; registration refuses more than one per column, `check::key_defaults`)
/// past the largest key of all of them, so new keys cannot collide with rows copied from another table.
/// Sequences only move forward.
pub(super) async fn bump_past_largest_key(
    tx: &Transaction<'_>,
    m: &Migration,
) -> Result<Vec<(String, i64)>, StateError> {
    let tables: Vec<String> =
        m.old_tables().into_iter().chain(m.shadow_tables()).map(|t| t.qualified().to_string()).collect();
    let mut moved = Vec::new();
    for finding in crate::check::key_defaults::findings(tx, m).await? {
        // Identifiers come from the validated rules and are quoted; this builds a query, it rewrites none.
        let col = quote_ident(finding.column());
        let maxima: Vec<String> = tables.iter().map(|t| format!("(SELECT max({col})::bigint FROM {t})")).collect();
        let max_sql = format!("SELECT greatest({})", maxima.join(", "));
        let max: Option<i64> = tx.query_one(&max_sql, &[]).await?.get(0);
        let Some(max) = max else { continue };
        for seq in finding.sequences() {
            let value: i64 = tx
                .query_one(
                    "SELECT setval($1::text::regclass,
                            greatest($2::bigint, coalesce(pg_sequence_last_value($1::text::regclass), 0), 1))",
                    &[&seq, &max],
                )
                .await?
                .get(0);
            tracing::info!(migration = %m.name, sequence = %seq, value, "sequence moved past the largest key");
            moved.push((seq.to_owned(), value));
        }
    }
    Ok(moved)
}
