//! The watch's task: leadership, the slot's life, and the loop from stream to pairing to bypasses.
//!
//! Every instance runs the task; the one holding `pg_try_advisory_lock(hashtext('dualwrite:cdc:watch'))` on
//! its control connection leads, the others retry every second, so when the leader dies (its connection
//! closes and the lock goes with it) another takes over within seconds and streams from the slot's
//! confirmed position. The leader confirms a transaction only once it is paired and its bypasses are
//! recorded (and repaired), so a crash re-reads what was in flight; recording is idempotent.
//!
//! Watched: the migrations in dual_write or cutover, splits and merges included; the publication holds
//! each one's old tables (every source of a merge) and shadow tables (every target of a split).
//!
//! Safety: the slot exists only while some migration is in dual_write or cutover (dropped at complete and
//! off); when it holds back more WAL than `max_retained_wal_mb` the leader drops it and stores `fallback`
//! (verify-only) until an operator re-arms the watch; `wal_level` other than `logical` is an error naming
//! the setting, and the watch stays off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dualwrite_rules::Phase;
use tokio_postgres::Client;

use crate::jobs::mapping::QualifiedName;
use crate::pg_client::PgTarget;
use crate::state::StateHandle;

use super::bypass::{self, MappingCache, Seen, WatchedMigration};
use super::gap::{self, Gap};
use super::pairing::{pair, PairedTables, RowSource};
use super::progress::{Progress, BATCH_WAIT, MAX_DEFERRALS};
use super::slot;
use super::status::{self, WatchRow, WatchState};
use super::stream::{Event, Stream, KEEPALIVES};
use super::transaction::{Assembler, WatchedRelation};
use super::CdcConfig;

/// How often a standby tries to become the leader, and the leader re-reads its settings.
const RETRY: Duration = Duration::from_secs(1);
/// How often open bypasses are re-checked (for `dualwrite_lag_seconds`).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// How long the watch waits before re-checking `wal_level` (changing it needs a server restart).
const WAL_LEVEL_RECHECK: Duration = Duration::from_secs(30);

/// Starts the watch on this instance when the config enables it.
pub fn spawn_watch(state: StateHandle, config: CdcConfig) -> Option<tokio::task::JoinHandle<()>> {
    if !config.enabled {
        return None;
    }
    status::describe();
    Some(tokio::spawn(async move {
        let watch =
            Watch { target: state.pg_target().clone(), state, config, wal_level_reported: AtomicBool::new(false) };
        loop {
            if let Err(error) = watch.session().await {
                tracing::warn!(error = %format!("{error:#}"), "change-data-capture watch stopped; retrying");
            }
            status::set_role(false, false);
            tokio::time::sleep(RETRY).await;
        }
    }))
}

struct Watch {
    state: StateHandle,
    config: CdcConfig,
    target: PgTarget,
    /// The wal_level error was logged at ERROR once; its re-checks log at DEBUG (STATUS keeps showing it).
    wal_level_reported: AtomicBool,
}

/// Why the streaming loop ended without an error.
enum Restart {
    /// The watched migrations changed (phase change or rules reload).
    Migrations,
    /// The slot went over its WAL limit and was dropped.
    Fallback,
}

impl Watch {
    /// One control connection: waits for leadership, then leads until an error.
    async fn session(&self) -> anyhow::Result<()> {
        let mut client = self.target.connect_client().await.context("cannot connect")?;
        client.batch_execute("SET application_name = 'dualwrite cdc watch'").await?;
        // The advisory lock must go with a leader whose host vanished, not hours later (see KEEPALIVES).
        for (name, value) in KEEPALIVES {
            client.batch_execute(&format!("SET {name} = {value}")).await?;
        }
        loop {
            let locked: bool =
                client.query_one("SELECT pg_try_advisory_lock(hashtext('dualwrite:cdc:watch'))", &[]).await?.get(0);
            if locked {
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
        tracing::info!("this instance leads the change-data-capture watch");
        let level = slot::wal_level(&client).await?;
        if level != "logical" {
            let detail = format!(
                "wal_level is {level}: the change-data-capture watch needs wal_level = logical (set it in \
                 postgresql.conf and restart PostgreSQL); until then bypassing writes are found by verify only"
            );
            if self.wal_level_reported.swap(true, Ordering::Relaxed) {
                tracing::debug!("{detail}");
            } else {
                tracing::error!("{detail}");
            }
            status::set_role(true, true);
            let row = WatchRow { state: WatchState::Error, detail: Some(&detail), ..idle_row() };
            status::write(&client, &row).await?;
            tokio::time::sleep(WAL_LEVEL_RECHECK).await;
            return Ok(());
        }
        let slot = slot::slot_name(&client).await?;
        let mut leader = Leader { watch: self, slot, cache: MappingCache::default(), tables: Vec::new(), gap: None };
        loop {
            leader.step(&mut client).await?;
        }
    }

    /// The migrations to pair now: those in dual_write or cutover, a merge in either. Neither the pairing
    /// nor the confirmation depends on the phase: in cutover the proxy still writes every table of a key in
    /// the client's statement (a source's write synced into the shadow, a shadow's mirrored into the
    /// sources), so its writes pair as in dual_write, and the tables differ at a bypassed key whichever
    /// side is the source of truth. The repair's direction does (in cutover a merge's sources are rebuilt
    /// from the shadow); `bypass::repair_keys` reads it from the stored phase when it repairs. The phase is
    /// kept with each migration so that a phase change restarts the stream.
    fn watched(&self) -> Vec<WatchedMigration> {
        let rules = self.state.rules();
        let snapshot = self.state.snapshot();
        rules
            .migrations
            .iter()
            .filter_map(|m| {
                let phase = snapshot.migration(&m.name)?.phase;
                matches!(phase, Phase::DualWrite | Phase::Cutover).then(|| WatchedMigration::new(m, phase))
            })
            .collect()
    }
}

fn idle_row() -> WatchRow<'static> {
    WatchRow { state: WatchState::Idle, detail: None, slot: None, confirmed: None, lag_bytes: None, lag_seconds: None }
}

struct Leader<'a> {
    watch: &'a Watch,
    slot: String,
    cache: MappingCache,
    /// The tables the publication holds.
    tables: Vec<String>,
    /// An interval the watch did not see (its slot was lost), shown until verifies cover it.
    gap: Option<Gap>,
}

