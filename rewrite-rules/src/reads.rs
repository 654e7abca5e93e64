//! Read routing: every reference to a migrated table's logical name that reads rows (FROM, JOIN, subqueries,
//! CTE bodies, EXISTS, IN (SELECT ...)) is sent to the physical table the session's route names, as a
//! derived table presenting the session's shape when the two differ.
//!
//! This walks table factors itself instead of using `visit_relations_mut`, which would also rename CTE names
//! and table functions: CTE names are tracked per query scope, function-like references are left alone,
//! and the substitute keeps the exposed name as its alias so `users.id` and `FOR UPDATE OF users` still
//! resolve.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectItem, SetExpr, Statement, TableAlias, TableFactor,
    VisitMut, VisitorMut, With,
};

use crate::backfill_gate;
use crate::compiled::{Compiled, CompiledMigration};
use crate::model::Phase;
use crate::names::{normalize_ident, TableName};
use crate::plan::{RejectReason, Rejection};
use crate::route::{MigrationRoute, Route, Side};
use crate::scopes::{dml_levels, dml_target_name, qualify_wildcards, resolve, Bound, Level, LevelBuilder, Resolution};
use crate::template::template_query;

/// Rewrites read references in whatever node it is run over (never a DML target: callers run it on the
/// parts of a write that read).
pub(crate) struct ReadRouter<'a> {
    compiled: &'a Compiled,
    route: &'a Route,
    /// CTE names visible at the current point, innermost scope last.
    scopes: Vec<Vec<String>>,
    /// Migrations whose references were rewritten.
    pub touched: BTreeSet<usize>,
    /// WITH clauses taken out of the queries being visited (their CTE bodies are visited by hand, each in
    /// its own scope), put back when the query's visit ends.
    pending_with: Vec<Option<With>>,
    /// Query levels (`crate::scopes`), innermost last: what a schema-qualified column reference binds to.
    levels: Vec<Level>,
    /// Per query being visited: the address of its body when that is a SELECT, whose level the query opens
    /// (so that its ORDER BY and LIMIT resolve in it) and closes.
    query_selects: Vec<Option<usize>>,
    /// Per non-LATERAL derived table being visited: the level it hides, if any.
    hidden: Vec<Option<usize>>,
    /// Per nested statement being visited: whether it opened a level.
    statement_levels: Vec<bool>,
    /// Visiting a write's RETURNING list (a refusal there is `UnsupportedReturning`).
    in_returning: bool,
}

impl<'a> ReadRouter<'a> {
    /// A router that already sees `outer_ctes` (the WITH clause of the statement it runs inside).
    pub fn new(compiled: &'a Compiled, route: &'a Route, outer_ctes: Vec<String>) -> Self {
        ReadRouter {
            compiled,
            route,
            scopes: vec![outer_ctes],
            touched: BTreeSet::new(),
            pending_with: Vec::new(),
            levels: Vec::new(),
            query_selects: Vec::new(),
            hidden: Vec::new(),
            statement_levels: Vec::new(),
            in_returning: false,
        }
    }

