//! Pairing (pure): within one committed transaction, every change to a migrated row must be matched by a
//! change to the same key on the other table. The dual write writes both tables in one statement, so its
//! transaction pairs by construction; what does not pair is a *candidate* bypass, which the watch then
//! confirms against the tables (see `bypass`).
//!
//! Pairing is by key and operation class, never by values: an INSERT, UPDATE or upsert on one side pairs
//! with an INSERT or UPDATE on the other (an upsert yields either), a DELETE with a DELETE, an UPDATE that
//! moved a row to another key is a DELETE of the old key and a write of the new one, and a TRUNCATE with a
//! TRUNCATE of the other table. Sets, not counts: a statement run twice in one transaction writes both
//! sides twice, and an upsert that found its row unchanged may write nothing on one side. Transactions
//! marked by the proxy's own jobs (backfill batches and sweeps, repairs) write one table by design; their
//! changes are attributed to the job, never called bypasses. A split (several shadow tables) pairs the
//! old table with each shadow: a change must be matched on every one of them.

use std::collections::{BTreeMap, HashMap};

use super::transaction::{Key, Op, Source, Transaction};

/// One migration as the watch sees it: the relation ids of its old table and of its shadow tables (one,
/// or a split's targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedTables {
    pub old: u32,
    pub shadows: Vec<u32>,
}

/// Which table of a migration a change hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Old,
    Shadow,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::Shadow => "shadow",
        }
    }
}

/// Where the shadow rows of a transaction came from, for `dualwrite_shadow_rows_written_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowSource {
    DualWrite,
    Backfill,
    Repair,
    Bypass,
}

impl RowSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RowSource::DualWrite => "dual_write",
            RowSource::Backfill => "backfill",
            RowSource::Repair => "repair",
            RowSource::Bypass => "bypass",
        }
    }
}

/// A change without its twin: `key` is `None` for a TRUNCATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index into the migrations given to [`pair`].
    pub migration: usize,
    pub side: Side,
    pub op: Op,
    pub key: Option<Key>,
}

/// What one transaction showed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairing {
    pub candidates: Vec<Candidate>,
    /// Shadow rows written, by (migration index, source).
    pub shadow_rows: BTreeMap<(usize, RowSource), u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Write,
    Delete,
}

/// The key-level effects of a transaction on one table: (class, key) -> the first operation that had it.
#[derive(Default)]
struct Effects {
    rows: HashMap<(Class, Key), Op>,
    /// Row changes in order, to report candidates in a stable order.
    order: Vec<(Class, Key)>,
    changed: u64,
    truncated: bool,
}

impl Effects {
    fn add(&mut self, class: Class, key: &Key, op: Op) {
        let entry = (class, key.clone());
        if !self.rows.contains_key(&entry) {
            self.rows.insert(entry.clone(), op);
            self.order.push(entry);
        }
    }
}

