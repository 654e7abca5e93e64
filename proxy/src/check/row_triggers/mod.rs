//! Row triggers that run before a dual write's row lands: a `BEFORE INSERT` or `BEFORE UPDATE` row trigger on
//! a shadow, or on an old table, can change the row after the mapping computed it.
//!
//! The dual write copies what the primary's `RETURNING` gives, so a trigger of the table a statement names is
//! harmless: its result is what the mapping reads. The other table's trigger is not: it runs on the row the
//! sync wrote (a shadow's on every v1 write, an old table's on every v2 write and in `cutover`), so:
//!
//! - a trigger that may assign the key ([`key_assignment`]: `NEW.id := nextval(...)` outside an
//!   `IF NEW.id IS NULL` guard, say) sends the sync's upsert on the key to whichever row holds the trigger's
//!   key, overwriting an unrelated row. Registration refuses such a migration and the schema watch refuses
//!   its writes (kind `key_trigger`) unless the rules list the trigger in `accept_key_triggers`;
//! - any other may change a mapped column, so that table holds something the mapping does not say (VERIFY
//!   reports it); harmless ones are common (`updated_at`), so `dualwrite check` only warns, naming each.

mod key_assignment;

use dualwrite_rules::{quote_ident, Migration};
use tokio_postgres::GenericClient;

pub use key_assignment::KeyAssignment;

/// One enabled `BEFORE INSERT`/`BEFORE UPDATE` row trigger on a table of a migration.
#[derive(Debug, Clone)]
pub struct RowTrigger {
    /// `<schema>.<table>.<trigger>`, what `accept_key_triggers` lists.
    pub id: String,
    name: String,
    /// The table as the rules spell it.
    table: String,
    old: bool,
    function: String,
    events: String,
    /// Whether (and how) its function may assign the key.
    pub assigns_key: Option<KeyAssignment>,
    /// The rules list it in `accept_key_triggers`.
    pub accepted: bool,
}

impl RowTrigger {
    /// A trigger that may assign the key and that the rules do not accept.
    pub fn refused(&self) -> bool {
        self.assigns_key.is_some() && !self.accepted
    }

    fn whose(&self) -> (&'static str, &'static str) {
        if self.old {
            ("the old table", "a v2 write's old side (every write in cutover)")
        } else {
            ("a shadow", "a v1 write's shadow side")
        }
    }

    /// Why the trigger refuses its migration and what to do.
    pub fn refusal(&self) -> String {
        let (whose, writes) = self.whose();
        let how = self.assigns_key.as_ref().map(KeyAssignment::describe).unwrap_or_default();
        format!(
            "BEFORE {} row trigger {} on {} ({whose}, function {}) {how}: it runs on the row the sync writes for \
             {writes}, and a key it assigns sends the dual write's upsert to an unrelated row that holds that key; \
             drop it, or assign the key only under `IF NEW.<key> IS NULL` (the sync always gives the key), or, \
             if it never changes a key it is given, list \"{}\" in accept_key_triggers and reload",
            self.events, self.name, self.table, self.function, self.id
        )
    }

    /// What `dualwrite check` warns of a trigger registration allows.
    pub fn warning(&self) -> String {
        let (whose, writes) = self.whose();
        let key = if self.accepted {
            "it is listed in accept_key_triggers, so a key it assigned would send the dual write's upsert to an \
             unrelated row"
        } else {
            "its body leaves the key alone as far as the check reads it"
        };
        format!(
            "BEFORE {} row trigger {} on {} ({whose}, function {}) runs on the row the mapping wrote for {writes}: \
             if it changes a mapped column, {} then holds what the mapping does not say (VERIFY reports it); {key}",
            self.events, self.name, self.table, self.function, self.table
        )
    }
}

/// Every enabled `BEFORE INSERT`/`BEFORE UPDATE` row trigger on a table of `migration` or on one of its
/// partitions (tables that do not exist are skipped), old tables first, each judged for assigning the key.
pub async fn inspect(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<RowTrigger>, tokio_postgres::Error> {
    let olds = migration.old_tables().into_iter().map(|t| (t, true));
    let shadows = migration.shadow_tables().into_iter().map(|t| (t, false));
    let mut found = Vec::new();
    for (table, old) in olds.chain(shadows) {
        // tgtype bits (pg_trigger.h): 1 row, 2 before, 4 insert, 16 update; tgenabled 'D' is disabled. A
        // partition's own triggers fire on the rows routed to it; the clones of the parent's (tgparentid) are
        // the parent's, listed once. The arguments (tgargs) are NUL-terminated strings; the body is the
        // function's source (a C function's is its symbol).
        let rows = client
            .query(
                "SELECT t.tgname::text, t.tgfoid::regproc::text,
                        concat_ws(' or ', CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
                                          CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END),
                        format('%I.%I', n.nspname, c.relname), l.lanname::text, p.prosrc, t.tgargs
                   FROM pg_trigger t
                   JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang
                  WHERE (t.tgrelid = to_regclass($1)
                         OR t.tgrelid IN (SELECT relid FROM pg_partition_tree(to_regclass($1))))
                    AND t.tgparentid = 0 AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                    AND t.tgtype & 1 <> 0 AND t.tgtype & 2 <> 0 AND t.tgtype & (4 | 16) <> 0
                  ORDER BY 1",
                &[&table.qualified().to_string()],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let relation: String = row.get(3);
            let (language, body): (String, String) = (row.get(4), row.get(5));
            let arguments: Vec<String> = row
                .get::<_, Vec<u8>>(6)
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let id = format!("{relation}.{}", quote_ident(&name));
            found.push(RowTrigger {
                accepted: migration.accept_key_triggers.contains(&id),
                assigns_key: key_assignment::judge(&language, &body, &arguments, &migration.key),
                id,
                name,
                table: table.to_string(),
                old,
                function: row.get(1),
                events: row.get(2),
            });
        }
    }
    Ok(found)
}

/// Why each trigger of `migration` that may assign the key, and that its rules do not accept, refuses it.
pub async fn refusals(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(inspect(client, migration).await?.iter().filter(|t| t.refused()).map(RowTrigger::refusal).collect())
}
