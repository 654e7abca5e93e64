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
mod counts;
mod worker;

use std::sync::Arc;

use dualwrite_rules::{Rewriter, Route, RuleSet};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use crate::config::ShadowReadsConfig;
use crate::pg_client::PgTarget;
use crate::protocol::messages::BindParam;
pub use counts::{Outcome, ShadowCounts, ShadowFigures};

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
        let (queue, workers) = worker::spawn(pg, config, Arc::clone(&counts));
        Some(ShadowReads { max_rate, queue, counts, workers })
    }

    pub fn counts(&self) -> &Arc<ShadowCounts> {
        &self.counts
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
