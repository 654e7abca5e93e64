//! The shared migration state in the upstream database's `dualwrite` schema: versioned DDL (`schema`),
//! loading and changing it with an audit row per change (`store`), the audit log's hash chain
//! (`audit_chain`), phase rules (`phase`), the immutable snapshot sessions read (`snapshot`), the schema of
//! the migrations' tables watched while the proxy runs (`schema_watch`) and woken by committed DDL
//! (`ddl_watch`), and the handle that keeps it fresh through LISTEN/NOTIFY with a polling fallback
//! (`watcher`).

pub mod audit_chain;
pub mod ddl_watch;
pub mod phase;
pub mod schema;
pub mod schema_watch;
mod sequences;
pub mod snapshot;
pub mod store;
pub mod watcher;

pub use phase::Phase;
pub use snapshot::{BackfillProgress, MigrationState, SchemaFinding, SchemaFindingKind, StateSnapshot, VerifySummary};
pub use store::Actor;
pub use watcher::{StateHandle, StateOptions};

use crate::sql_error::{codes, SqlError};

/// The channel every state change is announced on (payload: the migration's name).
pub const NOTIFY_CHANNEL: &str = "dualwrite_state";

/// A failure of the control plane: the database, or a change refused by the rules of phases and routes.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("control-plane database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A refused or invalid change, answered to the client as it is.
    #[error("{0}")]
    Refused(#[from] SqlError),
    #[error("control-plane state: {0}")]
    Corrupt(String),
    /// Migrations whose old table has writers the proxy cannot see and the rules do not accept.
    #[error(transparent)]
    UnseenWriters(#[from] crate::check::writers::Refusal),
    /// Rules the schema makes unsafe, one line each with what to do: a merge source whose `present` column
    /// may be NULL (`check::schema::nullable_presents`), a key whose defaults can repeat each other's
    /// values (`check::key_defaults`), a BEFORE row trigger that may assign the key
    /// (`check::row_triggers`), a shadow more open than its old table (`check::row_security`), key columns
    /// whose tables disagree on equality (`check::key_equality`).
    #[error("{}", .0.join("\n"))]
    UnsafeSchema(Vec<String>),
}

impl StateError {
    /// The error the client sees for a control command that failed here.
    pub fn to_sql_error(&self) -> SqlError {
        match self {
            StateError::Refused(e) => e.clone(),
            StateError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    SqlError::new(db.code().code().to_string(), format!("dualwrite control plane: {}", db.message()))
                }
                None => {
                    SqlError::new(codes::CONNECTION_EXCEPTION, format!("dualwrite control plane is unavailable: {e}"))
                }
            },
            StateError::Corrupt(m) => SqlError::new(codes::INTERNAL_ERROR, format!("dualwrite control plane: {m}")),
            StateError::UnseenWriters(_) | StateError::UnsafeSchema(_) => {
                SqlError::new(codes::OBJECT_NOT_IN_PREREQUISITE_STATE, self.to_string())
            }
        }
    }
}
