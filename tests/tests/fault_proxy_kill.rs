//! The proxy itself killed with SIGKILL under dual-write load and started again on the same address.
//! The proxy holds no state of its own (the migration state is in the database), so the transactions
//! cut off by the kill roll back with their upstream sessions, writers reconnect to the new instance,
//! and the ledger holds: old and shadow equal under the mapping, every commit seen in both tables, no
//! failed transaction in either.

use std::time::Duration;

use dualwrite_tests::txn_ledger::{Ledger, Writers, LEDGER_RULES, LEDGER_SCHEMA};
use dualwrite_tests::*;

const COMMITS: usize = 30;
/// Bound on waiting for progress (a hung proxy fails the test instead of hanging it).
const PROGRESS_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_sigkilled_under_write_load_and_restarted() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(LEDGER_SCHEMA).await.unwrap();
    let rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(rules.path(), LEDGER_RULES).unwrap();
    let upstream = db.url();
    let rules_path = rules.path().to_str().unwrap();
    let args = ["--upstream", &upstream, "--rules", rules_path, "--admin-role", cluster.superuser()];
    let mut proxy = ProxyProcess::serve(&args).await.unwrap();
    let ledger = Ledger::new();
    let writers = Writers::start(&ledger, &db.url_via(proxy.addr()), 4);
    assert!(ledger.wait_commits(0, COMMITS, PROGRESS_LIMIT).await, "no write load before the kill");

    proxy.kill().await.unwrap();
    // The killed proxy's upstream sessions end with it (their sockets closed by the kernel): nothing of
    // the interrupted transactions stays open.
    eventually(PROGRESS_LIMIT, "upstream sessions of the killed proxy end", || async {
        let sessions: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        sessions == 0
    })
    .await;

    let after_kill = ledger.committed();
    proxy.restart().await.unwrap();
    assert!(
        ledger.wait_commits(after_kill, COMMITS, PROGRESS_LIMIT).await,
        "writers did not resume through the restarted proxy"
    );
    writers.stop().await;
    // A killed proxy says nothing: its sessions see their connection end (and reconnecting, refused
    // connections until the new instance listens), never an error of someone's making.
    let errors = ledger.errors();
    let unexpected: Vec<_> = errors.keys().filter(|k| !["closed", "io", "connect io"].contains(&k.as_str())).collect();
    assert!(unexpected.is_empty(), "writers saw {unexpected:?} (all: {errors:?})");
    let report = ledger.check(&direct).await.unwrap();
    assert!(report.committed >= 2 * COMMITS, "{report:?}");
    proxy.kill().await.unwrap();
}
