//! Bad input from clients (issue #6): slowloris startups, 1 GiB length headers, lengths that lie, invalid
//! UTF-8 in startup parameters and statements, message types clients must not send, a flood of
//! connections, and running out of file descriptors. Each gets a clear error or a close, only the offending connection is affected, and where
//! Postgres itself has an answer the proxy gives the same one (the same bytes sent to Postgres directly
//! and through the proxy are compared). Basic malformed/oversized/unknown frames and the connection limit
//! are in proxy_failures.rs.

mod proxy_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dualwrite_tests::*;
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound on how long any single answer may take; only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(30);

/// A startup packet's parameters, as raw bytes (they need not be UTF-8).
type StartupParams<'a> = Vec<(&'a [u8], &'a [u8])>;

fn startup_packet(params: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// What a connection answered: the tag of every message and the SQLSTATE of each ErrorResponse, up to
/// the end of the answer (see [`Ending`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    tags: Vec<u8>,
    errors: Vec<String>,
    rows: Vec<Vec<u8>>,
    ending: Ending,
}

/// How an answer ended. A reset and a silence are told apart from an orderly close, because each has
/// another cause: a reset can discard an error already sent, and a silence is a hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The requested number of ReadyForQuery messages arrived; the connection stays open.
    Ready,
    /// The server closed the connection (end of stream).
    Closed,
    /// The connection was reset, or ended in the middle of a message.
    Reset,
    /// Nothing more arrived within `NO_HANG`.
    Silent,
}

impl Answer {
    /// The connection ended, orderly or not.
    fn closed(&self) -> bool {
        matches!(self.ending, Ending::Closed | Ending::Reset)
    }
}

async fn read_answer(stream: &mut TcpStream, stop_at_ready: usize) -> Answer {
    let mut answer = Answer { tags: Vec::new(), errors: Vec::new(), rows: Vec::new(), ending: Ending::Ready };
    let mut ready = 0;
    loop {
        let tag = match tokio::time::timeout(NO_HANG, stream.read_u8()).await {
            Err(_) => return Answer { ending: Ending::Silent, ..answer },
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Answer { ending: Ending::Closed, ..answer }
            }
            Ok(Err(_)) => return Answer { ending: Ending::Reset, ..answer },
            Ok(Ok(tag)) => tag,
        };
        let Ok(len) = stream.read_i32().await else {
            return Answer { ending: Ending::Reset, ..answer };
        };
        let mut body = vec![0u8; (len - 4).max(0) as usize];
        if stream.read_exact(&mut body).await.is_err() {
            return Answer { ending: Ending::Reset, ..answer };
        }
        answer.tags.push(tag);
        match tag {
            b'E' => answer.errors.push(error_field(&body, b'C')),
            b'D' => answer.rows.push(body),
            b'Z' => {
                ready += 1;
                if ready == stop_at_ready {
                    return answer;
                }
            }
            _ => {}
        }
    }
}

/// Opens a session with a raw startup packet; the answer up to the first ReadyForQuery (or the close).
async fn open(addr: SocketAddr, params: &[(&[u8], &[u8])]) -> (TcpStream, Answer) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&startup_packet(params)).await.unwrap();
    let answer = read_answer(&mut stream, 1).await;
    (stream, answer)
}

/// Sends `bytes` on a fresh session of `db` at `addr` and returns what came back until the close or
/// `stop_at_ready` ReadyForQuery messages, without the startup messages (ParameterStatus values differ
/// between a proxy and the server only in nothing; they are skipped to keep the comparison about `bytes`).
async fn exchange(addr: SocketAddr, db: &TestDb, bytes: &[u8], stop_at_ready: usize) -> Answer {
    let user = db.cluster.superuser().as_bytes();
    let (mut stream, opened) = open(addr, &[(b"user", user), (b"database", db.name.as_bytes())]).await;
    assert_eq!(opened.tags.last(), Some(&b'Z'), "session did not start: {opened:?}");
    let _ = stream.write_all(bytes).await;
    read_answer(&mut stream, stop_at_ready).await
}

fn direct_addr(cluster: &TestCluster) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cluster.port()))
}

/// Peak resident memory of this process (the proxy runs in it), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const USERS_RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

