//! Live migrations across the databases behind one proxy: one [`Live`] per database that holds migrations
//! (that database's part of the rules, its own rewriter, `dualwrite` state, jobs and shadow reads, all
//! connected to that database), chosen for each session by the database its startup packet names.
//!
//! The set of databases holding migrations is fixed at start: a reload may change the migrations of each
//! (all databases' new rules are registered before any is put in force, so a failure changes nothing), but
//! one that adds or removes a database is refused and needs a restart. Sessions on a database without
//! migrations are therefore never inspected, and cannot miss a migration a reload would add under them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dualwrite_rules::RuleSet;

use super::{load_rules, Live};
use crate::config::Config;
use crate::databases::{quoted_list, split, DatabaseRules};
use crate::pg_client::PgTarget;
use crate::state::{Actor, StateHandle};

/// Every database's [`Live`], by database name.
pub struct LiveDatabases {
    by_database: BTreeMap<String, Arc<Live>>,
    /// The databases holding migrations, for the answers given on the others.
    holders: Arc<[String]>,
}

impl LiveDatabases {
    /// Loads the rules named by the config and connects the control plane of each database that holds
    /// migrations. `None` without a rules file: the proxy then relays everything without looking at it.
    pub async fn from_config(config: &Config) -> anyhow::Result<Option<Arc<LiveDatabases>>> {
        let Some(rules) = load_rules(config)? else { return Ok(None) };
        let control = config.control_connection()?;
        let parts = split_config_rules(config, &rules)?;
        let locations = locations(&parts);
        let mut by_database = BTreeMap::new();
        for DatabaseRules { database, rules } in parts {
            let names = quoted_list(rules.migrations.iter().map(|m| m.name.as_str()));
            let live = Live::start(config, control.with_database(&database), rules).await.with_context(|| {
                format!("cannot load the migration state of database \"{database}\" (migrations {names})")
            })?;
            by_database.insert(database, Arc::new(live));
        }
        let holders = by_database.keys().cloned().collect();
        let databases = LiveDatabases { by_database, holders };
        databases.tell_where_migrations_are(&locations);
        Ok(Some(Arc::new(databases)))
    }

    /// The `Live` of `database`, if it holds migrations.
    pub fn database(&self, database: &str) -> Option<&Arc<Live>> {
        self.by_database.get(database)
    }

    /// The databases holding migrations, in name order.
    pub fn holders(&self) -> Arc<[String]> {
        Arc::clone(&self.holders)
    }

    /// Each database's state, for readiness.
    pub fn states(&self) -> Vec<StateHandle> {
        self.by_database.values().map(|live| live.state().clone()).collect()
    }

    /// Replaces every database's rules (re-read from the config's rules file), admin roles and version
    /// defaults, all or nothing. Returns what changed, for the log.
    pub async fn reload(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        let rules =
            load_rules(config)?.context("the rules file cannot be removed by a reload (restart without rules)")?;
        let parts = split_config_rules(config, &rules)?;
        let databases: Vec<&str> = parts.iter().map(|p| p.database.as_str()).collect();
        if databases.iter().copied().ne(self.holders.iter().map(String::as_str)) {
            anyhow::bail!(
                "the reloaded rules put migrations in databases {} instead of {}: adding or removing a database \
                 that holds migrations needs a restart",
                quoted_list(databases),
                quoted_list(self.holders.iter().map(String::as_str))
            );
        }
        let locations = locations(&parts);
        let mut prepared = Vec::with_capacity(parts.len());
        for DatabaseRules { database, rules } in parts {
            let live = &self.by_database[&database];
            match live.prepare_reload(rules, config).await {
                Ok(next) => prepared.push((live, next)),
                Err(error) => {
                    // The databases already prepared validate control SQL against the new rules: back to
                    // the rules in force (registering them again adds nothing).
                    for (live, _) in &prepared {
                        let actor = Actor { role: "dualwrite (config reload undone)".into(), client_addr: None };
                        if let Err(e) = live.state.set_rules(Arc::clone(&live.current().rules), &actor).await {
                            tracing::warn!(error = %e, "cannot restore the rules in force in the dualwrite state");
                        }
                    }
                    return Err(error);
                }
            }
        }
        let mut changes = Vec::new();
        for (live, (next, changed)) in prepared {
            live.install(next);
            changes.extend(changed);
        }
        self.tell_where_migrations_are(&locations);
        Ok(changes)
    }

    /// Gives each `Live` the migrations of the other databases (`locations`: migration -> database).
    fn tell_where_migrations_are(&self, locations: &BTreeMap<String, String>) {
        for (database, live) in &self.by_database {
            let elsewhere = locations.iter().filter(|(_, theirs)| *theirs != database);
            live.elsewhere.store(Arc::new(elsewhere.map(|(m, d)| (m.clone(), d.clone())).collect()));
        }
    }

    /// Exports the rewriters' plan-cache counters (summed over the databases) every `period` until the
    /// `LiveDatabases` is dropped.
    pub fn export_cache_metrics(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let hits = metrics::counter!("dualwrite_rewrite_cache_hits_total");
            let misses = metrics::counter!("dualwrite_rewrite_cache_misses_total");
            loop {
                let Some(databases) = weak.upgrade() else { return };
                let (mut total_hits, mut total_misses) = (0, 0);
                for live in databases.by_database.values() {
                    let current = live.load();
                    let stats = current.rewriter.cache_stats();
                    total_hits += current.cache_base.hits + stats.hits;
                    total_misses += current.cache_base.misses + stats.misses;
                }
                drop(databases);
                hits.absolute(total_hits);
                misses.absolute(total_misses);
                tokio::time::sleep(period).await;
            }
        });
    }
}

/// The config's rules split by database, migrations without one going to the upstream URL's.
fn split_config_rules(config: &Config, rules: &RuleSet) -> anyhow::Result<Vec<DatabaseRules>> {
    let upstream: PgTarget = config.upstream.parse().context("upstream URL")?;
    let origin = config.rules.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    split(rules, upstream.database(), &origin)
}

/// Each migration's database, by migration name.
fn locations(parts: &[DatabaseRules]) -> BTreeMap<String, String> {
    let named =
        |p: &DatabaseRules| p.rules.migrations.iter().map(|m| (m.name.clone(), p.database.clone())).collect::<Vec<_>>();
    parts.iter().flat_map(named).collect()
}