/// Pairs the changes of `tx` for each of `migrations`.
pub fn pair(migrations: &[PairedTables], tx: &Transaction) -> Pairing {
    let mut result = Pairing::default();
    for (index, tables) in migrations.iter().enumerate() {
        // sides[0]: the old table; sides[1..]: each shadow.
        let mut sides: Vec<Effects> = (0..=tables.shadows.len()).map(|_| Effects::default()).collect();
        for change in &tx.changes {
            let side = if change.relation == tables.old {
                &mut sides[0]
            } else if let Some(i) = tables.shadows.iter().position(|s| *s == change.relation) {
                &mut sides[i + 1]
            } else {
                continue;
            };
            match (&change.key, change.op) {
                (_, Op::Truncate) | (None, _) => side.truncated = true,
                (Some(key), Op::Delete) => {
                    side.changed += 1;
                    side.add(Class::Delete, key, Op::Delete);
                }
                (Some(key), op) => {
                    side.changed += 1;
                    if let Some(old_key) = &change.old_key {
                        side.add(Class::Delete, old_key, op);
                    }
                    side.add(Class::Write, key, op);
                }
            }
        }
        let old = sides.remove(0);
        let shadows = sides;
        let shadow_changed: u64 = shadows.iter().map(|s| s.changed).sum();
        if let Some(source) = tx.source {
            let source = match source {
                Source::Backfill => RowSource::Backfill,
                Source::Repair => RowSource::Repair,
            };
            count(&mut result, index, source, shadow_changed);
            continue;
        }
        let mut unpaired_shadow = 0;
        // An old change missing from any shadow is one candidate (reported once however many miss it).
        let mut reported: std::collections::HashSet<(Class, Key)> = std::collections::HashSet::new();
        let mut old_truncate_reported = false;
        for shadow in &shadows {
            for (side, mine, theirs) in [(Side::Old, &old, shadow), (Side::Shadow, shadow, &old)] {
                for entry in &mine.order {
                    if theirs.rows.contains_key(entry) {
                        continue;
                    }
                    if side == Side::Shadow {
                        unpaired_shadow += 1;
                    } else if !reported.insert(entry.clone()) {
                        continue;
                    }
                    let op = mine.rows[entry];
                    result.candidates.push(Candidate { migration: index, side, op, key: Some(entry.1.clone()) });
                }
                if mine.truncated && !theirs.truncated {
                    if side == Side::Old {
                        if old_truncate_reported {
                            continue;
                        }
                        old_truncate_reported = true;
                    }
                    result.candidates.push(Candidate { migration: index, side, op: Op::Truncate, key: None });
                }
            }
        }
        count(&mut result, index, RowSource::Bypass, unpaired_shadow);
        count(&mut result, index, RowSource::DualWrite, shadow_changed.saturating_sub(unpaired_shadow));
    }
    result
}

