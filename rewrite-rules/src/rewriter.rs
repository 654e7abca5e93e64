//! The entry point the proxy calls: a cheap text check, then the plan cache, then parse + rewrite.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::cache::{CacheStats, PlanCache};
use crate::compiled::Compiled;
use crate::fallback::{decide_unparsed, edge_comments};
use crate::model::{Phase, RuleSet};
use crate::plan::{Plan, StatementTransform};
use crate::route::Route;
use crate::shadow::ShadowRead;
use crate::statement::rewrite_statement;

/// Rewrites SQL for sessions of one rule set. Shared by all sessions (`Send + Sync`); plans are cached by
/// (statement text, route).
pub struct Rewriter {
    rules: Arc<RuleSet>,
    compiled: Compiled,
    cache: PlanCache,
    pass_through: Arc<Plan>,
}

impl Rewriter {
    /// A rewriter caching up to about `cache_capacity` plans (0 disables the cache).
    pub fn new(rules: Arc<RuleSet>, cache_capacity: usize) -> Rewriter {
        let compiled = Compiled::new(&rules);
        Rewriter { rules, compiled, cache: PlanCache::new(cache_capacity), pass_through: Arc::new(Plan::PassThrough) }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Cheap, route-independent check: false means `sql` names no migrated table and needs no rewrite under
    /// any route. (A true answer may be a false positive; `rewrite` sorts it out.)
    pub fn mentions_migrated_table(&self, sql: &str) -> bool {
        self.compiled.may_mention(sql)
    }

    /// The plan for `sql` under `route`, from the cache when possible.
    pub fn rewrite(&self, sql: &str, route: &Route) -> Arc<Plan> {
        if !self.compiled.may_mention(sql) || route_is_off(route) {
            return self.pass_through.clone();
        }
        self.cache.get_or_build(sql, route, || self.plan(sql, route))
    }

    /// The plan for `sql` under `route`, always computed (no cache, no counters).
    pub fn plan(&self, sql: &str, route: &Route) -> Plan {
        if !self.compiled.may_mention(sql) || route_is_off(route) {
            return Plan::PassThrough;
        }
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            Err(e) => {
                return match decide_unparsed(&self.compiled, route, sql, &e.to_string()) {
                    Ok(()) => Plan::PassThrough,
                    Err(rejection) => Plan::Rejected(rejection),
                }
            }
        };
        let mut texts = Vec::with_capacity(statements.len());
        let mut transforms = Vec::with_capacity(statements.len());
        let mut migrations = BTreeSet::new();
        let mut writes = false;
        let mut changed = false;
        let several = statements.len() > 1;
        for statement in statements {
            // Only a multi-statement string needs the text of a statement left as it was.
            let original = several.then(|| statement.to_string());
            match rewrite_statement(&self.compiled, route, statement) {
                Err(rejection) => return Plan::Rejected(rejection),
                Ok(outcome) => {
                    migrations.extend(outcome.migrations);
                    writes |= outcome.write;
                    transforms.push(outcome.transform);
                    match outcome.statement {
                        Some(s) => {
                            changed = true;
                            texts.push(s.to_string());
                        }
                        None => texts.push(original.unwrap_or_default()),
                    }
                }
            }
        }
        if !changed {
            return Plan::PassThrough;
        }
        let (leading, trailing) = edge_comments(sql);
        let mut out = leading;
        out.push_str(&texts.join("; "));
        if !trailing.is_empty() {
            out.push(' ');
            out.push_str(trailing.trim_end_matches(' '));
        }
        Plan::Rewritten {
            sql: out,
            statements: transforms,
            migrations: migrations.into_iter().collect(),
            writes,
        }
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
        self.cache.stats()
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
