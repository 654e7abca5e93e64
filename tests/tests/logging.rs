//! What the `dualwrite` binary logs when started with defaults and its stderr is a file, as under systemd,
//! Docker or `> proxy.log`: plain text without terminal escape codes, and no warning.

use dualwrite_tests::{connect, simple_rows, ProxyProcess, TestCluster};

/// Starts `dualwrite serve` in front of a fresh database with nothing but `--upstream` (the test harness
/// adds `--listen` and `--metrics-listen off`), relays one query through it, and returns it with what it
/// logged by then.
async fn default_start(open_files_limit: Option<(u64, u64)>) -> (ProxyProcess, String) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let proxy = ProxyProcess::serve_with_open_files_limit(open_files_limit, &["--upstream", &db.url()]).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    let rows = simple_rows(&client.simple_query("SELECT 41 + 1").await.unwrap());
    assert_eq!(rows, vec![vec![Some("42".to_string())]]);
    drop(client);
    let output = proxy.output();
    (proxy, output)
}

#[tokio::test]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let (_proxy, output) = default_start(None).await;
    // The start logs at INFO, with fields, which is what the colouring wraps in escape codes.
    assert!(output.contains(" INFO "), "no INFO line in:\n{output}");
    assert!(!output.contains('\u{1b}'), "escape codes in a log written to a file:\n{output:?}");
}

/// The default `limits.max_client_connections` fits the kernel's default hard open-files limit (4096),
/// so a default start raises the usual soft limit of 1024 without a warning; with the hard limit this
/// machine gives (whatever it is, inherited) it does not warn either.
#[tokio::test]
async fn a_start_with_defaults_logs_no_warning() {
    let (kernel_default, output) = default_start(Some((1024, 4096))).await;
    assert!(!output.contains("WARN"), "a default start warned:\n{output}");
    assert!(output.contains("raised the soft open-files limit"), "{output}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", kernel_default.pid().unwrap())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(line.split_whitespace().filter_map(|w| w.parse().ok()).collect::<Vec<u64>>(), vec![4096, 4096]);

    let (_inherited, output) = default_start(None).await;
    assert!(!output.contains("WARN"), "a default start warned:\n{output}");
}
