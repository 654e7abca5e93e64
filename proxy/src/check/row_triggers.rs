//! Row triggers that run before a dual write's row lands: a `BEFORE INSERT` or `BEFORE UPDATE` row trigger on
//! a shadow, or on an old table, can change the row after the mapping computed it.
//!
//! The dual write copies what the primary's `RETURNING` gives, so a trigger of the table a statement names is
//! harmless: its result is what the mapping reads. The other table's trigger is not: it runs on the row the
//! mapping wrote (a shadow's on every v1 write, an old table's on every v2 write), so that table then holds
//! something the mapping does not say (VERIFY reports it as different), and a trigger that assigns the key
//! (from a sequence of its own, say) makes the dual write's upsert on the key overwrite an unrelated row.
//! Whether a trigger body touches the key or the mapped columns is not something the catalog tells, and
//! harmless ones are common (`updated_at`), so `dualwrite check` warns, naming each trigger; registration does
//! not refuse.

use dualwrite_rules::Migration;
use tokio_postgres::GenericClient;

/// One warning per enabled `BEFORE INSERT`/`BEFORE UPDATE` row trigger on a table of `migration` (tables that
/// do not exist are skipped).
pub async fn warnings(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let olds = migration.old_tables().into_iter().map(|t| (t.to_string(), true));
    let shadows = migration.shadow_tables().into_iter().map(|t| (t.to_string(), false));
    let mut found = Vec::new();
    for (table, old) in olds.chain(shadows) {
        // tgtype bits (pg_trigger.h): 1 row, 2 before, 4 insert, 16 update; tgenabled 'D' is disabled.
        let rows = client
            .query(
                "SELECT t.tgname::text, t.tgfoid::regproc::text,
                        concat_ws(' or ', CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
                                          CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END)
                   FROM pg_trigger t
                  WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                    AND t.tgtype & 1 <> 0 AND t.tgtype & 2 <> 0 AND t.tgtype & (4 | 16) <> 0
                  ORDER BY 1",
                &[&table],
            )
            .await?;
        for row in rows {
            let (name, function, events): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let (whose, writes) =
                if old { ("the old table", "a v2 write's old side") } else { ("a shadow", "a v1 write's shadow side") };
            found.push(format!(
                "BEFORE {events} row trigger {name} on {table} ({whose}, function {function}) runs on the row the \
                 mapping wrote for {writes}: if it changes a mapped column, {table} then holds what the mapping \
                 does not say (VERIFY reports it), and if it assigns the key, the dual write's upsert on the key \
                 can overwrite an unrelated row; make sure it leaves the key and the mapped columns alone, or \
                 drop it"
            ));
        }
    }
    Ok(found)
}
