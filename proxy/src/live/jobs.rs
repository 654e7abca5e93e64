//! Control SQL's view of the background jobs: `DUALWRITE BACKFILL ...` and `DUALWRITE VERIFY ...` run
//! through [`jobs::JobRunner`](crate::jobs::JobRunner) and answer as result sets.

use std::sync::Arc;

use dualwrite_rules::RuleSet;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::control::error::{codes, SqlError};
use crate::control::exec::result_set;
use crate::control::{BackfillAction, ControlResponse, JobRunner as ControlJobRunner};
use crate::jobs::{self, BackfillOptions, JobError, TableMapping};
use crate::state::Actor;

/// Adapts the job runner to the control commands.
pub struct ControlJobs {
    runner: jobs::JobRunner,
    rules: Arc<RuleSet>,
}

impl ControlJobs {
    /// Jobs connect to the upstream database with the control plane's credentials.
    pub fn new(pg: tokio_postgres::Config, rules: Arc<RuleSet>) -> ControlJobs {
        ControlJobs { runner: jobs::JobRunner::new(pg), rules }
    }

    fn mapping(&self, migration: &str) -> Result<TableMapping, SqlError> {
        TableMapping::from_rules(&self.rules, migration).map_err(job_error)
    }

    async fn backfill_now(
        &self,
        migration: &str,
        action: BackfillAction,
        batch: Option<u32>,
        rate: Option<u32>,
        actor: &Actor,
    ) -> Result<ControlResponse, SqlError> {
        let mapping = self.mapping(migration)?;
        let mut options = BackfillOptions { owner: format!("{} via control SQL", actor.role), ..BackfillOptions::default() };
        if let Some(batch) = batch {
            options.batch_size = batch.max(1);
        }
        options.limits.rate = rate;
        let started = match action {
            BackfillAction::Start => Some(self.runner.start(&mapping, options).await),
            BackfillAction::Resume => Some(self.runner.resume(&mapping, options).await),
            BackfillAction::Pause => {
                self.runner.pause(migration).await.map_err(job_error)?;
                None
            }
        };
        let runs_here = match started {
            Some(Ok(jobs::Started::Here)) => "this instance",
            Some(Ok(jobs::Started::Elsewhere)) | Some(Err(JobError::Busy { .. })) => "another instance",
            Some(Err(e)) => return Err(job_error(e)),
            None => "",
        };
        let status = self.runner.status(migration).await.map_err(job_error)?;
        let row = match status {
            Some(s) => vec![
                Some(migration.to_owned()),
                Some(s.state),
                Some(s.rows_done.to_string()),
                s.rows_total.map(|t| t.to_string()),
                (!runs_here.is_empty()).then(|| runs_here.to_owned()).or(s.owner),
            ],
            None => vec![Some(migration.to_owned()), Some("idle".into()), Some("0".into()), None, None],
        };
        Ok(result_set(&["migration", "state", "rows_done", "rows_total", "runner"], vec![row]))
    }

    async fn verify_now(&self, migration: &str, repair: bool) -> Result<ControlResponse, SqlError> {
        let mapping = self.mapping(migration)?;
        let report = self.runner.verify(&mapping, repair).await.map_err(job_error)?;
        let row = vec![
            Some(migration.to_owned()),
            Some(report.rows_checked.to_string()),
            Some(report.missing.to_string()),
            Some(report.extra.to_string()),
            Some(report.different.to_string()),
            Some(report.repaired.to_string()),
            Some(report.clean().to_string()),
        ];
        Ok(result_set(
            &["migration", "rows_checked", "missing", "extra", "different", "repaired", "clean"],
            vec![row],
        ))
    }
}

impl ControlJobRunner for ControlJobs {
    fn backfill<'a>(
        &'a self,
        migration: &'a str,
        action: BackfillAction,
        batch: Option<u32>,
        rate: Option<u32>,
        actor: &'a Actor,
    ) -> BoxFuture<'a, Result<ControlResponse, SqlError>> {
        self.backfill_now(migration, action, batch, rate, actor).boxed()
    }

    fn verify<'a>(&'a self, migration: &'a str, repair: bool, _actor: &'a Actor) -> BoxFuture<'a, Result<ControlResponse, SqlError>> {
        self.verify_now(migration, repair).boxed()
    }
}

/// A job failure as the client sees it: database errors keep their SQLSTATE.
fn job_error(e: JobError) -> SqlError {
    match &e {
        JobError::Db(db) => match db.as_db_error() {
            Some(d) => SqlError::new(d.code().code().to_owned(), d.message().to_owned()),
            None => SqlError::new(codes::CONNECTION_EXCEPTION, e.to_string()),
        },
        JobError::Busy { .. } => SqlError::new(codes::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()),
        JobError::Mapping { .. } | JobError::UnknownMigration(_) => SqlError::new(codes::INVALID_PARAMETER_VALUE, e.to_string()),
    }
}
