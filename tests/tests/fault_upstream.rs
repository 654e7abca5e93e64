//! Upstream faults under dual-write load: the server restarted fast (sessions terminated, clean
//! shutdown), immediate (crash recovery on start) and killed outright (SIGKILL to every process, then
//! started again), while writers run ledger transactions on a migrated table through the proxy. Writes
//! resume through the same proxy without restarting it, and the ledger holds: old and shadow equal under
//! the mapping, every transaction seen committed in both, none seen failed in either.

use std::time::Duration;

use dualwrite_tests::txn_ledger::{Ledger, Writers, LEDGER_RULES, LEDGER_SCHEMA};
use dualwrite_tests::*;

/// Commits to see before the fault and again after it.
const COMMITS: usize = 30;
/// Bound on waiting for those commits (a hung proxy fails the test instead of hanging it).
const PROGRESS_LIMIT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug)]
enum Fault {
    Restart(StopMode),
    Kill,
}

async fn upstream_fault_keeps_the_ledger(fault: Fault) {
    let cluster = TestCluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(LEDGER_SCHEMA).await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, LEDGER_RULES).await.unwrap();
    let ledger = Ledger::new();
    let writers = Writers::start(&ledger, &proxy.url(&db), 4);
    assert!(ledger.wait_commits(0, COMMITS, PROGRESS_LIMIT).await, "no write load before the fault");

    match fault {
        Fault::Restart(mode) => cluster.restart(mode).await.unwrap(),
        Fault::Kill => {
            cluster.kill().await.unwrap();
            cluster.start_again().await.unwrap();
        }
    }
    let after_fault = ledger.committed();
    assert!(
        ledger.wait_commits(after_fault, COMMITS, PROGRESS_LIMIT).await,
        "writes through the proxy did not resume after {fault:?}"
    );
    writers.stop().await;

    let report = ledger.check(&db.connect().await.unwrap()).await.unwrap();
    tracing::info!(?fault, ?report, "ledger after the upstream fault");
    assert!(report.committed >= 2 * COMMITS, "{report:?}");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_fast_under_write_load() {
    upstream_fault_keeps_the_ledger(Fault::Restart(StopMode::Fast)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_immediate_under_write_load() {
    upstream_fault_keeps_the_ledger(Fault::Restart(StopMode::Immediate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_under_write_load() {
    upstream_fault_keeps_the_ledger(Fault::Kill).await;
}
