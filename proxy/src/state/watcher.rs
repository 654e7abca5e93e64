//! `StateHandle`: the proxy's view of the shared state. `connect` creates/migrates the schema, registers the
//! rules' migrations and loads the state before returning, so an instance never serves a client on a state
//! it has not read. A watcher task then keeps the snapshot fresh: it LISTENs on `dualwrite_state` (reloading
//! on every notification), polls as a fallback so a missed notification is picked up within
//! `poll_interval`, and reconnects with backoff (reloading first thing) when its connection drops. The
//! query path reads the snapshot through `arc-swap`: no lock, one reference-count increment.
//!
//! Every successful read of the state *confirms* it; [`StateHandle::unconfirmed_for`] says how long ago
//! that was. The live path refuses statements on migrated tables once that exceeds `max_age` (the state
//! database is unreachable, so the snapshot may be stale): a stale phase or route could single-write or
//! read a table another instance has already moved away from. A read that hangs (stalled network) is
//! abandoned after `max_age` and the connection reopened.
//!
//! A second task watches the schema of the migrations' tables (`schema_watch`) on the control connection
//! and publishes its findings with the snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dualwrite_rules::{Phase, RuleSet};
use futures::StreamExt;
use tokio::sync::{mpsc, watch, MappedMutexGuard, Mutex, MutexGuard, Notify};
use tokio_postgres::{AsyncMessage, Client};

use crate::pg_client::PgTarget;

use super::audit_chain::{self, ChainCheck};
use super::ddl_watch::{self, SCHEMA_CHANNEL};
use super::schema_watch::{self, SchemaFindings};
use super::snapshot::StateSnapshot;
use super::store::{self, Actor, AuditEntry, PhaseChange, RouteChange};
use super::{schema, StateError, NOTIFY_CHANNEL};

/// `application_name` of the LISTEN connection, so operators can tell it apart in pg_stat_activity.
pub const LISTENER_APPLICATION_NAME: &str = "dualwrite state listener";

/// Timing of the watcher.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// How often the state is re-read even without a notification.
    pub poll_interval: Duration,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long the state may go unconfirmed before statements on migrated tables are refused; also
    /// the bound on one read of the state and on connecting to the state database.
    pub max_age: Duration,
    /// How often the key defaults and `present` columns of the migrations' tables are checked again.
    pub schema_check_interval: Duration,
    /// How often the old tables' unseen writers are looked for again (every function body is read).
    pub writers_check_interval: Duration,
    /// Whether committed DDL wakes the schema watch at once (`ddl_watch`: event triggers, created when the
    /// control role may).
    pub check_schema_on_ddl: bool,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            poll_interval: Duration::from_millis(500),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_age: Duration::from_secs(10),
            schema_check_interval: Duration::from_secs(1),
            writers_check_interval: Duration::from_secs(30),
            check_schema_on_ddl: true,
        }
    }
}

/// Cheap to clone; the watcher stops when the last clone is dropped.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<Inner>,
}

struct Inner {
    pg: PgTarget,
    /// Replaced by a config reload (`set_rules`).
    rules: ArcSwap<RuleSet>,
    snapshot: ArcSwap<StateSnapshot>,
    /// The watcher's last reload succeeded and its LISTEN connection is up (readiness).
    current: AtomicBool,
    /// Bumped each time a different snapshot is published.
    generation: watch::Sender<u64>,
    /// The connection used for changes and on-demand reads (admin commands are rare: one at a time).
    control: Mutex<Option<Client>>,
    /// Milliseconds after `epoch` of the last successful read of the state.
    confirmed_ms: AtomicU64,
    epoch: Instant,
    max_age: Duration,
    /// What the schema watch last found, put on every snapshot published.
    schema_findings: ArcSwap<SchemaFindings>,
    /// Serializes publishing (a state load and the schema watch both publish).
    publishing: StdMutex<()>,
    /// Wakes the schema watch for a full check now (after a rules reload).
    check_schema_now: Arc<Notify>,
}

