//! A session's DDL that changed where a dual-written shadow's keys come from, kept until its transaction
//! ends: the writes of that migration after it in the transaction are refused (`dualwrite_rules`'
//! `key_default_ddl`: the schema watch judges such a change only once it commits). What a simple Query
//! sends counts at once; a prepared statement's counts when a portal bound from it is executed, as it is
//! then that it runs. The refusals ride on the session's route (`Route::unsafe_schema`), so prepared
//! writes are prepared again as the refusal and back, as for a finding of the schema watch.
//!
//! A change is kept by its migration's name, not by the index the rules gave it when it was judged: a
//! rules reload inside the transaction may reorder the migrations, and the refusal must stay on the
//! migration whose shadow the DDL changed.

use std::collections::HashMap;

use dualwrite_rules::{Route, RuleSet, UnsafeSchema};

/// One change of a migration's key default, by the migration's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyDefaultChange {
    migration: String,
    finding: String,
}

impl KeyDefaultChange {
    /// The changes the rewriter found under `rules` (whose indexes its refusals use), by name.
    pub fn named(rules: &RuleSet, changes: Vec<UnsafeSchema>) -> Vec<KeyDefaultChange> {
        changes
            .into_iter()
            .filter_map(|c| {
                let migration = rules.migrations.get(c.migration)?.name.clone();
                Some(KeyDefaultChange { migration, finding: c.finding })
            })
            .collect()
    }
}

#[derive(Debug, Default)]
pub(super) struct KeyDefaultDdl {
    /// The refusals in force until the session is idle (outside a transaction) again.
    pending: Vec<KeyDefaultChange>,
    /// Prepared statements holding such DDL, and portals bound from them.
    statements: HashMap<Vec<u8>, Vec<KeyDefaultChange>>,
    portals: HashMap<Vec<u8>, Vec<KeyDefaultChange>>,
}

impl KeyDefaultDdl {
    /// A simple Query holding such DDL was sent.
    pub fn sent(&mut self, changes: Vec<KeyDefaultChange>) {
        if !changes.is_empty() {
            self.pending.extend(changes);
        }
    }

    /// Statement `name` was prepared as `changes` (none: an ordinary statement).
    pub fn prepared(&mut self, name: &[u8], changes: Vec<KeyDefaultChange>) {
        match changes.is_empty() {
            true if !self.statements.is_empty() => {
                self.statements.remove(name);
            }
            true => {}
            false => {
                self.statements.insert(name.to_vec(), changes);
            }
        }
    }

    pub fn closed(&mut self, name: &[u8]) {
        self.statements.remove(name);
    }

    pub fn bound(&mut self, portal: &[u8], statement: &[u8]) {
        match self.statements.get(statement) {
            Some(changes) => {
                self.portals.insert(portal.to_vec(), changes.clone());
            }
            None if !self.portals.is_empty() => {
                self.portals.remove(portal);
            }
            None => {}
        }
    }

    pub fn executed(&mut self, portal: &[u8]) {
        if let Some(changes) = self.portals.get(portal) {
            self.pending.extend(changes.iter().cloned());
        }
    }

    /// ReadyForQuery with transaction status `status`: idle ends the transaction the DDL ran in.
    pub fn ready(&mut self, status: u8) {
        if status == b'I' {
            self.pending.clear();
        }
    }

    /// The session's route under `rules` (the generation in force) with the refusals in force. A change of
    /// a migration these rules no longer hold refuses nothing: its tables are not migrated any more.
    pub fn apply(&self, rules: &RuleSet, route: &mut Route) {
        for change in &self.pending {
            if let Some(migration) = rules.migrations.iter().position(|m| m.name == change.migration) {
                route.add_unsafe_schema(UnsafeSchema { migration, finding: change.finding.clone() });
            }
        }
    }
}
