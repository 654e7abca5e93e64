//! Dual writes: an INSERT / UPDATE / DELETE on a migrated table becomes one statement whose
//! data-modifying CTEs write the table of the session's shape (the client's own statement, `RETURNING` the
//! whole row) and then the other table from those rows through the mapping (rewrite-rules/README.md: Semantics):
//!
//! ```sql
//! WITH __dw_primary AS (<client statement> RETURNING users.*),
//!      __dw_shadow  AS (INSERT INTO users_v2 (...) SELECT <forward> FROM __dw_primary
//!                       ON CONFLICT (id) DO UPDATE SET ...)
//! SELECT <client RETURNING list, or nothing> FROM __dw_primary AS users
//! ```
//!
//! Which table is written first follows the session's version: an old-shaped statement runs on the old
//! table and syncs the shadow through `forward`; a new-shaped one (written against the logical name) runs
//! on the shadow and syncs the old table through `backward`. So in `cutover` every new-version write goes
//! to the shadow first and back through the backward mapping, while old-version code keeps working until
//! `complete`. An UPDATE only re-derives the mapped columns whose expressions read a column it assigns,
//! so values that exist only on the other side (e.g. a shadow-only edit under a lossy mapping) are not
//! overwritten by an unrelated change. In `complete` only the shadow is written: a new-shaped statement is
//! renamed onto it; an old-shaped one is refused, since writing the retired table alone would lose it.
//!
//! A split (several shadow tables, `crate::split`) gets one sync CTE per target (`__dw_shadow`,
//! `__dw_shadow_2`, ...), all in the one statement. Its new shape lives in no single table, so a write in
//! the new shape (a new-version session, or any write after `complete`) is refused
//! (`split_new_shape_write`); old-shaped writes keep every target in sync in `dual_write` and `cutover`.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use sqlparser::ast::{
    Expr, FromTable, Ident, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAliasWithoutColumns, TableFactor, TableObject,
    TruncateTableTarget, Visit, VisitMut, Visitor, WildcardAdditionalOptions,
};

use crate::backfill_gate;
use crate::compiled::{Compiled, CompiledMigration};
use crate::copy_block::CopyBlock;
use crate::dml::{assigned_columns, insert_sync, partial_update, partial_upsert, syncs_into_truth, Kind};
use crate::merge_truncate::MergeTruncation;
use crate::mirror::mirror_syncs;
use crate::model::Phase;
use crate::names::{normalize_ident, TableName};
use crate::plan::{RejectReason, Rejection, RowsDisposition, StatementTransform, TagRewrite};
use crate::reads::{alias_of, cte_names, exposed_name, ReadRouter};
use crate::route::{Route, Side};
use crate::scopes::Level;
use crate::template::template_query;

/// What became of one statement.
pub(crate) struct Outcome {
    /// The statement to send, or `None` to send it as the client wrote it.
    pub statement: Option<Statement>,
    pub transform: StatementTransform,
    pub migrations: BTreeSet<usize>,
    pub write: bool,
    /// Statements the proxy runs before and after this one (COPY FROM STDIN's staging, see `copy`).
    pub companions: Option<Box<Companions>>,
}

/// The statements the proxy runs around a rewritten statement, in order, each with its transform.
pub(crate) struct Companions {
    pub before: Vec<(Companion, StatementTransform)>,
    pub after: Vec<(Companion, StatementTransform)>,
}

/// One statement the proxy runs around the client's.
pub(crate) enum Companion {
    Sql(Box<Statement>),
    /// A COPY's dual write as a PL/pgSQL block (`copy_block`), which sqlparser has no statement for.
    Block(Box<CopyBlock>),
}

impl fmt::Display for Companion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Companion::Sql(statement) => statement.fmt(f),
            Companion::Block(block) => block.fmt(f),
        }
    }
}

impl Outcome {
    pub fn unchanged() -> Outcome {
        Outcome {
            statement: None,
            transform: StatementTransform::UNCHANGED,
            migrations: BTreeSet::new(),
            write: false,
            companions: None,
        }
    }
}

