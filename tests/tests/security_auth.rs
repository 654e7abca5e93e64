//! Authentication and the admin check, from the attacker's side: the SCRAM-SHA-256 exchange is the
//! upstream's own end to end (the proxy holds no secret a captured exchange could be replayed with), a
//! client that names an admin role but does not authenticate gets no control answer, and control SQL
//! is allowed by the role the upstream authenticated, not by `SET ROLE` or `SET SESSION AUTHORIZATION`.

mod proxy_support;

use dualwrite_proxy::Config;
use dualwrite_tests::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proxy_support::*;
use tokio_postgres::error::SqlState;

const AUTH_OK: i32 = 0;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// A proxy with the migration above on a fresh database, `admin_roles` as given.
async fn proxy_with_rules(admin_roles: &[&str]) -> (TestDb, TestProxy, tempfile::NamedTempFile) {
    let (db, rules) = split_database().await;
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), db.url());
    config.rules = Some(rules.path().to_owned());
    config.admin_roles = admin_roles.iter().map(|r| r.to_string()).collect();
    let proxy = TestProxy::start(config).await.unwrap();
    (db, proxy, rules)
}

/// The authentication request code of an 'R' message.
fn auth_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

/// Opens a session as `user` and reads up to the server's AuthenticationSASL.
async fn sasl_start(addr: std::net::SocketAddr, user: &str, database: &str) -> RawClient {
    let mut raw = RawClient::open(addr, user, database).await;
    let (tag, body) = raw.read_message().await.expect("authentication request");
    assert_eq!((tag, auth_code(&body)), (b'R', AUTH_SASL));
    let mechanisms = String::from_utf8_lossy(&body[4..]).into_owned();
    assert!(mechanisms.contains("SCRAM-SHA-256\0"), "{mechanisms:?}");
    raw
}

/// SASLInitialResponse for SCRAM-SHA-256 carrying `client_first`.
fn sasl_initial(client_first: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    body.extend_from_slice(client_first);
    body
}

/// Sends client-first and returns server-first (the AuthenticationSASLContinue data).
async fn server_first(raw: &mut RawClient, scram: &ScramSha256) -> Vec<u8> {
    raw.send_message(b'p', &sasl_initial(scram.message())).await;
    let (tag, body) = raw.read_message().await.expect("server-first");
    assert_eq!((tag, auth_code(&body)), (b'R', AUTH_SASL_CONTINUE), "{}", String::from_utf8_lossy(&body));
    body[4..].to_vec()
}

/// `r=...,s=...,i=...` fields of a SCRAM message.
fn scram_field<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .split(',')
        .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {message}"))
}

#[tokio::test]
async fn scram_is_the_upstreams_exchange_and_a_captured_one_cannot_be_replayed() {
    let cluster = TestCluster::shared();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let mut scram = ScramSha256::new(SCRAM_PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let client_nonce = scram_field(std::str::from_utf8(scram.message()).unwrap(), "r").to_owned();
    let mut raw = sasl_start(proxy.addr(), SCRAM_USER, "postgres").await;
    let first = server_first(&mut raw, &scram).await;
    let first_text = String::from_utf8(first.clone()).unwrap();

    // Salt and iteration count are those of the verifier stored upstream: the server side of this
    // exchange is Postgres, which holds the verifier; the proxy holds none.
    let stored: String = connect(&cluster.connection_string())
        .await
        .unwrap()
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&SCRAM_USER])
        .await
        .unwrap()
        .get(0);
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let (iterations, salt) =
        stored.strip_prefix("SCRAM-SHA-256$").unwrap().split('$').next().unwrap().split_once(':').unwrap();
    assert_eq!(scram_field(&first_text, "s"), salt);
    assert_eq!(scram_field(&first_text, "i"), iterations);
    let nonce = scram_field(&first_text, "r");
    assert!(nonce.starts_with(&client_nonce) && nonce.len() > client_nonce.len(), "{first_text}");

    scram.update(&first).unwrap();
    let client_final = scram.message().to_vec();
    raw.send_message(b'p', &client_final).await;
    let (tag, body) = raw.read_message().await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', AUTH_SASL_FINAL), "{}", String::from_utf8_lossy(&body));
    // The server signature checks out against the password: only the holder of the ServerKey (the
    // upstream) could have made it.
    scram.finish(&body[4..]).expect("the server signature verifies");
    let (tag, body) = raw.read_message().await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', AUTH_OK));

    // What crossed the proxy (client-first, client-final) is useless to a replayer: a new session gets a
    // new server nonce, and the captured proof is refused by the server.
    let mut replay = sasl_start(proxy.addr(), SCRAM_USER, "postgres").await;
    let replay_first = server_first(&mut replay, &ScramSha256::new(b"unknown", ChannelBinding::unsupported())).await;
    assert_ne!(replay_first, first);
    replay.send_message(b'p', &client_final).await;
    let answer = replay.read_to_close().await;
    assert!(answer.iter().any(|(tag, _)| *tag == b'E'), "{answer:?}");
    assert!(
        !answer.iter().any(|(tag, body)| *tag == b'R' && auth_code(body) == AUTH_OK),
        "replayed proof was accepted"
    );
    proxy.stop().await.unwrap();
}

/// Messages that carry a control command's answer.
fn has_result_rows(messages: &[(u8, Vec<u8>)]) -> bool {
    messages.iter().any(|(tag, _)| matches!(tag, b'T' | b'D' | b'C'))
}

