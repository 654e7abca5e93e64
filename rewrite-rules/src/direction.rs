//! One direction of a migration's mapping, compiled: the target shape's columns and what each reads, the
//! upsert and delete that sync each table written in that direction from the rows the client's statement
//! wrote (`__dw_primary`), and the view presenting the target's shape over its source. `compiled` builds
//! every migration's directions (and a merge source's) from these; `dml` narrows a sync to one statement.

use std::collections::HashSet;

use sqlparser::ast::{Expr, Query, Statement};

use crate::model::{parse_mapping_expr, referenced_columns, Migration};
use crate::names::{quote_ident, TableName};
use crate::template::{parse_statement, template_query};

/// Name of the CTE holding the rows the client's own statement wrote (its RETURNING rows).
pub(crate) const PRIMARY_CTE: &str = "__dw_primary";

/// One direction of a migration's mapping.
pub(crate) struct Direction {
    /// Target columns (the whole shape produced), in mapping order.
    pub columns: Vec<String>,
    /// For each target column, the source columns its expression reads.
    pub deps: Vec<Vec<String>>,
    /// Source columns that feed a key column: assigning one of them changes a row's identity.
    pub key_sources: HashSet<String>,
    /// One per table written in this direction: the old table backward; the shadow forward, or each
    /// target of a split in file order.
    pub syncs: Vec<TableSync>,
    /// `SELECT exprs AS cols FROM source`: the target's shape presented over the source table (for a
    /// split's backward direction, over its targets joined on the key).
    pub view: Query,
}

/// The statements that sync one table from the rows the client's statement wrote.
pub(crate) struct TableSync {
    /// Name of the CTE that syncs it (`__dw_old`; `__dw_shadow`, then `__dw_shadow_2`, ... for a split).
    pub cte_name: String,
    /// `INSERT INTO target (cols) SELECT exprs FROM __dw_primary ON CONFLICT (key) DO UPDATE SET ...`.
    pub upsert: Statement,
    /// Target column assigned by each `DO UPDATE SET` item of `upsert`, in order.
    pub upsert_assigned: Vec<String>,
    /// `DELETE FROM target AS __dw_t USING (SELECT key exprs FROM __dw_primary) AS __dw_k WHERE ...`.
    pub delete: Statement,
    /// `UPDATE target AS __dw_t SET <each of upsert_assigned> = __dw_u.<it> FROM (SELECT exprs FROM
    /// __dw_primary) AS __dw_u (cols) WHERE <key match>`: the sync of an UPDATE into the phase's source of
    /// truth, which changes only rows that are there. `None` when the table holds no column beside the key.
    pub update: Option<Statement>,
}

/// One table a direction writes: the columns of the mapping it holds, its sync CTE's name, and which of
/// the written rows it takes.
pub(crate) struct SyncTarget {
    pub table: TableName,
    pub columns: Vec<String>,
    pub cte: String,
    /// A condition over the written rows' columns (SQL generated from the rules): only the rows meeting it
    /// are upserted or have their key deleted. `None`: every row.
    pub filter: Option<String>,
}

impl SyncTarget {
    pub fn every_row(table: TableName, columns: Vec<String>, cte: String) -> SyncTarget {
        SyncTarget { table, columns, cte, filter: None }
    }
}

/// Compiles one direction: `mapping` (the whole target shape) read from `source` (SQL of a FROM item),
/// written into each of `targets`.
pub(crate) fn compile_direction(
    m: &Migration,
    mapping: &[(String, String)],
    source: &str,
    targets: &[SyncTarget],
) -> Result<Direction, String> {
    let mut columns = Vec::new();
    let mut exprs: Vec<Expr> = Vec::new();
    let mut deps = Vec::new();
    let mut key_sources = HashSet::new();
    for (column, text) in mapping {
        let expr = parse_mapping_expr(text)?;
        let used = referenced_columns(&expr);
        if m.key.contains(column) {
            key_sources.extend(used.iter().cloned());
            key_sources.insert(column.clone());
        }
        columns.push(column.clone());
        exprs.push(expr);
        deps.push(used);
    }
    let mut syncs = Vec::with_capacity(targets.len());
    for target in targets {
        let indices = target
            .columns
            .iter()
            .map(|c| columns.iter().position(|x| x == c).ok_or_else(|| format!("column `{c}` is not mapped")))
            .collect::<Result<Vec<usize>, String>>()?;
        syncs.push(compile_sync(m, target, &columns, &exprs, &indices)?);
    }

    let view_items = columns
        .iter()
        .zip(&exprs)
        .map(|(c, e)| match e {
            Expr::Identifier(id) if crate::names::normalize_ident(id) == *c => quote_ident(c),
            _ => format!("{e} AS {}", quote_ident(c)),
        })
        .collect::<Vec<_>>();
    let view = match parse_statement(&format!("SELECT {} FROM {source}", view_items.join(", ")))? {
        Statement::Query(q) => *q,
        _ => return Err("view did not parse as a query".into()),
    };

    Ok(Direction { columns, deps, key_sources, syncs, view })
}

