//! One parsed statement at a time: decides whether it is a read to route, a write to dual-write, a form
//! to refuse, or something that does not concern any migration, and hands it to the module that owns it.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, CopySource, ObjectName, ObjectType, SetExpr, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::Tokenizer;

use crate::compiled::Compiled;
use crate::copy::rewrite_copy;
use crate::fallback::mentioned_migrations;
use crate::model::Phase;
use crate::names::TableName;
use crate::plan::{RejectReason, Rejection, StatementTransform};
use crate::reads::ReadRouter;
use crate::route::Route;
use crate::writes::{rewrite_dml, rewrite_truncate, route_reads, Outcome};

pub(crate) fn rewrite_statement(
    compiled: &Compiled,
    route: &Route,
    statement: Statement,
) -> Result<Outcome, Rejection> {
    refuse_database_qualified(compiled, route, &statement)?;
    match statement {
        Statement::Query(mut query) => match std::mem::replace(query.body.as_mut(), SetExpr::Values(empty_values())) {
            body @ (SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)) => {
                let dml = match body {
                    SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => s,
                    _ => unreachable!("matched above"),
                };
                rewrite_dml(compiled, route, Some(*query), dml)
            }
            body => {
                *query.body = body;
                route_reads(compiled, route, Statement::Query(query))
            }
        },
        s @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) => {
            rewrite_dml(compiled, route, None, s)
        }
        s @ Statement::Truncate(_) => rewrite_truncate(compiled, route, s),
        Statement::Merge(merge) => {
            let router = ReadRouter::new(compiled, route, vec![]);
            if let sqlparser::ast::TableFactor::Table { name, .. } = &merge.table {
                router.refuse_shadow_write(name)?;
                if let Some(index) = router.active_migration(name) {
                    let m = &compiled.migrations[index];
                    return Err(Rejection::new(&m.name, index, RejectReason::Merge, ""));
                }
            }
            route_reads(compiled, route, Statement::Merge(merge))
        }
        s @ Statement::Copy { .. } => rewrite_copy(compiled, route, s),
        Statement::Explain { describe_alias, analyze, verbose, query_plan, estimate, statement, format, options } => {
            let inner = rewrite_statement(compiled, route, (*statement).clone())?;
            if inner.companions.is_some() {
                let index = inner.migrations.iter().next().copied().unwrap_or(0);
                return Err(Rejection::new(
                    &compiled.migrations[index].name,
                    index,
                    RejectReason::UnsupportedWrite,
                    "EXPLAIN of a statement the proxy runs as several",
                ));
            }
            Ok(Outcome {
                statement: inner.statement.map(|s| Statement::Explain {
                    describe_alias,
                    analyze,
                    verbose,
                    query_plan,
                    estimate,
                    statement: Box::new(s),
                    format,
                    options,
                }),
                transform: StatementTransform::UNCHANGED,
                migrations: inner.migrations,
                write: inner.write && analyze,
                companions: None,
            })
        }
        Statement::Prepare { name, data_types, statement } => {
            let inner = rewrite_statement(compiled, route, (*statement).clone())?;
            if inner.write {
                let index = inner.migrations.iter().next().copied().unwrap_or(0);
                return Err(Rejection::new(
                    &compiled.migrations[index].name,
                    index,
                    RejectReason::UnsupportedWrite,
                    "SQL-level PREPARE of a write; prepare it through the extended protocol instead",
                ));
            }
            Ok(Outcome {
                statement: inner.statement.map(|s| Statement::Prepare { name, data_types, statement: Box::new(s) }),
                transform: StatementTransform::UNCHANGED,
                migrations: inner.migrations,
                write: false,
                companions: None,
            })
        }
        s @ Statement::Declare { .. } => route_reads(compiled, route, s),
        Statement::CreateTable(create) => create_table(compiled, route, create),
        Statement::AlterTable(alter) => alter_table(compiled, route, alter),
        s @ Statement::Drop { object_type: ObjectType::Table, .. } => drop_table(compiled, route, s),
        // Session and transaction control, channels and cursors never read or change a table, whatever
        // words they contain (`LISTEN users` names a channel).
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Execute { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Ok(Outcome::unchanged()),
        other => refuse_if_mentioned(compiled, route, other),
    }
}

/// `CREATE TABLE` makes a new relation (or fails because one of that name exists), so its own name never
/// denotes the migrated table: `CREATE TEMP TABLE users (...)` in a session that has `public.users` under
/// migration is another relation. A table that would inherit from or be a partition of the migrated table
/// is refused (its rows are written under its own name, so its writes would reach the migrated table's
/// scans without the proxy seeing them); the query of `CREATE TABLE ... AS` is a read, routed as one.
fn create_table(compiled: &Compiled, route: &Route, create: sqlparser::ast::CreateTable) -> Result<Outcome, Rejection> {
    let router = ReadRouter::new(compiled, route, vec![]);
    let parents = create.inherits.iter().flatten().chain(create.partition_of.iter());
    if let Some(index) = parents.filter_map(|parent| router.active_migration(parent)).next() {
        let m = &compiled.migrations[index];
        return Err(Rejection::new(
            &m.name,
            index,
            RejectReason::Ddl,
            "a table inheriting from (or a partition of) the migrated table",
        ));
    }
    route_reads(compiled, route, Statement::CreateTable(create))
}