impl StateHandle {
    /// Connect with the control plane's own credentials, bring the schema up to date, refuse rules whose
    /// new migrations have unaccepted writers the proxy cannot see or a schema unsafe for dual writes
    /// (`schema_watch::refuse_unsafe_new_migrations`), register them, load the state, run the schema
    /// watch's first check (a registered migration's findings are in force before the first session:
    /// its writes refused where its schema is unsafe), and start the watchers. Returns only after the
    /// first load.
    pub async fn connect(pg: PgTarget, rules: Arc<RuleSet>, options: StateOptions) -> Result<StateHandle, StateError> {
        let pg = with_connect_timeout(pg, options.max_age);
        let mut client = open(&pg).await?;
        let version = schema::ensure_schema(&mut client).await?;
        if options.check_schema_on_ddl {
            ddl_watch::set_up(&mut client, options.schema_check_interval).await;
        }
        let actor = own_actor(&pg);
        let registered = store::load(&client).await?;
        schema_watch::refuse_unsafe_new_migrations(&client, &rules, &registered).await?;
        store::register_migrations(&mut client, &rules, &actor).await?;
        let first = store::load(&client).await?;
        // The schema watch's first check, in force before the first session: a registered migration whose
        // schema is unsafe starts with its writes refused.
        let safety = schema_watch::safety(&client, &rules).await?;
        let writers = schema_watch::writers(&client, &rules).await?;
        tracing::info!(schema_version = version, migrations = first.migrations.len(), "dualwrite state loaded");
        let (generation, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            pg: pg.clone(),
            rules: ArcSwap::new(rules),
            snapshot: ArcSwap::from_pointee(first),
            current: AtomicBool::new(true),
            generation,
            control: Mutex::new(Some(client)),
            confirmed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            max_age: options.max_age,
            schema_findings: ArcSwap::from_pointee(SchemaFindings::new()),
            publishing: StdMutex::new(()),
            check_schema_now: Arc::new(Notify::new()),
        });
        inner.publish_findings(schema_watch::combine(safety, &writers));
        let wake = Arc::clone(&inner.check_schema_now);
        tokio::spawn(schema_watch_loop(Arc::downgrade(&inner), wake, writers, options.clone()));
        tokio::spawn(watch_loop(Arc::downgrade(&inner), pg, options));
        Ok(StateHandle { inner })
    }

    /// The current state, for the query path (lock-free).
    pub fn snapshot(&self) -> Arc<StateSnapshot> {
        self.inner.snapshot.load_full()
    }

    /// How long ago the state was last read successfully.
    pub fn unconfirmed_for(&self) -> Duration {
        let confirmed = Duration::from_millis(self.inner.confirmed_ms.load(Ordering::Relaxed));
        self.inner.epoch.elapsed().saturating_sub(confirmed)
    }

    /// The bound on [`unconfirmed_for`](Self::unconfirmed_for) past which the state counts as unknown.
    pub fn max_age(&self) -> Duration {
        self.inner.max_age
    }

    /// `Some(age)` when the state has gone unconfirmed for longer than `max_age`.
    pub fn unknown_for(&self) -> Option<Duration> {
        let age = self.unconfirmed_for();
        (age > self.inner.max_age).then_some(age)
    }

    /// Changes whenever a different snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner.rules.load_full()
    }

    /// Switch to reloaded rules: checks the migrations they add as at start
    /// (`schema_watch::refuse_unsafe_new_migrations`), registers them (an audited change, as at start), then validates later changes against them. On
    /// error nothing changes.
    pub async fn set_rules(&self, rules: Arc<RuleSet>, actor: &Actor) -> Result<(), StateError> {
        let mut client = self.control().await?;
        let result = match schema_watch::refuse_unsafe_new_migrations(&client, &rules, &self.snapshot()).await {
            Ok(()) => store::register_migrations(&mut client, &rules, actor).await,
            Err(refused) => Err(refused),
        };
        drop(client);
        self.fail_closed(result)?;
        self.inner.rules.store(rules);
        // Findings of the rules replaced (a writer now accepted, a migration removed) go at the next check.
        self.inner.check_schema_now.notify_one();
        self.refresh().await?;
        Ok(())
    }

    /// Whether the snapshot follows the database: the watcher's LISTEN connection is up and its last reload
    /// succeeded. False while the upstream is unreachable.
    pub fn is_current(&self) -> bool {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// The control plane's connection settings (for the jobs, which open their own connections).
    pub fn pg_target(&self) -> &PgTarget {
        &self.inner.pg
    }

    /// Re-read the state now and publish it (e.g. right after a change, so the changing session sees it).
    pub async fn refresh(&self) -> Result<Arc<StateSnapshot>, StateError> {
        let client = self.control().await?;
        let fresh = store::load(&*client).await;
        drop(client);
        let fresh = self.fail_closed(fresh)?;
        self.inner.publish(fresh);
        Ok(self.snapshot())
    }

    pub async fn change_phase(
        &self,
        migration: &str,
        phase: Phase,
        force: bool,
        actor: &Actor,
    ) -> Result<PhaseChange, StateError> {
        schema_watch::refuse_entering(&self.snapshot(), migration, phase, force)?;
        let mut client = self.control().await?;
        let result = store::change_phase(&mut client, &self.inner.rules.load(), migration, phase, force, actor).await;
        drop(client);
        let change = self.fail_closed(result)?;
        self.refresh().await?;
        Ok(change)
    }

    pub async fn rollback(&self, migration: &str, actor: &Actor) -> Result<PhaseChange, StateError> {
        let mut client = self.control().await?;
        let result = store::rollback(&mut client, &self.inner.rules.load(), migration, actor).await;
        drop(client);
        let change = self.fail_closed(result)?;
        self.refresh().await?;
        Ok(change)
    }

    /// `version` None: each session reads its own version.
    pub async fn route_reads(
        &self,
        migration: &str,
        version: Option<&str>,
        percent: u8,
        actor: &Actor,
    ) -> Result<RouteChange, StateError> {
        let mut client = self.control().await?;
        let result =
            store::route_reads(&mut client, &self.inner.rules.load(), migration, version, percent, actor).await;
        drop(client);
        let change = self.fail_closed(result)?;
        self.refresh().await?;
        Ok(change)
    }

    /// Record an action done outside the state tables' own changes (backfill commands, verify runs).
    pub async fn record_action(
        &self,
        migration: &str,
        action: &str,
        actor: &Actor,
        details: &str,
    ) -> Result<(), StateError> {
        let mut client = self.control().await?;
        let result = store::record_action(&mut client, migration, action, actor, details).await;
        drop(client);
        self.fail_closed(result)
    }

    pub async fn audit(&self, migration: Option<&str>, limit: Option<u32>) -> Result<Vec<AuditEntry>, StateError> {
        let client = self.control().await?;
        let result = store::audit_entries(&*client, migration, limit).await;
        drop(client);
        self.fail_closed(result)
    }

    /// `DUALWRITE AUDIT VERIFY`: the first broken link of the audit log's hash chain, if any.
    pub async fn verify_audit(&self) -> Result<ChainCheck, StateError> {
        let client = self.control().await?;
        let result = audit_chain::verify(&*client).await;
        drop(client);
        self.fail_closed(result)
    }

    /// The control connection, reopened if it was lost.
    async fn control(&self) -> Result<MappedMutexGuard<'_, Client>, StateError> {
        let mut guard = self.inner.control.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(open(&self.inner.pg).await?);
        }
        MutexGuard::try_map(guard, |c| c.as_mut())
            .map_err(|_| StateError::Corrupt("control connection missing after reconnect".into()))
    }

    /// `work` on the control connection, abandoned after `limit`; its error as text, the connection
    /// forgotten if the error says it is gone.
    async fn bounded<T>(
        &self,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(limit, work).await {
            Ok(result) => self.fail_closed(result).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Pass a result through, forgetting the control connection if the error says it is gone.
    fn fail_closed<T>(&self, result: Result<T, StateError>) -> Result<T, StateError> {
        if let Err(StateError::Db(e)) = &result {
            if e.is_closed() {
                if let Ok(mut guard) = self.inner.control.try_lock() {
                    *guard = None;
                }
            }
        }
        result
    }
}

impl Inner {
    /// Publishes a snapshot just read from the database (which confirms the state), with the schema
    /// watch's findings on it.
    fn publish(&self, mut fresh: StateSnapshot) {
        let _publishing = self.publishing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.epoch.elapsed().as_millis() as u64;
        self.confirmed_ms.fetch_max(now, Ordering::Relaxed);
        schema_watch::apply(&mut fresh, &self.schema_findings.load());
        self.store_if_changed(fresh);
    }

    /// Publishes the schema watch's findings on the current snapshot (reports them if they changed);
    /// returns whether they changed.
    fn publish_findings(&self, findings: SchemaFindings) -> bool {
        let _publishing = self.publishing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = self.schema_findings.load_full();
        schema_watch::report(&self.rules.load(), &before, &findings);
        if *before == findings {
            return false;
        }
        let mut snapshot = StateSnapshot::clone(&self.snapshot.load());
        schema_watch::apply(&mut snapshot, &findings);
        self.schema_findings.store(Arc::new(findings));
        self.store_if_changed(snapshot);
        true
    }

    fn store_if_changed(&self, snapshot: StateSnapshot) {
        if **self.snapshot.load() != snapshot {
            self.snapshot.store(Arc::new(snapshot));
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

fn own_actor(pg: &PgTarget) -> Actor {
    Actor { role: pg.config().get_user().unwrap_or("dualwrite").to_string(), client_addr: None }
}

/// A connect timeout of `limit` unless the URL sets one: a stalled connect must not hold the watcher.
/// tokio-postgres applies it to each host in turn, so with several hosts each gets its share (at least a
/// second): after a failover whose old primary's host is gone without a word (no RST), the next host is
/// still tried within the bound the watcher puts on a whole reconnect.
fn with_connect_timeout(mut pg: PgTarget, limit: Duration) -> PgTarget {
    if pg.config().get_connect_timeout().is_none() {
        let hosts = pg.config().get_hosts().len().max(1) as u32;
        pg.config_mut().connect_timeout((limit / hosts).max(Duration::from_secs(1)));
    }
    pg
}

async fn open(pg: &PgTarget) -> Result<Client, StateError> {
    let (client, mut messages) = connect(pg).await?;
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            if let Err(e) = message {
                tracing::warn!(error = %e, "dualwrite control connection ended");
                break;
            }
        }
    });
    Ok(client)
}

/// Runs the schema watch's checks (`schema_watch`) until the handle is gone: the cheap ones every
/// `schema_check_interval`, the unseen writers every `writers_check_interval`, both at once after a rules
/// reload. A check that fails or times out keeps the findings in force (the state watcher's own failures
/// decide whether statements are served at all); failures are logged once per run of them. `writers` is
/// what the unseen-writers search found at the start.
async fn schema_watch_loop(inner: Weak<Inner>, wake: Arc<Notify>, mut writers: SchemaFindings, options: StateOptions) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + options.schema_check_interval, options.schema_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writers_due = start + options.writers_check_interval;
    let (mut check_failing, mut audit_failing) = (false, false);
    // The first check records what the log may lack (findings fixed while no instance ran); a failed
    // recording is tried again at the next check.
    let mut audit_due = true;
    loop {
        // Not holding the handle while waiting: the task stops at its next wake-up once the last handle
        // is dropped.
        let woken = tokio::select! {
            _ = wake.notified() => true,
            _ = tick.tick() => false,
        };
        let Some(strong) = inner.upgrade() else { return };
        let handle = StateHandle { inner: strong };
        let rules = handle.rules();
        let check_writers = woken || tokio::time::Instant::now() >= writers_due;
        let checked = handle.bounded(options.max_age, async {
            let client = handle.control().await?;
            let safety = schema_watch::safety(&client, &rules).await?;
            let found = match check_writers {
                true => Some(schema_watch::writers(&client, &rules).await?),
                false => None,
            };
            Ok((safety, found))
        });
        let checked = checked.await;
        log_failure_run(&checked, &mut check_failing, "checking the schema of the migrations' tables");
        let Ok((safety, found)) = checked else { continue };
        if let Some(found) = found {
            writers = found;
            writers_due = tokio::time::Instant::now() + options.writers_check_interval;
        }
        let findings = schema_watch::combine(safety, &writers);
        audit_due |= handle.inner.publish_findings(findings.clone());
        if audit_due {
            let audited = handle.bounded(options.max_age, async {
                let mut client = handle.control().await?;
                schema_watch::audit(&mut client, &own_actor(&handle.inner.pg), &rules, &findings).await
            });
            let audited = audited.await;
            log_failure_run(&audited, &mut audit_failing, "recording the schema findings in the audit log");
            audit_due = audited.is_err();
        }
    }
}