fn count(result: &mut Pairing, migration: usize, source: RowSource, rows: u64) {
    if rows > 0 {
        *result.shadow_rows.entry((migration, source)).or_default() += rows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::transaction::Change;

    const OLD: u32 = 10;
    const SHADOW: u32 = 11;
    const OTHER: u32 = 12;

    fn tables() -> Vec<PairedTables> {
        vec![PairedTables { old: OLD, shadows: vec![SHADOW] }]
    }

    fn change(relation: u32, op: Op, key: &str) -> Change {
        Change { relation, op, key: Some(vec![key.to_string()]), old_key: None }
    }

    fn tx(changes: Vec<Change>) -> Transaction {
        Transaction { changes, ..Transaction::default() }
    }

    fn candidates(p: &Pairing) -> Vec<(Side, Op, Option<String>)> {
        p.candidates.iter().map(|c| (c.side, c.op, c.key.as_ref().map(|k| k.join(",")))).collect()
    }

    #[test]
    fn dual_writes_pair_by_key_and_class() {
        // An insert upserted into the other side (insert or update), updates, deletes, in any order.
        let p = pair(
            &tables(),
            &tx(vec![
                change(OLD, Op::Insert, "1"),
                change(SHADOW, Op::Update, "1"),
                change(SHADOW, Op::Insert, "2"),
                change(OLD, Op::Update, "2"),
                change(OLD, Op::Delete, "3"),
                change(SHADOW, Op::Delete, "3"),
                change(OTHER, Op::Insert, "9"),
            ]),
        );
        assert!(p.candidates.is_empty(), "{:?}", p.candidates);
        assert_eq!(p.shadow_rows.get(&(0, RowSource::DualWrite)), Some(&3));
    }

    #[test]
    fn repeated_statements_pair_as_sets() {
        let p = pair(
            &tables(),
            &tx(vec![change(OLD, Op::Update, "1"), change(OLD, Op::Update, "1"), change(SHADOW, Op::Update, "1")]),
        );
        assert!(p.candidates.is_empty());
    }

    #[test]
    fn a_change_on_one_side_only_is_a_candidate() {
        let p = pair(&tables(), &tx(vec![change(OLD, Op::Insert, "1"), change(SHADOW, Op::Delete, "2")]));
        assert_eq!(
            candidates(&p),
            vec![(Side::Old, Op::Insert, Some("1".into())), (Side::Shadow, Op::Delete, Some("2".into()))]
        );
        assert_eq!(p.shadow_rows.get(&(0, RowSource::Bypass)), Some(&1));
        assert_eq!(p.shadow_rows.get(&(0, RowSource::DualWrite)), None);
    }

    #[test]
    fn a_delete_does_not_pair_with_a_write() {
        let p = pair(&tables(), &tx(vec![change(OLD, Op::Delete, "1"), change(SHADOW, Op::Update, "1")]));
        assert_eq!(
            candidates(&p),
            vec![(Side::Old, Op::Delete, Some("1".into())), (Side::Shadow, Op::Update, Some("1".into()))]
        );
    }

    #[test]
    fn a_key_move_is_a_delete_and_a_write() {
        let moved =
            Change { relation: OLD, op: Op::Update, key: Some(vec!["2".into()]), old_key: Some(vec!["1".into()]) };
        let p = pair(&tables(), &tx(vec![moved.clone(), change(SHADOW, Op::Insert, "2")]));
        assert_eq!(candidates(&p), vec![(Side::Old, Op::Update, Some("1".into()))]);
        let p = pair(&tables(), &tx(vec![moved, change(SHADOW, Op::Insert, "2"), change(SHADOW, Op::Delete, "1")]));
        assert!(p.candidates.is_empty());
    }

    #[test]
    fn truncates_pair_only_with_a_truncate_of_the_other_table() {
        let truncate = |relation| Change { relation, op: Op::Truncate, key: None, old_key: None };
        assert!(pair(&tables(), &tx(vec![truncate(OLD), truncate(SHADOW)])).candidates.is_empty());
        let p = pair(&tables(), &tx(vec![truncate(SHADOW)]));
        assert_eq!(candidates(&p), vec![(Side::Shadow, Op::Truncate, None)]);
    }

    #[test]
    fn job_transactions_are_attributed_never_candidates() {
        for (source, expected) in [(Source::Backfill, RowSource::Backfill), (Source::Repair, RowSource::Repair)] {
            let mut t = tx(vec![change(SHADOW, Op::Insert, "1"), change(SHADOW, Op::Delete, "2")]);
            t.source = Some(source);
            let p = pair(&tables(), &t);
            assert!(p.candidates.is_empty());
            assert_eq!(p.shadow_rows.get(&(0, expected)), Some(&2));
        }
    }

    #[test]
    fn migrations_are_paired_separately() {
        let two = vec![PairedTables { old: OLD, shadows: vec![SHADOW] }, PairedTables { old: 20, shadows: vec![21] }];
        // A write to the first migration's old table does not pair with the second's shadow.
        let p = pair(&two, &tx(vec![change(OLD, Op::Insert, "1"), change(21, Op::Insert, "1")]));
        let got: Vec<_> = p.candidates.iter().map(|c| (c.migration, c.side)).collect();
        assert_eq!(got, vec![(0, Side::Old), (1, Side::Shadow)]);
    }

    #[test]
    fn a_split_pairs_the_old_table_with_every_shadow() {
        let split = vec![PairedTables { old: OLD, shadows: vec![SHADOW, OTHER] }];
        // Written on the old table and both targets: paired, every shadow row counted as a dual write.
        let both = pair(
            &split,
            &tx(vec![change(OLD, Op::Update, "1"), change(SHADOW, Op::Update, "1"), change(OTHER, Op::Insert, "1")]),
        );
        assert!(both.candidates.is_empty(), "{:?}", both.candidates);
        assert_eq!(both.shadow_rows.get(&(0, RowSource::DualWrite)), Some(&2));
        // One target missed: one candidate on the old side, reported once.
        let missed = pair(&split, &tx(vec![change(OLD, Op::Delete, "2"), change(SHADOW, Op::Delete, "2")]));
        assert_eq!(candidates(&missed), vec![(Side::Old, Op::Delete, Some("2".into()))]);
        // Both targets missed: still one candidate for the key.
        let none = pair(&split, &tx(vec![change(OLD, Op::Insert, "3")]));
        assert_eq!(candidates(&none), vec![(Side::Old, Op::Insert, Some("3".into()))]);
        // A write to the second target alone is a bypass of the shadow side.
        let bypass = pair(&split, &tx(vec![change(OTHER, Op::Insert, "4")]));
        assert_eq!(candidates(&bypass), vec![(Side::Shadow, Op::Insert, Some("4".into()))]);
        assert_eq!(bypass.shadow_rows.get(&(0, RowSource::Bypass)), Some(&1));
    }
}
