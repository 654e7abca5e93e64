//! Splitting one old table into several shadow tables (`[[migration.targets]]`, README: Splitting a table):
//! the targets of a split, how their forward mappings make up the migration's one new shape, and their
//! validation. A migration with one `shadow` is the split with a single target; every part of dualwrite
//! that writes or reads the shadow asks `Migration::targets` for the tables it must touch.
//!
//! The new shape of a split is the targets joined on the key: every target holds the key columns (mapped
//! the same way in each), and every other new-shape column lives in exactly one target. Its mirror image,
//! several old tables merged into one shadow, is `crate::merge`.

use std::collections::{HashMap, HashSet};

use crate::names::TableName;

/// One shadow table of a split: the table and `its column = expression over old columns`, key included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    pub table: TableName,
    /// Shadow column -> SQL expression over old columns, in file order; maps every key column.
    pub forward: Vec<(String, String)>,
}

/// The migration's `forward` (its whole new shape) made of a split's targets: the key columns as the first
/// target maps them, then each target's other columns in file order.
pub(crate) fn merged_forward(key: &[String], targets: &[SplitTarget]) -> Vec<(String, String)> {
    let Some(first) = targets.first() else { return Vec::new() };
    let mut out: Vec<(String, String)> = first.forward.iter().filter(|(c, _)| key.contains(c)).cloned().collect();
    for t in targets {
        out.extend(t.forward.iter().filter(|(c, _)| !key.contains(c)).cloned());
    }
    out
}

/// The parts of a migration a split's check reads.
pub(crate) struct SplitOf<'a> {
    pub table: &'a TableName,
    pub key: &'a [String],
    pub shadow: &'a TableName,
    pub forward: &'a [(String, String)],
    pub split: &'a [SplitTarget],
}

/// Checks a split's targets against each other and the migration; `Err((field, message))`.
pub(crate) fn check(m: SplitOf<'_>) -> Result<(), (String, String)> {
    if m.split.len() < 2 {
        return Err(("targets".into(), "a split needs at least two [[migration.targets]]".into()));
    }
    let mut tables: HashSet<TableName> = HashSet::new();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, t) in m.split.iter().enumerate() {
        let field = |f: &str| format!("targets[{}].{f}", i + 1);
        let table = t.table.qualified();
        if table == m.table.qualified() {
            return Err((field("table"), "must differ from `table`".into()));
        }
        if !tables.insert(table) {
            return Err((field("table"), format!("`{}` is already a target of this migration", t.table)));
        }
        for k in m.key {
            let Some((_, expr)) = t.forward.iter().find(|(c, _)| c == k) else {
                return Err((field("forward"), format!("must map key column `{k}` (every target holds the key)")));
            };
            // The first target was checked first, so it maps `k`.
            let first = m.split[0].forward.iter().find(|(c, _)| c == k).map(|(_, e)| e.as_str()).unwrap_or_default();
            if expr != first {
                return Err((
                    field(&format!("forward.{k}")),
                    format!("key column `{k}` must be mapped as in the first target (`{first}`)"),
                ));
            }
        }
        for (column, _) in t.forward.iter().filter(|(c, _)| !m.key.contains(c)) {
            if let Some(other) = owner.insert(column, i) {
                return Err((
                    field(&format!("forward.{column}")),
                    format!(
                        "column `{column}` is already held by targets[{}]; a non-key column lives in one target",
                        other + 1
                    ),
                ));
            }
        }
    }
    if *m.shadow != m.split[0].table {
        return Err(("shadow".into(), "must be the first target's table".into()));
    }
    if m.forward != merged_forward(m.key, m.split) {
        return Err(("forward".into(), "must be the targets' mappings, key first (merged_forward)".into()));
    }
    Ok(())
}
