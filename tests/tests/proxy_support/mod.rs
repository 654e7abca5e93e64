//! Helpers of the proxy_* integration tests beyond the harness: a server run with a custom interceptor,
//! and a raw wire client for what no well-behaved driver sends (malformed frames, hand-read BackendKeyData).

#![allow(dead_code)]

use std::net::SocketAddr;

use dualwrite_proxy::{Config, Server};
use dualwrite_tests::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server customised before it runs (e.g. with an interceptor), which the harness's `TestProxy` does
/// not cover.
pub struct RunningProxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningProxy {
    /// Signals shutdown and waits for `Server::run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// A one-column split of `users` into `users_v2`, for tests about the proxy rather than the rewrite.
pub const SPLIT_RULES: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "users"
shadow = "users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "name"
[migration.backward]
id   = "id"
name = "first_name"
"#;

/// The tables of [`SPLIT_RULES`].
pub const SPLIT_TABLES: &str =
    "CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text);";

/// A fresh database of the shared cluster with the tables of [`SPLIT_RULES`], and those rules in a file.
pub async fn split_database() -> (dualwrite_tests::TestDb, tempfile::NamedTempFile) {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(SPLIT_TABLES).await.unwrap();
    let mut rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut rules, SPLIT_RULES.as_bytes()).unwrap();
    (db, rules)
}

/// A relay to `cluster` (metrics off), for `TestProxy::start` or `Server::bind`.
pub fn config_for(cluster: &TestCluster) -> Config {
    Config::relay("127.0.0.1:0".parse().unwrap(), cluster.connection_string())
}

/// A hand-driven protocol 3.0 connection (trust auth).
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, user: &str, database: &str) -> RawClient {
        let mut client = RawClient::open(addr, user, database).await;
        // Until ReadyForQuery.
        loop {
            let (tag, _) = client.read_message().await.expect("startup answer");
            assert_ne!(tag, b'E', "startup failed");
            if tag == b'Z' {
                break;
            }
        }
        client
    }

    /// Sends the startup packet and nothing else: authentication is the caller's to drive.
    pub async fn open(addr: SocketAddr, user: &str, database: &str) -> RawClient {
        RawClient::open_with(addr, &[("user", user), ("database", database)]).await
    }

    /// [`RawClient::connect`] with the startup parameters `parameters` (user and database included).
    pub async fn connect_with(addr: SocketAddr, parameters: &[(&str, &str)]) -> RawClient {
        let mut client = RawClient::open_with(addr, parameters).await;
        while let Some((tag, _)) = client.read_message().await {
            assert_ne!(tag, b'E', "startup failed");
            if tag == b'Z' {
                return client;
            }
        }
        panic!("the connection closed during the startup");
    }

    /// [`RawClient::open`] with the startup parameters `parameters` (user and database included).
    pub async fn open_with(addr: SocketAddr, parameters: &[(&str, &str)]) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for &(k, v) in parameters {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await.unwrap();
        RawClient { stream }
    }

    /// Sends one frontend message: `tag`, length, `body`.
    pub async fn send_message(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.send(&msg).await;
    }

    /// Every message until the server closes the connection.
    pub async fn read_to_close(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(message) = self.read_message().await {
            out.push(message);
        }
        out
    }

    /// One backend message, or `None` once the server closed the connection.
    pub async fn read_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let tag = self.stream.read_u8().await.ok()?;
        let len = self.stream.read_i32().await.ok()?;
        let mut body = vec![0u8; (len - 4) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((tag, body))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn query(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        self.query_bytes(sql.as_bytes()).await
    }

    /// A simple Query with SQL given as raw bytes (any client encoding); messages up to ReadyForQuery.
    pub async fn query_bytes(&mut self, sql: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        msg.extend_from_slice(sql);
        msg.push(0);
        self.send(&msg).await;
        self.read_until_ready().await
    }

    /// Backend messages up to and including ReadyForQuery (or until the server closes the connection).
    pub async fn read_until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((tag, body)) = self.read_message().await {
            out.push((tag, body));
            if tag == b'Z' {
                break;
            }
        }
        out
    }

    /// Reads until the connection closes; returns the SQLSTATE of the first ErrorResponse seen.
    pub async fn error_then_close(&mut self) -> Option<String> {
        let mut code = None;
        while let Some((tag, body)) = self.read_message().await {
            if tag == b'E' && code.is_none() {
                code = Some(error_field(&body, b'C'));
            }
        }
        code
    }
}

/// One field of an ErrorResponse body.
pub fn error_field(body: &[u8], field: u8) -> String {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let code = body[i];
        let end = body[i + 1..].iter().position(|&b| b == 0).map(|p| i + 1 + p).unwrap_or(body.len());
        if code == field {
            return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
        }
        i = end + 1;
    }
    String::new()
}

/// The command tags (`COMMIT`, `ROLLBACK`, `SELECT 1`, ...) of the CommandComplete messages in `frames`.
pub fn command_tags(frames: &[(u8, Vec<u8>)]) -> Vec<String> {
    frames
        .iter()
        .filter(|(tag, _)| *tag == b'C')
        .map(|(_, body)| String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned())
        .collect()
}

/// The first ErrorResponse in `frames`: (SQLSTATE, message), or `None`.
pub fn first_error(frames: &[(u8, Vec<u8>)]) -> Option<(String, String)> {
    frames.iter().find(|(tag, _)| *tag == b'E').map(|(_, body)| (error_field(body, b'C'), error_field(body, b'M')))
}

/// Runs an already bound (and possibly customised) server.
pub fn run_server(server: Server) -> RunningProxy {
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    RunningProxy { addr, stop: Some(stop), task }
}

/// One frontend message: `tag`, length, `body`.
pub fn wire_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

/// A simple-Query string ending in a COPY: the answers up to its CopyInResponse (up to ReadyForQuery when
/// it is refused), then `data` in CopyData messages of at most 4 KiB and CopyDone (or CopyFail with
/// `fail`), then the answers up to ReadyForQuery.
pub async fn copy(raw: &mut RawClient, sql: &str, data: &[u8], fail: Option<&str>) -> Vec<(u8, Vec<u8>)> {
    raw.send(&wire_message(b'Q', &cstr(sql))).await;
    let mut out = Vec::new();
    loop {
        let (tag, body) = raw.read_message().await.expect("an answer to the COPY");
        out.push((tag, body));
        match tag {
            b'Z' => return out,
            b'G' => break,
            _ => {}
        }
    }
    for chunk in data.chunks(4096) {
        raw.send(&wire_message(b'd', chunk)).await;
    }
    match fail {
        Some(reason) => raw.send(&wire_message(b'f', &cstr(reason))).await,
        None => raw.send(&wire_message(b'c', &[])).await,
    }
    out.extend(raw.read_until_ready().await);
    out
}
