//! `JobDispatch` over the jobs module's `JobRunner`: turns BACKFILL START|PAUSE|RESUME and VERIFY [REPAIR]
//! into runner calls, their results into one-row result sets, and job errors into SQLSTATEs.

use std::sync::Arc;
use std::time::Duration;

use dualwrite_rules::RuleSet;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::exec::JobDispatch;
use super::grammar::BackfillAction;
use crate::jobs::throttle::Limits;
use crate::jobs::{BackfillOptions, BackfillStatus, JobError, JobRunner, Started, TableMapping};
use crate::result_set::{result_set, ControlResponse};
use crate::sql_error::{codes, SqlError};
use crate::state::Actor;

/// Control SQL's access to the jobs of this proxy instance.
pub struct JobsBridge {
    runner: Arc<JobRunner>,
    rules: Arc<RuleSet>,
    /// The hold-off limits every backfill started here gets (the rate comes with each command).
    limits: Limits,
}

impl JobsBridge {
    /// `runner` must connect with the control plane's credentials (`Config::control_connection`).
    pub fn new(runner: Arc<JobRunner>, rules: Arc<RuleSet>) -> Self {
        JobsBridge { runner, rules, limits: Limits::default() }
    }

    /// Backfills hold off while replication lag or this process's p99 latency
    /// ([`crate::latency::RecentLatency`]) exceed the configured limits.
    pub fn with_hold_limits(mut self, control: &crate::config::ControlConfig) -> Self {
        self.limits.max_replication_lag = control.backfill_max_replication_lag_ms.map(Duration::from_millis);
        if let Some(ms) = control.backfill_max_p99_latency_ms {
            crate::latency::RecentLatency::global().enable();
            self.limits.max_latency = Some(Duration::from_millis(ms));
            self.limits.latency_signal = Some(Arc::new(|| crate::latency::RecentLatency::global().p99()));
        }
        self
    }

    async fn run_backfill(
        &self,
        migration: &str,
        action: BackfillAction,
        batch: Option<u32>,
        rate: Option<u32>,
        actor: &Actor,
    ) -> Result<ControlResponse, SqlError> {
        let mapping = TableMapping::from_rules(&self.rules, migration).map_err(job_error)?;
        let defaults = BackfillOptions::default();
        let options = BackfillOptions {
            batch_size: batch.unwrap_or(defaults.batch_size),
            limits: Limits { rate, ..self.limits.clone() },
            owner: format!("{} ({})", defaults.owner, actor.role),
            ..defaults
        };
        let started = match action {
            BackfillAction::Start => Some(self.runner.start(&mapping, options).await.map_err(job_error)?),
            BackfillAction::Resume => Some(self.runner.resume(&mapping, options).await.map_err(job_error)?),
            BackfillAction::Pause => {
                self.runner.pause(migration).await.map_err(job_error)?;
                None
            }
        };
        let status = self.runner.status(migration).await.map_err(job_error)?;
        Ok(backfill_response(migration, status.as_ref(), started))
    }
}

impl JobDispatch for JobsBridge {
    fn backfill<'a>(
        &'a self,
        migration: &'a str,
        action: BackfillAction,
        batch: Option<u32>,
        rate: Option<u32>,
        actor: &'a Actor,
    ) -> BoxFuture<'a, Result<ControlResponse, SqlError>> {
        self.run_backfill(migration, action, batch, rate, actor).boxed()
    }

    fn verify<'a>(
        &'a self,
        migration: &'a str,
        repair: bool,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<ControlResponse, SqlError>> {
        async move {
            let mapping = TableMapping::from_rules(&self.rules, migration).map_err(job_error)?;
            let report = self.runner.verify(&mapping, repair).await.map_err(job_error)?;
            let n = |v: i64| Some(v.to_string());
            Ok(result_set(
                &[
                    "migration",
                    "run_id",
                    "source",
                    "rows_checked",
                    "target_rows",
                    "missing",
                    "extra",
                    "different",
                    "repaired",
                    "clean",
                ],
                vec![vec![
                    Some(migration.to_string()),
                    n(report.run_id),
                    Some(report.source.as_str().to_string()),
                    n(report.rows_checked),
                    n(report.target_rows),
                    n(report.missing),
                    n(report.extra),
                    n(report.different),
                    n(report.repaired),
                    Some(if report.clean() { "t" } else { "f" }.to_string()),
                ]],
            ))
        }
        .boxed()
    }
}

fn backfill_response(migration: &str, status: Option<&BackfillStatus>, started: Option<Started>) -> ControlResponse {
    let runs_on = started.map(|s| match s {
        Started::Here => "this instance".to_string(),
        Started::Elsewhere => "another instance".to_string(),
    });
    result_set(
        &["migration", "state", "rows_done", "rows_total", "runs_on"],
        vec![vec![
            Some(migration.to_string()),
            status.map(|s| s.state.clone()),
            status.map(|s| s.rows_done.to_string()),
            status.and_then(|s| s.rows_total).map(|t| t.to_string()),
            runs_on,
        ]],
    )
}

/// A job failure as the client sees it; database errors keep their SQLSTATE.
fn job_error(e: JobError) -> SqlError {
    match &e {
        JobError::Db(db) => match db.as_db_error() {
            Some(d) => SqlError::new(d.code().code().to_string(), d.message().to_string()),
            None => SqlError::new(codes::CONNECTION_EXCEPTION, e.to_string()),
        },
        JobError::Busy { .. } => SqlError::new(codes::OBJECT_IN_USE, e.to_string()),
        JobError::UnknownMigration(_) => SqlError::new(codes::UNDEFINED_OBJECT, e.to_string()),
        JobError::Mapping { .. } | JobError::Phase { .. } => {
            SqlError::new(codes::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string())
        }
    }
}