/// Rewrites an INSERT, UPDATE or DELETE. `shell` is the query it was the body of when the client wrote
/// `WITH ... <dml>` (its body is ignored).
pub(crate) fn rewrite_dml(
    compiled: &Compiled,
    route: &Route,
    shell: Option<Query>,
    mut dml: Statement,
) -> Result<Outcome, Rejection> {
    let mut shell = shell;
    let outer_ctes = shell.as_ref().map(cte_names).unwrap_or_default();
    let mut router = ReadRouter::new(compiled, route, outer_ctes);
    if let Some(with) = shell.as_mut().and_then(|q| q.with.as_mut()) {
        route_in(with, &mut router)?;
    }
    let (body_level, returning_level) = router.dml_levels(&dml);
    let (kind, target) = route_read_parts(&mut dml, &mut router, body_level, returning_level)?;
    // A merge's shadow is mirrored into its sources (`mirror`); any other shadow is refused.
    let mirrored = target.as_ref().and_then(|(object, _)| router.mirrored_shadow(object));
    if let (None, Some((object, _))) = (mirrored, &target) {
        router.refuse_shadow_write(object)?;
    }
    if let Some(index) = mirrored {
        backfill_gate::refuse_unbackfilled_merge(compiled, route, index)?;
    }
    let mut migrations = std::mem::take(&mut router.touched);
    let target_index = mirrored.or_else(|| target.as_ref().and_then(|(object, _)| router.active_migration(object)));

    let Some(index) = target_index else {
        if migrations.is_empty() {
            return Ok(Outcome::unchanged());
        }
        return Ok(Outcome {
            statement: Some(reassemble(shell, kind, dml)),
            transform: StatementTransform::UNCHANGED,
            migrations,
            write: false,
            companions: None,
        });
    };
    let (object, alias) = target.expect("target_index implies a target");
    let m = &compiled.migrations[index];
    let mr = route.get(index);
    migrations.insert(index);
    if let Some(why) = &m.broken {
        return Err(Rejection::new(&m.name, index, RejectReason::InvalidRules, why));
    }
    let exposed = exposed_name(&object, alias.as_ref());
    if m.is_split() && (mr.version == Side::New || mr.phase == Phase::Complete) {
        let detail = if mr.phase == Phase::Complete { "the migration is complete" } else { "a new-version session" };
        return Err(Rejection::new(&m.name, index, RejectReason::SplitNewShapeWrite, detail));
    }

    if mr.phase == Phase::Complete {
        if mr.version == Side::Old {
            return Err(Rejection::new(&m.name, index, RejectReason::RetiredVersionWrite, ""));
        }
        retarget(&mut dml, m, &exposed);
        return Ok(Outcome {
            statement: Some(reassemble(shell, kind, dml)),
            transform: StatementTransform::UNCHANGED,
            migrations,
            write: true,
            companions: None,
        });
    }

    // A merge: an old-shaped write of one source in `dual_write` or `cutover` syncs that source's columns of
    // the shadow.
    let source = TableName::from_object_name(&object).and_then(|n| m.source_of(&n, route.unqualified_reaches(index)));
    if source.is_some() && mr.version == Side::New {
        return Err(Rejection::new(&m.name, index, RejectReason::MergedTablesWrite, "a new-version session"));
    }
    if mirrored.is_none() {
        backfill_gate::refuse_unbackfilled_new_version(route, index, &m.name)?;
    }
    // dual_write or cutover: write the session's shape, then sync the other table.
    let sync = match source {
        Some(source) => &source.forward,
        None => m.producing(mr.version.other()),
    };
    let key_change = |assigned: &HashSet<String>| match assigned.iter().find(|c| sync.key_sources.contains(*c)) {
        Some(col) => Err(Rejection::new(
            &m.name,
            index,
            RejectReason::KeyChangingUpdate,
            &format!("column {col} feeds the key ({})", m.key.join(", ")),
        )),
        None => Ok(()),
    };
    let into_truth = syncs_into_truth(m, mr);
    let sync_statements: Vec<(String, Statement)> = match kind {
        _ if mirrored.is_some() => mirror_syncs(m, index, kind, &dml)?,
        Kind::Insert => {
            let client_on = match &dml {
                Statement::Insert(insert) => insert.on.as_ref(),
                _ => None,
            };
            // An upsert's DO UPDATE may move a row to another key, which the sync would not follow.
            if let Some(OnInsert::OnConflict(on_conflict)) = client_on {
                if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                    key_change(&assigned_columns(&update.assignments))?;
                }
            }
            sync.syncs.iter().map(|s| (s.cte_name.clone(), insert_sync(sync, s, into_truth, client_on))).collect()
        }
        Kind::Delete => match source {
            Some(source) => source.delete.clone(),
            None => sync.syncs.iter().map(|s| (s.cte_name.clone(), s.delete.clone())).collect(),
        },
        Kind::Update => {
            let Statement::Update(update) = &dml else { unreachable!("kind follows the statement") };
            let assigned = assigned_columns(&update.assignments);
            key_change(&assigned)?;
            match into_truth {
                true => sync
                    .syncs
                    .iter()
                    .filter_map(|s| Some((s.cte_name.clone(), partial_update(sync, s, &assigned)?)))
                    .collect(),
                false => sync.syncs.iter().map(|s| (s.cte_name.clone(), partial_upsert(sync, s, &assigned))).collect(),
            }
        }
    };
    if mr.version == Side::New && mirrored.is_none() {
        retarget(&mut dml, m, &exposed);
    }
    let client_returning = take_returning(&mut dml);
    if let Some(items) = &client_returning {
        if has_other_tables(&dml) && !reads_only(items, &exposed) {
            return Err(Rejection::new(&m.name, index, RejectReason::UnsupportedReturning, ""));
        }
    }
    set_returning(
        &mut dml,
        vec![SelectItem::QualifiedWildcard(
            SelectItemQualifiedWildcardKind::ObjectName(ObjectName::from(vec![exposed.clone()])),
            WildcardAdditionalOptions::default(),
        )],
    );
    let rows = if client_returning.is_some() { RowsDisposition::Keep } else { RowsDisposition::Suppress };
    let query = wrap(shell, kind, dml, sync_statements, client_returning.unwrap_or_default(), exposed);
    let tag = match kind {
        Kind::Insert => TagRewrite::Insert,
        Kind::Update => TagRewrite::Update,
        Kind::Delete => TagRewrite::Delete,
    };
    Ok(Outcome {
        statement: Some(Statement::Query(Box::new(query))),
        transform: StatementTransform { command_tag: Some(tag), rows },
        migrations,
        write: true,
        companions: None,
    })
}

