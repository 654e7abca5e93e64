//! Rules compiled for rewriting: each migration's mappings parsed once into the AST pieces every rewrite
//! clones (the sync upsert and delete of each table written from the other side's rows — every shadow of a
//! split —, the derived-table views), and the text matcher behind the cheap "does this statement name a
//! migrated table" check. Each direction is compiled by `direction`; what is particular to a merge (each
//! source's upsert filling the other sources' columns, its DELETE deciding on the shadow row, its mirror)
//! is compiled here.
//!
//! The pieces are produced by parsing SQL generated from the rules alone (quoted identifiers and the
//! already-parsed mapping expressions), never from client SQL; client statements are only ever edited as
//! ASTs.

use aho_corasick::AhoCorasick;
use sqlparser::ast::{Query, Statement};

use crate::direction::{compile_direction, conflict_action, Direction, SyncTarget, PRIMARY_CTE};
use crate::model::{parse_mapping_expr, Migration, Phase, RuleSet};
use crate::names::{quote_ident, quote_literal, TableName};
use crate::route::{Route, Side};
use crate::template::parse_statement;

/// All migrations of a rule set, ready for rewriting.
pub(crate) struct Compiled {
    pub migrations: Vec<CompiledMigration>,
    /// Case-insensitive matcher over the bare name of every migrated table and every shadow table.
    matcher: Option<AhoCorasick>,
}

pub(crate) struct CompiledMigration {
    pub name: String,
    pub table: TableName,
    /// The shadow table (a split's first target).
    pub shadow: TableName,
    /// Every shadow table; more than one for a split (`split`), whose new shape no single table holds.
    pub shadows: Vec<TableName>,
    /// For a split: `SELECT <new-shape columns> FROM t1 JOIN t2 USING (key) ...`, the new shape read from
    /// its targets; `None` with one shadow (read by name).
    pub joined: Option<Query>,
    pub key: Vec<String>,
    /// Writes the shadow from old-shaped rows; presents the shadow's shape over the old table.
    pub forward: Direction,
    /// Writes the old table from shadow-shaped rows; presents the old shape over the shadow.
    pub backward: Direction,
    /// The old tables of a merge (`crate::merge`), each with its own sync of the shadow; empty otherwise.
    pub sources: Vec<CompiledSource>,
    /// Set when the rules could not be compiled (only possible for a rule set built in code without
    /// validation): every statement needing this migration is refused with this explanation.
    pub broken: Option<String>,
}

impl CompiledMigration {
    /// The mapping that produces `target`'s shape from the other side's rows.
    pub fn producing(&self, target: Side) -> &Direction {
        match target {
            Side::New => &self.forward,
            Side::Old => &self.backward,
        }
    }

    pub fn is_split(&self) -> bool {
        self.shadows.len() > 1
    }

