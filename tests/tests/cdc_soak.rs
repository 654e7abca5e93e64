//! No false bypass: while writers run dual writes of every form (v1 and v2 shapes, simple and extended
//! protocol, upserts, multi-row and multi-statement transactions, deletes of rows the backfill has not
//! copied yet) the migration goes
//! through a backfill, read flips, cutover and rollback, the watch's leader (a `dualwrite` process) is
//! killed with SIGKILL and the upstream restarts; the watch (in `alert` mode, so nothing it finds is hidden by a repair) records nothing, yet
//! finds the one direct write made at the end.

mod cdc_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cdc_support::{
    bypasses, column, difference, fixture_on, process_proxy, proxy, status, streaming_leader, until_watching,
};
use dualwrite_tests::{connect, eventually, StopMode, TestCluster};

const ROWS: i64 = 2000;

/// xorshift64*, deterministic per writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One writer through the proxy at `url`, in `version`'s shape, until `stop`; errors (the upstream
/// restarting, a serialization conflict) are retried on a fresh connection.
async fn writer(url: String, version: &'static str, seed: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let url = format!("{url}?options=-c%20dualwrite.version%3D{version}");
    let mut rng = Rng(seed);
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
            client = connect(&url).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = client.as_ref().unwrap();
        let id = 1 + rng.below(3000) as i64;
        let n = rng.below(1000) as i64;
        if version == "v1" && rng.below(4) == 0 {
            // The extended protocol: a prepared, parameterized dual write.
            let name = format!("prep{n} person");
            let sql = "INSERT INTO users (id, name, email, account) VALUES ($1, $2, NULL, 'a3') \
                       ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name";
            match c.execute(sql, &[&id, &name]).await {
                Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                Err(_) => 0,
            };
            continue;
        }
        let sql = match (version, rng.below(7)) {
            ("v1", 0) => format!("INSERT INTO users VALUES ({id}, 'new{n} person', 'N{n}@X', 'a1') ON CONFLICT (id) DO NOTHING"),
            ("v1", 1) => format!("UPDATE users SET name = 'upd{n} person' WHERE id = {id}"),
            ("v1", 2) => format!("DELETE FROM users WHERE id = {id}"),
            ("v1", 3) => format!(
                "INSERT INTO users VALUES ({id}, 'ups{n} person', 'U{n}@X', 'a2') \
                 ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email"
            ),
            ("v1", 4) => format!(
                "BEGIN; UPDATE users SET email = 'T{n}@X' WHERE id = {id}; \
                 INSERT INTO users VALUES ({}, 'tx{n} person', NULL, 'a3') ON CONFLICT (id) DO NOTHING; COMMIT",
                id % 2900 + 100
            ),
            ("v1", 5) => format!("UPDATE users SET account = 'a2' WHERE id BETWEEN {id} AND {}", id + 5),
            ("v1", _) => format!("DELETE FROM users WHERE id BETWEEN {id} AND {}", id + 2),
            (_, 0) => format!(
                "INSERT INTO users (id, first_name, last_name, email, account) VALUES ({id}, 'v2new{n}', 'x', 'w{n}@x', 'a1') \
                 ON CONFLICT (id) DO NOTHING"
            ),
            (_, 1..=3) => format!("UPDATE users SET first_name = 'v2upd{n}' WHERE id = {id}"),
            (_, _) => format!("DELETE FROM users WHERE id = {id}"),
        };
        if c.batch_execute(&sql).await.is_ok() {
            done.fetch_add(1, Ordering::Relaxed);
        } else if !c.is_closed() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
    }
}

async fn control(client: &tokio_postgres::Client, sql: &str) {
    client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Connects to the proxy, retrying while the upstream restarts.
async fn admin(proxy: &dualwrite_tests::TestProxy, db: &dualwrite_tests::TestDb) -> tokio_postgres::Client {
    for _ in 0..100 {
        if let Ok(c) = proxy.connect(db).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_bypass_across_dual_writes_backfill_flips_cutover_rollback_failover_and_upstream_restart() {
    let cluster = TestCluster::start().await.unwrap();
    let f = fixture_on(&cluster).await;
    // Rows from before the migration: only the backfill copies them.
    f.direct
        .execute(
            "INSERT INTO users SELECT g, 'old' || g || ' person', 'O' || g || '@X', 'a1' FROM generate_series(1, $1::int8) g",
            &[&ROWS],
        )
        .await
        .unwrap();
    let mut leader = process_proxy(&f.db, "alert").await;
    until_watching(&f.direct).await;
    let leader_name = format!("proxy pid {}", leader.process.pid().unwrap());
    assert_eq!(streaming_leader(&f.direct).await.as_deref(), Some(leader_name.as_str()), "the process leads");
    let standby = proxy(&f, "alert", None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let url = standby.url(&f.db);
    let writers: Vec<_> = [("v1", 1), ("v1", 2), ("v2", 3)]
        .into_iter()
        .map(|(version, seed)| tokio::spawn(writer(url.clone(), version, seed, Arc::clone(&stop), Arc::clone(&done))))
        .collect();

    let a = admin(&standby, &f.db).await;
    control(&a, "DUALWRITE BACKFILL users_split_name START BATCH 100").await;
    eventually(Duration::from_secs(120), "the backfill is done", || async {
        column(&status(&a).await, "backfill_state").as_deref() == Some("done")
    })
    .await;
    control(&a, "DUALWRITE ROUTE users_split_name READS TO v2 PERCENT 50").await;
    control(&a, "DUALWRITE ROUTE users_split_name READS TO DEFAULT").await;
    control(&a, "DUALWRITE PHASE users_split_name cutover FORCE").await;
    // The soak's schedule: the writers keep writing for a while in each state (the time is the thing tested).
    tokio::time::sleep(Duration::from_secs(2)).await;
    control(&a, "DUALWRITE ROLLBACK users_split_name").await;
    // The leader crashes; the standby takes over from the slot's confirmed position.
    leader.process.kill().await.unwrap();
    let standby_name = format!("proxy pid {}", std::process::id());
    eventually(Duration::from_secs(30), "the standby takes over", || async {
        streaming_leader(&f.direct).await.as_deref() == Some(standby_name.as_str())
    })
    .await;
    cluster.restart(StopMode::Fast).await.unwrap();
    // The writers reconnect and go on after the restart before they stop.
    let before_restart = done.load(Ordering::Relaxed);
    eventually(Duration::from_secs(60), "the writers write again after the upstream restart", || async {
        done.load(Ordering::Relaxed) >= before_restart + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let writes = done.load(Ordering::Relaxed);
    assert!(writes > 200, "the writers wrote: {writes}");

    // A direct write at the end: once the watch has found it, it has read everything before it.
    let direct = f.db.connect().await.unwrap();
    direct.batch_execute("INSERT INTO users VALUES (99999, 'canary write', NULL, 'a1')").await.unwrap();
    eventually(Duration::from_secs(60), "the canary bypass is recorded", || async {
        bypasses(&direct).await.iter().any(|b| b.2.as_deref() == Some(r#"{"id": 99999}"#))
    })
    .await;
    assert_eq!(
        bypasses(&direct).await,
        vec![("insert".to_string(), "old".to_string(), Some(r#"{"id": 99999}"#.to_string()), false)],
        "only the canary is a bypass"
    );
    assert_eq!(difference(&direct).await, 1, "the tables differ by the canary row only");
    standby.stop().await.unwrap();
}