async fn users_db(cluster: &TestCluster) -> TestDb {
    let db = cluster.create_database().await.unwrap();
    db.connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE users (id serial PRIMARY KEY, name text, email text);
             CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);",
        )
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn slowloris_startup_is_closed_after_the_timeout_and_others_are_served() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = config_for(&cluster);
    config.limits.startup_timeout_secs = 1;
    config.metrics_listen = Some(metrics_addr);
    let proxy = TestProxy::start(config).await.unwrap();

    // One client connects and says nothing; another sends its startup packet a byte every 200 ms
    // (about 10 s for the whole packet, ten times the timeout).
    let mut silent = TcpStream::connect(proxy.addr()).await.unwrap();
    let packet = startup_packet(&[(b"user", cluster.superuser().as_bytes()), (b"database", db.name.as_bytes())]);
    let dribbling = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut dribble_read, mut dribble_write) = dribbling.into_split();
    let closed_by_proxy = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = dribble_read.read_to_end(&mut answer).await;
        answer
    });
    let mut sent = 0;
    for byte in &packet {
        if closed_by_proxy.is_finished() || dribble_write.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        // Meanwhile, a well-behaved client is served.
        if sent == 2 {
            let client = connect(&db.url_via(proxy.addr())).await.unwrap();
            assert_eq!(client.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
        }
        // The dribbling is the thing tested: a byte every 200 ms until the startup timeout closes it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = tokio::time::timeout(NO_HANG, closed_by_proxy).await.expect("closed").unwrap();
    assert!(sent < packet.len(), "the whole packet went through ({sent} bytes) before the proxy closed");
    assert!(answer.is_empty(), "like Postgres, a timed-out startup is closed without a message: {answer:?}");

    let mut buf = Vec::new();
    let read = tokio::time::timeout(NO_HANG, silent.read_to_end(&mut buf)).await.expect("silent client closed");
    assert!(read.is_ok_and(|n| n == 0), "nothing sent to the silent client");

    // The proxy still serves, and counted both closes.
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
    let timeouts = text
        .lines()
        .find(|l| l.starts_with("dualwrite_refused_connections_total{reason=\"startup_timeout\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no startup_timeout sample in:\n{text}"));
    assert!(timeouts >= 2.0, "{timeouts}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn one_gib_length_headers_are_refused_without_allocating() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let bystander = connect(&db.url_via(proxy.addr())).await.unwrap();
    let before = peak_rss_kib();

    // A Query claiming 1 GiB (the default limit is 64 MiB): 54000 as soon as the header arrives.
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(1i32 << 30).to_be_bytes());
    header.extend_from_slice(b"SELECT 1");
    let answer = exchange(proxy.addr(), &db, &header, 1).await;
    assert_eq!(answer.errors, vec!["54000"]);
    assert!(answer.closed());

    // A startup packet claiming 1 GiB: Postgres's own answer, the close without a word.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&(1i32 << 30).to_be_bytes()).await.unwrap();
    s.write_all(&196608i32.to_be_bytes()).await.unwrap();
    let answer = read_answer(&mut s, 1).await;
    assert!(answer.tags.is_empty(), "{answer:?}");
    assert!(answer.closed());

    // Neither was buffered: the peak memory of the process (proxy included) grew by far less than 1 GiB.
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 128, "peak RSS grew by {grown_mib} MiB");
    bystander.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await.unwrap();
}

