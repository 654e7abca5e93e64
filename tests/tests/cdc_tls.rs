//! The watch's replication connection follows the upstream URL's TLS settings, private CA included: with
//! `sslmode=verify-full` and `sslrootcert` naming a CA of the test's own, the walsender's connection is
//! encrypted and the watch finds and repairs a bypass; when the certificate is not trusted the watch stops
//! with an error naming the reason in STATUS (never a plaintext stream), and resumes where it stopped once
//! the CA is right again.

mod cdc_support;
mod tls_support;

use std::time::Duration;

use cdc_support::{bypasses, column, difference, fixture, rules, status, until_watching, watch_on, watch_state};
use dualwrite_tests::{eventually, TestProxy};
use tls_support::upstream_pki;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(30);

/// The walsenders streaming this database's watch slot: (pid, encrypted).
async fn walsenders(direct: &Client) -> Vec<(i32, bool)> {
    direct
        .query(
            "SELECT r.active_pid, coalesce(s.ssl, false) FROM pg_replication_slots r \
             LEFT JOIN pg_stat_ssl s ON s.pid = r.active_pid \
             WHERE r.database = current_database() AND r.slot_name LIKE 'dualwrite_cdc_%' AND r.active",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// When the watch last wrote its row (seconds since the epoch): each attempt to stream writes it.
async fn attempt_time(direct: &Client) -> f64 {
    direct
        .query_one("SELECT extract(epoch FROM updated_at)::float8 FROM dualwrite.cdc_watch WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_streams_over_verify_full_with_a_private_ca_and_refuses_an_untrusted_certificate() {
    let pki = upstream_pki().await;
    let f = fixture().await;
    // The proxy reads the root file at start; the replication connection reads it at each connection
    // (as libpq does), which lets this test make the certificate untrusted for the watch alone.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.crt");
    std::fs::copy(&pki.ca, &root).unwrap();
    let upstream = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}",
        f.db.cluster.superuser(),
        f.db.cluster.port(),
        f.db.name,
        root.display()
    );
    let proxy = TestProxy::with_rules_toml_and(&f.db, &rules("repair"), move |config| {
        watch_on(None)(config);
        config.upstream = upstream;
    })
    .await
    .unwrap();
    let admin = proxy.connect(&f.db).await.unwrap();
    admin.batch_execute("INSERT INTO users VALUES (1, 'a b', 'E@X', 'a1'), (2, 'c d', NULL, 'a2')").await.unwrap();
    until_watching(&f.direct).await;
    let streaming = walsenders(&f.direct).await;
    assert!(matches!(streaming.as_slice(), [(_, true)]), "one encrypted walsender: {streaming:?}");

    f.direct.batch_execute("UPDATE users SET name = 'behind the proxy' WHERE id = 1").await.unwrap();
    eventually(WAIT, "the bypass is found and repaired over verify-full", || async {
        bypasses(&f.direct).await.len() == 1 && difference(&f.direct).await == 0
    })
    .await;

    // The root file now holds a CA that did not issue the server's certificate; the stream is cut.
    std::fs::copy(&pki.other_ca, &root).unwrap();
    let (walsender, _) = streaming[0];
    f.direct.execute("SELECT pg_terminate_backend($1)", &[&walsender]).await.unwrap();
    eventually(WAIT, "STATUS shows the refused certificate", || async {
        column(&status(&admin).await, "cdc_watch").is_some_and(|shown| {
            shown.starts_with("error: cannot open the replication connection (sslmode=verify-full)")
                && shown.contains("UnknownIssuer")
        })
    })
    .await;
    assert!(walsenders(&f.direct).await.is_empty(), "no stream without a trusted certificate");
    // A bypass while the watch cannot stream: the slot keeps it.
    f.direct.batch_execute("DELETE FROM users WHERE id = 2").await.unwrap();
    // The watch keeps retrying, each attempt writing its row again; through two more attempts no plaintext
    // stream appears.
    for attempt in 1..=2 {
        let before = attempt_time(&f.direct).await;
        eventually(WAIT, "the watch tries again", || async { attempt_time(&f.direct).await > before }).await;
        assert!(walsenders(&f.direct).await.is_empty(), "no stream without a trusted certificate (attempt {attempt})");
        assert_eq!(watch_state(&f.direct).await.map(|(state, _)| state).as_deref(), Some("error"));
    }

    std::fs::copy(&pki.ca, &root).unwrap();
    eventually(WAIT, "the watch resumes and finds the bypass made meanwhile", || async {
        bypasses(&f.direct).await.len() == 2 && difference(&f.direct).await == 0
    })
    .await;
    assert!(walsenders(&f.direct).await.iter().all(|(_, ssl)| *ssl), "encrypted again");
    let kinds: Vec<String> = bypasses(&f.direct).await.into_iter().map(|b| b.0).collect();
    assert_eq!(kinds, vec!["update", "delete"]);
    proxy.stop().await.unwrap();
}
