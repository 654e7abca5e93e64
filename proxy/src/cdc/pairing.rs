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
//!
//! A merge (several old tables, one shadow) pairs looser, because its dual write changes the shadow row
//! with a different operation than the source's: a DELETE of one source's row updates the shadow row
//! (that source's columns set to NULL) while another source holds the key, and deletes it only when none
//! does. So any change to a source at key k pairs with any change to the shadow at k, and a shadow change
//! at k needs a change to some source at k. A TRUNCATE of some sources is followed by the proxy's sync,
//! row-level UPDATEs and DELETEs of the shadow at the keys those sources held (none when the shadow held
//! none): those shadow changes are taken as the sync's, and the source's TRUNCATE is always handed on as a
//! candidate, which `bypass` confirms against the tables (the log cannot tell an empty sync from none).
//! A TRUNCATE of every source pairs with a TRUNCATE of the shadow, which is what the proxy sends then.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::transaction::{Key, Op, Source, Transaction};

/// One migration as the watch sees it: the relation ids of its old tables (one, or a merge's sources in
/// rules order) and of its shadow tables (one, or a split's targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedTables {
    pub old: Vec<u32>,
    pub shadows: Vec<u32>,
}

impl PairedTables {
    fn is_merge(&self) -> bool {
        self.old.len() > 1
    }
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
    /// Which table of its side: an index into [`PairedTables::old`] or [`PairedTables::shadows`].
    pub table: usize,
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
        if tables.is_merge() {
            pair_merge(&mut result, index, tables, tx);
            continue;
        }
        // sides[0]: the old table; sides[1..]: each shadow.
        let mut sides: Vec<Effects> = (0..=tables.shadows.len()).map(|_| Effects::default()).collect();
        for change in &tx.changes {
            let side = if tables.old.first() == Some(&change.relation) {
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
        let mut reported: HashSet<(Class, Key)> = HashSet::new();
        let mut old_truncate_reported = false;
        for (position, shadow) in shadows.iter().enumerate() {
            for (side, mine, theirs) in [(Side::Old, &old, shadow), (Side::Shadow, shadow, &old)] {
                let table = if side == Side::Old { 0 } else { position };
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
                    let key = Some(entry.1.clone());
                    result.candidates.push(Candidate { migration: index, side, table, op, key });
                }
                if mine.truncated && !theirs.truncated {
                    if side == Side::Old {
                        if old_truncate_reported {
                            continue;
                        }
                        old_truncate_reported = true;
                    }
                    result.candidates.push(Candidate { migration: index, side, table, op: Op::Truncate, key: None });
                }
            }
        }
        count(&mut result, index, RowSource::Bypass, unpaired_shadow);
        count(&mut result, index, RowSource::DualWrite, shadow_changed.saturating_sub(unpaired_shadow));
    }
    result
}

/// The key-level effects of a transaction on one table of a merge, whatever the operation.
#[derive(Default)]
struct Touched {
    /// key -> the first operation that changed it.
    rows: HashMap<Key, Op>,
    /// Keys in order, to report candidates in a stable order.
    order: Vec<Key>,
    /// Keys some INSERT wrote (the proxy's sync after a TRUNCATE never inserts).
    inserted: HashSet<Key>,
    changed: u64,
    truncated: bool,
}

impl Touched {
    fn add(&mut self, key: &Key, op: Op) {
        if op == Op::Insert {
            self.inserted.insert(key.clone());
        }
        if !self.rows.contains_key(key) {
            self.rows.insert(key.clone(), op);
            self.order.push(key.clone());
        }
    }
}

