//! Query levels and the binding of schema-qualified column references, as Postgres resolves them.
//!
//! A reference `schema.table.col` (or `schema.table.*`) binds to the nearest enclosing query level whose
//! FROM holds that relation *unaliased* (Postgres's `scanNameSpaceForRelid`: an aliased entry, a CTE or a
//! subquery never matches a schema-qualified name). Where the rewrite replaces that entry by something
//! aliased by the table's bare name (`public.users_v2 AS users`, a derived table `AS users`, or
//! `__dw_primary AS users` for a write's RETURNING list), the reference must lose its schema, and then
//! binds by that bare name (`scanNameSpaceForRefname`): to the nearest level exposing *any* entry named
//! `users` (another schema's `users`, an alias `users`, a CTE). So the schema is dropped only where no
//! nearer level exposes that name and the binding level exposes it once; otherwise the statement is
//! refused rather than sent with the reference silently bound to another row. A reference whose entry is
//! not replaced (an old-version session reading the old table) is left as written, and so is one that binds
//! nowhere (Postgres refuses it either way).
//!
//! `ReadRouter` keeps the stack of levels while it walks a statement: one per SELECT (opened by the query
//! around it, so that its ORDER BY belongs to it), one per UPDATE/DELETE and MERGE, and the levels of a
//! write's parts and RETURNING list, which `writes` builds with `dml_levels`. A non-LATERAL derived table
//! does not see the level whose FROM it sits in (its entries are `hidden` while it is walked).

use std::ops::ControlFlow;

use sqlparser::ast::{
    FromTable, Ident, ObjectName, ObjectNamePart, SelectItem, SelectItemQualifiedWildcardKind, Statement, TableFactor,
    TableObject, TableWithJoins, UpdateTableFromKind,
};

use crate::compiled::Compiled;
use crate::model::Phase;
use crate::names::{normalize_ident, TableName};
use crate::plan::{RejectReason, Rejection};
use crate::route::{MigrationRoute, Route, Side};

/// The migrated relation an unaliased FROM entry denotes.
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    pub index: usize,
    /// The relation, schema spelled out: what `schema.table` must name to bind to the entry.
    pub table: TableName,
    /// Whether the rewrite replaces the entry by one aliased by its bare name, so that a reference bound
    /// to it must drop its schema.
    pub renamed: bool,
}

/// One FROM entry of a query level: the name it exposes and, when unaliased and migrated, its relation.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub refname: String,
    pub bound: Option<Bound>,
}

/// One query level.
#[derive(Clone, Debug, Default)]
pub(crate) struct Level {
    pub entries: Vec<Entry>,
    /// Walking a non-LATERAL derived table of this level's FROM, which does not see it.
    pub hidden: usize,
}

/// Builds levels from table factors in a session on `route`, with the CTE names `ctes` visible.
pub(crate) struct LevelBuilder<'a> {
    pub compiled: &'a Compiled,
    pub route: &'a Route,
    pub ctes: &'a [Vec<String>],
}

impl LevelBuilder<'_> {
    /// The migrated relation a table name in a FROM denotes (none for a CTE's name).
    pub fn bound(&self, name: &ObjectName) -> Option<Bound> {
        let table = TableName::from_object_name(name)?;
        let is_cte = table.schema.is_none() && self.ctes.iter().any(|s| s.contains(&table.name));
        read_bound(self.compiled, self.route, &table, is_cte)
    }

    /// The entry of a write's target as the client wrote it.
    pub fn target_entry(&self, name: &ObjectName, alias: Option<&Ident>) -> Entry {
        let refname = alias.map(normalize_ident).unwrap_or_else(|| last_part(name));
        Entry { refname, bound: if alias.is_none() { self.bound(name) } else { None } }
    }

    pub fn level<'t>(&self, tables: impl IntoIterator<Item = &'t TableWithJoins>) -> Level {
        let mut level = Level::default();
        for t in tables {
            self.add_joined(t, &mut level.entries);
        }
        level
    }

    fn add_joined(&self, t: &TableWithJoins, out: &mut Vec<Entry>) {
        self.add(&t.relation, out);
        for join in &t.joins {
            self.add(&join.relation, out);
        }
    }

    pub fn add(&self, factor: &TableFactor, out: &mut Vec<Entry>) {
        match factor {
            TableFactor::Table { name, alias, args, .. } => {
                let refname = match alias {
                    Some(a) => normalize_ident(&a.name),
                    None => last_part(name),
                };
                let bound = if alias.is_none() && args.is_none() { self.bound(name) } else { None };
                out.push(Entry { refname, bound });
            }
            TableFactor::NestedJoin { table_with_joins, alias: None } => self.add_joined(table_with_joins, out),
            TableFactor::NestedJoin { alias: Some(alias), .. }
            | TableFactor::Derived { alias: Some(alias), .. }
            | TableFactor::TableFunction { alias: Some(alias), .. }
            | TableFactor::Function { alias: Some(alias), .. }
            | TableFactor::UNNEST { alias: Some(alias), .. }
            | TableFactor::JsonTable { alias: Some(alias), .. }
            | TableFactor::XmlTable { alias: Some(alias), .. } => {
                out.push(Entry { refname: normalize_ident(&alias.name), bound: None })
            }
            TableFactor::Function { name, alias: None, .. } => {
                out.push(Entry { refname: last_part(name), bound: None })
            }
            _ => {}
        }
    }
}

fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => normalize_ident(id),
        _ => name.to_string(),
    }
}

/// Whether a read of migration `m` under `route` is replaced by a factor aliased by its name (see
/// `reads::routed_read`, which returns `None` exactly when this is false).
pub(crate) fn read_substituted(is_merge: bool, route: MigrationRoute) -> bool {
    if is_merge {
        route.read_source == Side::New
    } else {
        !(route.version == Side::Old && route.read_source == Side::Old)
    }
}

/// The migrated relation `name` denotes in a FROM of a read, unless it is a CTE (`is_cte`).
fn read_bound(compiled: &Compiled, route: &Route, table: &TableName, is_cte: bool) -> Option<Bound> {
    if is_cte {
        return None;
    }
    let index = compiled.migration_of(table, route)?;
    let mr = route.get(index);
    if mr.phase == Phase::Off {
        return None;
    }
    let m = &compiled.migrations[index];
    let reaches = route.unqualified_reaches(index);
    let relation = if table.denotes(&m.table, reaches) {
        m.table.qualified()
    } else {
        m.source_of(table, reaches)?.table.qualified()
    };
    Some(Bound { index, table: relation, renamed: read_substituted(m.is_merge(), mr) })
}

/// What a schema-qualified reference becomes.
pub(crate) enum Resolution {
    /// Left as written: its entry is not replaced, or it binds nowhere.
    Keep,
    /// Drop the schema (migration `index` was touched).
    Unqualify(usize),
}

/// Resolves `schema.table` of a column reference or wildcard against `levels` (innermost last).
/// `returning`: the reference is in a write's RETURNING list (for the refusal's reason).
pub(crate) fn resolve(
    compiled: &Compiled,
    levels: &[Level],
    schema: &Ident,
    table: &Ident,
    returning: bool,
) -> ControlFlow<Rejection, Resolution> {
    let Some(name) = TableName::from_object_name(&ObjectName::from(vec![schema.clone(), table.clone()])) else {
        return ControlFlow::Continue(Resolution::Keep);
    };
    let mut nearer: Option<&str> = None;
    for level in levels.iter().rev().filter(|l| l.hidden == 0) {
        let bound =
            level.entries.iter().filter_map(|e| e.bound.as_ref()).find(|b| name.denotes(&b.table, false)).cloned();
        if let Some(b) = bound {
            if !b.renamed {
                return ControlFlow::Continue(Resolution::Keep);
            }
            let here = level.entries.iter().filter(|e| e.refname == name.name).count();
            if nearer.is_some() || here > 1 {
                let m = &compiled.migrations[b.index];
                let row = if returning { "the written row" } else { "a row" };
                let detail = if nearer.is_some() {
                    format!(
                        "{schema}.{table} names {row} of an enclosing query level, but rewritten to {table} it would \
                         name a nearer table of that name; qualify it with an alias of {} instead",
                        b.table
                    )
                } else {
                    format!(
                        "{schema}.{table} names {row} of its query level, but rewritten to {table} it would be \
                         ambiguous with another table of that name there; alias one of them instead"
                    )
                };
                let (reason, what) = if returning {
                    (RejectReason::UnsupportedReturning, "a RETURNING list")
                } else {
                    (RejectReason::UnresolvedName, "a statement")
                };
                return ControlFlow::Break(Rejection::described(
                    &m.name,
                    b.index,
                    reason,
                    &format!(
                        "{what} whose schema-qualified column reference would bind to another relation once rewritten \
                         is not supported ({detail})"
                    ),
                ));
            }
            return ControlFlow::Continue(Resolution::Unqualify(b.index));
        }
        if nearer.is_none() && level.entries.iter().any(|e| e.refname == name.name) {
            nearer = Some(&name.name);
        }
    }
    ControlFlow::Continue(Resolution::Keep)
}

