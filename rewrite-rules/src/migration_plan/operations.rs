//! The operations form of a target shape: a TOML file of operations on the old table's columns (rename,
//! split, merge, change a type, add a NOT NULL column with a default, change the primary key), each old
//! column touched by at most one. Applied to the catalog's description of the table it gives the shadow's
//! [`Shape`]: every column not named keeps its name, type, NOT NULL and default; indexes and CHECK / FOREIGN
//! KEY constraints are carried over in the new column names (those reading a split or merged column are
//! left out, with a note).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use sqlparser::ast::{AlterTableOperation, ColumnOption, Expr, Statement, TableConstraint};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::shape::{cast, catalog_options, parse_expr, parse_type, ColumnRenamer, ShadowColumn, Shape};
use super::{column_expr, CurrentColumn, CurrentTable, PlanError};
use crate::names::normalize_ident;

/// See the module documentation. Every expression is SQL; `forward`/`expr` ones read old columns,
/// `backward`/`back` ones read shadow columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    #[serde(default)]
    pub rename: Vec<Rename>,
    #[serde(default)]
    pub split: Vec<Split>,
    #[serde(default)]
    pub merge: Vec<Merge>,
    #[serde(default)]
    pub change_type: Vec<ChangeType>,
    #[serde(default)]
    pub add_column: Vec<AddColumn>,
    #[serde(default)]
    pub primary_key: Option<PrimaryKey>,
}

/// `[[rename]] column = "email", to = "email_address"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub column: String,
    pub to: String,
}

/// `[[split]] column = "name", into = [{ column = "first_name", expr = "split_part(name, ' ', 1)" }, ...],
/// back = "first_name || ' ' || last_name"`. A part's `type` defaults to the split column's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub column: String,
    pub into: Vec<Part>,
    /// The inverse: the old column from the parts. Required (a split without one cannot be rolled back).
    #[serde(default)]
    pub back: Option<String>,
}

/// One column a split produces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub column: String,
    #[serde(default, rename = "type")]
    pub sql_type: Option<String>,
    pub expr: String,
}

/// `[[merge]] columns = ["street", "city"], into = "address", expr = "street || ', ' || city",
/// back = { street = "...", city = "..." }`. `type` defaults to the first merged column's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    pub columns: Vec<String>,
    pub into: String,
    #[serde(default, rename = "type")]
    pub sql_type: Option<String>,
    pub expr: String,
    /// The inverse: each merged column from the new one. Required for every merged column.
    #[serde(default)]
    pub back: BTreeMap<String, String>,
}

/// `[[change_type]] column = "amount", type = "numeric(12,2)"`, with optional `forward` / `backward`
/// expressions (default: a cast each way).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeType {
    pub column: String,
    #[serde(rename = "type")]
    pub sql_type: String,
    #[serde(default)]
    pub forward: Option<String>,
    #[serde(default)]
    pub backward: Option<String>,
}

/// `[[add_column]] column = "status", type = "text", default = "'active'"`: a NOT NULL column of the
/// shadow only. Dual writes leave it to its default (the old table has nothing to give it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub column: String,
    #[serde(rename = "type")]
    pub sql_type: String,
    pub default: String,
}

/// `[primary_key] columns = ["shop_id", "id"]` (shadow column names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryKey {
    pub columns: Vec<String>,
}

