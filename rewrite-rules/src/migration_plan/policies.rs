//! The old table's row-level security carried onto the shadow: a v2 session reads and writes the shadow,
//! so without the old table's policies it would see and change every row (the proxy refuses to register
//! such a shadow). Each policy is read back as `CREATE POLICY` (the catalog's text) and re-expressed over
//! the shadow's columns: every old column it reads becomes that column's backward mapping (a rename, the new
//! name; a split, the expression joining the parts), so the policy keeps the same rows. The policies are
//! created first, then row-level security is enabled (and forced where the old table's is), so that the
//! shadow is never enabled without them.
//!
//! A policy is not guessed at: one reading an old column that has no backward mapping, or that names the
//! old table inside a subquery (a correlated reference the planner would have to re-bind), makes the plan
//! fail naming it; unqualified names inside a subquery are the subquery's own tables' (the catalog prints
//! an outer reference qualified) and stay as they are, as do names that are not old columns
//! (`current_user`).

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Ident, Query, Statement, VisitMut, VisitorMut};

use super::ddl::{alter, DdlStep};
use super::operations::single_statement;
use super::shape::Shape;
use super::{CurrentTable, PlanError};
use crate::names::{normalize_ident, TableName};

/// The old table's row-level security as the catalog has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowSecurity {
    pub enabled: bool,
    pub forced: bool,
    /// Each policy as `CREATE POLICY <name> ON <any table name> AS ... FOR ... TO ... [USING (...)] [WITH
    /// CHECK (...)]`, its expressions as `pg_get_expr` prints them.
    pub policies: Vec<String>,
}

/// The steps giving `shadow` the old table's policies and row-level security (none when it has none).
pub(crate) fn steps(current: &CurrentTable, shape: &Shape, shadow: &TableName) -> Result<Vec<DdlStep>, PlanError> {
    let security = &current.row_security;
    if !security.enabled {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for text in &security.policies {
        let Some(Statement::CreatePolicy(mut policy)) = single_statement(text) else {
            return Err(PlanError::general(format!("the planner cannot read the old table's policy: {text}")));
        };
        let name = normalize_ident(&policy.name);
        let columns: Vec<&str> = current.columns.iter().map(|c| c.name.as_str()).collect();
        let mut over_shadow =
            OverShadow { old: &current.name, columns: &columns, backward: &shape.backward, depth: 0, failed: None };
        for expr in [&mut policy.using, &mut policy.with_check].into_iter().flatten() {
            let _ = expr.visit(&mut over_shadow);
        }
        if let Some(why) = over_shadow.failed {
            return Err(PlanError::general(format!(
                "policy {name} of {} {why}, so the planner cannot carry it onto the shadow: create the shadow's \
                 policies by hand (the proxy registers the migration once the shadow has row-level security and \
                 policies)",
                current.name
            )));
        }
        policy.table_name = shadow.to_object_name();
        steps.push(DdlStep::CreatePolicy { name, sql: Statement::CreatePolicy(policy).to_string() });
    }
    let enable = alter(shadow, "ENABLE ROW LEVEL SECURITY")?.to_string();
    steps.push(DdlStep::RowSecurity { force: false, sql: enable });
    if security.forced {
        steps.push(DdlStep::RowSecurity { force: true, sql: alter(shadow, "FORCE ROW LEVEL SECURITY")?.to_string() });
    }
    Ok(steps)
}

/// Rewrites a policy expression over the old table's columns into one over the shadow's.
struct OverShadow<'a> {
    old: &'a TableName,
    /// The old table's columns: any other name (`current_user`) is left alone.
    columns: &'a [&'a str],
    /// Old column -> expression over shadow columns.
    backward: &'a [(String, Expr)],
    /// How many subqueries deep the visit is.
    depth: usize,
    failed: Option<String>,
}

impl OverShadow<'_> {
    fn names_old_table(&self, qualifier: &[Ident]) -> bool {
        match qualifier {
            [table] => normalize_ident(table) == self.old.name,
            [schema, table] => {
                normalize_ident(table) == self.old.name
                    && Some(normalize_ident(schema).as_str()) == self.old.schema.as_deref()
            }
            _ => false,
        }
    }

    /// The shadow's expression for old column `column`.
    fn mapped(&mut self, column: &str) -> Option<Expr> {
        match self.backward.iter().find(|(c, _)| c == column) {
            Some((_, Expr::Identifier(id))) => Some(Expr::Identifier(id.clone())),
            Some((_, expr)) => Some(Expr::Nested(Box::new(expr.clone()))),
            None => {
                self.failed = Some(format!("reads column {column}, which the shadow does not carry back"));
                None
            }
        }
    }
}

impl VisitorMut for OverShadow<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    // After the children: a replacement is never visited again, so a swap of two names stays a swap.
    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let column = match expr {
            Expr::Identifier(id) if self.depth == 0 => normalize_ident(id),
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 && self.names_old_table(&ids[..ids.len() - 1]) => {
                if self.depth > 0 {
                    self.failed = Some(format!("names {} inside a subquery ({expr})", self.old));
                    return ControlFlow::Break(());
                }
                normalize_ident(&ids[ids.len() - 1])
            }
            _ => return ControlFlow::Continue(()),
        };
        if !self.columns.contains(&column.as_str()) {
            return ControlFlow::Continue(());
        }
        match self.mapped(&column) {
            Some(mapped) => {
                *expr = mapped;
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }
    }
}