/// Pairs the changes of `tx` for merge `index` (see the module's comment).
fn pair_merge(result: &mut Pairing, index: usize, tables: &PairedTables, tx: &Transaction) {
    let mut sources: Vec<Touched> = tables.old.iter().map(|_| Touched::default()).collect();
    let mut shadow = Touched::default();
    for change in &tx.changes {
        let side = if tables.shadows.contains(&change.relation) {
            &mut shadow
        } else if let Some(i) = tables.old.iter().position(|t| *t == change.relation) {
            &mut sources[i]
        } else {
            continue;
        };
        match (&change.key, change.op) {
            (_, Op::Truncate) | (None, _) => side.truncated = true,
            (Some(key), op) => {
                side.changed += 1;
                if let Some(old_key) = &change.old_key {
                    side.add(old_key, op);
                }
                side.add(key, op);
            }
        }
    }
    if let Some(source) = tx.source {
        let source = match source {
            Source::Backfill => RowSource::Backfill,
            Source::Repair => RowSource::Repair,
        };
        count(result, index, source, shadow.changed);
        return;
    }
    // A key several sources changed without the shadow is one candidate, as for a split.
    let mut reported: HashSet<&Key> = HashSet::new();
    for (table, source) in sources.iter().enumerate() {
        for key in &source.order {
            if shadow.rows.contains_key(key) || !reported.insert(key) {
                continue;
            }
            let op = source.rows[key];
            result.candidates.push(Candidate { migration: index, side: Side::Old, table, op, key: Some(key.clone()) });
        }
    }
    let some_source_truncated = sources.iter().any(|s| s.truncated);
    let mut unpaired_shadow = 0;
    for key in &shadow.order {
        if sources.iter().any(|s| s.rows.contains_key(key)) {
            continue;
        }
        if some_source_truncated && !shadow.inserted.contains(key) {
            continue;
        }
        unpaired_shadow += 1;
        let op = shadow.rows[key];
        result.candidates.push(Candidate {
            migration: index,
            side: Side::Shadow,
            table: 0,
            op,
            key: Some(key.clone()),
        });
    }
    if !shadow.truncated {
        for (table, _) in sources.iter().enumerate().filter(|(_, s)| s.truncated) {
            result.candidates.push(Candidate { migration: index, side: Side::Old, table, op: Op::Truncate, key: None });
        }
    } else if !sources.iter().all(|s| s.truncated) {
        result.candidates.push(Candidate {
            migration: index,
            side: Side::Shadow,
            table: 0,
            op: Op::Truncate,
            key: None,
        });
    }
    count(result, index, RowSource::Bypass, unpaired_shadow);
    count(result, index, RowSource::DualWrite, shadow.changed.saturating_sub(unpaired_shadow));
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
        vec![PairedTables { old: vec![OLD], shadows: vec![SHADOW] }]
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
        let two = vec![
            PairedTables { old: vec![OLD], shadows: vec![SHADOW] },
            PairedTables { old: vec![20], shadows: vec![21] },
        ];
        // A write to the first migration's old table does not pair with the second's shadow.
        let p = pair(&two, &tx(vec![change(OLD, Op::Insert, "1"), change(21, Op::Insert, "1")]));
        let got: Vec<_> = p.candidates.iter().map(|c| (c.migration, c.side)).collect();
        assert_eq!(got, vec![(0, Side::Old), (1, Side::Shadow)]);
    }

    #[test]
    fn a_split_pairs_the_old_table_with_every_shadow() {
        let split = vec![PairedTables { old: vec![OLD], shadows: vec![SHADOW, OTHER] }];
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

    // A merge: sources ACCOUNTS and PROFILES into USERS.
    const ACCOUNTS: u32 = 30;
    const PROFILES: u32 = 31;
    const USERS: u32 = 32;

    fn merge() -> Vec<PairedTables> {
        vec![PairedTables { old: vec![ACCOUNTS, PROFILES], shadows: vec![USERS] }]
    }

    fn truncate(relation: u32) -> Change {
        Change { relation, op: Op::Truncate, key: None, old_key: None }
    }

    fn tables_hit(p: &Pairing) -> Vec<(Side, usize, Op, Option<String>)> {
        p.candidates.iter().map(|c| (c.side, c.table, c.op, c.key.as_ref().map(|k| k.join(",")))).collect()
    }

    #[test]
    fn a_merge_pairs_any_change_of_a_source_with_any_change_of_the_shadow_at_the_key() {
        // What the merge's dual write does: an insert upserts the shadow row; a DELETE of one source while
        // the other holds the key nulls its columns (an UPDATE of the shadow); a DELETE of the last source
        // deletes the row; either source may be written first.
        let p = pair(
            &merge(),
            &tx(vec![
                change(ACCOUNTS, Op::Insert, "1"),
                change(USERS, Op::Insert, "1"),
                change(PROFILES, Op::Insert, "1"),
                change(USERS, Op::Update, "1"),
                change(PROFILES, Op::Delete, "1"),
                change(USERS, Op::Update, "1"),
                change(ACCOUNTS, Op::Delete, "2"),
                change(USERS, Op::Delete, "2"),
                change(PROFILES, Op::Update, "3"),
                change(USERS, Op::Insert, "3"),
            ]),
        );
        assert!(p.candidates.is_empty(), "{:?}", p.candidates);
        assert_eq!(p.shadow_rows.get(&(0, RowSource::DualWrite)), Some(&5));
    }

    #[test]
    fn a_merge_source_change_without_the_shadow_is_a_candidate_naming_its_source() {
        let p = pair(&merge(), &tx(vec![change(PROFILES, Op::Delete, "7"), change(ACCOUNTS, Op::Update, "8")]));
        assert_eq!(
            tables_hit(&p),
            vec![(Side::Old, 0, Op::Update, Some("8".into())), (Side::Old, 1, Op::Delete, Some("7".into()))]
        );
        assert!(p.shadow_rows.is_empty());
        // Both sources at one key, the shadow untouched: one candidate for the key.
        let p = pair(&merge(), &tx(vec![change(ACCOUNTS, Op::Update, "9"), change(PROFILES, Op::Update, "9")]));
        assert_eq!(tables_hit(&p), vec![(Side::Old, 0, Op::Update, Some("9".into()))]);
    }

    #[test]
    fn a_merge_shadow_change_needs_a_change_of_some_source_at_the_key() {
        let p = pair(
            &merge(),
            &tx(vec![
                change(USERS, Op::Update, "1"),
                change(PROFILES, Op::Update, "2"),
                change(USERS, Op::Delete, "2"),
                change(ACCOUNTS, Op::Insert, "3"),
            ]),
        );
        assert_eq!(
            tables_hit(&p),
            vec![(Side::Old, 0, Op::Insert, Some("3".into())), (Side::Shadow, 0, Op::Update, Some("1".into()))]
        );
        assert_eq!(p.shadow_rows.get(&(0, RowSource::Bypass)), Some(&1));
        assert_eq!(p.shadow_rows.get(&(0, RowSource::DualWrite)), Some(&1));
    }

    #[test]
    fn a_merge_source_key_move_pairs_with_the_shadow_at_both_keys() {
        let moved =
            Change { relation: PROFILES, op: Op::Update, key: Some(vec!["2".into()]), old_key: Some(vec!["1".into()]) };
        let p =
            pair(&merge(), &tx(vec![moved.clone(), change(USERS, Op::Update, "1"), change(USERS, Op::Insert, "2")]));
        assert!(p.candidates.is_empty(), "{:?}", p.candidates);
        let p = pair(&merge(), &tx(vec![moved, change(USERS, Op::Insert, "2")]));
        assert_eq!(tables_hit(&p), vec![(Side::Old, 1, Op::Update, Some("1".into()))]);
    }

    #[test]
    fn a_truncate_of_a_merge_source_excuses_the_sync_and_is_left_to_the_tables() {
        // The proxy's TRUNCATE of one source: its sync updates and deletes shadow rows at keys no source
        // changed in the transaction. Those are the sync's; the TRUNCATE itself is a candidate, since the
        // log cannot show whether an empty sync ran (the watch asks the tables).
        let p = pair(
            &merge(),
            &tx(vec![truncate(PROFILES), change(USERS, Op::Update, "1"), change(USERS, Op::Delete, "2")]),
        );
        assert_eq!(tables_hit(&p), vec![(Side::Old, 1, Op::Truncate, None)]);
        assert_eq!(p.shadow_rows.get(&(0, RowSource::DualWrite)), Some(&2));
        // The sync never inserts: a shadow INSERT in that transaction still needs a source change.
        let p = pair(&merge(), &tx(vec![truncate(PROFILES), change(USERS, Op::Insert, "3")]));
        assert_eq!(
            tables_hit(&p),
            vec![(Side::Shadow, 0, Op::Insert, Some("3".into())), (Side::Old, 1, Op::Truncate, None)]
        );
        // Without a source TRUNCATE, the same shadow changes are candidates.
        let p = pair(&merge(), &tx(vec![change(USERS, Op::Delete, "2")]));
        assert_eq!(tables_hit(&p), vec![(Side::Shadow, 0, Op::Delete, Some("2".into()))]);
    }

    #[test]
    fn a_truncate_of_the_merged_shadow_pairs_only_with_every_source_truncated() {
        let all = pair(&merge(), &tx(vec![truncate(ACCOUNTS), truncate(PROFILES), truncate(USERS)]));
        assert!(all.candidates.is_empty(), "{:?}", all.candidates);
        let some = pair(&merge(), &tx(vec![truncate(ACCOUNTS), truncate(USERS)]));
        assert_eq!(tables_hit(&some), vec![(Side::Shadow, 0, Op::Truncate, None)]);
        let alone = pair(&merge(), &tx(vec![truncate(USERS)]));
        assert_eq!(tables_hit(&alone), vec![(Side::Shadow, 0, Op::Truncate, None)]);
    }

    #[test]
    fn merge_job_transactions_are_attributed_never_candidates() {
        let mut t = tx(vec![change(USERS, Op::Insert, "1"), change(USERS, Op::Update, "2")]);
        t.source = Some(Source::Repair);
        let p = pair(&merge(), &t);
        assert!(p.candidates.is_empty());
        assert_eq!(p.shadow_rows.get(&(0, RowSource::Repair)), Some(&2));
    }
}
