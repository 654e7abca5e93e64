//! The interception hook end to end, with a stand-in interceptor (the real one is the rewriter and the
//! control plane): rewritten statements look like the client's own (command tag, no rows, NoData at
//! Describe) in the simple and extended protocols, local answers (rows, errors, deferred) arrive in
//! request order even when pipelined, and an error answered at Parse skips to Sync like Postgres does.

mod proxy_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::interceptor::*;
use dualwrite_tests::*;
use proxy_support::*;
use tokio_postgres::SimpleQueryMessage;

const UPDATE_SQL: &str = "UPDATE items SET n = n + 1";
const INSERT_SQL: &str = "INSERT INTO items VALUES (10, 0)";

#[derive(Default)]
struct StandIn {
    sessions: AtomicUsize,
}

struct StandInSession;

impl Interceptor for StandIn {
    fn start_session(&self, session: &SessionInfo) -> Option<Box<dyn SessionInterceptor>> {
        assert!(session.backend_pid > 0, "sessions start after authentication");
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(StandInSession))
    }
}

impl SessionInterceptor for StandInSession {
    fn on_sql(&mut self, request: SqlRequest<'_>) -> Verdict {
        match request.sql.trim() {
            // What the rewriter does to a write on a migrated table: run it as a data-modifying CTE.
            UPDATE_SQL => Verdict::Rewrite(Rewrite {
                sql: format!("WITH p AS ({UPDATE_SQL} RETURNING *) SELECT FROM p"),
                statements: vec![ResponseTransform {
                    command_tag: Some(CommandTag::Update),
                    suppress_rows: true,
                    describe_no_data: true,
                    ..ResponseTransform::default()
                }],
                control: false,
                tee: None,
            }),
            INSERT_SQL => Verdict::Rewrite(Rewrite {
                sql: format!("WITH p AS ({INSERT_SQL} RETURNING *) SELECT FROM p"),
                statements: vec![ResponseTransform {
                    command_tag: Some(CommandTag::Insert),
                    suppress_rows: true,
                    describe_no_data: true,
                    ..ResponseTransform::default()
                }],
                control: false,
                tee: None,
            }),
            "SHOW dualwrite.test" => {
                Verdict::Respond(LocalReply::rows(vec!["dualwrite.test".into()], vec![vec![Some("v1".into())]], "SHOW"))
            }
            "DUALWRITE SLOW" => Verdict::Defer(Box::pin(async {
                // The slowness is the thing tested: a deferred answer that takes a while.
                tokio::time::sleep(Duration::from_millis(200)).await;
                LocalReply::rows(vec!["done".into()], vec![vec![Some("yes".into())], vec![None]], "SELECT 2")
            })),
            "DENY ME" => Verdict::Respond(LocalReply::error(
                SqlError::new("0A000", "denied by the stand-in interceptor").with_hint("it is a test"),
            )),
            _ => Verdict::Forward,
        }
    }
}

async fn setup() -> (TestDb, RunningProxy, Arc<StandIn>) {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    db.connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE items (id int primary key, n int); INSERT INTO items VALUES (1, 0), (2, 0), (3, 0)",
        )
        .await
        .unwrap();
    let interceptor = Arc::new(StandIn::default());
    let server =
        dualwrite_proxy::Server::bind(config_for(&cluster)).await.unwrap().with_interceptor(interceptor.clone());
    let proxy = proxy_support::run_server(server);
    (db, proxy, interceptor)
}

