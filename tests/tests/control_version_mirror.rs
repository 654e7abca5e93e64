//! The per-session version machine (`dualwrite_proxy::version`) checked against Postgres itself: each script
//! is played on a real session over the wire, the machine is fed exactly what a proxy would see (the
//! statements sent, CommandComplete / ErrorResponse, ReadyForQuery with its transaction status), and after
//! every step the machine's version must equal what Postgres holds for `dualwrite.version`.

use dualwrite_proxy::version::{classify_query, SessionVersion, VersionDefaults};
use dualwrite_rules::RuleSet;
use dualwrite_tests::{TestCluster, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"
[[migration]]
name = "users"
table = "users"
shadow = "users_v2"
key = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
[migration.backward]
id = "id"

[[migration]]
name = "orders"
table = "orders"
shadow = "orders_v3"
key = ["id"]
versions = { old = "v1", new = "v3" }
[migration.forward]
id = "id"
[migration.backward]
id = "id"
"#;

/// A minimal protocol 3.0 session (trust auth) that feeds a `SessionVersion` as the proxy would.
struct Mirror {
    stream: TcpStream,
    machine: SessionVersion,
    status: u8,
    /// (SQLSTATE, message) of the last ErrorResponse.
    last_error: Option<(String, String)>,
}

impl Mirror {
    async fn connect(db: &TestDb, params: &[(&str, &str)]) -> Mirror {
        let rules = RuleSet::from_toml(RULES, "test").unwrap();
        let user = db.cluster.superuser().to_string();
        let mut all = vec![("user", user.as_str()), ("database", db.name.as_str())];
        all.extend_from_slice(params);
        let machine = SessionVersion::new(all.iter().copied(), &VersionDefaults::default(), &rules).unwrap();
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in &all {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut stream = TcpStream::connect(db.cluster.addr()).await.unwrap();
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await.unwrap();
        let mut mirror = Mirror { stream, machine, status: b'I', last_error: None };
        loop {
            let (tag, _) = mirror.read().await;
            assert_ne!(tag, b'E', "startup failed");
            if tag == b'Z' {
                break;
            }
        }
        mirror
    }

    async fn read(&mut self) -> (u8, Vec<u8>) {
        let tag = self.stream.read_u8().await.unwrap();
        let len = self.stream.read_i32().await.unwrap();
        let mut body = vec![0u8; (len - 4) as usize];
        self.stream.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    /// Send one simple Query; returns the first column of the first DataRow, if any.
    async fn query(&mut self, sql: &str) -> Option<Option<String>> {
        for statement in classify_query(sql).unwrap().into_owned() {
            self.machine.sent(statement);
        }
        self.machine.sent_sync();
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg).await.unwrap();
        let mut first_value = None;
        loop {
            let (tag, body) = self.read().await;
            match tag {
                b'C' | b'I' => self.machine.completed(),
                b'E' => {
                    self.machine.failed();
                    self.last_error = Some((error_field(&body, b'C'), error_field(&body, b'M')));
                }
                b'D' if first_value.is_none() => {
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    first_value =
                        Some((len >= 0).then(|| String::from_utf8(body[6..6 + len as usize].to_vec()).unwrap()));
                }
                b'Z' => {
                    self.status = body[0];
                    self.machine.ready_for_query(body[0]);
                    return first_value;
                }
                _ => {}
            }
        }
    }

    /// What Postgres holds (None for unset or reset-to-empty), unless the transaction is aborted.
    async fn server_version(&mut self) -> Option<Option<String>> {
        if self.status == b'E' {
            return None;
        }
        let value = self.query("SELECT current_setting('dualwrite.version', true)").await.flatten();
        Some(value.filter(|v| !v.is_empty()))
    }
}

fn error_field(body: &[u8], field: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&field))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

async fn check(db: &TestDb, params: &[(&str, &str)], script: &[&str]) {
    let mut m = Mirror::connect(db, params).await;
    for (step, sql) in script.iter().enumerate() {
        m.query(sql).await;
        if let Some(server) = m.server_version().await {
            assert_eq!(
                m.machine.version().map(str::to_string),
                server,
                "script {script:?}, after step {step} ({sql}): machine and Postgres disagree"
            );
        }
    }
}

/// A SET of an unknown version is refused; sent upstream as `raise_statement`, the refusal aborts the
/// client's transaction exactly as a failing SET would, and the machine follows.
#[tokio::test]
async fn refused_set_inside_a_transaction_aborts_it_like_postgres() -> anyhow::Result<()> {
    let db = TestCluster::shared().create_database().await?;
    let rules = RuleSet::from_toml(RULES, "test")?;
    let mut m = Mirror::connect(&db, &[]).await;
    m.query("BEGIN").await;
    m.query("SET dualwrite.version = 'v2'").await;
    let refused = classify_query("SET dualwrite.version = 'v9'")?;
    let err = SessionVersion::check(&refused[0], &rules).unwrap_err();
    assert_eq!(err.code, "22023");
    m.query(&err.raise_statement()).await;
    assert_eq!(m.last_error, Some((err.code.to_string(), err.message.clone())));
    assert_eq!(m.status, b'E');
    assert!(m.machine.transaction_aborted());
    m.query("COMMIT").await;
    assert_eq!(m.status, b'I');
    assert_eq!(m.machine.version(), None);
    assert_eq!(m.server_version().await, Some(None));
    Ok(())
}

#[tokio::test]
async fn the_machine_mirrors_postgres() -> anyhow::Result<()> {
    let db = TestCluster::shared().create_database().await?;
    db.connect()
        .await?
        .batch_execute(
            "CREATE TABLE p (id int PRIMARY KEY);
             CREATE TABLE c (pid int REFERENCES p DEFERRABLE INITIALLY DEFERRED);",
        )
        .await?;
    let scripts: &[&[&str]] = &[
        &["SET dualwrite.version = 'v2'"],
        &["BEGIN", "SET dualwrite.version = 'v2'", "ROLLBACK"],
        &["BEGIN", "SET dualwrite.version TO v2", "COMMIT"],
        &["SET dualwrite.version = 'v1'", "BEGIN", "SET LOCAL dualwrite.version = 'v2'", "COMMIT"],
        &["BEGIN", "SET LOCAL dualwrite.version = 'v2'", "SET dualwrite.version = 'v3'", "COMMIT"],
        &[
            "BEGIN",
            "SET dualwrite.version = 'v1'",
            "SAVEPOINT a",
            "SET dualwrite.version = 'v2'",
            "ROLLBACK TO SAVEPOINT a",
            "COMMIT",
        ],
        &["BEGIN", "SAVEPOINT a", "SET dualwrite.version = 'v2'", "RELEASE a", "COMMIT"],
        &["BEGIN", "SAVEPOINT a", "SET dualwrite.version = 'v2'", "RELEASE a", "ROLLBACK"],
        &["BEGIN", "SET dualwrite.version = 'v2'", "SELECT 1/0", "COMMIT"],
        &[
            "BEGIN",
            "SET dualwrite.version = 'v2'",
            "SAVEPOINT s",
            "SET dualwrite.version = 'v3'",
            "SELECT 1/0",
            "ROLLBACK TO s",
            "COMMIT",
        ],
        &["SET dualwrite.version = 'v2'; SELECT 1/0"],
        &["SET dualwrite.version = 'v2'; SELECT 1"],
        &["BEGIN; SET dualwrite.version = 'v2'; COMMIT; SET dualwrite.version = 'v3'; SELECT 1/0"],
        &["SET LOCAL dualwrite.version = 'v2'"],
        &["SET LOCAL dualwrite.version = 'v2'; SELECT 1"],
        &["SET dualwrite.version = 'v2'", "RESET dualwrite.version"],
        &["SET dualwrite.version = 'v2'", "SET dualwrite.version TO DEFAULT"],
        &["SET dualwrite.version = 'v2'", "BEGIN", "RESET ALL", "ROLLBACK"],
        &["SET dualwrite.version = 'v2'", "DISCARD ALL"],
        &["BEGIN", "SET dualwrite.version = 'v2'", "COMMIT AND CHAIN", "SET dualwrite.version = 'v3'", "ROLLBACK"],
        &["SET dualwrite.version = 'v2'; BEGIN; SET dualwrite.version = 'v3'", "ROLLBACK"],
        &["BEGIN", "SET dualwrite.version = 'v2'", "INSERT INTO c VALUES (1)", "COMMIT"],
        &["START TRANSACTION", "SET dualwrite.version = 'v2'", "END"],
        &["BEGIN", "SET dualwrite.version = 'v2'", "ABORT"],
    ];
    for script in scripts {
        check(&db, &[], script).await;
    }
    let startup = [("options", "-c dualwrite.version=v1")];
    check(&db, &startup, &["SET dualwrite.version = 'v2'", "RESET dualwrite.version"]).await;
    check(&db, &startup, &["BEGIN", "SET dualwrite.version = 'v3'", "ROLLBACK"]).await;
    check(&db, &[("dualwrite.version", "v3")], &["SET dualwrite.version = 'v2'", "RESET ALL"]).await;
    Ok(())
}
