//! Postgres's rules for a setting inside transactions, for the one setting the proxy mirrors
//! (`dualwrite.version`): SET inside a transaction is undone by ROLLBACK, SET LOCAL lasts until the end of the
//! transaction, ROLLBACK TO SAVEPOINT undoes what was set after the savepoint, RELEASE keeps it, and a
//! statement outside a transaction block runs in an implicit transaction that an error rolls back.

use super::statement::{SessionStatement, Setting};

/// The setting as seen inside one transaction level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    /// `None` for the transaction itself, the savepoint's name otherwise.
    savepoint: Option<String>,
    session: Setting,
    local: Option<Setting>,
}

/// The setting's value and the transaction levels that may still undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxStack {
    /// What a non-local SET made it (kept at COMMIT).
    session: Setting,
    /// What SET LOCAL made it, until the transaction ends.
    local: Option<Setting>,
    /// Empty outside a transaction; `frames[0]` is the transaction, the rest are savepoints.
    frames: Vec<Frame>,
    /// The transaction is the implicit one of a single Query / Sync batch, not a BEGIN block.
    implicit: bool,
    /// An error aborted the transaction: only ROLLBACK / ROLLBACK TO / COMMIT (= rollback) do anything.
    aborted: bool,
}

impl Default for TxStack {
    fn default() -> Self {
        TxStack { session: Setting::Default, local: None, frames: Vec::new(), implicit: false, aborted: false }
    }
}

impl TxStack {
    /// The value in force now.
    pub fn current(&self) -> &Setting {
        self.local.as_ref().unwrap_or(&self.session)
    }

    pub fn in_transaction(&self) -> bool {
        !self.frames.is_empty()
    }

    pub fn aborted(&self) -> bool {
        self.aborted
    }

    fn frame(&self, savepoint: Option<String>) -> Frame {
        Frame { savepoint, session: self.session.clone(), local: self.local.clone() }
    }

    fn begin_block(&mut self) {
        if self.frames.is_empty() {
            self.frames.push(self.frame(None));
        }
        self.implicit = false;
    }

    fn ensure_transaction(&mut self) {
        if self.frames.is_empty() {
            self.frames.push(self.frame(None));
            self.implicit = true;
        }
    }

    fn commit(&mut self) {
        self.local = None;
        self.frames.clear();
        self.implicit = false;
        self.aborted = false;
    }

    fn rollback(&mut self) {
        if let Some(first) = self.frames.first() {
            self.session = first.session.clone();
        }
        self.local = None;
        self.frames.clear();
        self.implicit = false;
        self.aborted = false;
    }

    fn savepoint_index(&self, name: &str) -> Option<usize> {
        self.frames.iter().rposition(|f| f.savepoint.as_deref() == Some(name))
    }

    /// Apply a statement that the server executed successfully (or, for the projection, is expected to).
    pub fn apply(&mut self, statement: &SessionStatement) {
        use SessionStatement::*;
        if self.aborted && !matches!(statement, Commit { .. } | Rollback { .. } | RollbackTo(_)) {
            return; // the server refuses everything else in an aborted transaction
        }
        match statement {
            Begin => self.begin_block(),
            Commit { chain } => {
                if self.aborted {
                    self.rollback(); // COMMIT of an aborted transaction is a ROLLBACK
                } else {
                    self.commit();
                }
                if *chain {
                    self.begin_block();
                }
            }
            PrepareTransaction => self.commit(),
            Rollback { chain } => {
                self.rollback();
                if *chain {
                    self.begin_block();
                }
            }
            Savepoint(name) => {
                if self.in_transaction() && !self.implicit {
                    self.frames.push(self.frame(Some(name.clone())));
                }
            }
            Release(name) => {
                if let Some(i) = self.savepoint_index(name) {
                    self.frames.truncate(i);
                }
            }
            RollbackTo(name) => {
                if let Some(i) = self.savepoint_index(name) {
                    self.session = self.frames[i].session.clone();
                    self.local = self.frames[i].local.clone();
                    self.frames.truncate(i + 1);
                    self.aborted = false;
                }
            }
            Set { local: false, setting } => {
                self.ensure_transaction();
                self.session = setting.clone();
                self.local = None;
            }
            Set { local: true, setting } => {
                self.ensure_transaction();
                self.local = Some(setting.clone());
            }
            ResetAll => {
                self.ensure_transaction();
                self.session = Setting::Default;
                self.local = None;
            }
            Show | Other => {}
        }
    }

    /// The server reported an error: the transaction (implicit or block) is aborted.
    pub fn error(&mut self) {
        if self.in_transaction() {
            self.aborted = true;
        }
    }

    /// A batch ended (end of a Query or a Sync): an implicit transaction ends with it.
    pub fn end_of_batch(&mut self) {
        if self.implicit {
            if self.aborted {
                self.rollback();
            } else {
                self.commit();
            }
        }
    }

