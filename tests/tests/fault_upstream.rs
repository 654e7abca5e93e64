//! Upstream faults under dual-write load: the server restarted fast (sessions terminated, clean
//! shutdown), immediate (crash recovery on start) and killed outright (SIGKILL to every process, then
//! started again), while writers run ledger transactions on a migrated table through the proxy. Sessions
//! get the SQLSTATE the README promises for the fault (57P01 from the server, 08006 from the proxy when
//! the server closed the connection without an error), new connections 08001 while it is down; writes resume through
//! the same proxy without restarting it, and the ledger holds: old and shadow equal under the mapping,
//! every transaction seen committed in both, none seen failed in either.

use std::time::Duration;

mod proxy_support;

use dualwrite_tests::txn_ledger::{Ledger, Writers, LEDGER_RULES, LEDGER_SCHEMA};
use dualwrite_tests::*;
use proxy_support::{error_field, first_error, RawClient};

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
    // An idle session, read on the wire: what it is told when the upstream goes away.
    let mut idle = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;

    // What the idle session is told: the server's own word where it has one, relayed, then the error
    // that ends the session. A fast shutdown is Postgres's FATAL 57P01 ("terminating connection due to
    // administrator command"). An immediate one is only a WARNING 57P01 ("... due to immediate shutdown
    // command") before the socket closes, and a killed server says nothing: then the proxy ends the
    // session with FATAL 08006 itself, as libpq reports a server that closed the connection unexpectedly.
    let (warned_with, ended_with) = match fault {
        Fault::Restart(StopMode::Immediate) => (Some("57P01"), "08006"),
        Fault::Restart(_) => (None, "57P01"),
        Fault::Kill => (None, "08006"),
    };
    match fault {
        Fault::Restart(mode) => cluster.stop(mode).await.unwrap(),
        Fault::Kill => cluster.kill().await.unwrap(),
    }
    let told = tokio::time::timeout(PROGRESS_LIMIT, idle.read_to_close()).await.expect("the idle session ends");
    let warnings: Vec<String> =
        told.iter().filter(|(tag, _)| *tag == b'N').map(|(_, body)| error_field(body, b'C')).collect();
    assert_eq!(warnings, Vec::from_iter(warned_with.map(str::to_owned)), "{fault:?}: {told:?}");
    let (code, message) = first_error(&told).unwrap_or_else(|| panic!("no error before the close: {told:?}"));
    assert_eq!(code, ended_with, "{fault:?}: {message}");
    // While it is down, a new connection gets 08001 from the proxy.
    let err = connect(&proxy.url(&db)).await.unwrap_err();
    let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");
    cluster.start_again().await.unwrap();

    let after_fault = ledger.committed();
    assert!(
        ledger.wait_commits(after_fault, COMMITS, PROGRESS_LIMIT).await,
        "writes through the proxy did not resume after {fault:?}"
    );
    writers.stop().await;

    // The writers saw only what the README promises for this fault: the session's error (or a closed
    // connection) and, reconnecting, 08001 while the server was down or 57P03 while it started up.
    let errors = ledger.errors();
    let expected = [ended_with, "closed", "connect 08001", "connect 57P03"];
    let unexpected: Vec<_> = errors.keys().filter(|k| !expected.contains(&k.as_str())).collect();
    assert!(unexpected.is_empty(), "{fault:?}: writers saw {unexpected:?} (all: {errors:?})");

    let report = ledger.check(&db.connect().await.unwrap()).await.unwrap();
    tracing::info!(?fault, ?report, ?errors, "ledger after the upstream fault");
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