/// What one operation does to one old column.
enum Touch<'o> {
    Rename(&'o Rename),
    Split(&'o Split),
    /// The first merged column carries the merge; the others are only consumed.
    Merge(&'o Merge, bool),
    ChangeType(&'o ChangeType),
}

impl Operations {
    /// Reads an operations file; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Operations, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::general(format!("{origin}: {}", e.message().trim())))
    }

    /// The shadow's shape: the operations applied to `current`.
    pub(crate) fn shape(&self, current: &CurrentTable) -> Result<Shape, PlanError> {
        let touches = self.touches(current)?;
        let mut columns = Vec::new();
        let mut backward = Vec::new();
        let mut renames = HashMap::new();
        let mut gone = HashSet::new();
        for old in &current.columns {
            let name = old.name.as_str();
            let old_type = parse_type(&old.sql_type, name)?;
            let keep = |new_name: &str, forward: Expr| -> Result<ShadowColumn, PlanError> {
                Ok(ShadowColumn {
                    name: new_name.to_string(),
                    data_type: old_type.clone(),
                    options: catalog_options(old.not_null, old.default.as_deref(), name)?,
                    forward: Some(forward),
                })
            };
            match touches.get(name) {
                None => {
                    columns.push(keep(name, column_expr(name))?);
                    backward.push((name.to_string(), column_expr(name)));
                }
                Some(Touch::Rename(r)) => {
                    columns.push(keep(&r.to, column_expr(name))?);
                    backward.push((name.to_string(), column_expr(&r.to)));
                    renames.insert(name.to_string(), r.to.clone());
                }
                Some(Touch::ChangeType(c)) => {
                    let new_type = parse_type(&c.sql_type, name)?;
                    let forward = match &c.forward {
                        Some(text) => parse_expr(text, name)?,
                        None => cast(name, &new_type),
                    };
                    let back = match &c.backward {
                        Some(text) => parse_expr(text, name)?,
                        None => cast(name, &old_type),
                    };
                    columns.push(ShadowColumn { data_type: new_type, ..keep(name, forward)? });
                    backward.push((name.to_string(), back));
                }
                Some(Touch::Split(s)) => {
                    let Some(back) = &s.back else {
                        return Err(PlanError::column(
                            name,
                            "is split without `back`, the expression giving it back from the new columns: \
                             without an inverse, writes in the new shape and a rollback would lose it",
                        ));
                    };
                    for part in &s.into {
                        let data_type = match &part.sql_type {
                            Some(t) => parse_type(t, &part.column)?,
                            None => old_type.clone(),
                        };
                        let options = if old.not_null { vec![ColumnOption::NotNull] } else { Vec::new() };
                        let forward = Some(parse_expr(&part.expr, &part.column)?);
                        columns.push(ShadowColumn { name: part.column.clone(), data_type, options, forward });
                    }
                    backward.push((name.to_string(), parse_expr(back, name)?));
                    gone.insert(name.to_string());
                }
                Some(Touch::Merge(m, first)) => {
                    let Some(back) = m.back.get(name) else {
                        return Err(PlanError::column(
                            name,
                            format!(
                                "is merged into `{}` without a `back` expression for it: without an inverse, writes \
                                 in the new shape and a rollback would lose it",
                                m.into
                            ),
                        ));
                    };
                    if *first {
                        let data_type = match &m.sql_type {
                            Some(t) => parse_type(t, &m.into)?,
                            None => old_type.clone(),
                        };
                        let all_not_null = m.columns.iter().all(|c| column(current, c).is_some_and(|c| c.not_null));
                        let options = if all_not_null { vec![ColumnOption::NotNull] } else { Vec::new() };
                        let forward = Some(parse_expr(&m.expr, &m.into)?);
                        columns.push(ShadowColumn { name: m.into.clone(), data_type, options, forward });
                    }
                    backward.push((name.to_string(), parse_expr(back, name)?));
                    gone.insert(name.to_string());
                }
            }
        }
        for add in &self.add_column {
            if columns.iter().any(|c| c.name == add.column) {
                return Err(PlanError::column(
                    &add.column,
                    "is added but the shadow already has a column of that name",
                ));
            }
            columns.push(ShadowColumn {
                name: add.column.clone(),
                data_type: parse_type(&add.sql_type, &add.column)?,
                options: vec![ColumnOption::NotNull, ColumnOption::Default(parse_expr(&add.default, &add.column)?)],
                forward: None,
            });
        }
        check_unique_names(&columns)?;
        let primary_key = match &self.primary_key {
            Some(pk) => {
                for c in &pk.columns {
                    if !columns.iter().any(|s| s.name == *c) {
                        return Err(PlanError::column(c, "is in [primary_key] but is not a column of the shadow"));
                    }
                }
                pk.columns.clone()
            }
            None => current.primary_key.iter().map(|c| renames.get(c).unwrap_or(c).clone()).collect(),
        };
        let mut shape =
            Shape { columns, backward, primary_key, indexes: Vec::new(), constraints: Vec::new(), notes: Vec::new() };
        carry_definitions(current, &ColumnRenamer { renames: &renames, gone: &gone }, &mut shape);
        Ok(shape)
    }

    /// Which operation touches each old column; refuses unknown columns and columns touched twice.
    fn touches<'o>(&'o self, current: &CurrentTable) -> Result<HashMap<&'o str, Touch<'o>>, PlanError> {
        let mut touches: HashMap<&str, Touch> = HashMap::new();
        let mut claim = |name: &'o str, touch: Touch<'o>| -> Result<(), PlanError> {
            if column(current, name).is_none() {
                return Err(PlanError::column(name, format!("is not a column of {}", current.name)));
            }
            if touches.insert(name, touch).is_some() {
                return Err(PlanError::column(name, "is named by more than one operation"));
            }
            Ok(())
        };
        for r in &self.rename {
            claim(&r.column, Touch::Rename(r))?;
        }
        for s in &self.split {
            if s.into.len() < 2 {
                return Err(PlanError::column(&s.column, "a split needs at least two `into` columns"));
            }
            claim(&s.column, Touch::Split(s))?;
        }
        for m in &self.merge {
            if m.columns.len() < 2 {
                return Err(PlanError::column(&m.into, "a merge needs at least two `columns`"));
            }
            for (i, c) in m.columns.iter().enumerate() {
                claim(c, Touch::Merge(m, i == 0))?;
            }
            if let Some(extra) = m.back.keys().find(|k| !m.columns.contains(k)) {
                return Err(PlanError::column(
                    extra,
                    format!("has a `back` expression but is not merged into `{}`", m.into),
                ));
            }
        }
        for c in &self.change_type {
            claim(&c.column, Touch::ChangeType(c))?;
        }
        Ok(touches)
    }
}

fn column<'t>(current: &'t CurrentTable, name: &str) -> Option<&'t CurrentColumn> {
    current.columns.iter().find(|c| c.name == name)
}

