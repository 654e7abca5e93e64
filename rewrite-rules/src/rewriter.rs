//! The entry point the proxy calls: a cheap text check, then the plan caches (by statement shape, with the
//! statement's own literals spliced into the cached template, else by exact text), then parse + rewrite.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::cache::{CacheStats, PlanCache};
use crate::compiled::Compiled;
use crate::fallback::{decide_unparsed, edge_comments};
use crate::key_default_ddl::{key_default_change, may_alter};
use crate::literals::{self, Masked, Template};
use crate::model::{Phase, RuleSet};
use crate::names::TableName;
use crate::plan::{Plan, RejectReason, Rejection, StatementTransform};
use crate::route::{Route, UnsafeSchema};
use crate::shadow::ShadowRead;
use crate::statement::rewrite_statement;
use crate::writes::Outcome;

/// Rewrites SQL for sessions of one rule set. Shared by all sessions (`Send + Sync`); plans are cached by
/// (statement shape, route) and, for statements without literals or whose shape cannot be templated, by
/// (statement text, route).
pub struct Rewriter {
    rules: Arc<RuleSet>,
    compiled: Compiled,
    cache: PlanCache<Plan>,
    shapes: PlanCache<Shape>,
    pass_through: Arc<Plan>,
}

/// The cached plan of a statement shape.
enum Shape {
    /// The plan does not carry the statement's text: every statement of the shape gets it as it is.
    Fixed(Arc<Plan>),
    /// Rewritten SQL to splice each statement's literals into.
    Template { template: Template, statements: Vec<StatementTransform>, migrations: Vec<usize>, writes: bool },
    /// Splicing was not shown to reproduce the full rewrite: cache statements of this shape by exact text.
    ByText,
}

