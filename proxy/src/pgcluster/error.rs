//! `ClusterError`: what can go wrong starting, stopping or using a throwaway cluster.

use std::io;

/// Errors starting or controlling a throwaway cluster. Command failures carry the command's output and
/// the tail of the server log so a failing test shows why.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries not found ({0}); install postgresql-15 or set DUALWRITE_PG_BINDIR")]
    BinariesNotFound(String),
    #[error("running as root but there is no `{0}` OS account to run PostgreSQL as")]
    NoServiceAccount(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("`{command}` failed ({status}):\n{output}\n--- server log (last lines) ---\n{log_tail}")]
    Command { command: String, status: String, output: String, log_tail: String },
    #[error("{0}")]
    Timeout(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}