fn check_unique_names(columns: &[ShadowColumn]) -> Result<(), PlanError> {
    let mut seen = HashSet::new();
    for c in columns {
        if !seen.insert(c.name.as_str()) {
            return Err(PlanError::column(&c.name, "would be in the shadow twice"));
        }
    }
    Ok(())
}

/// The old table's indexes and CHECK / FOREIGN KEY constraints in the shadow's column names.
fn carry_definitions(current: &CurrentTable, renamer: &ColumnRenamer, shape: &mut Shape) {
    for definition in &current.indexes {
        let Some(mut index) = single_statement(definition).and_then(|s| match s {
            Statement::CreateIndex(index) => Some(index),
            _ => None,
        }) else {
            shape.notes.push(format!("index not carried over (the planner cannot read it): {definition}"));
            continue;
        };
        // An index name of the old table without its prefix would clash in the schema: the shadow's gets
        // a name made up from its columns instead.
        let prefix = format!("{}_", current.name.name);
        let named_after_table = index
            .name
            .as_ref()
            .and_then(|n| n.0.last())
            .and_then(|part| part.as_ident())
            .is_some_and(|id| normalize_ident(id).starts_with(&prefix));
        if !named_after_table {
            index.name = None;
        }
        match renamer.index(&mut index) {
            Ok(()) => shape.indexes.push(index),
            Err(column) => shape.notes.push(format!(
                "index not carried over: it reads `{column}`, which the plan splits or merges: {definition}"
            )),
        }
    }
    for (name, definition) in &current.constraints {
        let text = format!("ALTER TABLE __dw_table ADD CONSTRAINT {} {definition}", crate::names::quote_ident(name));
        let constraint = single_statement(&text).and_then(|s| match s {
            Statement::AlterTable(mut alter) if alter.operations.len() == 1 => match alter.operations.pop() {
                Some(AlterTableOperation::AddConstraint { constraint, .. }) => Some(constraint),
                _ => None,
            },
            _ => None,
        });
        let Some(mut constraint) =
            constraint.filter(|c| matches!(c, TableConstraint::Check(_) | TableConstraint::ForeignKey(_)))
        else {
            shape.notes.push(format!("constraint {name} not carried over (the planner cannot read it): {definition}"));
            continue;
        };
        match renamer.constraint(&mut constraint) {
            Ok(()) => shape.constraints.push(constraint),
            Err(column) => shape.notes.push(format!(
                "constraint {name} not carried over: it reads `{column}`, which the plan splits or merges: {definition}"
            )),
        }
    }
}

/// The one statement of `sql`, if it parses as exactly one.
pub(crate) fn single_statement(sql: &str) -> Option<Statement> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    (statements.len() == 1).then(|| statements.pop()).flatten()
}
