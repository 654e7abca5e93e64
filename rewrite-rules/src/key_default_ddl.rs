//! DDL that changes where a dual-written shadow's keys come from, followed by writes in the same
//! transaction. A shadow's `ALTER COLUMN <key> SET DEFAULT`, `DROP DEFAULT` or `ADD GENERATED ... AS
//! IDENTITY` passes (it is the operator's, and the remedy the schema watch prints is one), and the proxy's
//! schema watch judges the key's defaults once the change commits (`Route::unsafe_schema`). Writes of the
//! migration made after it in its own transaction would run before that judgement: a keyless new-version
//! INSERT could take a key from the shadow's new source, one the old table already holds, and the dual
//! write's upsert on the key would overwrite that row. So until the transaction ends they are refused like
//! a finding of the schema watch, naming the DDL: later statements of the same string here
//! ([`crate::Rewriter`]'s plan), and later requests of the session through its route (the proxy keeps
//! what [`crate::Rewriter::key_default_changes`] reports until the session is idle again).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use sqlparser::ast::{AlterColumnOperation, AlterTableOperation, Statement};

use crate::compiled::Compiled;
use crate::names::TableName;
use crate::route::{Route, UnsafeSchema};

/// Whether `sql` may hold an `ALTER` (a substring test, any case, so a false positive only costs a parse):
/// checked on every statement that names a migrated table, so a searcher rather than a scan.
pub(crate) fn may_alter(sql: &str) -> bool {
    static ALTER: LazyLock<Option<AhoCorasick>> =
        LazyLock::new(|| AhoCorasick::builder().ascii_case_insensitive(true).build(["alter"]).ok());
    match &*ALTER {
        Some(searcher) => searcher.is_match(sql),
        None => true,
    }
}

/// The refusal statement `statement` asks for, of the writes that follow it in its transaction: `Some` when
/// it changes the default of a key column of a shadow its migration dual-writes.
pub(crate) fn key_default_change(compiled: &Compiled, route: &Route, statement: &Statement) -> Option<UnsafeSchema> {
    let Statement::AlterTable(alter) = statement else { return None };
    let name = TableName::from_object_name(&alter.name)?;
    let migration = compiled.kept_shadow_of(&name, route)?;
    let key = &compiled.migrations[migration].key;
    let (column, change) = alter.operations.iter().find_map(|operation| match operation {
        AlterTableOperation::AlterColumn { column_name, op } if key.contains(&column_name.value) => {
            let change = match op {
                AlterColumnOperation::SetDefault { .. } => "SET DEFAULT",
                AlterColumnOperation::DropDefault => "DROP DEFAULT",
                AlterColumnOperation::AddGenerated { .. } => "ADD GENERATED ... AS IDENTITY",
                _ => return None,
            };
            Some((column_name.value.as_str(), change))
        }
        _ => None,
    })?;
    let finding = format!(
        "ALTER TABLE {} ALTER COLUMN {column} {change} earlier in this transaction changes where the shadow's keys \
         come from, which the schema watch judges once it commits; commit it before writing the migration's \
         tables (change a migration's schema in a transaction of its own)",
        alter.name
    );
    Some(UnsafeSchema { migration, finding })
}

impl Route {
    /// Adds `entry` to [`Route::unsafe_schema`] unless its migration has one already (a standing finding
    /// of the schema watch says more).
    pub fn add_unsafe_schema(&mut self, entry: UnsafeSchema) {
        if let Err(at) = self.unsafe_schema.binary_search_by_key(&entry.migration, |u| u.migration) {
            self.unsafe_schema.insert(at, entry);
        }
    }
}