/// TRUNCATE: while both tables are kept, truncate both in the one statement. A merge source's TRUNCATE is
/// followed by the statement syncing the merged shadow (`merge_truncate`).
pub(crate) fn rewrite_truncate(
    compiled: &Compiled,
    route: &Route,
    mut statement: Statement,
) -> Result<Outcome, Rejection> {
    let Statement::Truncate(truncate) = &mut statement else { return Ok(Outcome::unchanged()) };
    let router = ReadRouter::new(compiled, route, vec![]);
    let mut targets = Vec::with_capacity(truncate.table_names.len() + 1);
    let mut migrations = BTreeSet::new();
    let mut merges = MergeTruncation::default();
    for target in truncate.table_names.drain(..) {
        router.refuse_shadow_write(&target.name)?;
        let Some(index) = router.active_migration(&target.name) else {
            targets.push(target);
            continue;
        };
        let m = &compiled.migrations[index];
        let mr = route.get(index);
        migrations.insert(index);
        if let Some(why) = &m.broken {
            return Err(Rejection::new(&m.name, index, RejectReason::InvalidRules, why));
        }
        if m.is_merge() {
            merges.add(compiled, route, index, &target, truncate.cascade.as_ref())?;
            targets.push(target);
            continue;
        }
        let shadows: Vec<TruncateTableTarget> =
            m.shadows.iter().map(|s| TruncateTableTarget { name: s.to_object_name(), ..target.clone() }).collect();
        match (mr.phase, mr.version) {
            (Phase::Complete, Side::Old) => {
                return Err(Rejection::new(&m.name, index, RejectReason::RetiredVersionWrite, ""))
            }
            (Phase::Complete, Side::New) => targets.extend(shadows),
            _ => {
                targets.push(target);
                targets.extend(shadows);
            }
        }
    }
    let after: Vec<_> = merges
        .finish(compiled, &mut targets)?
        .into_iter()
        .map(|sync| (Companion::Sql(Box::new(sync)), StatementTransform::HIDDEN))
        .collect();
    truncate.table_names = targets;
    if migrations.is_empty() {
        return Ok(Outcome::unchanged());
    }
    Ok(Outcome {
        statement: Some(statement),
        transform: StatementTransform::UNCHANGED,
        migrations,
        write: true,
        companions: (!after.is_empty()).then(|| Box::new(Companions { before: Vec::new(), after })),
    })
}

fn route_in<T: VisitMut>(node: &mut T, router: &mut ReadRouter) -> Result<(), Rejection> {
    match VisitMut::visit(node, router) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(r) => Err(r),
    }
}

/// Routes `node` with `level` open.
fn route_in_level<T: VisitMut>(node: &mut T, router: &mut ReadRouter, level: &Level) -> Result<(), Rejection> {
    router.push_level(level.clone());
    let routed = route_in(node, router);
    router.pop_level();
    routed
}

/// A DML statement's target table and its alias, when it has one.
type DmlTarget = Option<(ObjectName, Option<Ident>)>;

