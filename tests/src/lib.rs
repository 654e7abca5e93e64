//! Integration-test harness for dualwrite: throwaway PostgreSQL clusters (see
//! `dualwrite_proxy::pgcluster`), a fresh database per test so tests run in parallel, tokio-postgres
//! connections, and psql/pgbench run as subprocesses.
//!
//! [`TestProxy`] runs the proxy in-process on a free port in front of a test database.
//!
//! Most tests share one cluster per test binary ([`TestCluster::shared`]) and isolate themselves with
//! [`TestCluster::create_database`]. A test that stops, restarts or kills the server takes its own
//! cluster ([`TestCluster::start`]) so it does not disturb its neighbours.

use std::net::SocketAddr;
use std::ops::Deref;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod control;
pub mod ledger;
mod process;
mod proxy;
pub mod txn_ledger;
pub use control::{backfill_until_done, control, control_rows, db_error, registered, status_of, value};
pub use process::{dualwrite_binary, ProxyProcess};
pub use proxy::TestProxy;

use anyhow::{bail, Context};
use dualwrite_proxy::pgcluster::percent_encode;
pub use dualwrite_proxy::pgcluster::{ClusterOptions, PasswordAuth, PgCluster, Role, StopMode};
use tokio::io::AsyncWriteExt;

/// Roles every harness cluster has, one per password method, all superusers.
pub const SCRAM_USER: &str = "dw_scram";
pub const SCRAM_PASSWORD: &str = "scram-secret";
pub const MD5_USER: &str = "dw_md5";
pub const MD5_PASSWORD: &str = "md5-secret";
pub const CLEARTEXT_USER: &str = "dw_cleartext";
pub const CLEARTEXT_PASSWORD: &str = "cleartext-secret";

/// How long a psql/pgbench subprocess may run before the harness kills it and fails.
const SUBPROCESS_TIMEOUT: Duration = Duration::from_secs(300);

/// Cluster options with the password roles above; trust for the superuser `postgres`.
pub fn default_options() -> ClusterOptions {
    ClusterOptions::default()
        .role(Role::new(SCRAM_USER, SCRAM_PASSWORD, PasswordAuth::ScramSha256).superuser())
        .role(Role::new(MD5_USER, MD5_PASSWORD, PasswordAuth::Md5).superuser())
        .role(Role::new(CLEARTEXT_USER, CLEARTEXT_PASSWORD, PasswordAuth::Cleartext).superuser())
}

/// Installs a tracing subscriber once (RUST_LOG controls it; output is captured per test).
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// A throwaway cluster shared by cheap clones; async wrappers run the blocking `pg_ctl` work on the
/// blocking pool so a proxy running in the same runtime keeps serving meanwhile.
#[derive(Clone, Debug)]
pub struct TestCluster(Arc<PgCluster>);

impl Deref for TestCluster {
    type Target = PgCluster;
    fn deref(&self) -> &PgCluster {
        &self.0
    }
}

