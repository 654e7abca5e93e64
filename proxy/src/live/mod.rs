//! Live migrations in the relay: the [`Interceptor`] that joins the rewrite engine, the per-session
//! `dualwrite.version`, the shared migration state and control SQL. The relay hands it every Query and
//! Parse; it answers with a verdict (forward untouched, rewrite, refuse, or answer locally).
//!
//! `Live` is built once per server from the config (rules file, control-plane connection) and shared by
//! every session; [`session::LiveSession`] holds what one client session needs.

mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dualwrite_rules::{Rewriter, RuleSet};

use crate::config::Config;
use crate::control::exec::JobDispatch;
use crate::control::jobs_bridge::JobsBridge;
use crate::control::ControlContext;
use crate::jobs::{JobRunner, TableMapping};
use crate::session::interceptor::{Interceptor, SessionInfo, SessionInterceptor};
use crate::shadow::ShadowReads;
use crate::state::{StateHandle, StateOptions};
use crate::version::VersionDefaults;

/// Plans kept by the rewriter's cache (statement text x route).
const PLAN_CACHE_CAPACITY: usize = 16 * 1024;

/// How often the per-migration figures are re-read from the state tables and the catalog.
const FIGURES_EVERY: Duration = Duration::from_secs(5);

/// What every session of a server shares for live migrations.
pub struct Live {
    rules: Arc<RuleSet>,
    rewriter: Rewriter,
    control: ControlContext,
    defaults: VersionDefaults,
    next_session: AtomicU64,
    /// Exports the per-migration figures (backfill, lag, divergence, table rows) while metrics are on.
    figures: Option<tokio::task::JoinHandle<()>>,
    /// Verifies every migration on `control.verify_every_secs`.
    verify_schedule: Option<tokio::task::JoinHandle<()>>,
    /// The shadow-read sampler and workers, when some migration samples reads.
    shadow: Option<ShadowReads>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for task in [self.figures.take(), self.verify_schedule.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

impl Live {
    /// Loads the rules named by the config and connects the control plane (creating or upgrading the
    /// `dualwrite` schema, registering the migrations, reading the state). `None` without a rules file:
    /// the proxy then relays everything without looking at it.
    pub async fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Live>>> {
        let Some(path) = &config.rules else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read rules file {}", path.display()))?;
        let rules = Arc::new(RuleSet::from_toml(&text, &path.display().to_string())?);
        config.versions.validate(&rules).map_err(anyhow::Error::msg)?;
        let pg = config.control_connection()?;
        let state = StateHandle::connect(pg.clone(), Arc::clone(&rules), StateOptions::default())
            .await
            .context("cannot load the migration state from the upstream database")?;
        let runner = Arc::new(JobRunner::new(pg.clone()));
        let jobs: Arc<dyn JobDispatch> = Arc::new(JobsBridge::new(Arc::clone(&runner), Arc::clone(&rules)));
        let jobs = Some(jobs);
        let mappings: Vec<TableMapping> =
            rules.migrations.iter().filter_map(|m| TableMapping::from_rules(&rules, &m.name).ok()).collect();
        let mappings: crate::jobs::metrics::MappingsFn = Arc::new(move || mappings.clone());
        let figures = config
            .metrics_listen
            .is_some()
            .then(|| crate::jobs::spawn_refresher(pg.clone(), Arc::clone(&mappings), FIGURES_EVERY));
        let verify_schedule = match config.control.verify_every_secs {
            Some(secs) if secs > 0 => Some(runner.spawn_verify_schedule(mappings, Duration::from_secs(secs))),
            _ => None,
        };
        let shadow = ShadowReads::start(&rules, pg.clone(), &config.shadow_reads);
        let mut live = Live::new(rules, state, config, jobs);
        live.figures = figures;
        live.verify_schedule = verify_schedule;
        live.control.shadow = shadow.as_ref().map(|s| Arc::clone(s.counts()));
        live.shadow = shadow;
        Ok(Some(Arc::new(live)))
    }

    pub fn new(rules: Arc<RuleSet>, state: StateHandle, config: &Config, jobs: Option<Arc<dyn JobDispatch>>) -> Live {
        let rewriter = Rewriter::new(Arc::clone(&rules), PLAN_CACHE_CAPACITY);
        let control = ControlContext { state, admin_roles: Arc::new(config.admin_roles.clone()), jobs, shadow: None };
        Live {
            rules,
            rewriter,
            control,
            defaults: config.versions.clone(),
            next_session: AtomicU64::new(1),
            figures: None,
            verify_schedule: None,
            shadow: None,
        }
    }

    pub fn state(&self) -> &StateHandle {
        &self.control.state
    }

    /// Exports the rewriter's plan-cache counters every `period` until the `Live` is dropped.
    pub fn export_cache_metrics(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let hits = metrics::counter!("dualwrite_rewrite_cache_hits_total");
            let misses = metrics::counter!("dualwrite_rewrite_cache_misses_total");
            loop {
                let Some(live) = weak.upgrade() else { return };
                let stats = live.rewriter.cache_stats();
                drop(live);
                hits.absolute(stats.hits);
                misses.absolute(stats.misses);
                tokio::time::sleep(period).await;
            }
        });
    }
}

/// The interceptor of a server with migrations: `Arc<Live>` so each session holds the shared part.
pub struct LiveInterceptor(pub Arc<Live>);

impl Interceptor for LiveInterceptor {
    fn start_session(&self, info: &SessionInfo) -> Option<Box<dyn SessionInterceptor>> {
        let id = self.0.next_session.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(session::LiveSession::new(Arc::clone(&self.0), info, id)))
    }
}