#[tokio::test]
async fn rewritten_writes_look_like_the_original_statement() {
    let (db, proxy, interceptor) = setup().await;
    let client = connect(&db.url_via(proxy.addr)).await.unwrap();
    // Extended protocol: tokio-postgres reads the row count from the tag; Describe must say NoData.
    assert_eq!(client.execute(UPDATE_SQL, &[]).await.unwrap(), 3);
    let statement = client.prepare(UPDATE_SQL).await.unwrap();
    assert!(statement.columns().is_empty(), "NoData at Describe");
    assert_eq!(client.execute(&statement, &[]).await.unwrap(), 3);
    assert_eq!(client.execute(INSERT_SQL, &[]).await.unwrap(), 1);
    // Simple protocol: no rows, the client's tag (rows 1-3 and 10 now).
    let messages = client.simple_query(UPDATE_SQL).await.unwrap();
    assert!(matches!(messages[..], [SimpleQueryMessage::CommandComplete(4)]), "only CommandComplete: {messages:?}");
    // psql prints the tag it got.
    let out = psql(&db.url_via(proxy.addr), &["-c", UPDATE_SQL, "-c", INSERT_SQL.replace("10", "11").as_str()], None)
        .await
        .unwrap();
    out.assert_success();
    assert!(out.stdout.contains("UPDATE 4"), "{}", out.stdout);
    assert!(out.stdout.contains("INSERT 0 1"), "{}", out.stdout);
    let n: i64 = client.query_one("SELECT sum(n)::int8 FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 4 * 3 + 2, "rows 1-3 updated four times, row 10 twice, row 11 never");
    assert!(interceptor.sessions.load(Ordering::Relaxed) >= 2);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn local_answers_in_both_protocols_and_in_order() {
    let (db, proxy, _) = setup().await;
    let client = connect(&db.url_via(proxy.addr)).await.unwrap();
    let row = client.query_one("SHOW dualwrite.test", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "v1");
    let messages = client.simple_query("SHOW dualwrite.test").await.unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec![Some("v1".to_owned())]);
    // The local answer's tag, read off the wire (drivers report only a row count).
    let mut raw = RawClient::connect(proxy.addr, db.cluster.superuser(), &db.name).await;
    let frames = raw.query("SHOW dualwrite.test").await;
    assert_eq!(command_tags(&frames), ["SHOW"], "{frames:?}");
    let rows = client.query("DUALWRITE SLOW", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].get::<_, Option<String>>(0), None);

    // Pipelined: local and upstream answers interleave in request order.
    let futures = (0..30).map(|i| {
        let client = &client;
        async move {
            if i % 3 == 0 {
                client.query_one("SHOW dualwrite.test", &[]).await.unwrap().get::<_, String>(0)
            } else {
                client.query_one("SELECT $1::int4::text", &[&i]).await.unwrap().get::<_, String>(0)
            }
        }
    });
    let results = futures::future::join_all(futures).await;
    for (i, got) in results.iter().enumerate() {
        let want = if i % 3 == 0 { "v1".to_owned() } else { i.to_string() };
        assert_eq!(got, &want);
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn local_errors_leave_the_session_usable() {
    let (db, proxy, _) = setup().await;
    let client = connect(&db.url_via(proxy.addr)).await.unwrap();
    let err = client.simple_query("DENY ME").await.unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "0A000");
    assert_eq!(db_err.hint(), Some("it is a test"));
    let err = client.query("DENY ME", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    // Extended batch after the local Parse error was skipped to Sync; the next one works.
    assert_eq!(client.query_one("SELECT 9", &[]).await.unwrap().get::<_, i32>(0), 9);
    // Inside a transaction the upstream keeps its state.
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(UPDATE_SQL, &[]).await.unwrap();
    let err = client.simple_query("DENY ME").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = client.query_one("SELECT sum(n)::int8 FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn sql_in_another_client_encoding_is_forwarded_byte_for_byte() {
    let (db, proxy, _) = setup().await;
    let mut raw = RawClient::connect(proxy.addr, db.cluster.superuser(), &db.name).await;
    raw.query("SET client_encoding TO 'LATIN1'").await;
    // 'é' in LATIN1 is the single byte 0xE9, invalid as UTF-8: the interceptor sees a replacement
    // character, but the upstream must get the original byte (and answer it in LATIN1).
    let answer = raw.query_bytes(b"SELECT '\xe9' AS e, octet_length(convert_to('\xe9', 'UTF8'))").await;
    let row = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    // DataRow: column count, then (length, bytes) per column.
    assert_eq!(&row.1[2..7], &[0, 0, 0, 1, 0xe9]);
    assert_eq!(&row.1[7..], &[0, 0, 0, 1, b'2']);
    proxy.stop().await.unwrap();
}
