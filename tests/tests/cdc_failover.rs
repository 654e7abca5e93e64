//! A watch leader that crashes: the leader is a `dualwrite` process killed with SIGKILL while bypassing
//! writes and dual writes go on. Postgres notices the dead peer (the kernel closes the killed process's
//! sockets), ends its walsender and releases its advisory lock; a standby instance takes the lock and the
//! slot, resumes from the slot's confirmed position, and finds and repairs every bypass made before, at
//! and after the kill exactly once, with no false bypass from the dual writes.

mod cdc_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cdc_support::{
    bypasses, difference, fixture, process_proxy, proxy, slot_walsender, streaming_leader, until_watching,
};
use dualwrite_tests::{connect, eventually};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(30);

/// Direct (bypassing) updates of `ids`, one transaction each.
async fn bypass(direct: &Client, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        direct.execute("UPDATE users SET name = 'bypassed ' || $1::int8 WHERE id = $1", &[&id]).await.unwrap();
    }
}

async fn confirmed_lsn(direct: &Client) -> String {
    direct
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database() \
             AND slot_name LIKE 'dualwrite_cdc_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn lsn_at_least(direct: &Client, lsn: &str, floor: &str) -> bool {
    direct.query_one("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", &[&lsn, &floor]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_process_is_replaced_and_every_bypass_around_the_kill_is_repaired_once() {
    let f = fixture().await;
    let mut leader = process_proxy(&f.db, "repair").await;
    let leader_name = format!("proxy pid {}", leader.process.pid().unwrap());
    // Rows 1..=300 written through the proxy (both tables have them).
    let through = connect(&f.db.url_via(leader.process.addr())).await.unwrap();
    let values: Vec<String> = (1..=300).map(|id| format!("({id}, 'user{id} x', 'U{id}@X', 'a1')")).collect();
    through.batch_execute(&format!("INSERT INTO users VALUES {}", values.join(", "))).await.unwrap();
    until_watching(&f.direct).await;
    assert_eq!(streaming_leader(&f.direct).await.as_deref(), Some(leader_name.as_str()), "the process leads");
    let standby = proxy(&f, "repair", None).await;

    // Dual writes through the standby all along (rows 101..=300): never a bypass.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (url, stop, written) = (standby.url(&f.db), Arc::clone(&stop), Arc::clone(&written));
        tokio::spawn(async move {
            let client = connect(&url).await.unwrap();
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = 101 + n % 200;
                let sql = if n % 3 == 0 {
                    "UPDATE users SET email = 'W' || $2::int8 || '@X' WHERE id = $1"
                } else {
                    "UPDATE users SET name = 'written ' || $2::int8 || ' y' WHERE id = $1"
                };
                client.execute(sql, &[&id, &n]).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Bypasses the leader handles.
    bypass(&f.direct, 1..=5).await;
    eventually(WAIT, "the leader repairs the first bypasses", || async {
        bypasses(&f.direct).await.len() == 5 && difference(&f.direct).await == 0
    })
    .await;
    let confirmed_before = confirmed_lsn(&f.direct).await;
    let dead_walsender = slot_walsender(&f.direct).await.expect("the leader's walsender");

    // Bypasses in flight, then the crash: the leader may or may not have handled them.
    bypass(&f.direct, 6..=10).await;
    leader.process.kill().await.unwrap();
    // Bypasses while no watch runs.
    bypass(&f.direct, 11..=15).await;

    eventually(WAIT, "the dead leader's walsender ends and another streams the slot", || async {
        slot_walsender(&f.direct).await.is_some_and(|pid| pid != dead_walsender)
    })
    .await;
    let gone: bool = f
        .direct
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", &[&dead_walsender])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the killed leader's walsender is gone");
    let standby_name = format!("proxy pid {}", std::process::id());
    eventually(WAIT, "the standby leads", || async {
        streaming_leader(&f.direct).await.as_deref() == Some(standby_name.as_str())
    })
    .await;
    // Bypasses under the new leader.
    bypass(&f.direct, 16..=20).await;

    eventually(WAIT, "every bypass is found and repaired", || async {
        bypasses(&f.direct).await.len() >= 20 && difference(&f.direct).await == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let writes = written.load(Ordering::Relaxed);
    assert!(writes > 20, "the dual writes went on: {writes}");
    // The last dual writes are read too: a canary bypass after them is found once they are.
    bypass(&f.direct, 21..=21).await;
    eventually(WAIT, "the canary after the dual writes is found", || async {
        bypasses(&f.direct).await.len() >= 21 && difference(&f.direct).await == 0
    })
    .await;

    let recorded = bypasses(&f.direct).await;
    let keys: Vec<String> = recorded.iter().map(|(_, _, key, _)| key.clone().unwrap_or_default()).collect();
    let expected: Vec<String> = (1..=21).map(|id| format!(r#"{{"id": {id}}}"#)).collect();
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>(),
        expected.iter().collect::<BTreeSet<_>>(),
        "exactly the bypassed keys (no false bypass from the dual writes)"
    );
    assert_eq!(keys.len(), 21, "each bypass recorded once, also those re-read by the new leader: {recorded:?}");
    assert!(recorded.iter().all(|(kind, side, _, repaired)| kind == "update" && side == "old" && *repaired));
    let confirmed_after = confirmed_lsn(&f.direct).await;
    assert!(
        lsn_at_least(&f.direct, &confirmed_after, &confirmed_before).await,
        "the new leader went on from the confirmed position ({confirmed_before} -> {confirmed_after})"
    );
    standby.stop().await.unwrap();
}