impl TestCluster {
    /// The cluster of this test binary, started on first use with [`default_options`]. Never dropped:
    /// its guardian process removes it when the test binary exits.
    pub fn shared() -> TestCluster {
        static SHARED: OnceLock<TestCluster> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                init_tracing();
                match PgCluster::start_new(default_options()) {
                    Ok(cluster) => TestCluster(Arc::new(cluster)),
                    Err(err) => panic!("starting the shared test cluster failed: {err}"),
                }
            })
            .clone()
    }

    /// A cluster of the caller's own, with [`default_options`]; removed when the last clone drops.
    pub async fn start() -> anyhow::Result<TestCluster> {
        Self::start_with(default_options()).await
    }

    pub async fn start_with(options: ClusterOptions) -> anyhow::Result<TestCluster> {
        init_tracing();
        let cluster = blocking(move || PgCluster::start_new(options)).await?;
        Ok(TestCluster(Arc::new(cluster)))
    }

    /// A hot standby of this (running) cluster, streaming from it, with [`default_options`]' settings; its
    /// roles and databases are this cluster's (copied by `pg_basebackup`).
    pub async fn start_standby(&self) -> anyhow::Result<TestCluster> {
        let primary = self.0.clone();
        let standby = blocking(move || PgCluster::start_standby_of(&primary, default_options())).await?;
        Ok(TestCluster(Arc::new(standby)))
    }

    /// Promotes a standby to primary; returns once it accepts writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let cluster = self.0.clone();
        blocking(move || cluster.promote()).await
    }

    pub async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let cluster = self.0.clone();
        blocking(move || cluster.stop_with(mode)).await
    }

    /// Starts the stopped (or killed) server again on the same port.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let cluster = self.0.clone();
        blocking(move || cluster.start()).await
    }

    pub async fn restart(&self, mode: StopMode) -> anyhow::Result<()> {
        let cluster = self.0.clone();
        blocking(move || cluster.restart(mode)).await
    }

    /// SIGKILL to the postmaster and all backends.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let cluster = self.0.clone();
        blocking(move || cluster.kill()).await
    }

    /// The server's address (127.0.0.1 and its port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Creates an empty database with a unique name (derived from the test's name) for one test.
    pub async fn create_database(&self) -> anyhow::Result<TestDb> {
        let name = unique_database_name();
        let client = connect(&self.connection_string()).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(TestDb { name, cluster: self.clone() })
    }

    /// Turns TLS on in the running server with this certificate chain and key (PEM), written into the
    /// data directory owned by the server's user (reloadable since PG 10). With `client_ca_pem`, the
    /// server also asks clients for a certificate issued by that CA (optional for trust and password
    /// authentication; `pg_stat_ssl.client_dn` shows what a client presented). Returns once a new backend
    /// runs with these settings.
    pub async fn enable_tls(&self, cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> anyhow::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let data = self.data_dir().to_path_buf();
        let owner = std::fs::metadata(&data)?;
        let (cert, key, ca) = (data.join("server.crt"), data.join("server.key"), data.join("client-ca.crt"));
        let mut files = vec![(&cert, cert_pem), (&key, key_pem)];
        files.extend(client_ca_pem.map(|pem| (&ca, pem)));
        for (path, pem) in files {
            std::fs::write(path, pem)?;
            std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))?;
            // Postgres refuses a key others can read.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let ca_setting = if client_ca_pem.is_some() { ca.display().to_string() } else { String::new() };
        let admin = connect(&self.connection_string()).await?;
        // One statement per call: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
        for statement in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            format!("ALTER SYSTEM SET ssl_ca_file = '{ca_setting}'"),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin.simple_query(&statement).await?;
        }
        // The reload is asynchronous: wait until a new backend sees it.
        for _ in 0..100 {
            let probe = connect(&self.connection_string()).await?;
            let row = probe.query_one("SELECT current_setting('ssl'), current_setting('ssl_ca_file')", &[]).await?;
            if row.get::<_, String>(0) == "on" && row.get::<_, String>(1) == ca_setting {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the TLS settings did not take effect after pg_reload_conf()")
    }
}

/// A database of its own for one test, on a [`TestCluster`]. Left in place when dropped (the cluster
/// is throwaway), which also keeps it inspectable while debugging.
#[derive(Clone, Debug)]
pub struct TestDb {
    pub name: String,
    pub cluster: TestCluster,
}

impl TestDb {
    /// URL of this database directly on the cluster, as the trusted superuser.
    pub fn url(&self) -> String {
        self.cluster.connection_string_for(self.cluster.superuser(), None, &self.name)
    }

    /// URL of this database directly on the cluster, as `user` with `password`.
    pub fn url_as(&self, user: &str, password: Option<&str>) -> String {
        self.cluster.connection_string_for(user, password, &self.name)
    }

    /// URL of this database through something listening on `addr` (e.g. a proxy), as the superuser.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_for(addr, self.cluster.superuser(), None, &self.name)
    }

    /// URL of this database through `addr` as `user` with `password`.
    pub fn url_via_as(&self, addr: SocketAddr, user: &str, password: Option<&str>) -> String {
        url_for(addr, user, password, &self.name)
    }

    /// A tokio-postgres connection straight to the cluster.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url()).await
    }
}

/// `postgres://user[:password]@ip:port/database`, with the parts percent-encoded.
pub fn url_for(addr: SocketAddr, user: &str, password: Option<&str>, database: &str) -> String {
    let credentials = match password {
        Some(password) => format!("{}:{}", percent_encode(user), percent_encode(password)),
        None => percent_encode(user),
    };
    format!("postgres://{credentials}@{}:{}/{}", addr.ip(), addr.port(), percent_encode(database))
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a task; a connection error after
/// start-up is logged, and surfaces to the caller as a closed client.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "test connection ended with an error");
        }
    });
    Ok(client)
}

