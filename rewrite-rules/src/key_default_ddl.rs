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

/// Whether `sql` may hold an `ALTER` statement (so a false positive only costs a parse): checked on every
/// statement that names a migrated table, so cheap for the common single statement. One that starts (after
/// whitespace and comments) with another word holds no `ALTER` unless a `;` before its end makes it
/// several; only such a string is searched, for the word in any case.
pub(crate) fn may_alter(sql: &str) -> bool {
    static ALTER: LazyLock<Option<AhoCorasick>> =
        LazyLock::new(|| AhoCorasick::builder().ascii_case_insensitive(true).build(["alter"]).ok());
    let Some(start) = after_comments(sql.as_bytes()) else { return true };
    let first = &sql.as_bytes()[start..];
    if first.len() >= 5 && first[..5].eq_ignore_ascii_case(b"alter") {
        return true;
    }
    // (A `;` that only ends the statement, as pgbench and psql send it, makes no second one.)
    let body = sql.trim_end().trim_end_matches(';');
    body.as_bytes().contains(&b';')
        && match &*ALTER {
            Some(searcher) => searcher.is_match(sql),
            None => true,
        }
}

/// Where the first word of `sql` starts, past whitespace, `--` comments and (nested) `/* */` comments;
/// `None` for a comment that does not end (the caller then assumes the worst).
fn after_comments(sql: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        while at < sql.len() && sql[at].is_ascii_whitespace() {
            at += 1;
        }
        let rest = &sql[at..];
        if rest.starts_with(b"--") {
            at += rest.iter().position(|&b| b == b'\n')? + 1;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut i = 0;
            loop {
                match rest.get(i..i + 2)? {
                    b"/*" => (depth, i) = (depth + 1, i + 2),
                    b"*/" => (depth, i) = (depth - 1, i + 2),
                    _ => i += 1,
                }
                if depth == 0 {
                    break;
                }
            }
            at += i;
        } else {
            return Some(at);
        }
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

#[cfg(test)]
mod tests {
    use super::may_alter;

    #[test]
    fn may_alter_is_true_for_every_string_holding_an_alter_statement() {
        for sql in [
            "ALTER TABLE t ALTER COLUMN id SET DEFAULT 1",
            "  alter table t drop column x",
            "-- deploy\n/* step /* nested */ 2 */ Alter table t add column y int",
            "SET search_path = app; ALTER TABLE t ALTER COLUMN id DROP DEFAULT",
            "SELECT 1;\nalter table t drop column x;",
            "/* never closed ALTER",
            "-- a comment without its newline",
        ] {
            assert!(may_alter(sql), "{sql}");
        }
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2; ",
            "SELECT 'alter' FROM users",
            "/* alter */ SELECT 1",
            "-- alter\nINSERT INTO users VALUES (1)",
            "alternative",
        ] {
            // (`alternative` starts with the letters, which only costs a parse.)
            assert_eq!(may_alter(sql), sql == "alternative", "{sql}");
        }
    }
}