/// Logs the first failure of a run of them (WARN) and the first success after one (INFO).
fn log_failure_run<T>(result: &Result<T, String>, failing: &mut bool, what: &str) {
    match (result, *failing) {
        (Err(error), false) => tracing::warn!(%error, "{what} failed; retried at the next check"),
        (Ok(_), true) => tracing::info!("{what} works again"),
        _ => {}
    }
    *failing = result.is_err();
}

/// The messages of a connection; polling the stream drives the connection.
type Messages = futures::stream::BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;

/// Connect with the TLS the URL's sslmode asks for (see `pg_client`).
async fn connect(pg: &PgTarget) -> Result<(Client, Messages), StateError> {
    let (client, mut connection) = pg.connect().await?;
    Ok((client, futures::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed()))
}

/// A connection that LISTENs, and the channel the names of its notifications' channels arrive on (closed
/// when it drops).
async fn open_listener(
    pg: &PgTarget,
    options: &StateOptions,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), StateError> {
    let mut pg = pg.clone();
    pg.config_mut().application_name(LISTENER_APPLICATION_NAME);
    let (client, mut messages) = connect(&pg).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.channel().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dualwrite state listener connection ended");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await?;
    if options.check_schema_on_ddl {
        client.batch_execute(&format!("LISTEN {SCHEMA_CHANNEL}")).await?;
    }
    Ok((client, rx))
}