    pub fn is_merge(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The merge source a reference to `name` denotes (`reaches`: an unqualified name reaches the migrated
    /// tables in this session), if this migration merges tables.
    pub fn source_of(&self, name: &TableName, reaches: bool) -> Option<&CompiledSource> {
        self.sources.iter().find(|s| name.denotes(&s.table, reaches))
    }
}

/// One old table of a merge, compiled: how its rows write their columns of the merged shadow row.
pub(crate) struct CompiledSource {
    pub table: TableName,
    /// This source's rows -> its shadow columns. Its one sync upserts the shadow row: the insert fills the
    /// other sources' columns from their tables (LEFT JOINed on the key), the update sets only this
    /// source's columns, so a row first written by one source is whole and a later one never overwrites
    /// another source's columns.
    pub forward: Direction,
    /// The CTEs a DELETE of this source's rows syncs the shadow with (`__dw_lock`, `__dw_shadow`,
    /// `__dw_shadow_null`; see `compile_source`).
    pub delete: Vec<(String, Statement)>,
    /// This source's shape over the shadow: `SELECT <backward> FROM shadow WHERE <present> IS NOT NULL`.
    pub view: Query,
    /// The shadow column never NULL while this source's row exists (`MergeSource::present`).
    pub present: String,
    /// This source's non-key shadow columns: what a TRUNCATE of it sets to NULL (`merge_truncate`).
    pub own: Vec<String>,
    /// This source written from the shadow's rows (`crate::mirror`): a write naming the shadow mirrored.
    pub mirror: Direction,
}

/// How a Unicode-escaped identifier starts (`U&"`, any case).
const UNICODE_IDENTIFIER: &str = "u&\"";

impl Compiled {
    pub fn new(rules: &RuleSet) -> Compiled {
        let migrations: Vec<CompiledMigration> = rules.migrations.iter().map(compile_migration).collect();
        let mut patterns: Vec<&str> = migrations
            .iter()
            .flat_map(|m| std::iter::once(&m.table).chain(m.sources.iter().map(|s| &s.table)).chain(&m.shadows))
            .map(|t| t.name.as_str())
            .collect();
        // A Unicode-escaped identifier (`U&"\0075sers"`) can spell any name without its letters.
        if !patterns.is_empty() {
            patterns.push(UNICODE_IDENTIFIER);
        }
        let matcher = AhoCorasick::builder().ascii_case_insensitive(true).build(&patterns).ok();
        Compiled { migrations, matcher }
    }

    /// True if `sql` may name a migrated table: a substring test, so false positives (a column or a longer
    /// table name containing the name) only cost a parse, and a statement it says no to cannot touch one.
    pub fn may_mention(&self, sql: &str) -> bool {
        match &self.matcher {
            Some(m) => m.is_match(sql),
            // Building the matcher only fails on absurd pattern sizes; stay safe and parse everything.
            None => !self.migrations.is_empty(),
        }
    }

    /// The migration whose old (logical) table a reference in client SQL denotes, in a session on `route`.
    pub fn migration_of(&self, name: &TableName, route: &Route) -> Option<usize> {
        self.migrations.iter().enumerate().position(|(i, m)| {
            let reaches = route.unqualified_reaches(i);
            name.denotes(&m.table, reaches) || m.source_of(name, reaches).is_some()
        })
    }

    /// The migration in `dual_write` or `cutover` one of whose shadow tables a reference in client SQL
    /// denotes, in a session on `route`: while both tables are kept in step, such a write would change the
    /// shadow alone (see `reads::ReadRouter::refuse_shadow_write`).
    pub fn kept_shadow_of(&self, name: &TableName, route: &Route) -> Option<usize> {
        self.migrations.iter().enumerate().position(|(i, m)| {
            let reaches = route.shadow_unqualified_reaches(i);
            matches!(route.get(i).phase, Phase::DualWrite | Phase::Cutover)
                && m.shadows.iter().any(|shadow| name.denotes(shadow, reaches))
        })
    }
}

fn compile_migration(m: &Migration) -> CompiledMigration {
    // The tables the proxy writes and reads itself are named with their schema, so that what they mean
    // never depends on a session's search_path (an unqualified rules-file name is in `public`).
    let (table, shadow) = (m.table.qualified(), m.shadow.qualified());
    let targets = m.targets();
    let shadows: Vec<TableName> = targets.iter().map(|t| t.table.qualified()).collect();
    // The new shape's source: the shadow, or a split's targets joined on the key.
    let key_cols = m.key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let new_source =
        shadows.iter().skip(1).fold(shadows[0].to_string(), |acc, t| format!("{acc} JOIN {t} USING ({key_cols})"));
    let built = (|| -> Result<(Direction, Direction, Option<Query>), String> {
        let forward_targets = targets
            .iter()
            .zip(&shadows)
            .enumerate()
            .map(|(i, (t, table))| {
                let cte = if i == 0 { "__dw_shadow".to_string() } else { format!("__dw_shadow_{}", i + 1) };
                let columns = t.forward.iter().map(|(c, _)| c.clone()).collect();
                SyncTarget::every_row(table.clone(), columns, cte)
            })
            .collect::<Vec<_>>();
        let forward = compile_direction(m, &m.forward, &table.to_string(), &forward_targets)?;
        let old_target =
            SyncTarget::every_row(table.clone(), m.old_columns().map(str::to_string).collect(), "__dw_old".into());
        let backward = compile_direction(m, &m.backward, &new_source, &[old_target])?;
        let joined = if shadows.len() > 1 {
            let columns = m.shadow_columns().map(quote_ident).collect::<Vec<_>>().join(", ");
            match parse_statement(&format!("SELECT {columns} FROM {new_source}"))? {
                Statement::Query(q) => Some(*q),
                _ => return Err("joined view did not parse as a query".into()),
            }
        } else {
            None
        };
        Ok((forward, backward, joined))
    })();
    let (forward, backward, joined, broken) = match built {
        Ok((f, b, j)) => (f, b, j, None),
        Err(e) => (Direction::placeholder(), Direction::placeholder(), None, Some(e)),
    };
    let (sources, broken) = match m.merge.iter().enumerate().map(|(i, _)| compile_source(m, i, &shadow)).collect() {
        Ok(sources) => (sources, broken),
        Err(e) => (Vec::new(), broken.or(Some(e))),
    };
    CompiledMigration {
        name: m.name.clone(),
        table,
        shadow,
        shadows,
        joined,
        key: m.key.clone(),
        forward,
        backward,
        sources,
        broken,
    }
}

/// `Direction::syncs` of a merge source's mirror (`crate::mirror`): every written row's key (a DELETE), the
/// rows holding any of its columns (upserted), the rows holding none (their keys deleted).
pub(crate) const MIRROR_EVERY_ROW: usize = 0;
pub(crate) const MIRROR_HOLDING: usize = 1;
pub(crate) const MIRROR_NOT_HOLDING: usize = 2;

/// The server-side function (created with the proxy's `dualwrite` schema, version 4) that fails a mirrored
/// write leaving a shadow row none of the sources can hold: `(held, migration, shadow, sources, key
/// columns, key)` -> true, or 23514 naming the migration and the key.
pub(crate) const MERGE_ROW_HELD_FUNCTION: &str = "dualwrite.merge_row_held";

/// `col IS NOT NULL OR ...` over a merge source's non-key shadow columns: the shadow row holds some of the
/// source's row, so the source must hold the key.
fn holds_condition(m: &Migration, source: &crate::merge::MergeSource) -> String {
    source
        .shadow_columns()
        .filter(|c| !m.key.iter().any(|k| k == c))
        .map(|c| format!("{} IS NOT NULL", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The check a mirrored write runs on each of its rows that a source stops holding: a shadow row with none
/// of any source's columns has no image in the old tables (their FULL JOIN on the key cannot show it), so
/// the write is refused in the statement, atomically, rather than leaving the shadow a row the sources
/// lack (README: Merging tables).
fn held_by_a_source_check(m: &Migration, shadow: &TableName) -> String {
    let held = m.merge.iter().map(|s| format!("({})", holds_condition(m, s))).collect::<Vec<_>>().join(" OR ");
    let sources = m.merge.iter().map(|s| s.table.qualified().to_string()).collect::<Vec<_>>().join(", ");
    let key_columns = m.key.join(", ");
    let key = m.key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    format!(
        "{MERGE_ROW_HELD_FUNCTION}({held}, {}, {}, {}, {}, ROW({key})::TEXT)",
        quote_literal(&m.name),
        quote_literal(&shadow.to_string()),
        quote_literal(&sources),
        quote_literal(&key_columns),
    )
}

/// Source `index` of merge `m` written from rows of `shadow` (a write naming the shadow, mirrored): its
/// `backward` with the three syncs above; the rows it stops holding are checked to be held by another
/// source (`held_by_a_source_check`).
fn compile_mirror(m: &Migration, index: usize, shadow: &TableName) -> Result<Direction, String> {
    let source = &m.merge[index];
    let table = source.table.qualified();
    let columns: Vec<String> = source.old_columns().map(str::to_string).collect();
    let holds = holds_condition(m, source);
    let check = held_by_a_source_check(m, shadow);
    let cte = if index == 0 { "__dw_old".to_string() } else { format!("__dw_old_{}", index + 1) };
    let target = |cte: String, filter: Option<String>| SyncTarget {
        table: table.clone(),
        columns: columns.clone(),
        cte,
        filter,
    };
    compile_direction(
        m,
        &source.backward,
        &shadow.to_string(),
        &[
            target(cte.clone(), None),
            target(cte.clone(), Some(holds.clone())),
            target(format!("{cte}_gone"), Some(format!("NOT ({holds}) AND {check}"))),
        ],
    )
}

/// Compiles merge source `index` of `m` into the shadow `shadow` (README: Merging tables).
///
/// A DELETE of source rows must null their columns in the shadow row, or delete the row when no other
/// source holds the key. That decision has to be made on the shadow row's latest version: two sessions
/// deleting the two halves of one key (or one deleting while the other inserts) each see the other's
/// change only after it commits, and READ COMMITTED rechecks only the row a statement writes, never the
/// other tables it reads. So the shadow rows are first locked with `SELECT ... FOR UPDATE` (which waits for
/// any writer of the key — every write of any source writes the shadow row — and returns the latest
/// version), and whether the other sources are gone is read from their `present` columns there:
///
/// ```sql
/// __dw_lock AS (SELECT __dw_t.id, (__dw_t.bio IS NULL) AS __dw_gone FROM users AS __dw_t
///               JOIN (SELECT id AS id FROM __dw_primary) AS __dw_k ON __dw_t.id = __dw_k.id FOR UPDATE OF __dw_t),
/// __dw_shadow AS (DELETE FROM users AS __dw_t USING __dw_lock AS __dw_l WHERE __dw_t.id = __dw_l.id AND __dw_l.__dw_gone),
/// __dw_shadow_null AS (UPDATE users AS __dw_t SET email = NULL FROM __dw_lock AS __dw_l
///                      WHERE __dw_t.id = __dw_l.id AND NOT __dw_l.__dw_gone)
/// ```
fn compile_source(m: &Migration, index: usize, shadow: &TableName) -> Result<CompiledSource, String> {
    let source = &m.merge[index];
    let table = source.table.qualified();
    let own: Vec<String> = source.shadow_columns().map(str::to_string).collect();
    let mut forward = compile_direction(
        m,
        &source.forward,
        &table.to_string(),
        &[SyncTarget::every_row(shadow.clone(), own, "__dw_shadow".into())],
    )?;
    let key_cols: Vec<String> = m.key.iter().map(|c| quote_ident(c)).collect();
    let key_list = key_cols.join(", ");

    // The upsert: every shadow column, the other sources' from their tables as they are.
    let mut from = format!(
        "(SELECT {} FROM {PRIMARY_CTE}) AS __dw_s{}",
        source.old_columns().map(quote_ident).collect::<Vec<_>>().join(", "),
        index + 1
    );
    for (j, other) in m.merge.iter().enumerate().filter(|(j, _)| *j != index) {
        let columns = other.old_columns().map(quote_ident).collect::<Vec<_>>().join(", ");
        from = format!(
            "{from} LEFT JOIN (SELECT {columns} FROM {}) AS __dw_s{} USING ({key_list})",
            other.table.qualified(),
            j + 1
        );
    }
    let mut columns = Vec::new();
    let mut exprs = Vec::new();
    for (column, _) in &m.forward {
        let owner = if m.key.contains(column) {
            source
        } else {
            m.merge
                .iter()
                .find(|s| s.shadow_columns().any(|c| c == column))
                .ok_or_else(|| format!("column `{column}` has no source"))?
        };
        let (_, text) =
            owner.forward.iter().find(|(c, _)| c == column).ok_or_else(|| format!("`{column}` is not mapped"))?;
        columns.push(quote_ident(column));
        exprs.push(parse_mapping_expr(text)?.to_string());
    }
    let sync = &mut forward.syncs[0];
    let action = conflict_action(&sync.upsert_assigned);
    sync.upsert = parse_statement(&format!(
        "INSERT INTO {shadow} ({}) SELECT {} FROM {from} ON CONFLICT ({key_list}) {action}",
        columns.join(", "),
        exprs.join(", "),
    ))?;

    // The DELETE: lock, then delete or null (see above).
    let key_exprs = m
        .key
        .iter()
        .map(|k| {
            let (_, text) =
                source.forward.iter().find(|(c, _)| c == k).ok_or_else(|| format!("key `{k}` is not mapped"))?;
            Ok(format!("{} AS {}", parse_mapping_expr(text)?, quote_ident(k)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let others_gone = m
        .merge
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != index)
        .map(|(_, s)| format!("__dw_t.{} IS NULL", quote_ident(&s.present)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let matching =
        |a: &str, b: &str| key_cols.iter().map(|k| format!("{a}.{k} = {b}.{k}")).collect::<Vec<_>>().join(" AND ");
    let lock = parse_statement(&format!(
        "SELECT {}, ({others_gone}) AS __dw_gone FROM {shadow} AS __dw_t JOIN (SELECT {} FROM {PRIMARY_CTE}) AS __dw_k \
         ON {} FOR UPDATE OF __dw_t",
        key_cols.iter().map(|k| format!("__dw_t.{k}")).collect::<Vec<_>>().join(", "),
        key_exprs.join(", "),
        matching("__dw_t", "__dw_k"),
    ))?;
    let delete = parse_statement(&format!(
        "DELETE FROM {shadow} AS __dw_t USING __dw_lock AS __dw_l WHERE {} AND __dw_l.__dw_gone",
        matching("__dw_t", "__dw_l")
    ))?;
    let own: Vec<String> =
        source.shadow_columns().filter(|c| !m.key.iter().any(|k| k == c)).map(str::to_string).collect();
    let nulls = own.iter().map(|c| format!("{} = NULL", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let null = parse_statement(&format!(
        "UPDATE {shadow} AS __dw_t SET {nulls} FROM __dw_lock AS __dw_l WHERE {} AND NOT __dw_l.__dw_gone",
        matching("__dw_t", "__dw_l")
    ))?;

    // Reads of this source served from the shadow: only the rows whose `present` column says it has one.
    let view_source = format!("{shadow} WHERE {} IS NOT NULL", quote_ident(&source.present));
    let view = compile_direction(m, &source.backward, &view_source, &[])?.view;
    Ok(CompiledSource {
        table,
        forward,
        delete: vec![
            ("__dw_lock".to_string(), lock),
            ("__dw_shadow".to_string(), delete),
            ("__dw_shadow_null".to_string(), null),
        ],
        view,
        present: source.present.clone(),
        own,
        mirror: compile_mirror(m, index, shadow)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn users() -> Compiled {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/users_split_name.toml")).unwrap();
        Compiled::new(&RuleSet::from_toml(&text, "users").unwrap())
    }

    #[test]
    fn compiles_sync_statements_and_views() {
        let c = users();
        let m = &c.migrations[0];
        assert!(m.broken.is_none());
        assert_eq!(
            m.forward.syncs[0].upsert.to_string(),
            "INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, split_part(name, ' ', 1), \
             split_part(name, ' ', 2), lower(email) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET \
             first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email"
        );
        assert_eq!(
            m.backward.syncs[0].delete.to_string(),
            "DELETE FROM public.users AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k \
             WHERE __dw_t.id = __dw_k.id"
        );
        assert_eq!(
            m.backward.view.to_string(),
            "SELECT id, first_name || ' ' || last_name AS name, email FROM public.users_v2"
        );
        assert_eq!(m.forward.syncs[0].upsert_assigned, ["first_name", "last_name", "email"]);
        let assigned: HashSet<String> = ["name".to_string()].into();
        let mut affected: Vec<_> = m.forward.affected_by(&assigned).into_iter().collect();
        affected.sort();
        assert_eq!(affected, ["first_name", "last_name"]);
        assert!(m.forward.key_sources.contains("id"));
    }

    #[test]
    fn matcher_is_case_insensitive() {
        let c = users();
        assert!(c.may_mention("select * from USERS"));
        assert!(c.may_mention("select * from \"users\""));
        assert!(!c.may_mention("select * from accounts"));
    }
}