/// Waits until `check` holds, polling every 50 ms; panics naming `what` once `limit` has passed (a bound
/// against a hung test, not a timing assertion).
#[track_caller]
pub fn eventually<'a, F, Fut>(
    limit: Duration,
    what: &'a str,
    mut check: F,
) -> impl std::future::Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: std::future::Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let start = std::time::Instant::now();
        while !check().await {
            assert!(start.elapsed() < limit, "not within {limit:?}: {what} ({caller})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until backend `pid` is running `query` (pg_stat_activity, read through `direct`, shows it
/// active), e.g. before cancelling it: a cancel sent earlier may arrive before the query and cancel nothing.
pub async fn wait_until_running(direct: &tokio_postgres::Client, pid: i32, query: &str) {
    let what = format!("backend {pid} runs {query:?}");
    eventually(Duration::from_secs(30), &what, || async {
        direct
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query = $2)",
                &[&pid, &query],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    })
    .await;
}

/// The text of `GET /metrics` from a proxy's metrics listener at `addr`, retried while it starts.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metrics endpoint never answered");
}

/// The rows of a simple-query answer as text (NULL = `None`), e.g. a control command's result set.
pub fn simple_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// What a client subprocess did.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with both streams unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.success(),
            "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `psql <url> -X -v ON_ERROR_STOP=1 <args>` with `stdin` fed in (none when `None`).
pub async fn psql(url: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<CommandOutput> {
    let mut full_args = vec![url, "-X", "-v", "ON_ERROR_STOP=1"];
    full_args.extend_from_slice(args);
    run_client("psql", &full_args, stdin).await
}

/// Runs `pgbench <args> <url>`.
pub async fn pgbench(url: &str, args: &[&str]) -> anyhow::Result<CommandOutput> {
    let mut full_args = args.to_vec();
    full_args.push(url);
    run_client("pgbench", &full_args, None).await
}

/// Starts `pgbench <args> <url>` and returns at once, for a test that kills it (`Child::kill` is a
/// SIGKILL); killed when dropped.
pub fn spawn_pgbench(url: &str, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    let mut full_args = args.to_vec();
    full_args.push(url);
    let path = client_bin_dir().join("pgbench");
    client_command(&path, &full_args, false).spawn().with_context(|| format!("running {}", path.display()))
}

/// A client program of the PostgreSQL installation with the harness's environment, output captured.
fn client_command(path: &std::path::Path, args: &[&str], stdin: bool) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(path);
    command
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .stdin(if stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a client program of the PostgreSQL installation, killing it after [`SUBPROCESS_TIMEOUT`].
pub async fn run_client(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<CommandOutput> {
    let path = client_bin_dir().join(program);
    let mut child =
        client_command(&path, args, stdin.is_some()).spawn().with_context(|| format!("running {}", path.display()))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin of the client")?;
        let input = input.to_owned();
        // Written concurrently with reading the output so a chatty client cannot deadlock on pipes.
        tokio::spawn(async move {
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    let output = match tokio::time::timeout(SUBPROCESS_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.with_context(|| format!("waiting for {program}"))?,
        Err(_) => bail!(
            "{program} {:?} ran longer than {SUBPROCESS_TIMEOUT:?}",
            args.iter().map(|a| redact(a)).collect::<Vec<_>>()
        ),
    };
    Ok(CommandOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// psql and pgbench of the same installation as the server binaries, else whatever is on PATH.
fn client_bin_dir() -> std::path::PathBuf {
    static BIN_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN_DIR.get_or_init(|| dualwrite_proxy::pgcluster::find_bin_dir().unwrap_or_default()).clone()
}

/// Runs blocking cluster work off the async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, dualwrite_proxy::pgcluster::ClusterError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await.context("cluster task panicked")??)
}

/// `<test name>_<counter>_<pid>`, lower-case, within Postgres's 63-byte identifier limit.
fn unique_database_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let thread = std::thread::current();
    let test_name = thread.name().unwrap_or("test").rsplit("::").next().unwrap_or("test");
    let mut stem: String =
        test_name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    stem.truncate(40);
    format!("dw_{stem}_{}_{}", COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Hides the password part of a URL in messages.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &text[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &text[..scheme_end + 3], &userinfo[..colon], &text[at..]),
                None => text.to_owned(),
            }
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact("postgres://u@h:1/db"), "postgres://u@h:1/db");
        assert_eq!(redact("-X"), "-X");
    }

    #[test]
    fn database_names_are_unique_and_short() {
        let a = unique_database_name();
        let b = unique_database_name();
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{a}");
    }
}
