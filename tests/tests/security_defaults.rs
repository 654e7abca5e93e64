//! Defaults that keep secrets in: the `dualwrite` binary at its default log level writes no password, no
//! SQL literal and no bound parameter to its output, whatever clients send (successful, failing,
//! refused, malformed, wrong passwords, control commands); and /metrics is bound to loopback unless the
//! operator says otherwise.

mod proxy_support;

use clap::Parser;
use dualwrite_proxy::cli::{Cli, Command};
use dualwrite_proxy::config::{Config, DEFAULT_METRICS_LISTEN};
use dualwrite_tests::*;
use proxy_support::{split_database, RawClient};

/// Strings that must never reach the log: each is sent by a client (or configured) exactly once below.
const SECRETS: &[&str] = &[
    SCRAM_PASSWORD,
    MD5_PASSWORD,
    "UPSTREAM_PW_90e1",
    "CONTROL_PW_77ab",
    "WRONG_PW_3c3c",
    "LIT_INSERT_a1b2",
    "PARAM_INSERT_d4e5",
    "PARAM_FAIL_7788",
    "LIT_SYNTAX_4242",
    "LIT_REFUSED_5151",
    "PARAM_REFUSED_6a6a",
    "LIT_MALFORMED_6161",
    "LIT_CONTROL_8e8e",
];

#[tokio::test]
async fn default_log_level_shows_no_passwords_literals_or_parameters() {
    let cluster = TestCluster::shared();
    let (db, rules) = split_database().await;
    // The upstream is trust-authenticated, so these passwords are configured but never checked.
    let upstream = db.url().replacen("postgres@", "postgres:UPSTREAM_PW_90e1@", 1);
    assert!(upstream.contains("UPSTREAM_PW_90e1"), "{upstream}");
    let mut proxy = ProxyProcess::serve(&[
        "--upstream",
        &upstream,
        "--rules",
        rules.path().to_str().unwrap(),
        "--admin-role",
        SCRAM_USER,
        "--control-password",
        "CONTROL_PW_77ab",
    ])
    .await
    .unwrap();
    let url = |user: &str, password: &str| db.url_via_as(proxy.addr(), user, Some(password));

    let app = connect(&url(SCRAM_USER, SCRAM_PASSWORD)).await.unwrap();
    app.simple_query("INSERT INTO users (id, name) VALUES (1, 'LIT_INSERT_a1b2')").await.unwrap();
    app.execute("INSERT INTO users (id, name) VALUES ($1, $2)", &[&2i32, &"PARAM_INSERT_d4e5"]).await.unwrap();
    app.execute("INSERT INTO users (id, name) VALUES ($1, $2)", &[&2i32, &"PARAM_FAIL_7788"]).await.unwrap_err();
    app.simple_query("SELEC 'LIT_SYNTAX_4242'").await.unwrap_err();
    // Key-changing updates are refused by the proxy (0A000), in both protocols.
    app.simple_query("UPDATE users SET id = 9 WHERE name = 'LIT_REFUSED_5151'").await.unwrap_err();
    app.execute("UPDATE users SET id = 9 WHERE name = $1", &[&"PARAM_REFUSED_6a6a"]).await.unwrap_err();
    app.simple_query("DUALWRITE ROUTE users_split_name READS TO LIT_CONTROL_8e8e").await.unwrap_err();
    // A non-admin's control command, a wrong password.
    let other = connect(&url(MD5_USER, MD5_PASSWORD)).await.unwrap();
    other.simple_query("DUALWRITE STATUS").await.unwrap_err();
    connect(&url(SCRAM_USER, "WRONG_PW_3c3c")).await.unwrap_err();
    // A Query frame that breaks the protocol (no terminating NUL): relayed as framed, Postgres answers
    // 08P01 "invalid string in message" (an ERROR: the session stays, as without the proxy).
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.send_message(b'Q', b"SELECT 'LIT_MALFORMED_6161'").await;
    let mut code = None;
    while let Some((tag, body)) = raw.read_message().await {
        if tag == b'E' {
            code = Some(proxy_support::error_field(&body, b'C'));
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(code.as_deref(), Some("08P01"));
    drop((app, other, raw));

    assert!(proxy.terminate().await.unwrap().success());
    let output = proxy.output();
    assert!(output.contains("proxy listening"), "the log was not captured:\n{output}");
    for secret in SECRETS {
        assert!(!output.contains(secret), "{secret:?} appears in the proxy's output:\n{output}");
    }
}

#[test]
fn metrics_listen_on_loopback_unless_configured_otherwise() {
    let default: std::net::SocketAddr = DEFAULT_METRICS_LISTEN.parse().unwrap();
    assert!(default.ip().is_loopback(), "{default}");
    assert_eq!(Config::default().metrics_listen, Some(default));
    // A config file that does not mention it.
    assert_eq!(Config::from_toml("upstream = \"postgres://a@db:5432/app\"").unwrap().metrics_listen, Some(default));
    // The command line without the flag (and without DUALWRITE_METRICS_LISTEN).
    if std::env::var_os("DUALWRITE_METRICS_LISTEN").is_none() {
        let cli = Cli::try_parse_from(["dualwrite", "serve", "--upstream", "postgres://a@db:5432/app"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.load().unwrap().metrics_listen, Some(default));
    }
}
