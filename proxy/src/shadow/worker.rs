//! The workers of shadow reads: each owns one upstream connection (the control plane's settings, TLS as its
//! `sslmode` says), takes sampled reads from the bounded queue, runs both shapes in one
//! `REPEATABLE READ READ ONLY` transaction, compares, counts, and logs a mismatch at WARN with the migration
//! and a fingerprint of the statement (never its parameter values or rows).
//!
//! Each transaction runs `SET LOCAL ROLE <the client's login role>`, so a sample has the client's privileges.
//! Parameters are passed on as the client sent them (text or binary): the shape the client's own session
//! reads is prepared first, so the server infers the parameter types the client's statement got, and the
//! other shape is prepared with those same types.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dualwrite_rules::{quote_ident, ShadowRead};
use futures::{pin_mut, TryStreamExt};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::types::{Format, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, IsolationLevel};

use super::compare::{compare, Comparison};
use super::{Outcome, ShadowCounts, ShadowReadsConfig};
use crate::pg_client::PgTarget;
use crate::protocol::messages::BindParam;

const APPLICATION_NAME: &str = "dualwrite shadow reads";

/// One sampled read.
pub(super) struct Job {
    pub migration: String,
    /// The client's login role: the reads run as it, never with the control role's privileges.
    pub role: String,
    pub read: ShadowRead,
    pub params: Vec<BindParam>,
    pub param_types: Vec<u32>,
    /// The session's `search_path`: the statements name the relations the session's statement named.
    pub search_path: String,
}

/// Starts `config.connections` workers sharing one queue of `config.queue` jobs.
pub(super) fn spawn(
    mut pg: PgTarget,
    config: &ShadowReadsConfig,
    counts: Arc<ShadowCounts>,
) -> (mpsc::Sender<Job>, Vec<JoinHandle<()>>) {
    pg.config_mut().application_name(APPLICATION_NAME);
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let workers = (0..config.connections.max(1))
        .map(|_| {
            let worker = Worker { pg: pg.clone(), config: config.clone(), counts: Arc::clone(&counts), client: None };
            tokio::spawn(worker.run(Arc::clone(&rx)))
        })
        .collect();
    (tx, workers)
}

struct Worker {
    pg: PgTarget,
    config: ShadowReadsConfig,
    counts: Arc<ShadowCounts>,
    client: Option<Client>,
}

/// Why a job was not compared.
enum Failure {
    TooLarge,
    Db(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Db(e.into())
    }
}

impl Worker {
    async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        loop {
            let job = queue.lock().await.recv().await;
            let Some(job) = job else { return };
            let outcome = self.job(&job).await;
            self.counts.record(&job.migration, outcome);
        }
    }

    async fn job(&mut self, job: &Job) -> Outcome {
        let fingerprint = fingerprint(&job.read);
        match self.compare(job).await {
            Ok(Comparison::Match) => Outcome::Match,
            Ok(Comparison::Mismatch { only_old, only_new }) => {
                tracing::warn!(
                    migration = %job.migration,
                    statement = %fingerprint,
                    ordered = job.read.ordered,
                    rows_only_in_old = only_old,
                    rows_only_in_shadow = only_new,
                    "shadow read mismatch: the old table and the shadow answer this read differently"
                );
                Outcome::Mismatch
            }
            Err(Failure::TooLarge) => Outcome::Skipped,
            Err(Failure::Db(error)) => {
                tracing::debug!(migration = %job.migration, statement = %fingerprint, %error, "shadow read failed");
                if self.client.as_ref().is_none_or(Client::is_closed) {
                    self.client = None;
                }
                Outcome::Error
            }
        }
    }

    async fn client(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.pg.connect_client().await?;
            let timeout = Duration::from_millis(self.config.statement_timeout_ms).as_millis();
            client.batch_execute(&format!("SET statement_timeout = {timeout}")).await?;
            self.client = Some(client);
        }
        self.client.as_mut().ok_or_else(|| anyhow::anyhow!("no connection"))
    }

    /// Both shapes in one snapshot.
    async fn compare(&mut self, job: &Job) -> Result<Comparison, Failure> {
        let max_rows = self.config.max_rows;
        let client = self.client().await?;
        let tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        // The client's privileges (and row-level security), not the control role's: a client must not get
        // the control role to run what it may not run itself. The control role must be a member of (or
        // superuser over) the application's roles, else every sample counts `error`.
        tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(&job.role))).await?;
        tx.execute("SELECT pg_catalog.set_config('search_path', $1, true)", &[&job.search_path]).await?;
        let own = job.read.own_side;
        let declared: Vec<Type> = job.param_types.iter().map(|&oid| declared_type(oid)).collect();
        let own_statement = tx.prepare_typed(job.read.sql(own), &declared).await?;
        let other_statement = tx.prepare_typed(job.read.sql(own.other()), own_statement.params()).await?;
        let params: Vec<RawParam> = job.params.iter().map(RawParam).collect();
        let mut answers = [Vec::new(), Vec::new()];
        for (answer, statement) in answers.iter_mut().zip([&own_statement, &other_statement]) {
            let rows = tx.query_raw(statement, params.iter()).await?;
            pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                if answer.len() == max_rows {
                    return Err(Failure::TooLarge);
                }
                answer.push(row.try_get::<_, Option<String>>(0)?);
            }
        }
        tx.rollback().await?;
        let [own_rows, other_rows] = answers;
        let (old, new) = match own {
            dualwrite_rules::Side::Old => (own_rows, other_rows),
            dualwrite_rules::Side::New => (other_rows, own_rows),
        };
        Ok(compare(&old, &new, job.read.ordered))
    }
}

/// A Parse's declared parameter type; 0 leaves it to the server, as it does for the client.
fn declared_type(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| Type::new(String::new(), oid, Kind::Pseudo, String::new()))
}

/// A parameter passed on exactly as the client sent it, in its own format, whatever the type.
#[derive(Debug)]
struct RawParam<'a>(&'a BindParam);

impl ToSql for RawParam<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0.value {
            Some(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        if self.0.binary {
            Format::Binary
        } else {
            Format::Text
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A short, stable-per-process name of the statement for logs: a hash of its old-table shape.
fn fingerprint(read: &ShadowRead) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    read.old_sql.hash(&mut h);
    format!("{:016x}", h.finish())
}