/// The upsert and delete syncing `target`, which holds the columns at `indices` of the direction's
/// `columns` (their expressions `exprs`), from the rows of `__dw_primary` its filter keeps.
fn compile_sync(
    m: &Migration,
    target: &SyncTarget,
    columns: &[String],
    exprs: &[Expr],
    indices: &[usize],
) -> Result<TableSync, String> {
    let rows = match &target.filter {
        Some(filter) => format!("{PRIMARY_CTE} WHERE {filter}"),
        None => PRIMARY_CTE.to_string(),
    };
    let (cte_name, target) = (&target.cte, &target.table);
    let quoted_cols: Vec<String> = indices.iter().map(|&i| quote_ident(&columns[i])).collect();
    let key_cols: Vec<String> = m.key.iter().map(|c| quote_ident(c)).collect();
    let expr_list = indices.iter().map(|&i| exprs[i].to_string()).collect::<Vec<_>>().join(", ");

    let upsert_assigned: Vec<String> =
        indices.iter().map(|&i| columns[i].clone()).filter(|c| !m.key.contains(c)).collect();
    let action = conflict_action(&upsert_assigned);
    let upsert = parse_statement(&format!(
        "INSERT INTO {target} ({}) SELECT {expr_list} FROM {rows} ON CONFLICT ({}) {action}",
        quoted_cols.join(", "),
        key_cols.join(", "),
    ))?;

    let key_exprs = m
        .key
        .iter()
        .map(|k| {
            let i = columns.iter().position(|c| c == k).ok_or_else(|| format!("key `{k}` is not mapped"))?;
            Ok(format!("{} AS {}", exprs[i], quote_ident(k)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let key_match = key_cols.iter().map(|k| format!("__dw_t.{k} = __dw_k.{k}")).collect::<Vec<_>>();
    let delete = parse_statement(&format!(
        "DELETE FROM {target} AS __dw_t USING (SELECT {} FROM {rows}) AS __dw_k WHERE {}",
        key_exprs.join(", "),
        key_match.join(" AND "),
    ))?;
    let update = match upsert_assigned.is_empty() {
        true => None,
        false => {
            let sets = upsert_assigned.iter().map(|c| format!("{0} = __dw_u.{0}", quote_ident(c))).collect::<Vec<_>>();
            let key_match = key_cols.iter().map(|k| format!("__dw_t.{k} = __dw_u.{k}")).collect::<Vec<_>>();
            Some(parse_statement(&format!(
                "UPDATE {target} AS __dw_t SET {} FROM (SELECT {expr_list} FROM {rows}) AS __dw_u ({}) WHERE {}",
                sets.join(", "),
                quoted_cols.join(", "),
                key_match.join(" AND "),
            ))?)
        }
    };
    Ok(TableSync { cte_name: cte_name.to_string(), upsert, upsert_assigned, delete, update })
}

/// A sync upsert's `ON CONFLICT` action: set each of `assigned` from the proposed row, or nothing to set.
pub(crate) fn conflict_action(assigned: &[String]) -> String {
    if assigned.is_empty() {
        return "DO NOTHING".to_string();
    }
    let sets = assigned.iter().map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c))).collect::<Vec<_>>();
    format!("DO UPDATE SET {}", sets.join(", "))
}

impl Direction {
    pub fn placeholder() -> Direction {
        Direction {
            columns: Vec::new(),
            deps: Vec::new(),
            key_sources: HashSet::new(),
            syncs: Vec::new(),
            view: template_query("SELECT 1"),
        }
    }

    /// Target columns whose expression reads any of `assigned` source columns.
    pub fn affected_by(&self, assigned: &HashSet<String>) -> HashSet<&str> {
        self.columns
            .iter()
            .zip(&self.deps)
            .filter(|(_, deps)| deps.iter().any(|d| assigned.contains(d)))
            .map(|(c, _)| c.as_str())
            .collect()
    }
}