async fn watch_loop(inner: Weak<Inner>, pg: PgTarget, options: StateOptions) {
    let mut backoff = options.reconnect_min;
    // Every connection after the first is a reconnect (logged with the server it reached).
    let mut reconnecting = false;
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        let opened = tokio::time::timeout(options.max_age, open_listener(&pg, &options))
            .await
            .unwrap_or_else(|_| Err(StateError::Corrupt(format!("no answer within {:?}", options.max_age))));
        match opened {
            Ok((client, notifications)) => {
                if reconnecting {
                    log_reconnected(&client, options.max_age).await;
                }
                reconnecting = true;
                backoff = options.reconnect_min;
                if !listen(&inner, &client, notifications, &options).await {
                    return;
                }
                set_current(&inner, false);
                tracing::warn!("dualwrite state listener lost; reconnecting");
            }
            Err(e) => {
                set_current(&inner, false);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect the dualwrite state listener");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.reconnect_max);
            }
        }
    }
}

/// Names the server the listener reached again: with several hosts, the one the watcher follows now
/// (after a failover, the new primary).
async fn log_reconnected(client: &Client, limit: Duration) {
    let sql = "SELECT coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'a local socket')";
    if let Ok(Ok(row)) = tokio::time::timeout(limit, client.query_one(sql, &[])).await {
        tracing::info!(server = %row.get::<_, String>(0), "dualwrite state listener reconnected");
    }
}

