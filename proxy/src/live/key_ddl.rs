//! A session's DDL that changed where a dual-written shadow's keys come from, kept until its transaction
//! ends: the writes of that migration after it in the transaction are refused (`dualwrite_rules`'
//! `key_default_ddl`: the schema watch judges such a change only once it commits). What a simple Query
//! sends counts at once; a prepared statement's counts when a portal bound from it is executed, as it is
//! then that it runs. The refusals ride on the session's route (`Route::unsafe_schema`), so prepared
//! writes are prepared again as the refusal and back, as for a finding of the schema watch.

use std::collections::HashMap;

use dualwrite_rules::{Route, UnsafeSchema};

#[derive(Debug, Default)]
pub(super) struct KeyDefaultDdl {
    /// The refusals in force until the session is idle (outside a transaction) again.
    pending: Vec<UnsafeSchema>,
    /// Prepared statements holding such DDL, and portals bound from them.
    statements: HashMap<Vec<u8>, Vec<UnsafeSchema>>,
    portals: HashMap<Vec<u8>, Vec<UnsafeSchema>>,
}

impl KeyDefaultDdl {
    /// A simple Query holding such DDL was sent.
    pub fn sent(&mut self, changes: Vec<UnsafeSchema>) {
        if !changes.is_empty() {
            self.pending.extend(changes);
        }
    }

    /// Statement `name` was prepared as `changes` (none: an ordinary statement).
    pub fn prepared(&mut self, name: &[u8], changes: Vec<UnsafeSchema>) {
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

    /// The session's route with the refusals in force.
    pub fn apply(&self, route: &mut Route) {
        for change in &self.pending {
            route.add_unsafe_schema(change.clone());
        }
    }
}
