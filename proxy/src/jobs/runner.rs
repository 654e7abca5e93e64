//! `JobRunner`: the entry points the control commands call (`DUALWRITE BACKFILL m START|PAUSE|RESUME`,
//! `DUALWRITE VERIFY m [REPAIR]`). Backfills run as tasks of this process; PAUSE and RESUME act through
//! the state table, so they work whichever proxy instance runs the backfill.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::pg_client::PgTarget;
use crate::state::phase::{verified_on_schedule, Phase};

use super::backfill::{
    lock_backfill, run_backfill_locked, Activity, BackfillOptions, BackfillOutcome, BackfillProgress,
};
use super::throttle::Hold;
use super::verify::{run_verify, VerifyOptions, VerifyReport};
use super::{connect, notify_state, JobError, JobResult, TableMapping};

/// A backfill's row in `dualwrite.backfill`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillStatus {
    pub state: String,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    /// jsonb text of the last copied key.
    pub last_key: Option<String>,
    pub owner: Option<String>,
}

/// What START or RESUME did.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// This instance now runs the backfill.
    Here,
    /// Another instance holds the backfill lock and picks up the state change.
    Elsewhere,
}

pub struct JobRunner {
    config: PgTarget,
    backfills: Mutex<HashMap<String, JoinHandle<JobResult<BackfillOutcome>>>>,
    /// Why each backfill running here holds off right now (throttle limits), if it does.
    holding: Arc<Mutex<HashMap<String, Hold>>>,
}

impl JobRunner {
    /// `config` points at the upstream database (not at a proxy).
    pub fn new(config: PgTarget) -> Self {
        JobRunner { config, backfills: Mutex::new(HashMap::new()), holding: Arc::default() }
    }

