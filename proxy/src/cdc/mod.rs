//! The change-data-capture watch: proves, transaction by transaction, that a migration's two tables moved
//! together, from the write-ahead log. One proxy instance per database leads (advisory lock) and reads the
//! logical decoding stream of the watched tables from a `pgoutput` slot; a change without its
//! twin on the other table is a bypass (a direct connection, a cascading foreign key, a trigger, a
//! function...): counted, logged, recorded in `dualwrite.cdc_bypasses` and, with `on_bypass = "repair"`,
//! repaired for that key from the phase's source of truth.
//!
//! Pure cores: `decoder` (pgoutput v1 bytes -> messages), `transaction` (messages -> transactions of
//! key-level changes), `pairing` (a transaction -> candidate bypasses, shadow rows by source). The shell:
//! `slot` (publication, slot, WAL figures over SQL), `stream` (the replication connection), `gap` (a
//! slot lost to a failover: the interval not watched, shown until verifies cover it), `bypass`
//! (confirmation, record, repair), `watch` (leadership and the loop), `status` (STATUS and metrics).

pub mod bypass;
pub mod decoder;
pub mod gap;
pub mod pairing;
pub mod progress;
pub mod slot;
pub mod status;
pub mod stream;
pub mod transaction;
pub mod watch;

use serde::{Deserialize, Serialize};

pub use watch::spawn_watch;

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

/// The statements by which the proxy's own jobs mark their transactions (they write one table by design):
/// a transactional logical message the watch reads in the same transaction.
pub mod mark {
    pub const BACKFILL: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'backfill')";
    pub const SWEEP: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'sweep')";
    pub const REPAIR: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'repair')";
}