    /// Builds query levels with the CTE names visible at this point.
    pub fn levels(&self) -> LevelBuilder<'_> {
        LevelBuilder { compiled: self.compiled, route: self.route, ctes: &self.scopes }
    }

    /// Opens a query level (a write's, a MERGE's) around the parts visited next.
    pub fn push_level(&mut self, level: Level) {
        self.levels.push(level);
    }

    pub fn pop_level(&mut self) {
        self.levels.pop();
    }

    /// The query levels of a write's parts and of its RETURNING list (`scopes::dml_levels`), decided before
    /// its reads are routed: the target's entry is the migrated relation when unaliased, replaced by one
    /// aliased by its name in the statement's body when retargeted at the shadow, and in the RETURNING list
    /// whenever that list moves to the SELECT over `__dw_primary` (in `dual_write` and `cutover`).
    pub fn dml_levels(&self, dml: &Statement) -> (Level, Level) {
        let builder = self.levels();
        let Some((name, alias)) = dml_target_name(dml) else { return dml_levels(&builder, dml, None, false) };
        let mut target = builder.target_entry(name, alias);
        let mirrored = self.mirrored_shadow(name);
        let mut wrapped = false;
        if let Some(index) = mirrored.or_else(|| self.active_migration(name)) {
            let mr = self.route.get(index);
            wrapped = mr.phase != Phase::Complete;
            if mirrored.is_some() && alias.is_none() {
                let table = self.compiled.migrations[index].shadow.qualified();
                target.bound = Some(Bound { index, table, renamed: false });
            }
            if let Some(bound) = target.bound.as_mut() {
                bound.renamed = mr.version == Side::New && mirrored.is_none();
            }
        }
        dml_levels(&builder, dml, Some(target), wrapped)
    }

    /// Routes a write's RETURNING list in `level` (`scopes::dml_levels`).
    pub fn route_returning(&mut self, items: &mut Option<Vec<SelectItem>>, level: Level) -> Result<(), Rejection> {
        self.levels.push(level);
        self.in_returning = true;
        let flow = match items.as_mut() {
            Some(items) => match qualify_wildcards(self.compiled, &self.levels, items, true, &mut self.touched) {
                ControlFlow::Continue(()) => VisitMut::visit(items, self),
                refused => refused,
            },
            None => ControlFlow::Continue(()),
        };
        self.in_returning = false;
        self.levels.pop();
        match flow {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(r) => Err(r),
        }
    }

    fn is_cte(&self, name: &TableName) -> bool {
        name.schema.is_none() && self.scopes.iter().any(|s| s.contains(&name.name))
    }

    /// The active migration (phase not `off`) a reference denotes, unless a CTE of that name hides it.
    pub fn active_migration(&self, object: &ObjectName) -> Option<usize> {
        let name = TableName::from_object_name(object)?;
        if self.is_cte(&name) {
            return None;
        }
        let index = self.compiled.migration_of(&name, self.route)?;
        (self.route.get(index).phase != Phase::Off).then_some(index)
    }

    /// Refuses a write whose target `object` is a shadow table of a migration that keeps both tables in
    /// step (`dual_write`, `cutover`). Rewritten, such a write would be a new-shaped write with the old table
    /// synced back from it; but the shadow's own name is what an operator or a script reaches for to edit
    /// or reset the shadow by hand, and mirroring its `DELETE` or `TRUNCATE` into the old table would take
    /// production rows with it. Passed through, it changes the shadow alone. Refused, nothing changes and
    /// the error says how to write either shape through the old table's name.
    pub fn refuse_shadow_write(&self, object: &ObjectName) -> Result<(), Rejection> {
        let Some(name) = TableName::from_object_name(object) else { return Ok(()) };
        if self.is_cte(&name) {
            return Ok(());
        }
        let Some(index) = self.compiled.kept_shadow_of(&name, self.route) else { return Ok(()) };
        let m = &self.compiled.migrations[index];
        let phase = self.route.get(index).phase;
        let detail = if m.is_merge() {
            format!(
                "{object} is the merged shadow of {} in phase {phase}; only its plain INSERT, UPDATE and DELETE \
                 are mirrored into the sources",
                m.sources.iter().map(|s| s.table.to_string()).collect::<Vec<_>>().join(", ")
            )
        } else {
            format!("{object} is a shadow of {} in phase {phase}", m.table)
        };
        Err(Rejection::new(&m.name, index, RejectReason::ShadowWrite, &detail))
    }

    /// Refuses DDL on `object` when it is a shadow table of a migration that keeps both tables in step and
    /// `what` (the statement or operation) would break the sync statements written into it on every dual
    /// write: dropping or renaming the table, a column or a constraint (the upserts' `ON CONFLICT` needs the
    /// key's), or changing a column's type (a table rewrite under an exclusive lock besides). DDL that adds
    /// to the shadow (an index, a column, a constraint, a default) is the operator's to run and passes.
    pub fn refuse_shadow_ddl(&self, object: &ObjectName, what: &str) -> Result<(), Rejection> {
        let Some(name) = TableName::from_object_name(object) else { return Ok(()) };
        let Some(index) = self.compiled.kept_shadow_of(&name, self.route) else { return Ok(()) };
        let m = &self.compiled.migrations[index];
        let detail = format!(
            "{what} of {object}, a shadow of {} in phase {}, would break the dual write; set the migration off first",
            m.table,
            self.route.get(index).phase
        );
        Err(Rejection::new(&m.name, index, RejectReason::Ddl, &detail))
    }

    /// The merge whose shadow a write's target `object` is, while both sides are kept in step: such a
    /// write is mirrored into the merge's sources (`crate::mirror`) rather than refused. For a merge the
    /// shadow's name is the new shape's only name, so sessions of either version write it.
    pub fn mirrored_shadow(&self, object: &ObjectName) -> Option<usize> {
        let name = TableName::from_object_name(object)?;
        if self.is_cte(&name) {
            return None;
        }
        let index = self.compiled.kept_shadow_of(&name, self.route)?;
        (self.compiled.migrations[index].is_merge()).then_some(index)
    }

    /// Refuses a read of a merge's shadow `object` that the backfill has not filled yet
    /// (`backfill_gate::refuse_unbackfilled_merge_read`).
    pub fn refuse_unbackfilled_merge_read(&self, object: &ObjectName) -> Result<(), Rejection> {
        match self.mirrored_shadow(object) {
            Some(index) => backfill_gate::refuse_unbackfilled_merge_read(self.compiled, self.route, index, object),
            None => Ok(()),
        }
    }

    /// Refuses a reference to migration `index` that cannot be routed: its rules are broken, or it merges
    /// tables and the session reads in the new shape (the old tables' names have no new shape to present).
    fn reject_if_broken(&self, index: usize) -> ControlFlow<Rejection> {
        let m = &self.compiled.migrations[index];
        if m.is_merge() && self.route.get(index).version == Side::New {
            return ControlFlow::Break(Rejection::new(
                &m.name,
                index,
                RejectReason::MergedTablesWrite,
                "a new-version session reads an old table of the merge",
            ));
        }
        match &self.compiled.migrations[index].broken {
            Some(why) => ControlFlow::Break(Rejection::new(
                &self.compiled.migrations[index].name,
                index,
                RejectReason::InvalidRules,
                why,
            )),
            None => ControlFlow::Continue(()),
        }
    }
}