/// Drops the schema of the `schema.table.*` items of a projection or RETURNING list that `resolve` says to.
pub(crate) fn qualify_wildcards(
    compiled: &Compiled,
    levels: &[Level],
    items: &mut [SelectItem],
    returning: bool,
    touched: &mut std::collections::BTreeSet<usize>,
) -> ControlFlow<Rejection> {
    for item in items {
        if let SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) = item {
            if let [ObjectNamePart::Identifier(schema), ObjectNamePart::Identifier(table)] = name.0.as_slice() {
                if let Resolution::Unqualify(index) = resolve(compiled, levels, schema, table, returning)? {
                    name.0.remove(0);
                    touched.insert(index);
                }
            }
        }
    }
    ControlFlow::Continue(())
}

/// The tables an UPDATE or DELETE reads besides its target (FROM, USING, joins), in order.
pub(crate) fn dml_other_tables(dml: &Statement) -> Vec<&TableWithJoins> {
    match dml {
        Statement::Update(u) => {
            let from = match &u.from {
                Some(UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t)) => t.as_slice(),
                None => &[],
            };
            from.iter().collect()
        }
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
            t.iter().skip(1).chain(d.using.iter().flatten()).collect()
        }
        _ => vec![],
    }
}

/// The levels of a write on its target: `body` for its SET / WHERE / FROM / ON CONFLICT (the target and
/// the tables it reads), `returning` for its RETURNING list (the target alone when the list moves to the
/// SELECT over `__dw_primary`). `target`: the target's entry as the client wrote it (`bound` set when it is
/// unaliased and migrated, `renamed` when retargeted at the shadow); `wrapped`: the RETURNING list moves.
pub(crate) fn dml_levels(
    builder: &LevelBuilder<'_>,
    dml: &Statement,
    target: Option<Entry>,
    wrapped: bool,
) -> (Level, Level) {
    let mut body = Level { entries: target.iter().cloned().collect(), hidden: 0 };
    let returning = match (&target, wrapped) {
        (Some(target), true) => {
            let bound = target.bound.clone().map(|b| Bound { renamed: true, ..b });
            Some(Level { entries: vec![Entry { refname: target.refname.clone(), bound }], hidden: 0 })
        }
        _ => None,
    };
    match dml {
        Statement::Insert(_) => {
            // An INSERT's RETURNING sees its target; its ON CONFLICT also sees `excluded`.
            let returning = returning.unwrap_or_else(|| body.clone());
            body.entries.push(Entry { refname: "excluded".into(), bound: None });
            return (body, returning);
        }
        Statement::Update(u) => {
            for join in &u.table.joins {
                builder.add(&join.relation, &mut body.entries);
            }
        }
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
            for join in t.iter().take(1).flat_map(|first| &first.joins) {
                builder.add(&join.relation, &mut body.entries);
            }
        }
        _ => {}
    }
    body.entries.extend(builder.level(dml_other_tables(dml)).entries);
    let returning = returning.unwrap_or_else(|| body.clone());
    (body, returning)
}

/// The exposed name and target table of a DML statement, as the client wrote them.
pub(crate) fn dml_target_name(dml: &Statement) -> Option<(&ObjectName, Option<&Ident>)> {
    match dml {
        Statement::Insert(i) => match &i.table {
            TableObject::TableName(name) => Some((name, i.table_alias.as_ref().map(|a| &a.alias))),
            _ => None,
        },
        Statement::Update(u) => match &u.table.relation {
            TableFactor::Table { name, alias, args: None, .. } => Some((name, alias.as_ref().map(|a| &a.name))),
            _ => None,
        },
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
            match t.first().map(|t| &t.relation) {
                Some(TableFactor::Table { name, alias, args: None, .. }) => {
                    Some((name, alias.as_ref().map(|a| &a.name)))
                }
                _ => None,
            }
        }
        _ => None,
    }
}
