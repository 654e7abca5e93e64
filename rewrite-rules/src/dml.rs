//! The parts of a dual write's sync that depend on the client's DML statement alone, shared by the dual
//! writes of `writes` and the mirrored writes of `mirror`: which kind of statement it is, the columns an
//! UPDATE (or an upsert's DO UPDATE) assigns, and the sync upsert narrowed to the columns they feed.

use std::collections::HashSet;

use sqlparser::ast::{Assignment, AssignmentTarget, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Statement};

use crate::direction::{Direction, TableSync};
use crate::names::normalize_ident;

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