async fn phase_and_audit(db: &TestDb) -> (String, i64) {
    let c = db.connect().await.unwrap();
    let phase: String = c.query_one("SELECT phase FROM dualwrite.migrations", &[]).await.unwrap().get(0);
    let audit: i64 = c.query_one("SELECT count(*) FROM dualwrite.audit_log", &[]).await.unwrap().get(0);
    (phase, audit)
}

#[tokio::test]
async fn naming_an_admin_role_without_authenticating_gets_no_control_answer() {
    let (db, proxy, _rules) = proxy_with_rules(&[SCRAM_USER]).await;
    let before = phase_and_audit(&db).await;
    let command = b"DUALWRITE PHASE users_split_name off FORCE\0";

    // A Query instead of the SASL response: the upstream, still authenticating, refuses it.
    let mut raw = sasl_start(proxy.addr(), SCRAM_USER, &db.name).await;
    raw.send_message(b'Q', command).await;
    let answer = raw.read_to_close().await;
    assert!(answer.iter().any(|(tag, _)| *tag == b'E'), "{answer:?}");
    assert!(!has_result_rows(&answer), "control answered before authentication: {answer:?}");

    // A wrong proof with the command pipelined right behind it.
    let mut raw = sasl_start(proxy.addr(), SCRAM_USER, &db.name).await;
    let mut scram = ScramSha256::new(b"not-the-password", ChannelBinding::unsupported());
    let first = server_first(&mut raw, &scram).await;
    scram.update(&first).unwrap();
    let mut pipelined = vec![b'p'];
    pipelined.extend_from_slice(&((scram.message().len() + 4) as i32).to_be_bytes());
    pipelined.extend_from_slice(scram.message());
    pipelined.push(b'Q');
    pipelined.extend_from_slice(&((command.len() + 4) as i32).to_be_bytes());
    pipelined.extend_from_slice(command);
    raw.send(&pipelined).await;
    let answer = raw.read_to_close().await;
    let codes: Vec<String> = answer.iter().filter(|(t, _)| *t == b'E').map(|(_, b)| error_field(b, b'C')).collect();
    assert_eq!(codes, ["28P01"], "{answer:?}");
    assert!(!has_result_rows(&answer), "control answered after a failed login: {answer:?}");

    assert_eq!(phase_and_audit(&db).await, before, "state changed");
    // The admin, authenticated, is served.
    let admin = connect(&proxy.url_as(&db, SCRAM_USER, Some(SCRAM_PASSWORD))).await.unwrap();
    admin.simple_query("DUALWRITE STATUS").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn set_role_and_session_authorization_do_not_grant_control() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let (ops, app) = (format!("{}_ops", db.name), format!("{}_app", db.name));
    db.connect()
        .await
        .unwrap()
        .batch_execute(&format!("CREATE ROLE \"{ops}\" LOGIN; CREATE ROLE \"{app}\" LOGIN IN ROLE \"{ops}\";"))
        .await
        .unwrap();
    drop(db);
    let (db, proxy, _rules) = proxy_with_rules(&[&ops]).await;
    let before = phase_and_audit(&db).await;
    let refused = |result: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{what}: {err}");
    };

    // A member of the admin role that switches to it: current_user is the admin role, the session's
    // authenticated role is not.
    let member = connect(&proxy.url_as(&db, &app, None)).await.unwrap();
    member.batch_execute(&format!("SET ROLE \"{ops}\"")).await.unwrap();
    let now: String = member.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(now, ops);
    refused(member.simple_query("DUALWRITE PHASE users_split_name off FORCE").await, "after SET ROLE");
    let err = member.query("DUALWRITE ROUTE users_split_name READS TO v2", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "extended protocol: {err}");

    // A superuser that is not an admin role becomes one with SET SESSION AUTHORIZATION: still refused.
    let superuser = connect(&proxy.url_as(&db, MD5_USER, Some(MD5_PASSWORD))).await.unwrap();
    superuser.batch_execute(&format!("SET SESSION AUTHORIZATION \"{ops}\"")).await.unwrap();
    let now: String = superuser.query_one("SELECT session_user::text", &[]).await.unwrap().get(0);
    assert_eq!(now, ops);
    refused(
        superuser.simple_query("DUALWRITE PHASE users_split_name off FORCE").await,
        "after SET SESSION AUTHORIZATION",
    );
    assert_eq!(phase_and_audit(&db).await, before, "state changed");

    // The admin role itself, logged in, is served.
    let admin = connect(&proxy.url_as(&db, &ops, None)).await.unwrap();
    admin.simple_query("DUALWRITE STATUS").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn statements_pipelined_behind_the_startup_are_judged_like_any_other() {
    let (db, proxy, _rules) = proxy_with_rules(&["nobody"]).await;
    // Startup and a write in one packet, before the server has even answered (trust authentication):
    // the write must still be dual-written, not slip through unjudged.
    let mut raw = RawClient::open(proxy.addr(), db.cluster.superuser(), &db.name).await;
    raw.send_message(b'Q', b"INSERT INTO users (id, name) VALUES (7, 'pipelined')\0").await;
    let mut tags = Vec::new();
    while let Some((tag, body)) = raw.read_message().await {
        assert_ne!(tag, b'E', "{}", error_field(&body, b'M'));
        tags.push(tag);
        if tag == b'Z' && tags.contains(&b'C') {
            break;
        }
    }
    let shadow: Vec<String> = db
        .connect()
        .await
        .unwrap()
        .query("SELECT first_name FROM users_v2", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(shadow, ["pipelined"]);
    proxy.stop().await.unwrap();
}