/// The names a WITH clause defines.
pub(crate) fn cte_names(query: &Query) -> Vec<String> {
    query
        .with
        .as_ref()
        .map(|w| w.cte_tables.iter().map(|c| normalize_ident(&c.alias.name)).collect())
        .unwrap_or_default()
}

/// The name a reference exposes to the rest of the statement: its alias, else its last name part.
pub(crate) fn exposed_name(object: &ObjectName, alias: Option<&Ident>) -> Ident {
    if let Some(a) = alias {
        return a.clone();
    }
    match object.0.last() {
        Some(ObjectNamePart::Identifier(id)) => id.clone(),
        _ => Ident::new(object.to_string()),
    }
}

pub(crate) fn alias_of(name: Ident) -> TableAlias {
    TableAlias { explicit: true, name, columns: vec![], at: None }
}

/// What a read of `migration` under `route` becomes: `None` when the session reads its own version's
/// table under its logical name (the old table for an old-version session), else the substitute factor.
pub(crate) fn routed_read(
    m: &CompiledMigration,
    route: MigrationRoute,
    object: &ObjectName,
    alias: Option<&TableAlias>,
) -> Option<TableFactor> {
    let alias = alias.cloned().unwrap_or_else(|| alias_of(exposed_name(object, None)));
    if m.is_merge() {
        // An old table of a merge read from the shadow: that source's columns of the rows it holds. (The
        // reference is known to denote one of the sources; a new-version read was refused before.)
        let name = TableName::from_object_name(object)?;
        let source = m.sources.iter().find(|s| name.denotes(&s.table, true))?;
        return (route.read_source == Side::New).then(|| TableFactor::Derived {
            lateral: false,
            subquery: Box::new(source.view.clone()),
            alias: Some(alias),
            sample: None,
        });
    }
    match (route.version, route.read_source) {
        (Side::Old, Side::Old) => None,
        // A split: the new shape is its targets joined on the key.
        (Side::New, Side::New) if m.joined.is_some() => m.joined.as_ref().map(|joined| TableFactor::Derived {
            lateral: false,
            subquery: Box::new(joined.clone()),
            alias: Some(alias),
            sample: None,
        }),
        (Side::New, Side::New) => Some(TableFactor::Table {
            name: m.shadow.to_object_name(),
            alias: Some(alias),
            args: None,
            with_hints: vec![],
            version: None,
            with_ordinality: false,
            partitions: vec![],
            json_path: None,
            sample: None,
            index_directives: vec![],
            inheritance: None,
        }),
        (version, _) => Some(TableFactor::Derived {
            lateral: false,
            subquery: Box::new(m.producing(version).view.clone()),
            alias: Some(alias),
            sample: None,
        }),
    }
}

