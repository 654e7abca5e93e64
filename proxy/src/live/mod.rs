//! Live migrations in the relay: the [`Interceptor`] that joins the rewrite engine, the per-session
//! `dualwrite.version`, the shared migration state and control SQL. The relay hands it every Query and
//! Parse; it answers with a verdict (forward untouched, rewrite, refuse, or answer locally).
//!
//! A `Live` serves one database: the migrations whose `database` it is, their state (the `dualwrite` schema
//! of that database), jobs and shadow reads. [`LiveDatabases`] holds one per database that holds migrations
//! and [`LiveInterceptor`] picks it for each session; [`session::LiveSession`] holds what one client session needs, and
//! [`elsewhere::ElsewhereSession`] serves sessions on databases without migrations.

mod databases;
mod elsewhere;
mod interceptor;
mod key_ddl;
mod prepared;
mod resolution;
mod session;
mod statement_effect;
mod verdict;

pub use databases::LiveDatabases;
pub use interceptor::LiveInterceptor;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use dualwrite_rules::{CacheStats, Rewriter, RuleSet};

use crate::config::{Config, ShadowReadsConfig, VersionDefaults};
use crate::control::exec::JobDispatch;
use crate::control::jobs_bridge::JobsBridge;
use crate::control::{ControlCommand, ControlContext, SqlError as ControlError};
use crate::jobs::{JobRunner, TableMapping};
use crate::pg_client::PgTarget;
use crate::protocol::responses::LatencySink;
use crate::shadow::ShadowReads;
use crate::state::{Actor, StateHandle, StateOptions};

/// Plans kept by the rewriter's cache (statement text x route).
const PLAN_CACHE_CAPACITY: usize = 16 * 1024;

/// How often the per-migration figures are re-read from the state tables and the catalog.
const FIGURES_EVERY: Duration = Duration::from_secs(5);

/// What every session of a server shares for live migrations.
pub struct Live {
    /// The rules and settings in force; a reload replaces them whole, and each statement reads them afresh.
    current: Arc<ArcSwap<LiveRules>>,
    state: StateHandle,
    runner: Option<Arc<JobRunner>>,
    next_session: AtomicU64,
    /// This `Live`'s database (the one its state, jobs and shadow reads connect to): only sessions on it
    /// are sampled for shadow reads.
    shadow_database: String,
    /// Exports the per-migration figures (backfill, lag, divergence, table rows) while metrics are on.
    figures: Option<tokio::task::JoinHandle<()>>,
    /// Verifies every migration on `control.verify_every_secs`.
    verify_schedule: Option<tokio::task::JoinHandle<()>>,
    /// The migrations of the other databases (name -> database), so control SQL naming one here says
    /// where it is; replaced with the rules.
    elsewhere: ArcSwap<BTreeMap<String, String>>,
    /// The change-data-capture watch (`[cdc]`).
    cdc_watch: Option<tokio::task::JoinHandle<()>>,
}