impl Leader<'_> {
    /// Sets the slot up for the migrations in force and streams until they change.
    async fn step(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let migrations = self.watch.watched();
        if status::read_state(client).await?.as_deref() == Some(WatchState::Fallback.as_str()) {
            slot::drop_slot(client, &self.slot).await?;
            status::set_role(true, true);
            tokio::time::sleep(RETRY).await;
            return Ok(());
        }
        if migrations.is_empty() {
            if slot::drop_slot(client, &self.slot).await? {
                tracing::info!(slot = %self.slot, "no migration in dual_write or cutover: replication slot dropped");
            }
            slot::drop_publication(client).await?;
            self.tables.clear();
            status::set_role(true, false);
            status::write(client, &idle_row()).await?;
            tokio::time::sleep(RETRY).await;
            return Ok(());
        }
        // Every old table (a merge's sources) and every shadow table (a split's targets).
        let tables: Vec<String> = migrations
            .iter()
            .flat_map(|m| {
                m.old_tables()
                    .into_iter()
                    .chain(m.shadow_tables())
                    .map(|t| t.object_name().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        if tables != self.tables {
            slot::sync_publication(client, &tables).await.context("cannot set up the publication")?;
            self.tables = tables;
        }
        if self.gap.is_none() {
            self.gap = gap::detect(client, &self.slot).await?;
        }
        if slot::ensure_slot(client, &self.slot).await.context("cannot create the replication slot")? {
            tracing::info!(slot = %self.slot, "replication slot created");
        }
        let mut paired = Vec::with_capacity(migrations.len());
        let mut relations = Vec::new();
        for m in &migrations {
            // Every table holds the key under the migration's key names (the rules require each source and
            // target to map the key columns to themselves), so one key list serves them all.
            let old = relation_oids(client, m.old_tables()).await?;
            let shadows = relation_oids(client, m.shadow_tables()).await?;
            relations.extend(old.iter().chain(&shadows).map(|&oid| WatchedRelation { oid, key: m.key.clone() }));
            paired.push(PairedTables { old, shadows });
        }
        status::set_role(true, false);
        let mut stream = match Stream::start(&self.watch.target, &self.slot).await {
            Ok(stream) => stream,
            Err(error) => {
                // Shown in STATUS until a stream starts (a refused certificate, a missing REPLICATION
                // right, the slot still held by a leader that just died).
                // A lost slot's interval stays in the row, so that the next leader still reports it.
                let detail = gap::with_error(self.gap.as_ref(), &format!("{error:#}"));
                let row = WatchRow { state: WatchState::Error, detail: Some(&detail), ..idle_row() };
                status::write(client, &row).await?;
                return Err(error);
            }
        };
        let result = self.stream(client, &mut stream, &migrations, &paired, Assembler::new(&relations)).await;
        stream.stop().await;
        match result? {
            Restart::Migrations => {}
            Restart::Fallback => {
                slot::drop_slot(client, &self.slot).await?;
                status::set_role(true, true);
            }
        }
        Ok(())
    }

    async fn stream(
        &mut self,
        client: &mut Client,
        stream: &mut Stream,
        migrations: &[WatchedMigration],
        paired: &[PairedTables],
        mut assembler: Assembler,
    ) -> anyhow::Result<Restart> {
        let mut progress = Progress::default();
        let mut lag_seconds = 0.0;
        let mut last_check = Instant::now();
        let mut last_resolve = Instant::now();
        let limit = self.watch.config.max_retained_wal_bytes() as f64;
        // Shadow rows by (migration, source), added to the metric once a second rather than per transaction.
        let mut shadow_rows: BTreeMap<(usize, RowSource), u64> = BTreeMap::new();
        // Wakes the loop while the stream is quiet (batches and deferred candidates come due, the checks
        // below run every second); one timer for the loop rather than one per message.
        let tick = tokio::time::sleep(BATCH_WAIT);
        tokio::pin!(tick);
        loop {
            let mut confirm = None;
            let event = tokio::select! {
                biased;
                event = stream.next() => Some(event?.context("the server ended the replication stream")?),
                () = &mut tick => {
                    tick.as_mut().reset(tokio::time::Instant::now() + BATCH_WAIT);
                    None
                }
            };
            match event {
                Some(Event::Message(message)) => {
                    if let Some(tx) = assembler.push(message)? {
                        let committed_at = tx.commit_unix_seconds();
                        lag_seconds = (unix_now() - committed_at).max(0.0);
                        let pairing = pair(paired, &tx);
                        for (key, rows) in pairing.shadow_rows {
                            *shadow_rows.entry(key).or_default() += rows;
                        }
                        let (xid, commit_lsn) = (tx.xid, tx.commit_lsn);
                        let seen = pairing.candidates.into_iter().map(|candidate| Seen {
                            candidate,
                            xid,
                            commit_lsn,
                            committed_at,
                        });
                        confirm = progress.committed(tx.end_lsn, seen.collect(), Instant::now());
                    }
                }
                Some(Event::KeepAlive { wal_end }) => {
                    confirm = progress.keepalive(wal_end, assembler.in_transaction());
                }
                None => {}
            }
            if progress.settled() && !assembler.in_transaction() && confirm.is_none() {
                lag_seconds = 0.0;
            }
            let now = Instant::now();
            if let Some((batch, end)) = progress.take_batch(now) {
                let handled = bypass::handle(client, migrations, &mut self.cache, &batch, true).await?;
                confirm = confirm.max(progress.checked(end, handled.deferred, 0, now));
            }
            if let Some(due) = progress.take_due(now) {
                let defer = due.deferrals < MAX_DEFERRALS;
                let handled = bypass::handle(client, migrations, &mut self.cache, &due.seen, defer).await?;
                confirm = confirm.max(progress.checked(None, handled.deferred, due.deferrals, now));
            }
            if let Some(lsn) = confirm {
                stream.confirm(lsn);
            }
            if last_check.elapsed() >= RETRY {
                last_check = Instant::now();
                for ((index, source), rows) in std::mem::take(&mut shadow_rows) {
                    status::count_shadow_rows(&migrations[index].name, source.as_str(), rows);
                }
                let figures = slot::figures(client, &self.slot).await?;
                let lag_bytes = figures.map(|f| f.lag_bytes);
                status::set_lag(lag_bytes, Some(lag_seconds));
                if status::read_state(client).await?.as_deref() == Some(WatchState::Fallback.as_str()) {
                    tracing::warn!(slot = %self.slot, "the watch was paused (state set to fallback): slot dropped");
                    return Ok(Restart::Fallback);
                }
                if let Some(f) = figures.filter(|f| f.retained_bytes > limit) {
                    let detail = format!(
                        "the replication slot held back {} MiB of WAL, over max_retained_wal_mb = {}: slot dropped, \
                         verify-only until re-armed",
                        (f.retained_bytes / 1048576.0).round(),
                        self.watch.config.max_retained_wal_mb
                    );
                    tracing::warn!(slot = %self.slot, "{detail}");
                    let row = WatchRow { state: WatchState::Fallback, detail: Some(&detail), ..idle_row() };
                    status::write(client, &row).await?;
                    return Ok(Restart::Fallback);
                }
                let gap_detail = self.gap.as_ref().map(Gap::detail);
                let row = WatchRow {
                    state: WatchState::Watching,
                    detail: gap_detail.as_deref(),
                    slot: Some(&self.slot),
                    confirmed: figures.map(|f| f.confirmed),
                    lag_bytes,
                    lag_seconds: Some(lag_seconds),
                };
                status::write(client, &row).await?;
                if last_resolve.elapsed() >= RESOLVE_EVERY {
                    last_resolve = Instant::now();
                    bypass::resolve(client, &mut self.cache, migrations).await?;
                    if let Some(lost) = &self.gap {
                        if gap::covered(client, lost, migrations).await? {
                            tracing::info!(slot = %self.slot, "every watched migration was verified since the slot was lost");
                            self.gap = None;
                        }
                    }
                }
                if progress.settled() && self.watch.watched().as_slice() != migrations {
                    return Ok(Restart::Migrations);
                }
            }
        }
    }
}

async fn relation_oids(client: &Client, tables: Vec<&QualifiedName>) -> anyhow::Result<Vec<u32>> {
    let mut oids = Vec::with_capacity(tables.len());
    for table in tables {
        let table = table.object_name().to_string();
        let oid: i64 = client
            .query_one("SELECT $1::text::regclass::oid::int8", &[&table])
            .await
            .with_context(|| format!("cannot find table {table}"))?
            .get(0);
        oids.push(oid as u32);
    }
    Ok(oids)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
