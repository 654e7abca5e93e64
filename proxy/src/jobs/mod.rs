//! Background jobs of a migration: the backfill that copies pre-existing rows into the shadow table, the
//! verifier that compares both tables (and repairs the one behind the phase's source of truth), and the per-migration metrics derived from
//! the `dualwrite` state tables. Every job runs on its own upstream connection, one instance at a time per
//! migration and kind, held by `pg_try_advisory_lock(hashtext('dualwrite:<kind>:<migration>'))`.

pub mod backfill;
pub mod cli;
pub mod mapping;
pub mod mark;
pub mod metrics;
pub mod runner;
mod sql;
mod sweep;
pub mod throttle;
pub mod verify;

pub use backfill::{run_backfill, BackfillOptions, BackfillOutcome, BackfillProgress};
pub use mapping::{QualifiedName, TableMapping};
pub use metrics::{spawn_refresher, MetricsRefresher, MigrationFigures};
pub use runner::{BackfillStatus, JobRunner, Started};
pub use verify::{run_verify, VerifyOptions, VerifyReport};

use tokio_postgres::{Client, GenericClient};

use crate::pg_client::PgTarget;
use crate::state::phase::{source_of_truth, Phase, SourceOfTruth};

/// What can go wrong in a job; database errors keep their SQLSTATE so callers can relay them.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {migration}: {reason}")]
    Mapping { migration: String, reason: String },
    #[error("{kind} of migration {migration} is already running on another instance")]
    Busy { kind: &'static str, migration: String },
    #[error("migration {0} is not in the rules")]
    UnknownMigration(String),
    /// The job does not apply in the migration's phase (e.g. verify at `complete`).
    #[error("migration {migration}: {reason}")]
    Phase { migration: String, reason: String },
}

pub type JobResult<T> = Result<T, JobError>;

/// Opens a job connection (with the target's TLS) and drives it on its own task; the connection closes
/// (releasing session advisory locks) when the returned client is dropped.
pub async fn connect(target: &PgTarget) -> JobResult<Client> {
    Ok(target.connect_client().await?)
}

/// The two kinds of job that take a per-migration advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Backfill,
    Verify,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backfill => "backfill",
            JobKind::Verify => "verify",
        }
    }
}

/// Takes the session-level advisory lock of `kind` for `migration` on `client`, or reports it busy.
pub async fn try_lock(client: &Client, kind: JobKind, migration: &str) -> JobResult<()> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('dualwrite:' || $1::text || ':' || $2::text))",
            &[&kind.as_str(), &migration],
        )
        .await?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(JobError::Busy { kind: kind.as_str(), migration: migration.to_string() })
    }
}

/// Releases the lock taken by `try_lock` right away, so the next run does not race the closing connection.
pub async fn unlock(client: &Client, kind: JobKind, migration: &str) -> JobResult<()> {
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtext('dualwrite:' || $1::text || ':' || $2::text))",
            &[&kind.as_str(), &migration],
        )
        .await?;
    Ok(())
}

/// Announces a state change to every proxy instance (they LISTEN on `dualwrite_state`).
pub async fn notify_state(client: &Client, migration: &str) -> JobResult<()> {
    client.execute("SELECT pg_notify('dualwrite_state', $1)", &[&migration]).await?;
    Ok(())
}

/// The source of truth of the migration's phase as stored now, or why the jobs do not run in that phase
/// (the inner error). `lock` takes a share lock on the migration's state row, held to the end of the
/// transaction, so a phase change waits for the work done under it.
pub(crate) async fn source_of_truth_now(
    client: &impl GenericClient,
    migration: &str,
    lock: bool,
) -> Result<Result<SourceOfTruth, String>, tokio_postgres::Error> {
    let sql = if lock {
        "SELECT phase FROM dualwrite.migrations WHERE name = $1 FOR SHARE"
    } else {
        "SELECT phase FROM dualwrite.migrations WHERE name = $1"
    };
    let row = client.query_opt(sql, &[&migration]).await?;
    Ok(match row.map(|row| row.get::<_, String>(0).parse::<Phase>()).transpose() {
        Ok(phase) => source_of_truth(phase),
        Err(reason) => Err(reason),
    })
}

/// SQLSTATEs after which a job simply retries its unit of work: serialization failure, deadlock,
/// lock timeout.
pub(crate) fn is_retryable(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        error.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::LOCK_NOT_AVAILABLE
    )
}