    /// ReadyForQuery with transaction status `I`, `T` or `E`: the server's word on where we are.
    pub fn ready_for_query(&mut self, status: u8) {
        match status {
            b'T' | b'E' => {
                self.begin_block();
                self.aborted = status == b'E';
            }
            _ => {
                // Idle: whatever transaction we thought open has ended; without a COMMIT it was rolled back
                // only if it failed (an implicit transaction commits at the end of its batch).
                if self.in_transaction() {
                    if self.aborted {
                        self.rollback();
                    } else {
                        self.commit();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionStatement::*;

    fn set(v: &str) -> SessionStatement {
        Set { local: false, setting: Setting::Value(v.into()) }
    }
    fn set_local(v: &str) -> SessionStatement {
        Set { local: true, setting: Setting::Value(v.into()) }
    }
    fn val(v: &str) -> Setting {
        Setting::Value(v.into())
    }
    fn run(stack: &mut TxStack, statements: &[SessionStatement]) {
        for s in statements {
            stack.apply(s);
        }
    }

    #[test]
    fn set_outside_transaction_sticks() {
        let mut s = TxStack::default();
        s.apply(&set("v2"));
        s.end_of_batch();
        s.ready_for_query(b'I');
        assert_eq!(s.current(), &val("v2"));
        assert!(!s.in_transaction());
    }

    #[test]
    fn set_in_transaction_is_undone_by_rollback_and_kept_by_commit() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v2"), Rollback { chain: false }]);
        assert_eq!(s.current(), &Setting::Default);
        run(&mut s, &[Begin, set("v2"), Commit { chain: false }]);
        assert_eq!(s.current(), &val("v2"));
    }

    #[test]
    fn set_local_lasts_until_transaction_end() {
        let mut s = TxStack::default();
        run(&mut s, &[set("v1"), Begin, set_local("v2")]);
        assert_eq!(s.current(), &val("v2"));
        s.apply(&Commit { chain: false });
        assert_eq!(s.current(), &val("v1"));
    }

    #[test]
    fn set_after_set_local_wins_and_survives_commit() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set_local("v2"), set("v3")]);
        assert_eq!(s.current(), &val("v3"));
        s.apply(&Commit { chain: false });
        assert_eq!(s.current(), &val("v3"));
        run(&mut s, &[Begin, set("v1"), set_local("v2"), Commit { chain: false }]);
        assert_eq!(s.current(), &val("v1"));
    }

    #[test]
    fn rollback_to_savepoint_undoes_later_sets() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v1"), Savepoint("a".into()), set("v2"), set_local("v3")]);
        assert_eq!(s.current(), &val("v3"));
        s.apply(&RollbackTo("a".into()));
        assert_eq!(s.current(), &val("v1"));
        // the savepoint survives ROLLBACK TO and can be used again
        run(&mut s, &[set("v2"), RollbackTo("a".into())]);
        assert_eq!(s.current(), &val("v1"));
        run(&mut s, &[set("v2"), Commit { chain: false }]);
        assert_eq!(s.current(), &val("v2"));
    }

    #[test]
    fn release_keeps_changes_and_outer_rollback_undoes_them() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, Savepoint("a".into()), set("v2"), Release("a".into())]);
        assert_eq!(s.current(), &val("v2"));
        s.apply(&Rollback { chain: false });
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn nested_savepoints_with_same_name_use_the_latest() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v1"), Savepoint("a".into()), set("v2"), Savepoint("a".into()), set("v3")]);
        s.apply(&RollbackTo("a".into()));
        assert_eq!(s.current(), &val("v2"));
        s.apply(&Release("a".into()));
        s.apply(&RollbackTo("a".into()));
        assert_eq!(s.current(), &val("v1"));
    }

    #[test]
    fn error_in_block_then_commit_rolls_back() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v2")]);
        s.error();
        s.apply(&set("v3")); // refused by the server in an aborted transaction
        s.apply(&Commit { chain: false });
        assert_eq!(s.current(), &Setting::Default);
        assert!(!s.in_transaction());
    }

    #[test]
    fn error_then_rollback_to_savepoint_recovers() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v1"), Savepoint("a".into()), set("v2")]);
        s.error();
        s.apply(&RollbackTo("a".into()));
        assert!(!s.aborted());
        s.apply(&Commit { chain: false });
        assert_eq!(s.current(), &val("v1"));
    }

    #[test]
    fn implicit_transaction_error_rolls_back_the_batch() {
        let mut s = TxStack::default();
        s.apply(&set("v2"));
        s.error();
        s.end_of_batch();
        assert_eq!(s.current(), &Setting::Default);
        s.apply(&set("v2"));
        s.ready_for_query(b'I'); // idle after an error-free batch: committed
        assert_eq!(s.current(), &val("v2"));
    }

    #[test]
    fn error_at_commit_rolls_back_when_idle_follows() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v2")]);
        s.error(); // e.g. a deferred constraint failing at COMMIT
        s.ready_for_query(b'I');
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn set_local_outside_a_block_ends_with_the_batch() {
        let mut s = TxStack::default();
        s.apply(&set_local("v2"));
        assert_eq!(s.current(), &val("v2"));
        s.end_of_batch();
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn begin_inside_an_implicit_transaction_makes_it_a_block() {
        let mut s = TxStack::default();
        run(&mut s, &[set("v2"), Begin]);
        s.end_of_batch();
        s.ready_for_query(b'T');
        s.apply(&Rollback { chain: false });
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn ready_for_query_corrects_a_missed_begin() {
        let mut s = TxStack::default();
        s.ready_for_query(b'T');
        s.apply(&set("v2"));
        s.apply(&Rollback { chain: false });
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn reset_all_and_chain() {
        let mut s = TxStack::default();
        run(&mut s, &[set("v2"), Commit { chain: false }]);
        run(&mut s, &[Begin, ResetAll, Commit { chain: true }]);
        assert!(s.in_transaction());
        assert_eq!(s.current(), &Setting::Default);
        run(&mut s, &[set("v3"), Rollback { chain: false }]);
        assert_eq!(s.current(), &Setting::Default);
    }

    #[test]
    fn prepare_transaction_keeps_session_sets() {
        let mut s = TxStack::default();
        run(&mut s, &[Begin, set("v2"), set_local("v3"), PrepareTransaction]);
        assert_eq!(s.current(), &val("v2"));
        assert!(!s.in_transaction());
    }
}
