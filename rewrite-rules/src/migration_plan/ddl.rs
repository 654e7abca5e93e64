//! The shadow's DDL as steps: `CREATE TABLE` (columns, NOT NULL, defaults, primary key), then every index
//! as `CREATE [UNIQUE] INDEX CONCURRENTLY` (UNIQUE constraints become unique indexes), then every CHECK and
//! FOREIGN KEY constraint as `ALTER TABLE ... ADD CONSTRAINT ... NOT VALID` followed by `ALTER TABLE ...
//! VALIDATE CONSTRAINT`, then the old table's policies and row-level security (`policies`). Each step is a
//! statement rendered from its AST, named, so that `dualwrite apply`
//! can tell from the catalog whether it is done; [`parse_script`] reads the steps back from the script.

use std::collections::HashSet;

use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOptionDef, CreateIndex, Expr, Ident, ObjectName, Statement, TableConstraint,
};

use super::operations::single_statement;
use super::shape::Shape;
use super::PlanError;
use crate::model::referenced_columns;
use crate::names::{ident, normalize_ident, quote_ident, TableName};

/// Postgres truncates identifiers to 63 bytes; names are made to fit instead.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// One statement of the shadow's DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlStep {
    /// `CREATE TABLE` with these columns, in order.
    CreateTable { columns: Vec<String>, sql: String },
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY <name> ...`: cannot run inside a transaction.
    CreateIndex { name: String, sql: String },
    /// `ALTER TABLE ... ADD CONSTRAINT <name> ... NOT VALID` (a foreign key locks the table it references).
    AddConstraint { name: String, sql: String, foreign_key: bool },
    /// `ALTER TABLE ... VALIDATE CONSTRAINT <name>`.
    ValidateConstraint { name: String, sql: String },
    /// `CREATE POLICY <name> ON <shadow> ...` (`policies`).
    CreatePolicy { name: String, sql: String },
    /// `ALTER TABLE ... ENABLE ROW LEVEL SECURITY`, or `FORCE ROW LEVEL SECURITY` when `force`.
    RowSecurity { force: bool, sql: String },
}

impl DdlStep {
    pub fn sql(&self) -> &str {
        match self {
            DdlStep::CreateTable { sql, .. }
            | DdlStep::CreateIndex { sql, .. }
            | DdlStep::AddConstraint { sql, .. }
            | DdlStep::ValidateConstraint { sql, .. }
            | DdlStep::CreatePolicy { sql, .. }
            | DdlStep::RowSecurity { sql, .. } => sql,
        }
    }

    /// The step as it can run inside a transaction, for a trial run of the shadow on sampled rows: an index
    /// built without `CONCURRENTLY`; `None` for a foreign key (it would lock the table it references) and
    /// for a validation (constraints added `NOT VALID` already check every row written after them).
    pub fn in_transaction(&self) -> Option<String> {
        match self {
            DdlStep::CreateTable { sql, .. } => Some(sql.clone()),
            DdlStep::CreateIndex { sql, .. } => match single_statement(sql) {
                Some(Statement::CreateIndex(mut index)) => {
                    index.concurrently = false;
                    Some(Statement::CreateIndex(index).to_string())
                }
                _ => None,
            },
            DdlStep::AddConstraint { sql, foreign_key: false, .. } => Some(sql.clone()),
            DdlStep::AddConstraint { foreign_key: true, .. } | DdlStep::ValidateConstraint { .. } => None,
            // The trial writes sampled rows as the control role; policies would only get in its way.
            DdlStep::CreatePolicy { .. } | DdlStep::RowSecurity { .. } => None,
        }
    }

    /// A short description for progress output.
    pub fn describe(&self) -> String {
        match self {
            DdlStep::CreateTable { .. } => "create table".to_string(),
            DdlStep::CreateIndex { name, .. } => format!("index {name}"),
            DdlStep::AddConstraint { name, .. } => format!("constraint {name} (not valid)"),
            DdlStep::ValidateConstraint { name, .. } => format!("validate {name}"),
            DdlStep::CreatePolicy { name, .. } => format!("policy {name}"),
            DdlStep::RowSecurity { force: false, .. } => "enable row level security".to_string(),
            DdlStep::RowSecurity { force: true, .. } => "force row level security".to_string(),
        }
    }
}

/// Reads the steps of a script written by `dualwrite plan` (comments allowed); refuses any other statement.
pub fn parse_script(text: &str) -> Result<Vec<DdlStep>, String> {
    let statements = sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, text)
        .map_err(|e| format!("does not parse: {e}"))?;
    statements
        .into_iter()
        .enumerate()
        .map(|(i, statement)| {
            step_of(&statement).ok_or_else(|| {
                format!(
                    "statement {} is not one `dualwrite plan` writes (CREATE TABLE, CREATE INDEX CONCURRENTLY with a \
                     name, ADD CONSTRAINT ... NOT VALID, VALIDATE CONSTRAINT, CREATE POLICY, ENABLE or FORCE ROW \
                     LEVEL SECURITY): {statement}",
                    i + 1
                )
            })
        })
        .collect()
}

fn step_of(statement: &Statement) -> Option<DdlStep> {
    let sql = statement.to_string();
    match statement {
        Statement::CreateTable(table) => Some(DdlStep::CreateTable {
            columns: table.columns.iter().map(|c| normalize_ident(&c.name)).collect(),
            sql,
        }),
        Statement::CreateIndex(index) if index.concurrently => {
            let name = last_part(index.name.as_ref()?)?;
            Some(DdlStep::CreateIndex { name, sql })
        }
        Statement::AlterTable(alter) => match alter.operations.as_slice() {
            [AlterTableOperation::AddConstraint { constraint, not_valid: true }] => Some(DdlStep::AddConstraint {
                name: normalize_ident(constraint_name(constraint)?),
                sql,
                foreign_key: matches!(constraint, TableConstraint::ForeignKey(_)),
            }),
            [AlterTableOperation::ValidateConstraint { name }] => {
                Some(DdlStep::ValidateConstraint { name: normalize_ident(name), sql })
            }
            [AlterTableOperation::EnableRowLevelSecurity] => Some(DdlStep::RowSecurity { force: false, sql }),
            [AlterTableOperation::ForceRowLevelSecurity] => Some(DdlStep::RowSecurity { force: true, sql }),
            _ => None,
        },
        Statement::CreatePolicy(policy) => Some(DdlStep::CreatePolicy { name: normalize_ident(&policy.name), sql }),
        _ => None,
    }
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last()?.as_ident().map(normalize_ident)
}

fn constraint_name(constraint: &TableConstraint) -> Option<&Ident> {
    match constraint {
        TableConstraint::Check(c) => c.name.as_ref(),
        TableConstraint::ForeignKey(c) => c.name.as_ref(),
        TableConstraint::Unique(c) => c.name.as_ref(),
        TableConstraint::PrimaryKey(c) => c.name.as_ref(),
        _ => None,
    }
}

/// The steps creating the shadow of `old` in `shape`.
pub(crate) fn steps(shadow: &TableName, old: &TableName, shape: &Shape) -> Result<Vec<DdlStep>, PlanError> {
    let mut names = Names { shadow: shadow.name.clone(), old: old.name.clone(), used: HashSet::new() };
    let mut steps = vec![create_table(shadow, shape)?];
    let shadow_name = shadow.to_object_name();
    let mut indexes: Vec<CreateIndex> = shape.indexes.clone();
    indexes.extend(shape.constraints.iter().filter_map(|c| match c {
        TableConstraint::Unique(u) => Some(CreateIndex {
            name: u.name.as_ref().map(|n| ObjectName::from(vec![n.clone()])),
            table_name: shadow_name.clone(),
            using: None,
            columns: u.columns.clone(),
            unique: true,
            concurrently: true,
            r#async: false,
            if_not_exists: false,
            include: u.include.clone(),
            nulls_distinct: None,
            with: Vec::new(),
            predicate: None,
            index_options: Vec::new(),
            alter_options: Vec::new(),
        }),
        _ => None,
    }));
    for mut index in indexes {
        let columns: Vec<String> = index.columns.iter().map(|c| expression_label(&c.column.expr)).collect();
        let suffix = if index.unique { "key" } else { "idx" };
        let name = names.pick(index.name.as_ref().and_then(last_part), &columns, suffix);
        index.name = Some(ObjectName::from(vec![ident(&name)]));
        index.table_name = shadow_name.clone();
        index.concurrently = true;
        index.if_not_exists = false;
        steps.push(DdlStep::CreateIndex { name, sql: Statement::CreateIndex(index).to_string() });
    }
    let mut validations = Vec::new();
    for constraint in &shape.constraints {
        let mut constraint = constraint.clone();
        let (slot, columns, suffix) = match &mut constraint {
            TableConstraint::Check(c) => (&mut c.name, referenced_columns(&c.expr), "check"),
            TableConstraint::ForeignKey(c) => {
                let columns = c.columns.iter().map(normalize_ident).collect();
                (&mut c.name, columns, "fkey")
            }
            _ => continue,
        };
        let name = names.pick(slot.as_ref().map(normalize_ident), &columns, suffix);
        *slot = Some(ident(&name));
        let add = alter(shadow, &format!("ADD CONSTRAINT {} CHECK (true) NOT VALID", quote_ident(&name)))?;
        let foreign_key = matches!(constraint, TableConstraint::ForeignKey(_));
        let add = match add {
            Statement::AlterTable(mut alter) => {
                alter.operations = vec![AlterTableOperation::AddConstraint { constraint, not_valid: true }];
                Statement::AlterTable(alter)
            }
            other => other,
        };
        steps.push(DdlStep::AddConstraint { name: name.clone(), sql: add.to_string(), foreign_key });
        let validate = alter(shadow, &format!("VALIDATE CONSTRAINT {}", quote_ident(&name)))?;
        validations.push(DdlStep::ValidateConstraint { name, sql: validate.to_string() });
    }
    steps.extend(validations);
    Ok(steps)
}

fn create_table(shadow: &TableName, shape: &Shape) -> Result<DdlStep, PlanError> {
    let key = shape.primary_key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let skeleton = format!("CREATE TABLE {shadow} (__dw_placeholder integer, PRIMARY KEY ({key}))");
    let Some(Statement::CreateTable(mut table)) = single_statement(&skeleton) else {
        return Err(PlanError::general(format!("cannot build the CREATE TABLE of {shadow}")));
    };
    table.columns = shape
        .columns
        .iter()
        .map(|c| ColumnDef {
            name: ident(&c.name),
            data_type: c.data_type.clone(),
            options: c.options.iter().map(|o| ColumnOptionDef { name: None, option: o.clone() }).collect(),
        })
        .collect();
    let columns = shape.columns.iter().map(|c| c.name.clone()).collect();
    Ok(DdlStep::CreateTable { columns, sql: Statement::CreateTable(table).to_string() })
}

pub(crate) fn alter(shadow: &TableName, operation: &str) -> Result<Statement, PlanError> {
    single_statement(&format!("ALTER TABLE {shadow} {operation}"))
        .ok_or_else(|| PlanError::general(format!("cannot build ALTER TABLE {shadow} {operation}")))
}

/// A column name for an index element, `expr` for an expression (only used to make up names).
fn expression_label(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(id) => normalize_ident(id),
        _ => "expr".to_string(),
    }
}

/// Names of the shadow's indexes and constraints: a name of the old table's (`users_email_key`) gets the
/// shadow's prefix (`users_v2_email_key`), an unnamed one gets Postgres's pattern
/// (`<table>_<columns>_<suffix>`); each fits in 63 bytes and is used once.
struct Names {
    shadow: String,
    old: String,
    used: HashSet<String>,
}

impl Names {
    fn pick(&mut self, given: Option<String>, columns: &[String], suffix: &str) -> String {
        let base = match given {
            Some(name) => match name.strip_prefix(&format!("{}_", self.old)) {
                Some(rest) => format!("{}_{rest}", self.shadow),
                None => name,
            },
            None => format!("{}_{}_{suffix}", self.shadow, columns.join("_")),
        };
        let mut candidate = fit(&base, "");
        let mut n = 1;
        while !self.used.insert(candidate.clone()) {
            candidate = fit(&base, &n.to_string());
            n += 1;
        }
        candidate
    }
}

/// `base` + `tail`, with `base` cut (at a character boundary) so that the whole fits in 63 bytes.
fn fit(base: &str, tail: &str) -> String {
    let mut end = base.len().min(MAX_IDENTIFIER_BYTES - tail.len());
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{tail}", &base[..end])
}
