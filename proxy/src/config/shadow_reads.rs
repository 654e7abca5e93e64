//! `[shadow_reads]` of the proxy config: the shadow-read workers' resources (see `shadow`).

use serde::{Deserialize, Serialize};

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
