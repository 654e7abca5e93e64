//! Shadow reads (README: Shadow reads): for a configurable sample of the reads on a migrated table, the
//! proxy runs the read again in both shapes (old table, shadow) in one REPEATABLE READ snapshot on its own
//! connections, off the client's path, and counts matches and mismatches per migration.
//!
//! This module owns the sampler on the session path — one random draw per eligible read, nothing else when
//! not sampled; the statement is parsed only when sampled — the bounded queue to the workers (a full queue
//! drops the sample and counts it `skipped`: the client never waits), and the per-migration counters behind
//! `dualwrite_shadow_reads_total` and DUALWRITE STATUS. [`compare`] is the pure comparison; `worker` runs
//! the reads.

pub mod compare;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dualwrite_rules::{Rewriter, Route, RuleSet};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::SHADOW_READS_TOTAL;
use crate::pg_client::PgTarget;
use crate::protocol::messages::BindParam;

/// `[shadow_reads]` in the proxy's config: the resources of the workers. The sample rate itself is per
/// migration, in the rules file (`shadow_read_sample`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowReadsConfig {
    /// Upstream connections (one worker each) running sampled reads.
    pub connections: usize,
    /// Sampled reads waiting for a worker; beyond, samples are dropped and counted `skipped`.
    pub queue: usize,
    /// Rows per side beyond which a sample is abandoned and counted `skipped`.
    pub max_rows: usize,
    /// `statement_timeout` of the workers' connections (a stuck comparison counts `error`).
    pub statement_timeout_ms: u64,
}

impl Default for ShadowReadsConfig {
    fn default() -> Self {
        ShadowReadsConfig { connections: 1, queue: 256, max_rows: 10_000, statement_timeout_ms: 5_000 }
    }
}

/// How one sampled read ended: the `result` label of `dualwrite_shadow_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    Mismatch,
    /// A shape failed to run (the error is logged at debug level).
    Error,
    /// Sampled but not compared: the queue was full or an answer exceeded `max_rows`.
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Match, Outcome::Mismatch, Outcome::Error, Outcome::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// What DUALWRITE STATUS shows for one migration (this proxy instance, since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowFigures {
    /// Reads compared (matches + mismatches).
    pub compared: u64,
    pub mismatched: u64,
    pub errors: u64,
    pub skipped: u64,
}

/// Per-migration outcome counters, also exported as `dualwrite_shadow_reads_total{migration, result}`.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    by_migration: HashMap<String, [AtomicU64; 4]>,
}

impl ShadowCounts {
    fn new(rules: &RuleSet) -> ShadowCounts {
        let mut by_migration = HashMap::new();
        for m in &rules.migrations {
            by_migration.insert(m.name.clone(), Default::default());
            for outcome in Outcome::ALL {
                // Every series exists from the start, so rates and alerts see a zero rather than nothing.
                metrics::counter!(SHADOW_READS_TOTAL, "migration" => m.name.clone(), "result" => outcome.as_str())
                    .increment(0);
            }
        }
        ShadowCounts { by_migration }
    }

    pub fn record(&self, migration: &str, outcome: Outcome) {
        if let Some(counters) = self.by_migration.get(migration) {
            counters[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(SHADOW_READS_TOTAL, "migration" => migration.to_owned(), "result" => outcome.as_str())
            .increment(1);
    }

    pub fn figures(&self, migration: &str) -> ShadowFigures {
        let Some(c) = self.by_migration.get(migration) else { return ShadowFigures::default() };
        let get = |o: Outcome| c[o as usize].load(Ordering::Relaxed);
        ShadowFigures {
            compared: get(Outcome::Match) + get(Outcome::Mismatch),
            mismatched: get(Outcome::Mismatch),
            errors: get(Outcome::Error),
            skipped: get(Outcome::Skipped),
        }
    }
}

/// The database the workers read, given the control plane's connection settings: sessions on other
/// databases are never sampled.
pub fn workers_database(pg: &PgTarget) -> String {
    pg.database().unwrap_or_default().to_owned()
}

/// A read that won the draw, as the session judged it.
pub struct Sample<'a> {
    pub rewriter: &'a Rewriter,
    /// The session's login role, which the sample runs as.
    pub role: &'a str,
    pub sql: &'a str,
    pub route: &'a Route,
    /// Parameter types the Parse declared (empty for a simple Query).
    pub param_types: &'a [u32],
    /// The session's `search_path`, under which both shapes run.
    pub search_path: &'a str,
}

/// The sampler and the workers of one server. Exists only when some migration samples reads.
pub struct ShadowReads {
    /// The highest rate of any migration: the first draw; a second draw thins it to the read's migration.
    max_rate: f64,
    queue: mpsc::Sender<worker::Job>,
    counts: Arc<ShadowCounts>,
    /// The database the workers connect to; sessions on other databases are never sampled.
    database: String,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for ShadowReads {
    fn drop(&mut self) {
        for w in &self.workers {
            w.abort();
        }
    }
}

impl ShadowReads {
    /// Starts the workers on the control plane's connection settings; `None` (nothing started) when no
    /// migration samples reads.
    pub fn start(rules: &RuleSet, pg: PgTarget, config: &ShadowReadsConfig) -> Option<ShadowReads> {
        let max_rate = rules.migrations.iter().map(|m| m.shadow_read_sample.as_fraction()).fold(0.0, f64::max);
        if max_rate <= 0.0 {
            return None;
        }
        let counts = Arc::new(ShadowCounts::new(rules));
        let database = workers_database(&pg);
        let (queue, workers) = worker::spawn(pg, config, Arc::clone(&counts));
        Some(ShadowReads { max_rate, queue, counts, database, workers })
    }

    pub fn counts(&self) -> &Arc<ShadowCounts> {
        &self.counts
    }

    /// True if reads of a session on `database` may be sampled (the workers read that database).
    pub fn serves_database(&self, database: &str) -> bool {
        self.database == database
    }

    /// The first, cheap draw: true for about `max_rate` of the calls.
    #[inline]
    pub fn draw(&self) -> bool {
        fastrand::f64() < self.max_rate
    }

    /// A read that passed [`draw`](Self::draw): if it is a plain read of one migration, thins the sample to
    /// that migration's rate and queues it for a worker, or counts it `skipped` when the queue is full.
    /// `params` are the Bind's values (empty for a simple Query).
    pub fn offer(&self, sample: Sample<'_>, params: Vec<BindParam>) {
        let Sample { rewriter, role, sql, route, param_types, search_path } = sample;
        let Some(read) = rewriter.shadow_read(sql, route) else { return };
        let Some(migration) = rewriter.rules().migrations.get(read.migration) else { return };
        let rate = migration.shadow_read_sample.as_fraction();
        if rate < self.max_rate && fastrand::f64() * self.max_rate >= rate {
            return;
        }
        let job = worker::Job {
            migration: migration.name.clone(),
            role: role.to_owned(),
            read,
            params,
            param_types: param_types.to_vec(),
            search_path: search_path.to_owned(),
        };
        if let Err(e) = self.queue.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            self.counts.record(&job.migration, Outcome::Skipped);
        }
    }
}
