//! A ledger that test writers keep of a keyed table: the contents the table must have, built only from
//! transactions whose outcome is known. A transaction whose COMMIT got no answer (the connection died)
//! is *unknown* until the writer reads the table directly and [`Ledger::resolve`]s it: the rows it
//! touched must then hold either everything it wrote or nothing of it — anything else is a torn
//! transaction and an error. At the end the ledger is compared with the table row for row
//! ([`Ledger::differences`]).
//!
//! A ledger describes the keys one writer owns; writers on disjoint keys keep one each and
//! [`Ledger::merge`] them for the final comparison.

use std::collections::BTreeMap;
use std::fmt::Debug;

/// One change a transaction makes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<V> {
    /// The row with this key holds this value afterwards (INSERT, UPDATE).
    Put(i64, V),
    Delete(i64),
}

impl<V> Op<V> {
    pub fn key(&self) -> i64 {
        match self {
            Op::Put(key, _) | Op::Delete(key) => *key,
        }
    }
}

/// How transactions ended, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub committed: u64,
    pub rolled_back: u64,
    /// Unknown at COMMIT, found committed by reading the table.
    pub unknown_then_committed: u64,
    /// Unknown at COMMIT, found not committed.
    pub unknown_then_rolled_back: u64,
}

impl Tally {
    pub fn unknown(&self) -> u64 {
        self.unknown_then_committed + self.unknown_then_rolled_back
    }

    fn add(&mut self, other: &Tally) {
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.unknown_then_committed += other.unknown_then_committed;
        self.unknown_then_rolled_back += other.unknown_then_rolled_back;
    }
}

#[derive(Clone, Debug)]
pub struct Ledger<V> {
    rows: BTreeMap<i64, V>,
    tally: Tally,
}

impl<V: Clone + PartialEq + Debug> Ledger<V> {
    /// A ledger of rows that exist before any writer runs.
    pub fn new(initial: impl IntoIterator<Item = (i64, V)>) -> Self {
        Ledger { rows: initial.into_iter().collect(), tally: Tally::default() }
    }

    pub fn rows(&self) -> &BTreeMap<i64, V> {
        &self.rows
    }

    pub fn get(&self, key: i64) -> Option<&V> {
        self.rows.get(&key)
    }

    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// The transaction's COMMIT succeeded.
    pub fn committed(&mut self, ops: &[Op<V>]) {
        apply(&mut self.rows, ops);
        self.tally.committed += 1;
    }

    /// The transaction failed or was rolled back before COMMIT was sent: the table is unchanged.
    pub fn rolled_back(&mut self) {
        self.tally.rolled_back += 1;
    }

    /// Settles a transaction whose COMMIT outcome was unknown, from `actual`: the rows of every key it
    /// touched as read from the table directly (absent key = no row), after the transaction's backend
    /// has ended. Returns whether it committed; an error when the rows match neither outcome.
    pub fn resolve(&mut self, ops: &[Op<V>], actual: &BTreeMap<i64, V>) -> Result<bool, String> {
        let before: BTreeMap<i64, Option<V>> =
            ops.iter().map(|op| (op.key(), self.rows.get(&op.key()).cloned())).collect();
        let mut after_rows = self.rows.clone();
        apply(&mut after_rows, ops);
        let after: BTreeMap<i64, Option<V>> = before.keys().map(|k| (*k, after_rows.get(k).cloned())).collect();
        let seen: BTreeMap<i64, Option<V>> = before.keys().map(|k| (*k, actual.get(k).cloned())).collect();
        if seen == after {
            self.rows = after_rows;
            self.tally.unknown_then_committed += 1;
            Ok(true)
        } else if seen == before {
            self.tally.unknown_then_rolled_back += 1;
            Ok(false)
        } else {
            Err(format!(
                "transaction {ops:?} is torn: the table holds {seen:?}, neither {before:?} (not committed) nor {after:?} (committed)"
            ))
        }
    }

    /// One ledger of several writers' ledgers over disjoint keys.
    pub fn merge(ledgers: impl IntoIterator<Item = Ledger<V>>) -> Ledger<V> {
        let mut merged = Ledger { rows: BTreeMap::new(), tally: Tally::default() };
        for ledger in ledgers {
            for (key, value) in ledger.rows {
                assert!(merged.rows.insert(key, value).is_none(), "ledgers overlap at key {key}");
            }
            merged.tally.add(&ledger.tally);
        }
        merged
    }

    /// Every key where the table (`actual`) and the ledger disagree, described; empty when they match
    /// exactly.
    pub fn differences(&self, actual: &BTreeMap<i64, V>) -> Vec<String> {
        let mut out = Vec::new();
        for (key, expected) in &self.rows {
            match actual.get(key) {
                None => out.push(format!("key {key}: missing, ledger has {expected:?}")),
                Some(value) if value != expected => {
                    out.push(format!("key {key}: table has {value:?}, ledger {expected:?}"))
                }
                Some(_) => {}
            }
        }
        for (key, value) in actual {
            if !self.rows.contains_key(key) {
                out.push(format!("key {key}: table has {value:?}, ledger has no row"));
            }
        }
        out
    }
}

fn apply<V: Clone>(rows: &mut BTreeMap<i64, V>, ops: &[Op<V>]) {
    for op in ops {
        match op {
            Op::Put(key, value) => {
                rows.insert(*key, value.clone());
            }
            Op::Delete(key) => {
                rows.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(i64, &str)]) -> BTreeMap<i64, String> {
        rows.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn unknown_commits_resolve_to_either_outcome_and_torn_ones_are_errors() {
        let mut ledger = Ledger::new([(1, "a".to_string()), (2, "b".to_string())]);
        let ops = vec![Op::Put(1, "a2".to_string()), Op::Delete(2), Op::Put(3, "c".to_string())];
        // Nothing of it landed.
        assert_eq!(ledger.resolve(&ops, &table(&[(1, "a"), (2, "b")])), Ok(false));
        // Half of it landed: torn.
        assert!(ledger.resolve(&ops, &table(&[(1, "a2"), (2, "b")])).is_err());
        // All of it landed.
        assert_eq!(ledger.resolve(&ops, &table(&[(1, "a2"), (3, "c")])), Ok(true));
        assert_eq!(ledger.rows(), &table(&[(1, "a2"), (3, "c")]));
        let tally = ledger.tally();
        assert_eq!((tally.unknown_then_committed, tally.unknown_then_rolled_back), (1, 1));
    }

    #[test]
    fn differences_name_missing_extra_and_changed_rows() {
        let mut ledger = Ledger::new([(1, "a".to_string())]);
        ledger.committed(&[Op::Put(2, "b".to_string())]);
        ledger.rolled_back();
        assert!(ledger.differences(&table(&[(1, "a"), (2, "b")])).is_empty());
        let diff = ledger.differences(&table(&[(2, "x"), (9, "z")]));
        assert_eq!(diff.len(), 3, "{diff:?}");
        let merged = Ledger::merge([ledger, Ledger::new([(5, "e".to_string())])]);
        assert_eq!(merged.rows().len(), 3);
        assert_eq!(merged.tally().committed, 1);
    }
}