/// Routes the reads inside a DML statement (everything but its target) and returns its kind and target.
/// `body` is the query level of its SET / WHERE / FROM / ON CONFLICT, `returning` that of its RETURNING.
fn route_read_parts(
    dml: &mut Statement,
    router: &mut ReadRouter,
    body: Level,
    returning: Level,
) -> Result<(Kind, DmlTarget), Rejection> {
    match dml {
        Statement::Insert(insert) => {
            route_in(&mut insert.source, router)?;
            if let Some(on) = insert.on.as_mut() {
                route_in_level(on, router, &body)?;
            }
            router.route_returning(&mut insert.returning, returning)?;
            let target = match &insert.table {
                TableObject::TableName(name) => {
                    Some((name.clone(), insert.table_alias.as_ref().map(|a| a.alias.clone())))
                }
                _ => None,
            };
            Ok((Kind::Insert, target))
        }
        Statement::Update(update) => {
            route_in_level(&mut update.assignments, router, &body)?;
            route_in_level(&mut update.from, router, &body)?;
            route_in_level(&mut update.selection, router, &body)?;
            router.route_returning(&mut update.returning, returning)?;
            route_in_level(&mut update.table.joins, router, &body)?;
            Ok((Kind::Update, factor_target(&update.table.relation)))
        }
        Statement::Delete(delete) => {
            route_in_level(&mut delete.using, router, &body)?;
            route_in_level(&mut delete.selection, router, &body)?;
            router.route_returning(&mut delete.returning, returning)?;
            let tables = match &mut delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let target = tables.first().and_then(|t| factor_target(&t.relation));
            for t in tables.iter_mut().skip(1) {
                route_in_level(t, router, &body)?;
            }
            if let Some(first) = tables.first_mut() {
                route_in_level(&mut first.joins, router, &body)?;
            }
            Ok((Kind::Delete, target))
        }
        _ => unreachable!("rewrite_dml is only called for INSERT, UPDATE and DELETE"),
    }
}

fn factor_target(factor: &TableFactor) -> Option<(ObjectName, Option<Ident>)> {
    match factor {
        TableFactor::Table { name, alias, args: None, .. } => {
            Some((name.clone(), alias.as_ref().map(|a| a.name.clone())))
        }
        _ => None,
    }
}

/// Points the statement's target at the shadow, aliased by the name the client's SQL uses for it.
fn retarget(dml: &mut Statement, m: &CompiledMigration, exposed: &Ident) {
    let shadow = m.shadow.to_object_name();
    match dml {
        Statement::Insert(insert) => {
            insert.table = TableObject::TableName(shadow);
            if insert.table_alias.is_none() {
                insert.table_alias = Some(TableAliasWithoutColumns { explicit: true, alias: exposed.clone() });
            }
        }
        Statement::Update(update) => set_factor_name(&mut update.table.relation, shadow, exposed),
        Statement::Delete(delete) => {
            let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &mut delete.from;
            if let Some(first) = t.first_mut() {
                set_factor_name(&mut first.relation, shadow, exposed);
            }
        }
        _ => {}
    }
}

fn set_factor_name(factor: &mut TableFactor, shadow: ObjectName, exposed: &Ident) {
    if let TableFactor::Table { name, alias, .. } = factor {
        *name = shadow;
        if alias.is_none() {
            *alias = Some(alias_of(exposed.clone()));
        }
    }
}

fn take_returning(dml: &mut Statement) -> Option<Vec<SelectItem>> {
    match dml {
        Statement::Insert(i) => i.returning.take(),
        Statement::Update(u) => u.returning.take(),
        Statement::Delete(d) => d.returning.take(),
        _ => None,
    }
}

fn set_returning(dml: &mut Statement, items: Vec<SelectItem>) {
    match dml {
        Statement::Insert(i) => i.returning = Some(items),
        Statement::Update(u) => u.returning = Some(items),
        Statement::Delete(d) => d.returning = Some(items),
        _ => {}
    }
}

/// True if the statement reads tables besides its target (UPDATE ... FROM, DELETE ... USING), whose
/// columns its RETURNING could name.
fn has_other_tables(dml: &Statement) -> bool {
    match dml {
        Statement::Update(u) => u.from.is_some() || !u.table.joins.is_empty(),
        Statement::Delete(d) => {
            d.using.as_ref().is_some_and(|u| !u.is_empty())
                || matches!(&d.from, FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)
                    if t.len() > 1 || t.first().is_some_and(|t| !t.joins.is_empty()))
        }
        _ => false,
    }
}