/// `ALTER TABLE`: refused when the altered table is the migrated one, or when an action names it (INHERIT
/// it, a constraint referencing it). The new name of `RENAME TO` is a name being given, not a reference:
/// renaming a tenant's table to `users` does not touch the migrated `users`.
fn alter_table(compiled: &Compiled, route: &Route, alter: sqlparser::ast::AlterTable) -> Result<Outcome, Rejection> {
    let router = ReadRouter::new(compiled, route, vec![]);
    if let Some(index) = router.active_migration(&alter.name) {
        let m = &compiled.migrations[index];
        return Err(Rejection::new(&m.name, index, RejectReason::Ddl, ""));
    }
    if let Some(breaking) = alter.operations.iter().find_map(breaks_the_sync) {
        router.refuse_shadow_ddl(&alter.name, breaking)?;
    }
    for operation in &alter.operations {
        if !matches!(operation, sqlparser::ast::AlterTableOperation::RenameTable { .. }) {
            refuse_if_text_mentions(compiled, route, &operation.to_string())?;
        }
    }
    Ok(Outcome::unchanged())
}

/// `DROP TABLE`: refused when it names an active migrated table or a shadow its migration writes.
fn drop_table(compiled: &Compiled, route: &Route, statement: Statement) -> Result<Outcome, Rejection> {
    if let Statement::Drop { names, .. } = &statement {
        let router = ReadRouter::new(compiled, route, vec![]);
        for name in names {
            router.refuse_shadow_ddl(name, "DROP TABLE")?;
        }
    }
    refuse_if_mentioned(compiled, route, statement)
}

/// The `ALTER TABLE` operations that break the statements a dual write runs on a shadow (see
/// `ReadRouter::refuse_shadow_ddl`), named for the refusal.
fn breaks_the_sync(operation: &AlterTableOperation) -> Option<&'static str> {
    match operation {
        AlterTableOperation::DropColumn { .. } => Some("ALTER TABLE ... DROP COLUMN"),
        AlterTableOperation::DropConstraint { .. } | AlterTableOperation::DropPrimaryKey { .. } => {
            Some("ALTER TABLE ... DROP CONSTRAINT")
        }
        AlterTableOperation::RenameColumn { .. } => Some("ALTER TABLE ... RENAME COLUMN"),
        AlterTableOperation::RenameTable { .. } => Some("ALTER TABLE ... RENAME TO"),
        AlterTableOperation::ChangeColumn { .. } | AlterTableOperation::ModifyColumn { .. } => Some("a column change"),
        AlterTableOperation::AlterColumn { op: AlterColumnOperation::SetDataType { .. }, .. } => {
            Some("ALTER TABLE ... ALTER COLUMN ... TYPE")
        }
        _ => None,
    }
}

/// Statements with no rewrite (DDL, GRANT, LOCK, ...): refused if they name an active migrated table.
fn refuse_if_mentioned(compiled: &Compiled, route: &Route, statement: Statement) -> Result<Outcome, Rejection> {
    refuse_if_text_mentions(compiled, route, &statement.to_string())?;
    Ok(Outcome::unchanged())
}

fn refuse_if_text_mentions(compiled: &Compiled, route: &Route, text: &str) -> Result<(), Rejection> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else { return Ok(()) };
    if let Some(&index) = mentioned_migrations(compiled, route, &tokens).iter().next() {
        let m = &compiled.migrations[index];
        return Err(Rejection::new(&m.name, index, RejectReason::Ddl, ""));
    }
    Ok(())
}

fn empty_values() -> sqlparser::ast::Values {
    sqlparser::ast::Values { explicit_row: false, value_keyword: false, rows: vec![] }
}

/// Refuses a statement naming a migrated table (or a kept shadow) as `database.schema.table`. Postgres
/// accepts that spelling for the current database, but every other part of the engine knows a relation by
/// `schema.table` or `table` alone: passed through, a write so spelled would change the old table and not
/// the shadow, and a read would skip the session's routing. Refused, nothing changes and the error says
/// how to write it.
fn refuse_database_qualified(compiled: &Compiled, route: &Route, statement: &Statement) -> Result<(), Rejection> {
    let judge = |object: &ObjectName| match database_qualified_migration(compiled, route, object) {
        Some(index) => ControlFlow::Break((index, object.to_string())),
        None => ControlFlow::Continue(()),
    };
    // sqlparser's relation visitor does not count COPY's table among the relations.
    let found = match statement {
        Statement::Copy { source: CopySource::Table { table_name, .. }, .. } => judge(table_name),
        _ => ControlFlow::Continue(()),
    };
    let found = if found.is_break() { found } else { sqlparser::ast::visit_relations(statement, judge) };
    match found {
        ControlFlow::Break((index, object)) => Err(Rejection::described(
            &compiled.migrations[index].name,
            index,
            RejectReason::UnresolvedName,
            &format!(
                "{object} names a migrated table with its database; the proxy routes and dual-writes a table \
                 named as schema.table or table only: write it without the database"
            ),
        )),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The migration whose table (or kept shadow) `object` names as `database.schema.table`, if any.
fn database_qualified_migration(compiled: &Compiled, route: &Route, object: &ObjectName) -> Option<usize> {
    let parts: Vec<&sqlparser::ast::Ident> = object.0.iter().filter_map(|p| p.as_ident()).collect();
    if parts.len() < 3 || parts.len() != object.0.len() {
        return None;
    }
    let name = TableName::from_object_name(&ObjectName::from(
        parts[parts.len() - 2..].iter().map(|&i| i.clone()).collect::<Vec<_>>(),
    ))?;
    compiled
        .migration_of(&name, route)
        .filter(|&i| route.get(i).phase != Phase::Off)
        .or_else(|| compiled.kept_shadow_of(&name, route))
}