impl Rewriter {
    /// A rewriter caching up to about `cache_capacity` plans (0 disables the cache).
    pub fn new(rules: Arc<RuleSet>, cache_capacity: usize) -> Rewriter {
        let compiled = Compiled::new(&rules);
        Rewriter {
            rules,
            compiled,
            cache: PlanCache::new(cache_capacity),
            shapes: PlanCache::new(cache_capacity),
            pass_through: Arc::new(Plan::PassThrough),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The refusal of `sql` where its plan depends on which relation an unqualified migrated-table name
    /// means in the session and that is not known ([`RejectReason::UnresolvedName`]), naming the first
    /// migration whose table or shadow name the text contains.
    pub fn unresolved_name_refusal(&self, sql: &str) -> Rejection {
        let lower = sql.to_lowercase();
        let (index, name) = self
            .rules
            .migrations
            .iter()
            .enumerate()
            .find(|(_, m)| {
                let named = |t: &&TableName| lower.contains(&t.name.to_lowercase());
                m.old_tables().iter().any(named) || m.shadow_tables().iter().any(named)
            })
            .map(|(i, m)| (i, m.name.as_str()))
            .unwrap_or((0, ""));
        Rejection::new(name, index, RejectReason::UnresolvedName, "")
    }

    /// Cheap, route-independent check: false means `sql` names no migrated table and needs no rewrite under
    /// any route. (A true answer may be a false positive; `rewrite` sorts it out.)
    pub fn mentions_migrated_table(&self, sql: &str) -> bool {
        self.compiled.may_mention(sql)
    }

    /// What the statements of `sql` change of the migrations' key defaults (see `key_default_ddl`): the
    /// refusals the writes after them in their transaction get. Parses only a string that may hold an
    /// `ALTER` and names a migrated table or shadow.
    pub fn key_default_changes(&self, sql: &str, route: &Route) -> Vec<UnsafeSchema> {
        if !may_alter(sql) || !self.compiled.may_mention(sql) || route_is_off(route) {
            return Vec::new();
        }
        let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else { return Vec::new() };
        statements.iter().filter_map(|s| key_default_change(&self.compiled, route, s)).collect()
    }

    /// The plan for `sql` under `route`, from the cache when possible.
    pub fn rewrite(&self, sql: &str, route: &Route) -> Arc<Plan> {
        if !self.compiled.may_mention(sql) || route_is_off(route) {
            return self.pass_through.clone();
        }
        let Some(masked) = literals::mask(sql) else {
            return self.cache.get_or_build(sql, route, || self.plan(sql, route));
        };
        let (shape, hit) = self.shapes.get_or_build_uncounted(&masked.shape, route, || self.shape(sql, &masked, route));
        // A statement is one hit or one miss: of the text cache when its shape is not shared.
        if !matches!(*shape, Shape::ByText) {
            self.shapes.count(hit);
        }
        match &*shape {
            Shape::Fixed(plan) => plan.clone(),
            Shape::Template { template, statements, migrations, writes } => Arc::new(Plan::Rewritten {
                sql: template.fill(&masked.printed),
                statements: statements.clone(),
                migrations: migrations.clone(),
                writes: *writes,
            }),
            Shape::ByText => self.cache.get_or_build(sql, route, || self.plan(sql, route)),
        }
    }

    /// The COPY of `sql` dual-written with COPY alone, where it can be (`copy_tee`); the proxy asks only for
    /// a simple-Query COPY FROM STDIN that [`rewrite`](Self::rewrite) dual-writes through staging, and
    /// falls back to that plan whenever the tee's statements fail. Not cached: a COPY is one statement
    /// among its many rows.
    pub fn copy_tee(&self, sql: &str, route: &Route) -> Option<crate::CopyTee> {
        if route_is_off(route) {
            return None;
        }
        crate::copy_tee::copy_tee(&self.rules, &self.compiled, sql, route)
    }

    /// The plan for `sql` under `route`, always computed (no cache, no counters).
    pub fn plan(&self, sql: &str, route: &Route) -> Plan {
        self.parsed_plan(sql, route).unwrap_or_else(|unparsed| unparsed)
    }

    /// How statements of `masked`'s shape are planned, judged on `sql`, the first one seen. Only plans
    /// computed from a parsed statement are shared (a parse error's message depends on literal lengths).
    fn shape(&self, sql: &str, masked: &Masked, route: &Route) -> Shape {
        let (Ok(plan), Ok(shape_plan)) = (self.parsed_plan(sql, route), self.parsed_plan(&masked.shape, route)) else {
            return Shape::ByText;
        };
        let (probe_sql, probe_literals) = masked.probe(sql);
        let Ok(probe_plan) = self.parsed_plan(&probe_sql, route) else { return Shape::ByText };
        match shape_plan {
            Plan::PassThrough if plan == Plan::PassThrough && probe_plan == Plan::PassThrough => {
                Shape::Fixed(self.pass_through.clone())
            }
            Plan::Rewritten { sql: rewritten, statements, migrations, writes } => {
                let Some(template) = masked.template(&rewritten) else { return Shape::ByText };
                let fill = |printed: &[String]| Plan::Rewritten {
                    sql: template.fill(printed),
                    statements: statements.clone(),
                    migrations: migrations.clone(),
                    writes,
                };
                if fill(&masked.printed) != plan || fill(&probe_literals) != probe_plan {
                    return Shape::ByText;
                }
                Shape::Template { template, statements, migrations, writes }
            }
            _ => Shape::ByText,
        }
    }

    /// The plan for `sql`; `Err` holds the plan of a string the parser refused.
    fn parsed_plan(&self, sql: &str, route: &Route) -> Result<Plan, Plan> {
        if !self.compiled.may_mention(sql) || route_is_off(route) {
            return Ok(Plan::PassThrough);
        }
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            Err(e) => {
                return Err(match decide_unparsed(&self.compiled, route, sql, &e.to_string()) {
                    Ok(()) => Plan::PassThrough,
                    Err(rejection) => Plan::Rejected(rejection),
                })
            }
        };
        let mut texts = Vec::with_capacity(statements.len());
        let mut transforms = Vec::with_capacity(statements.len());
        let mut migrations = BTreeSet::new();
        let mut writes = false;
        let mut changed = false;
        let several = statements.len() > 1;
        // A statement's own DDL can refuse the writes after it in the string (`key_default_ddl`).
        let mut route = Cow::Borrowed(route);
        for statement in statements {
            // Only a multi-statement string needs the text of a statement left as it was.
            let original = several.then(|| statement.to_string());
            let key_default_change = several.then(|| key_default_change(&self.compiled, &route, &statement)).flatten();
            match rewrite_statement(&self.compiled, &route, statement) {
                Err(rejection) => return Ok(Plan::Rejected(rejection)),
                Ok(outcome) => {
                    if let Some(rejection) = refuse_unsafe_schema_write(&self.compiled, &route, &outcome) {
                        return Ok(Plan::Rejected(rejection));
                    }
                    if let Some(entry) = key_default_change {
                        route.to_mut().add_unsafe_schema(entry);
                    }
                    migrations.extend(outcome.migrations);
                    writes |= outcome.write;
                    let (before, after) = match outcome.companions {
                        Some(c) => (c.before, c.after),
                        None => (Vec::new(), Vec::new()),
                    };
                    for (companion, transform) in &before {
                        texts.push(companion.to_string());
                        transforms.push(*transform);
                    }
                    transforms.push(outcome.transform);
                    match outcome.statement {
                        Some(s) => {
                            changed = true;
                            texts.push(s.to_string());
                        }
                        None => texts.push(original.unwrap_or_default()),
                    }
                    for (companion, transform) in &after {
                        texts.push(companion.to_string());
                        transforms.push(*transform);
                    }
                }
            }
        }
        if !changed {
            return Ok(Plan::PassThrough);
        }
        let (leading, trailing) = edge_comments(sql);
        let mut out = leading;
        out.push_str(&texts.join("; "));
        if !trailing.is_empty() {
            out.push(' ');
            out.push_str(trailing.trim_end_matches(' '));
        }
        Ok(Plan::Rewritten { sql: out, statements: transforms, migrations: migrations.into_iter().collect(), writes })
    }

    /// For a sampled read: the statement in both shapes (reading the old table, reading the shadow), or
    /// `None` when it is not a plain read of exactly one migration in `dual_write` or `cutover` (see
    /// [`ShadowRead`]). Always parses: call it only for the reads actually sampled.
    pub fn shadow_read(&self, sql: &str, route: &Route) -> Option<ShadowRead> {
        if !self.compiled.may_mention(sql) {
            return None;
        }
        crate::shadow::shadow_read(&self.compiled, route, sql)
    }

    /// Cache hit and miss counts (statements the cheap check passed are neither).
    pub fn cache_stats(&self) -> CacheStats {
        let (text, shapes) = (self.cache.stats(), self.shapes.stats());
        CacheStats {
            hits: text.hits + shapes.hits,
            misses: text.misses + shapes.misses,
            entries: text.entries + shapes.entries,
        }
    }
}

fn route_is_off(route: &Route) -> bool {
    route.per_migration.iter().all(|r| r.phase == Phase::Off)
}

impl StatementTransform {
    /// True if the proxy has nothing to do to this statement's answer.
    pub fn is_unchanged(&self) -> bool {
        *self == StatementTransform::UNCHANGED
    }
}

/// A statement that writes a migration whose schema the proxy found unsafe (`Route::unsafe_schema`) is
/// refused, naming the finding: the dual write would run on a schema that lets it change the wrong rows.
/// Judged per statement of the string, so a read beside it in the same Query is not what refuses it.
fn refuse_unsafe_schema_write(compiled: &Compiled, route: &Route, outcome: &Outcome) -> Option<Rejection> {
    if !outcome.write || route.unsafe_schema.is_empty() {
        return None;
    }
    let (index, finding) = outcome.migrations.iter().find_map(|&i| route.unsafe_schema(i).map(|f| (i, f)))?;
    let name = &compiled.migrations[index].name;
    let description = format!(
        "its writes are refused until the schema of its tables is fixed: {finding} (this changed after the \
         migration was registered; DUALWRITE STATUS shows it in schema_findings, and writes resume by themselves \
         once the schema is safe again; reads are served as before)"
    );
    Some(Rejection::described(name, index, RejectReason::UnsafeSchema, &description))
}
