//! The statements by which the proxy's own jobs mark their transactions (they write one table by design):
//! a transactional logical message the change-data-capture watch reads in the same transaction.

pub const BACKFILL: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'backfill')";
pub const SWEEP: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'sweep')";
pub const REPAIR: &str = "SELECT pg_logical_emit_message(true, 'dualwrite', 'repair')";
