//! The table to migrate as the catalog describes it ([`CurrentTable`]): columns (type, NOT NULL, default;
//! an identity column's sequence as a `nextval` default), primary key, the other indexes' and the CHECK /
//! FOREIGN KEY constraints' definitions, as Postgres prints them; row-level security and each policy as the
//! `CREATE POLICY` that makes it.

use anyhow::Context;
use dualwrite_rules::migration_plan::{CurrentColumn, CurrentTable, RowSecurity};
use dualwrite_rules::TableName;
use sqlparser::ast::Value;
use tokio_postgres::GenericClient;

/// Reads `name` from the catalog; an error when it does not exist.
pub async fn read_table(client: &impl GenericClient, name: &TableName) -> anyhow::Result<CurrentTable> {
    let display = name.to_string();
    let oid: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&display]).await?.get(0);
    let oid = oid.with_context(|| format!("table {display} does not exist"))?;
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '',
                    CASE WHEN a.attidentity <> '' THEN pg_get_serial_sequence($2, a.attname) END
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid, &display],
        )
        .await?;
    let columns = rows
        .iter()
        .map(|row| {
            let generated: bool = row.get(4);
            let identity_sequence: Option<String> = row.get(5);
            // An identity column's shadow twin draws from the same sequence, so keys never collide.
            let default = match identity_sequence {
                Some(sequence) => Some(format!("nextval({}::regclass)", Value::SingleQuotedString(sequence))),
                None if generated => None,
                None => row.get(3),
            };
            CurrentColumn { name: row.get(0), sql_type: row.get(1), not_null: row.get(2), default, generated }
        })
        .collect();
    let primary_key = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND i.indisprimary
              ORDER BY k.position",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1 AND NOT indisprimary
              ORDER BY indexrelid",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let constraints = client
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = $1 AND contype IN ('c', 'f') ORDER BY conname",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let security =
        client.query_one("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1", &[&oid]).await?;
    // Each policy as the CREATE POLICY that makes it (on a placeholder table: the plan names the shadow).
    let policies = client
        .query(
            "SELECT format('CREATE POLICY %I ON __dw_table AS %s FOR %s TO %s', p.polname,
                           CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                           CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                         WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                           CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                                ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname)
                                        FROM pg_roles r WHERE r.oid = ANY (p.polroles)) END)
                    || coalesce(' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')', '')
                    || coalesce(' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')', '')
               FROM pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let row_security = RowSecurity { enabled: security.get(0), forced: security.get(1), policies };
    Ok(CurrentTable { name: name.clone(), columns, primary_key, indexes, constraints, row_security })
}