impl VisitorMut for ReadRouter<'_> {
    type Break = Rejection;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Rejection> {
        let names = cte_names(query);
        let with = query.with.take();
        if let Some(mut with) = with {
            // A non-recursive CTE body sees only the CTEs before it (a same-named table otherwise); a
            // recursive WITH makes every name visible everywhere.
            for i in 0..with.cte_tables.len() {
                let visible = if with.recursive { names.clone() } else { names[..i].to_vec() };
                self.scopes.push(visible);
                let flow = VisitMut::visit(&mut with.cte_tables[i].query, self);
                self.scopes.pop();
                if flow.is_break() {
                    query.with = Some(with);
                    return flow;
                }
            }
            self.pending_with.push(Some(with));
        } else {
            self.pending_with.push(None);
        }
        self.scopes.push(names);
        // A SELECT's ORDER BY, LIMIT and OFFSET belong to its level: open it with the query.
        if let SetExpr::Select(select) = query.body.as_ref() {
            let level = self.levels().level(&select.from);
            self.levels.push(level);
            self.query_selects.push(Some(select.as_ref() as *const Select as usize));
        } else {
            self.query_selects.push(None);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<Rejection> {
        if self.query_selects.last() != Some(&Some(select as *const Select as usize)) {
            let level = self.levels().level(&select.from);
            self.levels.push(level);
        }
        qualify_wildcards(self.compiled, &self.levels, &mut select.projection, self.in_returning, &mut self.touched)
    }

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<Rejection> {
        if self.query_selects.last() != Some(&Some(select as *const Select as usize)) {
            self.levels.pop();
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<Rejection> {
        if self.query_selects.pop().flatten().is_some() {
            self.levels.pop();
        }
        self.scopes.pop();
        query.with = self.pending_with.pop().flatten();
        // `TABLE users` is a read that is not a table factor: spell it `SELECT * FROM users` and route that.
        if let SetExpr::Table(table) = query.body.as_ref() {
            if let Some(name) = &table.table_name {
                let mut parts = Vec::new();
                parts.extend(table.schema_name.clone());
                parts.push(name.clone());
                let object = ObjectName::from(parts);
                if let Some(index) = self.active_migration(&object) {
                    self.reject_if_broken(index)?;
                    let m = &self.compiled.migrations[index];
                    if let Some(factor) = routed_read(m, self.route.get(index), &object, None) {
                        let mut select = template_query("SELECT * FROM __dw_table");
                        if let SetExpr::Select(s) = select.body.as_mut() {
                            s.from[0].relation = factor;
                        }
                        query.body = select.body;
                        self.touched.insert(index);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<Rejection> {
        // A nested UPDATE or DELETE is a query level of its own (its target and the tables it reads).
        let opens = matches!(statement, Statement::Update(_) | Statement::Delete(_));
        if opens {
            let builder = self.levels();
            let target = dml_target_name(statement).map(|(name, alias)| builder.target_entry(name, alias));
            let level = dml_levels(&builder, statement, target, false).0;
            self.levels.push(level);
        }
        self.statement_levels.push(opens);
        // Only nested statements reach here (data-modifying CTEs): writing a migrated table from one has
        // no dual-write form.
        let target = match statement {
            Statement::Insert(i) => match &i.table {
                sqlparser::ast::TableObject::TableName(n) => Some(n.clone()),
                _ => None,
            },
            Statement::Update(u) => match &u.table.relation {
                TableFactor::Table { name, .. } => Some(name.clone()),
                _ => None,
            },
            Statement::Delete(d) => match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(t) | sqlparser::ast::FromTable::WithoutKeyword(t) => {
                    t.first().and_then(|t| match &t.relation {
                        TableFactor::Table { name, .. } => Some(name.clone()),
                        _ => None,
                    })
                }
            },
            Statement::Merge(m) => match &m.table {
                TableFactor::Table { name, .. } => Some(name.clone()),
                _ => None,
            },
            _ => None,
        };
        if let Some(Err(refusal)) = target.as_ref().map(|t| self.refuse_shadow_write(t)) {
            return ControlFlow::Break(refusal);
        }
        if let Some(index) = target.as_ref().and_then(|t| self.active_migration(t)) {
            let m = &self.compiled.migrations[index];
            return ControlFlow::Break(Rejection::new(
                &m.name,
                index,
                RejectReason::DataModifyingCte,
                &format!("{} is written inside a WITH clause", m.table),
            ));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &mut Statement) -> ControlFlow<Rejection> {
        if self.statement_levels.pop() == Some(true) {
            self.levels.pop();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Rejection> {
        // `public.users.id`: once `public.users` is replaced by something aliased `users`, only the
        // two-part spelling still resolves, and only where it binds to the same level (`crate::scopes`).
        if let Expr::CompoundIdentifier(parts) = expr {
            if let [schema, table, _] = parts.as_slice() {
                if let Resolution::Unqualify(index) =
                    resolve(self.compiled, &self.levels, schema, table, self.in_returning)?
                {
                    parts.remove(0);
                    self.touched.insert(index);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Rejection> {
        // A non-LATERAL derived table does not see the level whose FROM it is in.
        if let TableFactor::Derived { lateral: false, .. } = factor {
            let hides = self.levels.len().checked_sub(1);
            if let Some(i) = hides {
                self.levels[i].hidden += 1;
            }
            self.hidden.push(hides);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Rejection> {
        if let TableFactor::Derived { lateral: false, .. } = factor {
            if let Some(Some(i)) = self.hidden.pop() {
                self.levels[i].hidden -= 1;
            }
        }
        let TableFactor::Table { name, alias, args: None, .. } = factor else {
            return ControlFlow::Continue(());
        };
        if let Err(refusal) = self.refuse_unbackfilled_merge_read(name) {
            return ControlFlow::Break(refusal);
        }
        let Some(index) = self.active_migration(name) else {
            return ControlFlow::Continue(());
        };
        self.reject_if_broken(index)?;
        let m = &self.compiled.migrations[index];
        if let Some(routed) = routed_read(m, self.route.get(index), name, alias.as_ref()) {
            *factor = routed;
            self.touched.insert(index);
        }
        ControlFlow::Continue(())
    }
}
