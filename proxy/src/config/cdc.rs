//! `[cdc]` of the proxy config: the change-data-capture watch's settings (see `cdc`).

use serde::{Deserialize, Serialize};

/// `[cdc]` of the proxy config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdcConfig {
    /// Run the watch (it needs `wal_level = logical`; without it the watch reports an error and the
    /// migration falls back to verify-only).
    pub enabled: bool,
    /// How often the leader reads the slot when it has caught up (milliseconds).
    pub poll_interval_ms: u64,
    /// WAL the slot may hold back before the watch drops it and falls back to verify-only (MiB).
    pub max_retained_wal_mb: u64,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig { enabled: true, poll_interval_ms: 200, max_retained_wal_mb: 1024 }
    }
}

impl CdcConfig {
    /// The watch turned off (embedded and test proxies, which opt in).
    pub fn off() -> Self {
        CdcConfig { enabled: false, ..CdcConfig::default() }
    }

    pub fn max_retained_wal_bytes(&self) -> u64 {
        self.max_retained_wal_mb.saturating_mul(1024 * 1024)
    }
}
