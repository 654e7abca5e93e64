//! `dualwrite plan`'s pure part: from the table as the catalog describes it ([`CurrentTable`]) and a target
//! shape ([`Target`]: a `CREATE TABLE` of the new shape, or a list of [`Operations`]), the shadow's DDL
//! ([`DdlStep`]s: the table, indexes built `CONCURRENTLY`, constraints added `NOT VALID` then validated) and
//! the migration's rules with both mappings, in the rules-file format the proxy loads.
//!
//! No I/O: the proxy reads the catalog, checks on real rows that the mappings round-trip, and applies the
//! steps. Everything is built as sqlparser ASTs (client-supplied SQL is parsed, never edited as text).

mod ddl;
mod operations;
mod policies;
mod render;
mod shape;
mod target_table;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use sqlparser::ast::Expr;

pub use ddl::{parse_script, DdlStep};
pub use operations::Operations;
pub use policies::RowSecurity;
pub use render::{ddl_script, rules_toml};

use crate::model::{Migration, OnBypass, Phase, SampleRate, Versions};
use crate::names::{ident, TableName};
use shape::Shape;

/// The table being migrated, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTable {
    pub name: TableName,
    /// In table order.
    pub columns: Vec<CurrentColumn>,
    /// The primary key's columns, in key order (empty: the table has none).
    pub primary_key: Vec<String>,
    /// `pg_get_indexdef` of every index but the primary key's.
    pub indexes: Vec<String>,
    /// Name and `pg_get_constraintdef` of every CHECK and FOREIGN KEY constraint.
    pub constraints: Vec<(String, String)>,
    /// Row-level security and its policies, carried onto the shadow.
    pub row_security: RowSecurity,
}

/// One column of [`CurrentTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentColumn {
    pub name: String,
    /// `format_type` spelling (valid SQL).
    pub sql_type: String,
    pub not_null: bool,
    /// The default expression (`pg_get_expr`). For an identity column, the caller passes
    /// `nextval('<its sequence>'::regclass)`, so that the shadow hands out keys from the same sequence.
    pub default: Option<String>,
    /// A generated column (`GENERATED ALWAYS AS (...) STORED`): not supported by the planner.
    pub generated: bool,
}

impl CurrentColumn {
    pub(crate) fn required(&self) -> bool {
        self.not_null && self.default.is_none()
    }
}

/// The shape the shadow should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// SQL text: one `CREATE TABLE` of the new shape (its name is ignored: the shadow's is used), optionally
    /// followed by `CREATE [UNIQUE] INDEX` statements on it. Columns are matched with the old table's by
    /// name; renames, splits and merges need [`Target::Operations`].
    CreateTable(String),
    Operations(Operations),
}

/// What the plan is called and where the shadow goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// The migration's name in the rules.
    pub name: String,
    pub shadow: TableName,
    pub versions: Versions,
}

/// The result of planning: the rules' migration, the DDL creating its shadow, and notes for the reader
/// (indexes not carried over, columns the old table keeps only through its defaults, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationPlan {
    pub migration: Migration,
    pub ddl: Vec<DdlStep>,
    pub notes: Vec<String>,
}

/// Why a plan cannot be made, naming the column at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", column.as_ref().map(|c| format!("column `{c}`: ")).unwrap_or_default())]
pub struct PlanError {
    pub column: Option<String>,
    pub message: String,
}

impl PlanError {
    pub(crate) fn column(column: &str, message: impl Into<String>) -> PlanError {
        PlanError { column: Some(column.to_string()), message: message.into() }
    }
    pub(crate) fn general(message: impl Into<String>) -> PlanError {
        PlanError { column: None, message: message.into() }
    }
}