fn set_current(inner: &Weak<Inner>, current: bool) {
    if let Some(inner) = inner.upgrade() {
        inner.current.store(current, Ordering::Relaxed);
    }
}

/// Reload on each state notification and each poll tick, and wake the schema watch on each schema one,
/// until the connection fails (returns true: reconnect) or the handle is gone (returns false: stop).
async fn listen(
    inner: &Weak<Inner>,
    client: &Client,
    mut notifications: mpsc::UnboundedReceiver<String>,
    options: &StateOptions,
) -> bool {
    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick fires at once: reload right after (re)connecting, catching up on what was missed.
        let (mut reload, mut check_schema) = (true, false);
        tokio::select! {
            n = notifications.recv() => {
                let Some(first) = n else { return true };
                let more = std::iter::from_fn(|| notifications.try_recv().ok());
                let channels: Vec<String> = std::iter::once(first).chain(more).collect();
                reload = channels.iter().any(|c| c != SCHEMA_CHANNEL);
                check_schema = channels.iter().any(|c| c == SCHEMA_CHANNEL);
            }
            _ = tick.tick() => {}
        }
        let Some(strong) = inner.upgrade() else { return false };
        if check_schema {
            strong.check_schema_now.notify_one();
        }
        if !reload {
            continue;
        }
        match tokio::time::timeout(options.max_age, store::load(client)).await {
            Ok(Ok(fresh)) => {
                strong.publish(fresh);
                strong.current.store(true, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reloading the dualwrite state failed");
                return true;
            }
            Err(_) => {
                tracing::warn!(limit = ?options.max_age, "reloading the dualwrite state timed out; reconnecting");
                return true;
            }
        }
    }
}
