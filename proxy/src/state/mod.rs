//! The shared migration state in the upstream database's `dualwrite` schema: versioned DDL, phases and read
//! routes, the audit log, and the LISTEN/NOTIFY watcher that publishes an immutable snapshot to sessions.

pub mod phase;

pub use phase::Phase;
pub mod snapshot;

pub use snapshot::{MigrationState, StateSnapshot};
