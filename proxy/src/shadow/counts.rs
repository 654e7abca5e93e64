//! Per-migration shadow-read outcomes: the `result` label (`Outcome`), the counters behind
//! `dualwrite_shadow_reads_total` (`ShadowCounts`) and what DUALWRITE STATUS shows (`ShadowFigures`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use dualwrite_rules::RuleSet;

use crate::metrics::SHADOW_READS_TOTAL;

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
    pub(super) fn new(rules: &RuleSet) -> ShadowCounts {
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