/// One generation of rules and the settings around them: what a reload swaps. Sessions compare
/// `generation` to notice a swap.
#[derive(Clone)]
pub struct LiveRules {
    pub generation: u64,
    rules: Arc<RuleSet>,
    rewriter: Arc<Rewriter>,
    control: ControlContext,
    defaults: VersionDefaults,
    /// The shadow-read sampler and workers, when some migration samples reads; restarted by a reload that
    /// changes the rules or `[shadow_reads]`.
    shadow: Option<Arc<ShadowReads>>,
    shadow_config: ShadowReadsConfig,
    /// Plan-cache counts of the rewriters this one replaced, so the exported counters never go back.
    cache_base: CacheStats,
    /// Per migration (by index): where dual-writing requests' latency goes.
    dual_write: Arc<[LatencySink]>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for task in [self.figures.take(), self.verify_schedule.take(), self.cdc_watch.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

/// Reads and validates the rules file a config names (parse, model validation, version defaults, which
/// must each name a version of some migration).
pub fn load_rules(config: &Config) -> anyhow::Result<Option<Arc<RuleSet>>> {
    let Some(path) = &config.rules else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read rules file {}", path.display()))?;
    let rules = Arc::new(RuleSet::from_toml(&text, &path.display().to_string())?);
    config.versions.validate(&rules).map_err(|e| anyhow::anyhow!("config versions: {e}"))?;
    Ok(Some(rules))
}

impl Live {
    /// Connects the control plane of one database (`pg`, where the migrations of `rules` live: creating or
    /// upgrading its `dualwrite` schema, registering the migrations, reading the state) and starts its
    /// jobs and figures.
    async fn start(config: &Config, pg: PgTarget, rules: Arc<RuleSet>) -> anyhow::Result<Live> {
        let options = StateOptions {
            max_age: config.limits.state_max_age(),
            schema_check_interval: config.limits.schema_check_interval(),
            writers_check_interval: config.limits.unseen_writers_check_interval(),
            check_schema_on_ddl: config.limits.schema_check_on_ddl,
            ..StateOptions::default()
        };
        let state = StateHandle::connect(pg.clone(), Arc::clone(&rules), options)
            .await
            .context("cannot register the rules' migrations and load their state from the upstream database")?;
        let runner = Arc::new(JobRunner::new(pg.clone()));
        let mut live = Live::new(rules, state, config, Some(Arc::clone(&runner)));
        // The mappings are read at every use, so a reload's migrations are picked up.
        let rules_of = live.rules_source();
        let mappings: crate::jobs::metrics::MappingsFn = Arc::new(move || {
            let rules = rules_of();
            rules.migrations.iter().filter_map(|m| TableMapping::from_rules(&rules, &m.name).ok()).collect()
        });
        if config.metrics_listen.is_some() {
            live.figures = Some(crate::jobs::spawn_refresher(pg.clone(), Arc::clone(&mappings), FIGURES_EVERY));
        }
        if let Some(secs) = config.control.verify_every_secs.filter(|s| *s > 0) {
            live.verify_schedule = Some(runner.spawn_verify_schedule(mappings, Duration::from_secs(secs)));
        }
        live.cdc_watch = crate::cdc::spawn_watch(live.state.clone(), config.cdc.clone());
        Ok(live)
    }

    /// `runner`: the jobs control SQL dispatches BACKFILL/VERIFY to (none: those commands answer 0A000).
    pub fn new(rules: Arc<RuleSet>, state: StateHandle, config: &Config, runner: Option<Arc<JobRunner>>) -> Live {
        let current = LiveRules::new(rules, &state, config, runner.as_ref(), 1, CacheStats::default());
        let current = Arc::new(ArcSwap::from_pointee(current));
        let shadow_database = crate::shadow::workers_database(state.pg_target());
        let next_session = AtomicU64::new(1);
        let elsewhere = ArcSwap::default();
        let (figures, verify_schedule, cdc_watch) = (None, None, None);
        Live { current, state, runner, next_session, shadow_database, figures, verify_schedule, cdc_watch, elsewhere }
    }

    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// The rules and settings in force now.
    pub fn current(&self) -> Arc<LiveRules> {
        self.current.load_full()
    }

    /// The same, cheaper, for the query path (a guard held for one statement).
    fn load(&self) -> arc_swap::Guard<Arc<LiveRules>> {
        self.current.load()
    }

    /// The next generation for `rules` (this database's part of the reloaded rules file) and the config's
    /// admin roles and version defaults, with what changed, for the log. Migrations the new rules add are
    /// registered in the state first; nothing is in force until [`Live::install`].
    async fn prepare_reload(&self, rules: Arc<RuleSet>, config: &Config) -> anyhow::Result<(LiveRules, Vec<String>)> {
        let old = self.current();
        let changes = rules_changes(&old.rules, &rules);
        let next = if *old.rules == *rules {
            // Same rules: same generation, rewriter and plan cache; only the settings around them change.
            let shadow = if old.shadow_config == config.shadow_reads {
                old.shadow.clone()
            } else {
                start_shadow(&rules, &self.state, config)
            };
            let mut control = control_context(&self.state, config, &old.rules, self.runner.as_ref());
            control.shadow = shadow.as_ref().map(|s| Arc::clone(s.counts()));
            let (defaults, shadow_config) = (config.versions.clone(), config.shadow_reads.clone());
            LiveRules { control, defaults, shadow, shadow_config, ..LiveRules::clone(&old) }
        } else {
            let actor = Actor { role: "dualwrite (config reload)".into(), client_addr: None };
            self.state.set_rules(Arc::clone(&rules), &actor).await.with_context(|| {
                format!("cannot register the new rules in the dualwrite state of database \"{}\"", self.shadow_database)
            })?;
            let stats = old.rewriter.cache_stats();
            let (hits, misses) = (old.cache_base.hits + stats.hits, old.cache_base.misses + stats.misses);
            let base = CacheStats { hits, misses, entries: 0 };
            LiveRules::new(rules, &self.state, config, self.runner.as_ref(), old.generation + 1, base)
        };
        Ok((next, changes))
    }

    /// Puts a prepared generation in force: sessions pick it up at their next statement.
    fn install(&self, next: LiveRules) {
        self.current.store(Arc::new(next));
    }

    /// The refusal of a control command that names a migration of another database, for an admin (others
    /// get the usual 42501 from `control::execute`).
    fn migration_elsewhere(&self, command: &ControlCommand, role: &str) -> Option<ControlError> {
        let migration = command.migration()?;
        let elsewhere = self.elsewhere.load();
        let database = elsewhere.get(migration)?;
        if !self.load().control.is_admin(role) {
            return None;
        }
        Some(
            ControlError::new(
                crate::sql_error::codes::UNDEFINED_OBJECT,
                format!("migration \"{migration}\" does not exist in database \"{}\"", self.shadow_database),
            )
            .with_hint(format!("It belongs to database \"{database}\": run the command on a connection to it.")),
        )
    }

    /// A function returning the rules in force, for tasks that outlive a reload.
    fn rules_source(&self) -> impl Fn() -> Arc<RuleSet> + Send + Sync + 'static {
        let current = Arc::clone(&self.current);
        move || Arc::clone(&current.load().rules)
    }
}

impl LiveRules {
    fn new(
        rules: Arc<RuleSet>,
        state: &StateHandle,
        config: &Config,
        runner: Option<&Arc<JobRunner>>,
        generation: u64,
        cache_base: CacheStats,
    ) -> LiveRules {
        let rewriter = Arc::new(Rewriter::new(Arc::clone(&rules), PLAN_CACHE_CAPACITY));
        let shadow = start_shadow(&rules, state, config);
        let mut control = control_context(state, config, &rules, runner);
        control.shadow = shadow.as_ref().map(|s| Arc::clone(s.counts()));
        let (defaults, shadow_config) = (config.versions.clone(), config.shadow_reads.clone());
        let dual_write = verdict::dual_write_sinks(&rules);
        LiveRules { generation, rules, rewriter, control, defaults, shadow, shadow_config, cache_base, dual_write }
    }
}

/// The shadow-read workers for `rules`, on the control plane's connection settings (none when no
/// migration samples reads).
fn start_shadow(rules: &RuleSet, state: &StateHandle, config: &Config) -> Option<Arc<ShadowReads>> {
    ShadowReads::start(rules, state.pg_target().clone(), &config.shadow_reads).map(Arc::new)
}

fn control_context(
    state: &StateHandle,
    config: &Config,
    rules: &Arc<RuleSet>,
    runner: Option<&Arc<JobRunner>>,
) -> ControlContext {
    let jobs = runner.map(|r| {
        Arc::new(JobsBridge::new(Arc::clone(r), Arc::clone(rules)).with_hold_limits(&config.control))
            as Arc<dyn JobDispatch>
    });
    let admin_roles = Arc::new(config.admin_roles.clone());
    ControlContext { state: state.clone(), admin_roles, jobs, shadow: None, pools: None }
}

/// Migrations added, removed or changed between two rule sets, as log lines.
fn rules_changes(old: &RuleSet, new: &RuleSet) -> Vec<String> {
    let mut changes = Vec::new();
    for m in &new.migrations {
        match old.find(&m.name) {
            None => changes.push(format!("migration {} added", m.name)),
            Some((_, before)) if before != m => changes.push(format!("migration {} changed", m.name)),
            Some(_) => {}
        }
    }
    for m in &old.migrations {
        if new.find(&m.name).is_none() {
            changes.push(format!("migration {} removed", m.name));
        }
    }
    changes
}
