//! Tables related to an old table by inheritance (INHERITS, or declarative partitioning), the writers of
//! its rows that the proxy sees under another name.
//!
//! An ancestor's UPDATE or DELETE without ONLY reaches the table's rows, and an INSERT into a partitioned
//! ancestor is routed into the table when it is a partition, each naming the ancestor only. A descendant's
//! rows are the table's rows to every statement without ONLY (reads, the proxy's dual writes, the backfill,
//! the verify), and a write naming the descendant changes them without the shadow.

use dualwrite_rules::quote_ident;
use tokio_postgres::GenericClient;

/// One ancestor or descendant, as the finding `writers` makes of it (`inheritance:<name>`).
pub(super) struct Relative {
    /// `schema.table`, quoted where Postgres needs it.
    pub name: String,
    pub description: String,
    pub remedy: String,
}

/// The ancestors and descendants of the table `oid` (shown as `t`); `or_accept` ends a remedy that the
/// change-data-capture watch can stand behind.
pub(super) async fn relatives(
    client: &impl GenericClient,
    oid: u32,
    t: &str,
    or_accept: &str,
) -> Result<Vec<Relative>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH RECURSIVE ancestors(oid) AS (
                 SELECT inhparent FROM pg_inherits WHERE inhrelid = $1
                 UNION SELECT i.inhparent FROM pg_inherits i JOIN ancestors a ON i.inhrelid = a.oid
             ), descendants(oid) AS (
                 SELECT inhrelid FROM pg_inherits WHERE inhparent = $1
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN descendants d ON i.inhparent = d.oid
             )
             SELECT r.ancestor, n.nspname::text, c.relname::text, c.relkind::text, c.relispartition
               FROM (SELECT oid, true AS ancestor FROM ancestors
                     UNION ALL SELECT oid, false FROM descendants) r
               JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
              ORDER BY 1 DESC, 2, 3",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let ancestor: bool = row.get(0);
            let other = format!("{}.{}", quote_ident(row.get(1)), quote_ident(row.get(2)));
            let partitioned = row.get::<_, String>(3) == "p";
            let is_partition: bool = row.get(4);
            let (description, remedy) = if ancestor {
                let insert = if partitioned { " (and an INSERT into it routes rows into it)" } else { "" };
                (
                    format!(
                        "{t} inherits from {other}: an UPDATE or DELETE of {other} without ONLY writes the rows of {t}{insert} without naming it"
                    ),
                    format!("write {t} by its own name through the proxy (ONLY {other} for the ancestor's own rows), {or_accept}"),
                )
            } else {
                let what = if is_partition { "a partition of" } else { "a table inheriting from" };
                // The publication sends a partition's changes under the partitioned table's name; an
                // inheriting table's go under its own, which the watch does not follow.
                let live_with = if is_partition {
                    or_accept.to_owned()
                } else {
                    format!("or detach it (ALTER TABLE {other} NO INHERIT {t}); accepting it leaves its writes unwatched: the change-data-capture watch sees them under {other}'s name")
                };
                (
                    format!(
                        "{other} is {what} {t}: its rows are rows of {t} to every statement without ONLY (reads, dual writes, the backfill, the verify), and a write naming {other} changes them without the shadow"
                    ),
                    format!("write those rows through {t} by its name, {live_with}"),
                )
            };
            Relative { name: other, description, remedy }
        })
        .collect())
}
