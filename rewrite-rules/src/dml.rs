//! The parts of a dual write's sync that depend on the client's DML statement alone, shared by the dual
//! writes of `writes` and the mirrored writes of `mirror`: which kind of statement it is, the columns an
//! UPDATE (or an upsert's DO UPDATE) assigns, the sync upsert narrowed to the columns they feed, and the
//! syncs into the phase's source of truth, which never replace a row there nor bring one back.

use std::collections::HashSet;

use sqlparser::ast::{
    Assignment, AssignmentTarget, ObjectName, ObjectNamePart, OnConflict, OnConflictAction, OnInsert, Statement,
};

use crate::compiled::CompiledMigration;
use crate::direction::{Direction, TableSync};
use crate::model::Phase;
use crate::names::normalize_ident;
use crate::route::{MigrationRoute, Side};

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Insert,
    Update,
    Delete,
}

/// Columns an UPDATE assigns (the column of `SET col.field = ...` is `col`).
pub(crate) fn assigned_columns(assignments: &[Assignment]) -> HashSet<String> {
    let first = |name: &ObjectName| match name.0.first() {
        Some(ObjectNamePart::Identifier(id)) => Some(normalize_ident(id)),
        _ => None,
    };
    assignments
        .iter()
        .flat_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => vec![first(n)],
            AssignmentTarget::Tuple(ns) => ns.iter().map(first).collect(),
        })
        .flatten()
        .collect()
}

/// The sync of an UPDATE into `table` when it is the phase's source of truth: the rows there get the
/// target columns whose mapping reads an assigned column, and a row missing there is not put back (the
/// upsert would insert it: a row deleted from the truth behind the proxy's back would return). `None`
/// when no column of `table` changes.
pub(crate) fn partial_update(sync: &Direction, table: &TableSync, assigned: &HashSet<String>) -> Option<Statement> {
    let affected = sync.affected_by(assigned);
    let mut statement = table.update.clone()?;
    if let Statement::Update(update) = &mut statement {
        let mut columns = table.upsert_assigned.iter();
        update.assignments.retain(|_| columns.next().is_some_and(|c| affected.contains(c.as_str())));
        if update.assignments.is_empty() {
            return None;
        }
    }
    Some(statement)
}

/// The sync upsert of `table` re-deriving only the target columns whose mapping reads an assigned column.
pub(crate) fn partial_upsert(sync: &Direction, table: &TableSync, assigned: &HashSet<String>) -> Statement {
    let affected = sync.affected_by(assigned);
    let mut statement = table.upsert.clone();
    if let Statement::Insert(insert) = &mut statement {
        if let Some(OnInsert::OnConflict(on_conflict)) = &mut insert.on {
            if let OnConflictAction::DoUpdate(update) = &mut on_conflict.action {
                let mut columns = table.upsert_assigned.iter();
                update.assignments.retain(|_| columns.next().is_some_and(|c| affected.contains(c.as_str())));
                if update.assignments.is_empty() {
                    on_conflict.action = OnConflictAction::DoNothing;
                }
            }
        }
    }
    statement
}

/// Whether a write of migration `m` on route `mr` syncs the phase's source of truth: the old table in
/// `dual_write` (a new-version write's sync), the shadow from `cutover` on (an old-version write's). Never
/// for a merge, whose syncs combine its sources' columns in one shadow row: upserts in every phase.
pub(crate) fn syncs_into_truth(m: &CompiledMigration, mr: MigrationRoute) -> bool {
    !m.is_merge() && matches!((mr.phase, mr.version), (Phase::DualWrite, Side::New) | (Phase::Cutover, Side::Old))
}

/// The sync of an INSERT's rows into `table` (its upsert as the mapping compiled it, `ON CONFLICT (key) DO
/// UPDATE` of every column). Into the table that is not the source of truth the upsert stands: a row may
/// be there already that the truth does not hold (a backfill batch racing a delete leaves one), and it is
/// replaced. Into the source of truth it must not replace a row the INSERT did not find: the key of the
/// client's new row is already taken in the logical table, so the sync fails on it as an INSERT into that
/// table would (23505), or skips it when the client asked `ON CONFLICT DO NOTHING`; the table the client's
/// statement wrote lacked the row, a divergence a verify reports. After a client's own `DO UPDATE` the
/// truth's row gets only the columns its assignments feed, as an UPDATE's sync, not every column of the
/// row the other table returned (which may hold what the truth does not).
pub(crate) fn insert_sync(
    sync: &Direction,
    table: &TableSync,
    into_truth: bool,
    client_on: Option<&OnInsert>,
) -> Statement {
    if !into_truth {
        return table.upsert.clone();
    }
    let conflict = match client_on {
        None => None,
        Some(OnInsert::OnConflict(c)) => match &c.action {
            OnConflictAction::DoNothing => {
                Some(OnInsert::OnConflict(OnConflict { conflict_target: None, action: OnConflictAction::DoNothing }))
            }
            OnConflictAction::DoUpdate(update) => {
                return partial_upsert(sync, table, &assigned_columns(&update.assignments));
            }
        },
        Some(_) => return table.upsert.clone(),
    };
    let mut statement = table.upsert.clone();
    if let Statement::Insert(insert) = &mut statement {
        insert.on = conflict;
    }
    statement
}
