//! Merging several old tables into one shadow table (`[[migration.sources]]`, README: Merging tables): the
//! sources of a merge, how their mappings make up the migration's one `forward` and `backward`, and their
//! validation. The mirror image of a split (`crate::split`): every source holds the key (mapped the same way
//! in each), and every other shadow column comes from exactly one source.
//!
//! The merged shadow holds one row per key that any source holds: the sources FULL JOINed on the key, each
//! source's columns NULL where it has no row. To tell from the shadow row alone whether a source's row
//! exists (which a DELETE of another source must know, and which only the shadow row's latest version can
//! say under concurrency: see `compiled::compile_source`), every source names a `present` column: a shadow column of
//! its own that is never NULL while its row exists (map a NOT NULL old column to it).

use std::collections::{HashMap, HashSet};

use crate::names::TableName;

/// The refusal of `table` given as a list: a merge names each old table with its mappings.
pub const SEVERAL_TABLES: &str = "a migration's `table` is one old table; to merge several old tables into one \
    shadow, give one [[migration.sources]] per old table, each with its mappings (README: Merging tables)";

/// One old table of a merge: the table, the shadow column that shows its row exists, and its mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSource {
    pub table: TableName,
    /// A non-key shadow column of this source that is never NULL while the source's row exists.
    pub present: String,
    /// Shadow column -> SQL expression over this source's columns, key included, in file order.
    pub forward: Vec<(String, String)>,
    /// This source's column -> SQL expression over shadow columns, key included, in file order.
    pub backward: Vec<(String, String)>,
}

impl MergeSource {
    /// This source's old columns (the keys of its `backward`).
    pub fn old_columns(&self) -> impl Iterator<Item = &str> {
        self.backward.iter().map(|(c, _)| c.as_str())
    }

    /// The shadow columns this source writes (the keys of its `forward`).
    pub fn shadow_columns(&self) -> impl Iterator<Item = &str> {
        self.forward.iter().map(|(c, _)| c.as_str())
    }
}

/// The migration-level mapping made of the sources' mappings: the key columns as the first source maps
/// them, then each source's other columns in file order (`forward` with `|s| &s.forward`).
pub(crate) fn merged_mapping(
    key: &[String],
    sources: &[MergeSource],
    side: impl Fn(&MergeSource) -> &[(String, String)],
) -> Vec<(String, String)> {
    let Some(first) = sources.first() else { return Vec::new() };
    let mut out: Vec<(String, String)> = side(first).iter().filter(|(c, _)| key.contains(c)).cloned().collect();
    for s in sources {
        out.extend(side(s).iter().filter(|(c, _)| !key.contains(c)).cloned());
    }
    out
}

/// The parts of a migration a merge's check reads.
pub(crate) struct MergeOf<'a> {
    pub table: &'a TableName,
    pub shadow: &'a TableName,
    pub key: &'a [String],
    pub forward: &'a [(String, String)],
    pub backward: &'a [(String, String)],
    pub sources: &'a [MergeSource],
}

/// Checks a merge's sources against each other and the migration; `Err((field, message))`.
pub(crate) fn check(m: MergeOf<'_>) -> Result<(), (String, String)> {
    if m.sources.len() < 2 {
        return Err(("sources".into(), "a merge needs at least two [[migration.sources]]".into()));
    }
    let mut tables: HashSet<TableName> = HashSet::new();
    let mut shadow_owner: HashMap<&str, usize> = HashMap::new();
    let mut old_owner: HashMap<&str, usize> = HashMap::new();
    for (i, s) in m.sources.iter().enumerate() {
        let field = |f: &str| format!("sources[{}].{f}", i + 1);
        let table = s.table.qualified();
        if table == m.shadow.qualified() {
            return Err((field("table"), "must differ from `shadow`".into()));
        }
        if !tables.insert(table) {
            return Err((field("table"), format!("`{}` is already a source of this migration", s.table)));
        }
        for (side, map, first) in
            [("forward", &s.forward, &m.sources[0].forward), ("backward", &s.backward, &m.sources[0].backward)]
        {
            for k in m.key {
                let Some((_, expr)) = map.iter().find(|(c, _)| c == k) else {
                    return Err((field(side), format!("must map key column `{k}` (every source holds the key)")));
                };
                // The first source was checked first, so it maps `k`.
                let first = first.iter().find(|(c, _)| c == k).map(|(_, e)| e.as_str()).unwrap_or_default();
                if expr != first {
                    return Err((
                        field(&format!("{side}.{k}")),
                        format!("key column `{k}` must be mapped as in the first source (`{first}`)"),
                    ));
                }
            }
        }
        for (owner, map, what) in
            [(&mut shadow_owner, &s.forward, "shadow column"), (&mut old_owner, &s.backward, "old column")]
        {
            for (column, _) in map.iter().filter(|(c, _)| !m.key.contains(c)) {
                if let Some(other) = owner.insert(column, i) {
                    let side = if what == "shadow column" { "forward" } else { "backward" };
                    return Err((
                        field(&format!("{side}.{column}")),
                        format!(
                            "{what} `{column}` is already mapped by sources[{}]; outside the key, a column belongs \
                             to one source (the sources are joined on the key)",
                            other + 1
                        ),
                    ));
                }
            }
        }
        if m.key.contains(&s.present) || !s.forward.iter().any(|(c, _)| *c == s.present) {
            return Err((
                field("present"),
                format!(
                    "`{}` must be a non-key shadow column of this source's [forward] (one never NULL while the \
                     source's row exists)",
                    s.present
                ),
            ));
        }
    }
    if *m.table != m.sources[0].table {
        return Err(("table".into(), "must be the first source's table".into()));
    }
    if m.forward != merged_mapping(m.key, m.sources, |s| &s.forward) {
        return Err(("forward".into(), "must be the sources' forward mappings, key first".into()));
    }
    if m.backward != merged_mapping(m.key, m.sources, |s| &s.backward) {
        return Err(("backward".into(), "must be the sources' backward mappings, key first".into()));
    }
    Ok(())
}
