//! Whether a migration's tables agree on when two keys are equal. Every dual write upserts on the key, and
//! the backfill, VERIFY and the change-data-capture watch pair rows by it, so each key column must compare
//! alike in the old tables and the shadows. Where one table's equality is coarser (a shadow key of
//! `citext`, or `text` under a case-insensitive collation, beside an old `text` key; `char(n)`, which
//! ignores trailing spaces, beside `text`), two rows the other table keeps apart have one key there: the
//! backfill drops one, and a write of one upserts onto the other, overwriting it.
//!
//! Agreeing types: the same type (a domain counts as its base type), any two of `smallint`, `integer` and
//! `bigint` (one equality over the values they share; a value out of range fails its cast, it is not
//! folded), or `text` and `character varying`; for a collatable type, the same collation as well.
//! Registration refuses a migration whose key columns disagree, and so does `dualwrite check`.

use dualwrite_rules::{Migration, TableName};
use tokio_postgres::GenericClient;

/// One table's key column, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyColumn {
    table: String,
    /// The type (a domain's base type), as `format_type` prints it without a modifier.
    data_type: String,
    /// The collation, empty when the type is not collatable.
    collation: String,
}

/// Each key column of `migration` whose tables disagree on equality, as a sentence with what to do (tables
/// or columns that do not exist are skipped: other checks report them).
pub async fn findings(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tables: Vec<&TableName> = migration.old_tables().into_iter().chain(migration.shadow_tables()).collect();
    let mut found = Vec::new();
    for column in &migration.key {
        let mut columns = Vec::new();
        for table in &tables {
            let row = client
                .query_opt(
                    "SELECT format_type(coalesce(nullif(t.typbasetype, 0), t.oid), NULL),
                            coalesce((SELECT format('%I.%I', n.nspname, c.collname)
                                        FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
                                       WHERE c.oid = a.attcollation), '')
                       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                      WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&table.qualified().to_string(), column],
                )
                .await?;
            if let Some(row) = row {
                columns.push(KeyColumn { table: table.to_string(), data_type: row.get(0), collation: row.get(1) });
            }
        }
        found.extend(judge(column, &columns));
    }
    Ok(found)
}

/// The types whose equality agrees over the values they share.
fn family(data_type: &str) -> &str {
    match data_type {
        "smallint" | "integer" | "bigint" => "integer",
        "text" | "character varying" => "text",
        other => other,
    }
}

fn judge(column: &str, columns: &[KeyColumn]) -> Option<String> {
    let first = columns.first()?;
    let other =
        columns.iter().find(|c| family(&c.data_type) != family(&first.data_type) || c.collation != first.collation)?;
    let describe = |c: &KeyColumn| match c.collation.as_str() {
        "" => format!("{} in {}", c.data_type, c.table),
        collation => format!("{} collate {collation} in {}", c.data_type, c.table),
    };
    Some(format!(
        "key column {column} is {} but {}: the two may not agree on when two keys are equal, so rows one table \
         keeps apart could share a key in the other, and a dual write's upsert on it would overwrite the other \
         row; give the key the same type and collation in every table (integer types of different widths, and \
         text beside varchar, agree)",
        describe(first),
        describe(other)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(table: &str, data_type: &str, collation: &str) -> KeyColumn {
        KeyColumn { table: table.into(), data_type: data_type.into(), collation: collation.into() }
    }

    #[test]
    fn types_that_compare_alike_agree() {
        for (old, new) in [("integer", "bigint"), ("bigint", "smallint"), ("uuid", "uuid")] {
            assert_eq!(judge("id", &[key("a", old, ""), key("b", new, "")]), None, "{old} {new}");
        }
        let text = [key("a", "text", "pg_catalog.default"), key("b", "character varying", "pg_catalog.default")];
        assert_eq!(judge("id", &text), None);
    }

    #[test]
    fn a_coarser_equality_in_any_table_is_found() {
        let citext =
            judge("email", &[key("public.users", "text", "pg_catalog.default"), key("public.users_v2", "citext", "")]);
        let citext = citext.expect("citext beside text");
        assert!(
            citext.starts_with(
                "key column email is text collate pg_catalog.default in public.users but citext in public.users_v2"
            ),
            "{citext}"
        );
        let collation = [key("a", "text", "pg_catalog.default"), key("b", "text", "public.case_insensitive")];
        assert!(judge("email", &collation).is_some());
        assert!(judge("code", &[key("a", "text", "pg_catalog.default"), key("b", "character", "pg_catalog.default")])
            .is_some());
        assert!(judge("id", &[key("a", "integer", ""), key("b", "numeric", "")]).is_some());
        // A merge: the third table disagrees.
        assert!(judge(
            "id",
            &[key("a", "integer", ""), key("b", "bigint", ""), key("c", "text", "pg_catalog.default")]
        )
        .is_some());
    }
}