/// Plans the migration of `current` to `target`.
pub fn plan(current: &CurrentTable, target: &Target, options: &PlanOptions) -> Result<MigrationPlan, PlanError> {
    if let Some(c) = current.columns.iter().find(|c| c.generated) {
        return Err(PlanError::column(&c.name, "is a generated column, which the planner does not support"));
    }
    if current.primary_key.is_empty() {
        return Err(PlanError::general(format!(
            "{} has no primary key: dual writes match the rows of both tables on it",
            current.name
        )));
    }
    let mut shape = match target {
        Target::CreateTable(sql) => target_table::shape(current, sql)?,
        Target::Operations(ops) => ops.shape(current)?,
    };
    check_key(current, &mut shape, &options.shadow)?;
    check_coverage(current, &shape)?;
    let migration = Migration {
        name: options.name.clone(),
        database: None,
        table: current.name.clone(),
        shadow: options.shadow.clone(),
        key: current.primary_key.clone(),
        versions: options.versions.clone(),
        forward: shape
            .columns
            .iter()
            .filter_map(|c| c.forward.as_ref().map(|e| (c.name.clone(), e.to_string())))
            .collect(),
        split: Vec::new(),
        merge: Vec::new(),
        backward: shape.backward.iter().map(|(c, e)| (c.clone(), e.to_string())).collect(),
        initial_phase: Phase::DualWrite,
        shadow_read_sample: SampleRate::ZERO,
        accept_unseen_writers: Vec::new(),
        accept_key_triggers: Vec::new(),
        on_bypass: OnBypass::Alert,
    };
    migration.check("plan").map_err(|e| PlanError {
        column: e.field.as_deref().and_then(|f| f.split_once('.')).map(|(_, c)| c.to_string()),
        message: e.message,
    })?;
    let mut ddl = ddl::steps(&options.shadow, &current.name, &shape)?;
    ddl.extend(policies::steps(current, &shape, &options.shadow)?);
    Ok(MigrationPlan { migration, ddl, notes: shape.notes })
}

/// The rules' key is the old table's primary key, named the same in both tables: each key column must be
/// carried over under its name, and the shadow needs a unique index on exactly those columns (dual writes
/// upsert on it) — added when the shadow's own primary key differs.
fn check_key(current: &CurrentTable, shape: &mut Shape, shadow: &TableName) -> Result<(), PlanError> {
    for key in &current.primary_key {
        let carried = shape.columns.iter().any(|c| c.name == *key && c.forward.is_some())
            && shape.backward.iter().any(|(c, _)| c == key);
        if !carried {
            return Err(PlanError::column(
                key,
                "is (part of) the old table's primary key: dual writes match rows on it, so the shadow must keep \
                 a column of that name mapped both ways (renaming, splitting, merging or dropping a key column \
                 is not supported)",
            ));
        }
    }
    let key: HashSet<&str> = current.primary_key.iter().map(String::as_str).collect();
    let shadow_key: HashSet<&str> = shape.primary_key.iter().map(String::as_str).collect();
    if shape.primary_key.is_empty() {
        return Err(PlanError::general("the target shape has no primary key"));
    }
    if key != shadow_key && !shape.has_unique_index_on(&current.primary_key) {
        shape.add_unique_index(&current.primary_key);
        shape.notes.push(format!(
            "{shadow} gets a unique index on ({}), the old table's primary key: dual writes upsert on it \
             until the migration is complete (drop it afterwards if the new key makes it redundant)",
            current.primary_key.join(", ")
        ));
    }
    Ok(())
}

/// Every column a mapping does not write must be able to do without: a shadow column without a forward
/// mapping needs a default or NULL, an old column without a backward mapping too.
fn check_coverage(current: &CurrentTable, shape: &Shape) -> Result<(), PlanError> {
    for column in shape.columns.iter().filter(|c| c.forward.is_none()) {
        if column.required() {
            return Err(PlanError::column(
                &column.name,
                "is NOT NULL without a default and no old column maps to it: dual writes could not insert into \
                 the shadow (give it a DEFAULT, or describe it as a split, merge or added column)",
            ));
        }
    }
    for column in &current.columns {
        if shape.backward.iter().any(|(c, _)| *c == column.name) {
            continue;
        }
        if column.required() {
            return Err(PlanError::column(
                &column.name,
                "is NOT NULL without a default in the old table and the target shape has no counterpart: writes \
                 made in the new shape could not be copied back (dropping a required column is not supported)",
            ));
        }
    }
    Ok(())
}

/// An expression naming one column.
pub(crate) fn column_expr(name: &str) -> Expr {
    Expr::Identifier(ident(name))
}
