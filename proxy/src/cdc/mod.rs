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

pub use crate::config::CdcConfig;
pub use watch::spawn_watch;