/// Frames whose length words lie, and message types only a server sends: the relay forwards them as
/// framed, so the client gets exactly Postgres's answer (08P01 and the close, or the server's error);
/// with rules, the frames the proxy reads itself (Query, Parse) get the same SQLSTATE from the proxy.
#[tokio::test]
async fn lying_lengths_and_foreign_message_types_get_postgres_answers() {
    let cluster = TestCluster::shared();
    let db = users_db(&cluster).await;
    let relay = TestProxy::start(config_for(&cluster)).await.unwrap();
    let rules = TestProxy::with_rules_toml(&db, USERS_RULES).await.unwrap();
    let mut parse_lying_count = b"s\0SELECT $1\0".to_vec();
    parse_lying_count.extend_from_slice(&5i16.to_be_bytes());
    let sync = frame(b'S', b"");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Query without its terminator", frame(b'Q', b"SELECT 1")),
        ("Query length shorter than its text", [frame(b'Q', b"SELECT"), b" 1\0".to_vec()].concat()),
        (
            "Parse claiming 5 parameter types and carrying none",
            [frame(b'P', &parse_lying_count), sync.clone()].concat(),
        ),
        ("Bind without a statement name", [frame(b'B', b"p\0"), sync.clone()].concat()),
        ("Execute without a portal name", [frame(b'E', b""), sync.clone()].concat()),
        ("Sync with a body", [frame(b'S', b"junk"), sync.clone()].concat()),
        ("Describe of neither a statement nor a portal", [frame(b'D', b"X\0"), sync.clone()].concat()),
        ("Close without a name", [frame(b'C', b"S"), sync.clone()].concat()),
        ("ReadyForQuery sent by a client", frame(b'Z', b"I")),
        ("RowDescription sent by a client", frame(b'T', b"\0\0")),
    ];
    for (what, bytes) in cases {
        let direct = exchange(direct_addr(&cluster), &db, &bytes, 1).await;
        let relayed = exchange(relay.addr(), &db, &bytes, 1).await;
        assert_eq!(relayed, direct, "{what}: the relay answers differently from Postgres");
        let ruled = exchange(rules.addr(), &db, &bytes, 1).await;
        assert_eq!((&ruled.errors, ruled.closed()), (&direct.errors, direct.closed()), "{what}: with rules");
    }
    // A length word counting more than is ever sent: the session waits for the rest, as Postgres does,
    // and ends when the client does.
    for addr in [direct_addr(&cluster), relay.addr(), rules.addr()] {
        let user = db.cluster.superuser().as_bytes();
        let (mut stream, _) = open(addr, &[(b"user", user), (b"database", db.name.as_bytes())]).await;
        stream.write_all(b"Q\0\0\x01\0SELECT 1\0").await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_answer(&mut stream, 1).await;
        assert!(answer.closed() && answer.tags.is_empty(), "{addr}: {answer:?}");
    }
    // Each case ended only its own session.
    let client = connect(&db.url_via(rules.addr())).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    relay.stop().await.unwrap();
    rules.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_startup_parameters_reaches_postgres_as_sent() {
    let cluster = TestCluster::shared();
    let db = users_db(&cluster).await;
    let rules = TestProxy::with_rules_toml(&db, USERS_RULES).await.unwrap();
    let user = cluster.superuser().as_bytes();
    let cases: Vec<(&str, StartupParams)> = vec![
        (
            "application_name",
            vec![(b"user", user), (b"database", db.name.as_bytes()), (b"application_name", b"caf\xe9\xff")],
        ),
        ("database", vec![(b"user", user), (b"database", b"no\xffdb")]),
        ("user", vec![(b"user", b"\xfe\xffuser"), (b"database", db.name.as_bytes())]),
        ("parameter name", vec![(b"user", user), (b"database", db.name.as_bytes()), (b"x\xff.y", b"1")]),
        (
            "options",
            vec![(b"user", user), (b"database", db.name.as_bytes()), (b"options", b"-c dualwrite.version=v\xff")],
        ),
    ];
    for (what, params) in cases {
        let (mut direct, direct_open) = open(direct_addr(&cluster), &params).await;
        let (mut proxied, proxied_open) = open(rules.addr(), &params).await;
        assert_eq!(proxied_open.errors, direct_open.errors, "{what}: startup answered differently");
        assert_eq!(proxied_open.closed(), direct_open.closed(), "{what}");
        if direct_open.closed() {
            continue;
        }
        let show = frame(b'Q', b"SHOW application_name\0");
        direct.write_all(&show).await.unwrap();
        proxied.write_all(&show).await.unwrap();
        let (d, p) = (read_answer(&mut direct, 1).await, read_answer(&mut proxied, 1).await);
        if what == "options" {
            // Postgres takes any placeholder value; the proxy refuses every statement of a session whose
            // startup names a version the rules do not define (README, "Versions and routing").
            assert_eq!(p.errors, vec!["22023"], "{p:?}");
            continue;
        }
        assert_eq!(p.rows, d.rows, "{what}: the server saw other parameters through the proxy");
    }
    rules.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_statements() {
    let cluster = TestCluster::shared();
    let db = users_db(&cluster).await;
    let relay = TestProxy::start(config_for(&cluster)).await.unwrap();
    let rules = TestProxy::with_rules_toml(&db, USERS_RULES).await.unwrap();

    // Not about a migrated table: both proxies forward the bytes and Postgres rejects them with its 22021,
    // an ERROR, after which the session carries on.
    let unrelated = [frame(b'Q', b"SELECT 'caf\xe9'\0"), frame(b'Q', b"SELECT 1\0")].concat();
    let direct = exchange(direct_addr(&cluster), &db, &unrelated, 2).await;
    assert_eq!(direct.errors, vec!["22021"]);
    assert_eq!(exchange(relay.addr(), &db, &unrelated, 2).await, direct);
    assert_eq!(exchange(rules.addr(), &db, &unrelated, 2).await, direct);

    // A write to a migrated table cannot be rewritten faithfully from bytes that are not UTF-8: it is
    // refused with the same 22021, raised by the server in its place, and changes nothing.
    let mut parse = b"\0INSERT INTO users (name, email) VALUES ('Ren\xe9 X', 'r@x')\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let writes = [
        frame(b'Q', b"INSERT INTO users (name, email) VALUES ('Ren\xe9 X', 'r@x')\0"),
        frame(b'P', &parse),
        frame(b'B', b"\0\0\0\0\0\0\0\0"),
        frame(b'E', b"\0\0\0\0\0"),
        frame(b'S', b""),
        frame(b'Q', b"SELECT 1\0"),
    ]
    .concat();
    let answer = exchange(rules.addr(), &db, &writes, 3).await;
    assert_eq!(answer.errors, vec!["22021", "22021"], "{answer:?}");
    assert!(!answer.closed());

    // A LATIN1 client's statement on another table is relayed as sent and means what it says; on the
    // migrated table the proxy still refuses (it rewrites only UTF-8), rather than corrupt the text.
    let latin1 = [
        frame(b'Q', b"SET client_encoding = 'LATIN1'\0"),
        frame(b'Q', b"SELECT length('caf\xe9')\0"),
        frame(b'Q', b"UPDATE users SET name = 'Ren\xe9' WHERE id = 1\0"),
    ]
    .concat();
    let answer = exchange(rules.addr(), &db, &latin1, 3).await;
    assert_eq!(answer.rows.len(), 1);
    assert!(answer.rows[0].ends_with(b"4"), "{answer:?}");
    assert_eq!(answer.errors, vec!["22021"]);

    let direct = db.connect().await.unwrap();
    let counts: (i64, i64) = {
        let row = direct
            .query_one("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM users_v2)", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (0, 0), "nothing was written");
    relay.stop().await.unwrap();
    rules.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_connections_beyond_the_limit_is_refused_and_does_not_starve_sessions() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = config_for(&cluster);
    config.limits.max_client_connections = 20;
    // Long enough that the silent holders below keep their slots however slow the machine is.
    config.limits.startup_timeout_secs = 600;
    let proxy = TestProxy::start(config).await.unwrap();
    let existing = connect(&db.url_via(proxy.addr())).await.unwrap();
    existing.batch_execute("CREATE TABLE ticks (n int)").await.unwrap();
    // The other 19 slots are held by clients that connect and say nothing.
    let mut holders = Vec::new();
    for _ in 0..19 {
        holders.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }

    // 500 connections at once, more than the 128 pending connections `TcpListener::bind` asks the kernel
    // to queue; half of them send a startup packet, the other half wait for the server to speak first.
    let addr = proxy.addr();
    let packet = startup_packet(&[(b"user", cluster.superuser().as_bytes()), (b"database", db.name.as_bytes())]);
    let flood: Vec<_> = (0..500)
        .map(|i| {
            let packet = packet.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                if i % 2 == 0 {
                    let _ = s.write_all(&packet).await;
                }
                read_answer(&mut s, 1).await
            })
        })
        .collect();
    // The session that was there first keeps working through the flood.
    for n in 0..20 {
        existing.execute("INSERT INTO ticks VALUES ($1)", &[&n]).await.unwrap();
    }
    // None got a session, and none was left without an answer: each was told 53300 and the connection
    // closed in order (a reset could have discarded the error; a silence is a connection the proxy never
    // saw, as when the listen queue overflowed).
    let mut outcomes = BTreeMap::new();
    for task in flood {
        let answer = task.await.unwrap();
        *outcomes.entry((answer.tags, answer.errors, answer.ending)).or_insert(0) += 1;
    }
    let refused = (vec![b'E'], vec!["53300".to_owned()], Ending::Closed);
    assert_eq!(outcomes, BTreeMap::from([(refused, 500)]));
    let n: i64 = existing.query_one("SELECT count(*) FROM ticks", &[]).await.unwrap().get(0);
    assert_eq!(n, 20);
    // Once the holders are gone their slots are free again.
    drop(holders);
    let mut later = None;
    for _ in 0..50 {
        match connect(&db.url_via(proxy.addr())).await {
            Ok(c) => {
                later = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    later.expect("a slot became free").simple_query("SELECT 1").await.unwrap();
    proxy.stop().await.unwrap();
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files in limits");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// Out of file descriptors, accepts fail and connections wait unanswered in the listen queue: the proxy
/// raises its soft limit to the hard one when `max_client_connections` needs more (two per session plus
/// headroom), and warns when even the hard limit is too low.
#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_what_the_connection_limit_needs() {
    async fn serve(soft: u64, hard: u64, max_client_connections: &str) -> anyhow::Result<ProxyProcess> {
        // Nothing listens on the upstream's port: the proxy does not connect before a client comes.
        let args = ["--upstream", "postgres://app@127.0.0.1:9/app", "--max-client-connections", max_client_connections];
        ProxyProcess::serve_with_open_files_limit(Some((soft, hard)), &args).await
    }
    let raised = serve(256, 8192, "1000").await.unwrap();
    assert_eq!(open_files_limits(raised.pid().unwrap()), (8192, 8192), "{}", raised.output());
    assert!(raised.output().contains("raised the soft open-files limit"), "{}", raised.output());

    let short = serve(256, 1024, "1000").await.unwrap();
    assert_eq!(open_files_limits(short.pid().unwrap()), (1024, 1024));
    assert!(short.output().contains("hard open-files limit is below"), "{}", short.output());

    let enough = serve(4096, 8192, "100").await.unwrap();
    assert_eq!(open_files_limits(enough.pid().unwrap()), (4096, 8192), "left alone when it is enough");
    assert!(!enough.output().contains("open-files limit"), "{}", enough.output());
}

/// A reload that raises `max_client_connections` raises the soft open-files limit too, if it must.
#[tokio::test]
async fn a_reload_raising_the_connection_limit_raises_the_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dualwrite.toml");
    let write_config = |max: usize| {
        let text = format!("upstream = \"postgres://app@127.0.0.1:9/app\"\n[limits]\nmax_client_connections = {max}\n");
        std::fs::write(&config, text).unwrap();
    };
    // 100 sessions fit in a soft limit of 4096; 3000 need about 7300.
    write_config(100);
    let proxy = ProxyProcess::serve_with_open_files_limit(Some((4096, 16384)), &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(open_files_limits(proxy.pid().unwrap()), (4096, 16384));
    write_config(3000);
    proxy.signal(libc::SIGHUP).unwrap();
    wait_for_log(&proxy, "raised the soft open-files limit", 1, false).await;
    assert_eq!(open_files_limits(proxy.pid().unwrap()), (16384, 16384));
}

/// Waits until the proxy's log contains `text` `times` times, meanwhile connecting (and closing) a
/// client every 100 ms if `knock`; the log.
async fn wait_for_log(proxy: &ProxyProcess, text: &str, times: usize, knock: bool) -> String {
    let waited = tokio::time::timeout(NO_HANG, async {
        while proxy.output().matches(text).count() < times {
            if knock {
                drop(TcpStream::connect(proxy.addr()).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let output = proxy.output();
    assert!(waited.is_ok(), "{text:?} not {times} times in:\n{output}");
    output
}

/// With every file descriptor in use, accept fails (EMFILE) every time the proxy retries: it says so once
/// per burst, with the limit in force, and once more when accepts have stopped failing.
#[tokio::test]
async fn running_out_of_file_descriptors_is_logged_once_per_burst() {
    // 48 descriptors: what the runtime and listener use, and a few dozen sessions.
    let args = ["--upstream", "postgres://app@127.0.0.1:9/app", "--max-client-connections", "1000"];
    let proxy = ProxyProcess::serve_with_open_files_limit(Some((48, 48)), &args).await.unwrap();
    const OUT_OF_FDS: &str = "accept failed: out of file descriptors";
    const AGAIN: &str = "accepting connections again";
    for burst in 1..=2 {
        // Silent clients hold their sessions (until the startup timeout) and more wait in the listen queue.
        let mut clients = Vec::new();
        for _ in 0..80 {
            clients.push(TcpStream::connect(proxy.addr()).await.unwrap());
        }
        let output = wait_for_log(&proxy, OUT_OF_FDS, burst, false).await;
        assert!(output.contains("open_files_soft_limit"), "{output}");
        drop(clients);
        wait_for_log(&proxy, AGAIN, burst, true).await;
    }
    // However often the proxy retried during a burst, it logged the burst once.
    let output = proxy.output();
    assert_eq!((output.matches(OUT_OF_FDS).count(), output.matches(AGAIN).count()), (2, 2), "{output}");
}