/// True if a RETURNING list names no table but `exposed` (outside its own subqueries).
fn reads_only(items: &[SelectItem], exposed: &Ident) -> bool {
    struct Qualifiers<'a> {
        exposed: String,
        depth: usize,
        ok: bool,
        _p: std::marker::PhantomData<&'a ()>,
    }
    impl Visitor for Qualifiers<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                if let Expr::CompoundIdentifier(ids) = expr {
                    if ids.len() >= 2 && normalize_ident(&ids[ids.len() - 2]) != self.exposed {
                        self.ok = false;
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let exposed_norm = normalize_ident(exposed);
    let mut check = Qualifiers { exposed: exposed_norm.clone(), depth: 0, ok: true, _p: Default::default() };
    for item in items {
        match item {
            SelectItem::Wildcard(_) => return false,
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => match n.0.last() {
                Some(ObjectNamePart::Identifier(id)) if normalize_ident(id) == exposed_norm => {}
                _ => return false,
            },
            other => {
                let _ = other.visit(&mut check);
            }
        }
    }
    check.ok
}

fn dml_body(kind: Kind, dml: Statement) -> SetExpr {
    match kind {
        Kind::Insert => SetExpr::Insert(dml),
        Kind::Update => SetExpr::Update(dml),
        Kind::Delete => SetExpr::Delete(dml),
    }
}

/// The client's statement put back together (inside its WITH clause if it had one).
fn reassemble(shell: Option<Query>, kind: Kind, dml: Statement) -> Statement {
    match shell {
        Some(mut q) => {
            q.body = Box::new(dml_body(kind, dml));
            Statement::Query(Box::new(q))
        }
        None => dml,
    }
}

/// `WITH <client CTEs>, __dw_primary AS (<dml>), <sync CTE> AS (<sync>)[, <next sync CTE> ...] SELECT
/// <returning> FROM __dw_primary AS <exposed>`.
fn wrap(
    shell: Option<Query>,
    kind: Kind,
    dml: Statement,
    syncs: Vec<(String, Statement)>,
    returning: Vec<SelectItem>,
    exposed: Ident,
) -> Query {
    static TEMPLATE: OnceLock<Query> = OnceLock::new();
    let mut query = TEMPLATE
        .get_or_init(|| {
            template_query(
                "WITH __dw_primary AS (SELECT 1), __dw_sync AS (SELECT 1) SELECT FROM __dw_primary AS __dw_exposed",
            )
        })
        .clone();
    if let Some(with) = query.with.as_mut() {
        *with.cte_tables[0].query.body = dml_body(kind, dml);
        let template = with.cte_tables.pop().expect("the template has a sync CTE");
        for (name, statement) in syncs {
            let mut cte = template.clone();
            cte.alias.name = Ident::new(name);
            match statement {
                s @ Statement::Delete(_) => *cte.query.body = SetExpr::Delete(s),
                s @ Statement::Update(_) => *cte.query.body = SetExpr::Update(s),
                Statement::Query(q) => *cte.query = *q,
                s => *cte.query.body = SetExpr::Insert(s),
            }
            with.cte_tables.push(cte);
        }
        if let Some(client_with) = shell.and_then(|q| q.with) {
            with.recursive = client_with.recursive;
            let ours = std::mem::replace(&mut with.cte_tables, client_with.cte_tables);
            with.cte_tables.extend(ours);
        }
    }
    if let SetExpr::Select(select) = query.body.as_mut() {
        select.projection = returning;
        if let TableFactor::Table { alias: Some(alias), .. } = &mut select.from[0].relation {
            alias.name = exposed;
        }
    }
    query
}

/// Routes every read reference in a statement with no write target of its own.
pub(crate) fn route_reads(compiled: &Compiled, route: &Route, mut statement: Statement) -> Result<Outcome, Rejection> {
    let mut router = ReadRouter::new(compiled, route, vec![]);
    let flow = match &mut statement {
        Statement::Query(q) => q.visit(&mut router),
        Statement::Merge(m) => {
            // MERGE's ON and clauses see its target and source.
            let mut level = Level::default();
            router.levels().add(&m.table, &mut level.entries);
            router.levels().add(&m.source, &mut level.entries);
            router.push_level(level);
            m.visit(&mut router)
        }
        other => other.visit(&mut router),
    };
    if let std::ops::ControlFlow::Break(rejection) = flow {
        return Err(rejection);
    }
    if router.touched.is_empty() {
        return Ok(Outcome::unchanged());
    }
    Ok(Outcome {
        statement: Some(statement),
        transform: StatementTransform::UNCHANGED,
        migrations: router.touched,
        write: false,
        companions: None,
    })
}
