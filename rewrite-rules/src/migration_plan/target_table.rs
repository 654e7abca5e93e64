//! The `CREATE TABLE` form of a target shape: the new shape written as SQL (one `CREATE TABLE`, then any
//! `CREATE [UNIQUE] INDEX` on it). Columns are matched with the old table's by name: the same name maps to
//! itself both ways (through a cast each way when the type differs); a new column is left to its default
//! by dual writes; an old column the target drops is left to its default (NULL) by backward writes, which
//! the round-trip check on real rows refuses when that loses values. Column-level and table-level
//! PRIMARY KEY, UNIQUE, CHECK and REFERENCES become the shadow's key, unique indexes and constraints.

use sqlparser::ast::{ColumnOption, CreateTable, Statement, TableConstraint};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::shape::{cast, index_column, parse_type, same_type, ShadowColumn, Shape};
use super::{column_expr, CurrentTable, PlanError};
use crate::names::normalize_ident;

/// The shadow's shape from the target SQL.
pub(crate) fn shape(current: &CurrentTable, sql: &str) -> Result<Shape, PlanError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| PlanError::general(format!("the target is not SQL that parses: {e}")))?;
    let mut statements = statements.into_iter();
    let table = match statements.next() {
        Some(Statement::CreateTable(table)) => table,
        _ => return Err(PlanError::general("the target must start with one CREATE TABLE of the new shape")),
    };
    let target_name = table.name.clone();
    let mut shape = columns(current, &table)?;
    for statement in statements {
        match statement {
            Statement::CreateIndex(index) if index.table_name == target_name => shape.indexes.push(index),
            other => {
                return Err(PlanError::general(format!(
                    "after the CREATE TABLE, the target may only hold CREATE INDEX statements on {target_name}, not: {other}"
                )))
            }
        }
    }
    Ok(shape)
}

fn columns(current: &CurrentTable, table: &CreateTable) -> Result<Shape, PlanError> {
    if table.query.is_some() || table.like.is_some() || table.partition_of.is_some() || table.inherits.is_some() {
        return Err(PlanError::general(
            "the target CREATE TABLE must list its columns (no AS, LIKE, PARTITION OF or INHERITS)",
        ));
    }
    let mut shape = Shape {
        columns: Vec::new(),
        backward: Vec::new(),
        primary_key: Vec::new(),
        indexes: Vec::new(),
        constraints: Vec::new(),
        notes: Vec::new(),
    };
    for definition in &table.columns {
        let name = normalize_ident(&definition.name);
        let mut options = Vec::new();
        for option in &definition.options {
            match &option.option {
                ColumnOption::PrimaryKey(_) => shape.primary_key.push(name.clone()),
                ColumnOption::Unique(unique) => {
                    let mut unique = unique.clone();
                    unique.columns = vec![index_column(&name)];
                    shape.constraints.push(TableConstraint::Unique(unique));
                }
                ColumnOption::Check(check) => shape.constraints.push(TableConstraint::Check(check.clone())),
                ColumnOption::ForeignKey(fk) => {
                    let mut fk = fk.clone();
                    fk.columns = vec![crate::names::ident(&name)];
                    shape.constraints.push(TableConstraint::ForeignKey(fk));
                }
                other => options.push(other.clone()),
            }
        }
        let data_type = definition.data_type.clone();
        let forward = match current.columns.iter().find(|c| c.name == name) {
            Some(old) => {
                let old_type = parse_type(&old.sql_type, &name)?;
                if same_type(&old_type, &data_type) {
                    shape.backward.push((name.clone(), column_expr(&name)));
                    Some(column_expr(&name))
                } else {
                    shape.backward.push((name.clone(), cast(&name, &old_type)));
                    Some(cast(&name, &data_type))
                }
            }
            None => {
                shape.notes.push(format!(
                    "{name} is new (no column of {} has its name): dual writes leave it to its default",
                    current.name
                ));
                None
            }
        };
        shape.columns.push(ShadowColumn { name, data_type, options, forward });
    }
    // The backward mapping lists old columns in the old table's order.
    shape.backward.sort_by_key(|(c, _)| current.columns.iter().position(|o| o.name == *c));
    for old in &current.columns {
        if !shape.columns.iter().any(|c| c.name == old.name) {
            shape.notes.push(format!(
                "{} is not in the target: writes made in the new shape leave it NULL in {} (the round-trip check \
                 refuses the plan if sampled rows hold values in it)",
                old.name, current.name
            ));
        }
    }
    for constraint in &table.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !shape.primary_key.is_empty() {
                    return Err(PlanError::general("the target CREATE TABLE has two primary keys"));
                }
                for column in &pk.columns {
                    match &column.column.expr {
                        sqlparser::ast::Expr::Identifier(id) => shape.primary_key.push(normalize_ident(id)),
                        other => {
                            return Err(PlanError::general(format!(
                                "a primary key of expressions is not supported: {other}"
                            )))
                        }
                    }
                }
            }
            TableConstraint::Unique(_) | TableConstraint::Check(_) | TableConstraint::ForeignKey(_) => {
                shape.constraints.push(constraint.clone())
            }
            other => return Err(PlanError::general(format!("unsupported constraint in the target: {other}"))),
        }
    }
    Ok(shape)
}