    /// Starts the backfill (or continues it from its checkpoint) in a task of this process. Fails with
    /// `JobError::Busy` if another instance runs it.
    pub async fn start(&self, mapping: &TableMapping, options: BackfillOptions) -> JobResult<Started> {
        if self.running_here(&mapping.migration) {
            return Ok(Started::Here);
        }
        let client = lock_backfill(&self.config, &mapping.migration).await?;
        let mapping = mapping.clone();
        let name = mapping.migration.clone();
        let holding = Arc::clone(&self.holding);
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            let migration = mapping.migration.clone();
            let gauge = metrics::gauge!("dualwrite_backfill_holding", "migration" => migration.clone());
            let record = |progress: &BackfillProgress| {
                let mut holding = holding.lock().unwrap_or_else(|e| e.into_inner());
                match progress.activity {
                    Activity::Holding(hold) => holding.insert(migration.clone(), hold),
                    _ => holding.remove(&migration),
                };
                gauge.set(if holding.contains_key(&migration) { 1.0 } else { 0.0 });
            };
            let result = run_backfill_locked(&config, client, &mapping, &options, &record).await;
            record(&BackfillProgress { rows_done: 0, rows_total: None, activity: Activity::Done });
            if let Err(error) = &result {
                tracing::error!(migration = %mapping.migration, %error, "backfill failed");
            }
            result
        });
        self.backfills.lock().unwrap_or_else(|e| e.into_inner()).insert(name, task);
        Ok(Started::Here)
    }

    /// Why the backfill of `migration` running in this process holds off now (replication lag or latency
    /// over its limit); `None` when it copies, or does not run here.
    pub fn holding(&self, migration: &str) -> Option<Hold> {
        self.holding.lock().unwrap_or_else(|e| e.into_inner()).get(migration).copied()
    }

    /// Pauses the backfill between two batches, on whichever instance runs it. Returns the new status.
    pub async fn pause(&self, migration: &str) -> JobResult<BackfillStatus> {
        self.set_state(migration, "paused", "running").await
    }

    /// Resumes a paused backfill; starts it here when no instance holds it (e.g. its runner died).
    pub async fn resume(&self, mapping: &TableMapping, options: BackfillOptions) -> JobResult<Started> {
        self.set_state(&mapping.migration, "running", "paused").await?;
        match self.start(mapping, options).await {
            Err(JobError::Busy { .. }) => Ok(Started::Elsewhere),
            other => other,
        }
    }

    /// Runs a verify (and repair) to the end and returns its counts.
    pub async fn verify(&self, mapping: &TableMapping, repair: bool) -> JobResult<VerifyReport> {
        let options = VerifyOptions { repair, ..VerifyOptions::default() };
        run_verify(&self.config, mapping, &options, &|_, _| {}).await
    }

    /// Verifies every migration `mappings()` returns that is in `dual_write` or `cutover` (see
    /// `state::phase::verified_on_schedule`) and whose backfill is done (before that the shadow is
    /// incomplete by design) once per `every`, on whichever instance gets the verify lock first (the others
    /// skip that round). Reports land in `dualwrite.verify_runs`, where the metrics refresher picks them up.
    pub fn spawn_verify_schedule(
        self: &std::sync::Arc<Self>,
        mappings: super::metrics::MappingsFn,
        every: std::time::Duration,
    ) -> JoinHandle<()> {
        let runner = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                for mapping in mappings() {
                    match runner.due_for_scheduled_verify(&mapping.migration).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(error) => {
                            tracing::warn!(migration = %mapping.migration, %error, "scheduled verify skipped");
                            continue;
                        }
                    }
                    match runner.verify(&mapping, false).await {
                        Ok(report) if !report.clean() => tracing::warn!(
                            migration = %mapping.migration,
                            divergent = report.divergent_rows(),
                            "scheduled verify found divergence"
                        ),
                        Ok(_) | Err(JobError::Busy { .. }) => {}
                        Err(error) => tracing::warn!(migration = %mapping.migration, %error, "scheduled verify failed"),
                    }
                }
            }
        })
    }

    /// Whether the scheduled verify looks at `migration` now: its phase keeps both tables in sync and its
    /// backfill is done.
    async fn due_for_scheduled_verify(&self, migration: &str) -> JobResult<bool> {
        let client = connect(&self.config).await?;
        let row = client
            .query_one(
                "SELECT (SELECT phase FROM dualwrite.migrations WHERE name = $1), \
                        (SELECT state FROM dualwrite.backfill WHERE migration = $1)",
                &[&migration],
            )
            .await?;
        let phase = row.get::<_, Option<String>>(0).and_then(|p| p.parse::<Phase>().ok());
        let backfill_done = row.get::<_, Option<String>>(1).as_deref() == Some("done");
        Ok(phase.is_some_and(verified_on_schedule) && backfill_done)
    }

    /// The backfill's state row, if it ever started.
    pub async fn status(&self, migration: &str) -> JobResult<Option<BackfillStatus>> {
        let client = connect(&self.config).await?;
        let row = client
            .query_opt(
                "SELECT state, rows_done, rows_total, last_key::text, owner FROM dualwrite.backfill \
                 WHERE migration = $1",
                &[&migration],
            )
            .await?;
        Ok(row.map(|row| BackfillStatus {
            state: row.get(0),
            rows_done: row.get(1),
            rows_total: row.get(2),
            last_key: row.get(3),
            owner: row.get(4),
        }))
    }

    /// Whether a backfill task of this process is still running for `migration`.
    pub fn running_here(&self, migration: &str) -> bool {
        let mut tasks = self.backfills.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|_, task| !task.is_finished());
        tasks.contains_key(migration)
    }

    async fn set_state(&self, migration: &str, to: &str, from: &str) -> JobResult<BackfillStatus> {
        let client = connect(&self.config).await?;
        client
            .execute(
                "UPDATE dualwrite.backfill SET state = $2, updated_at = now() WHERE migration = $1 AND state = $3",
                &[&migration, &to, &from],
            )
            .await?;
        notify_state(&client, migration).await?;
        drop(client);
        self.status(migration).await?.ok_or_else(|| JobError::Mapping {
            migration: migration.to_string(),
            reason: "no backfill was started".into(),
        })
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        // A runner going away stops its backfills; their checkpoints are committed per batch.
        for (_, task) in self.backfills.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }
}
