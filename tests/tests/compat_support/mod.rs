//! The compatibility matrix's setup and reporting (tests/compat/README.md): a database with the schema of
//! tests/compat/schema.sql, the proxy in front of it with the example migration's rules, the connection
//! details a driver program gets in its environment, and the `ok name` / `FAIL name: why` lines every
//! driver prints, parsed so a failing test names exactly which checks failed.

#![allow(dead_code)]

pub mod rust_checks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dualwrite_proxy::config::PoolMode;
use dualwrite_proxy::{Config, Server};
use dualwrite_tests::{TestCluster, TestDb, SCRAM_PASSWORD, SCRAM_USER};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long one driver program may run.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(240);

/// Every check a program may report, in the order the README lists them.
pub const ALL_CHECKS: &[&str] = &[
    "connect_scram",
    "simple_query",
    "prepared_query",
    "transaction_commit",
    "transaction_rollback",
    "dual_write_insert",
    "dual_write_update",
    "dual_write_rollback",
    "read_v1",
    "read_v2",
    "show_version",
    "copy_in",
    "copy_out",
    "copy_into_migrated",
    "cancel",
];

/// Known failures, as (driver, check, why): printed but tolerated so the rest of the matrix is enforced.
/// Each one is a bug to fix; remove its entry with the fix.
pub const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

fn is_known_failure(driver: &str, failure: &str) -> bool {
    KNOWN_FAILURES.iter().any(|(d, check, _)| *d == driver && failure.starts_with(&format!("{check}: ")))
}

/// The repository root (the tests crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

pub fn compat_dir() -> PathBuf {
    repo_root().join("tests/compat")
}

/// The proxy in-process on a free port, with the example migration's rules; stopped when dropped.
pub struct CompatProxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for CompatProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One cell's world: its own database with the compat schema, and the proxy in front of it.
pub struct CompatEnv {
    pub db: TestDb,
    pub proxy: CompatProxy,
}

impl CompatEnv {
    /// The proxy in `mode` (transaction mode: a pool of 2 server connections).
    pub async fn start_in(mode: PoolMode) -> anyhow::Result<CompatEnv> {
        let cluster = TestCluster::shared();
        let db = cluster.create_database().await?;
        let schema = std::fs::read_to_string(compat_dir().join("schema.sql")).context("reading schema.sql")?;
        db.connect().await?.batch_execute(&schema).await.context("creating the compat schema")?;

        let mut config = Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), db.url());
        config.rules = Some(repo_root().join("rewrite-rules/examples/users_split_name.toml"));
        config.admin_roles = vec![db.cluster.superuser().to_owned()];
        config.pool_mode = mode;
        config.pool_size = 2;
        let server = Server::bind(config).await.context("binding the proxy")?;
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(CompatEnv { db, proxy: CompatProxy { addr, stop: Some(stop), task: Some(task) } })
    }

    /// The SCRAM role's URL through the proxy.
    pub fn proxy_url(&self) -> String {
        self.db.url_via_as(self.proxy.addr, SCRAM_USER, Some(SCRAM_PASSWORD))
    }

    /// The proxy URL of a session on `version` (`options=-c dualwrite.version=<version>`).
    pub fn proxy_url_as_version(&self, version: &str) -> String {
        format!("{}?options=-c%20dualwrite.version%3D{version}", self.proxy_url())
    }

    /// The superuser's URL straight to the upstream, to look at both tables behind the proxy's back.
    pub fn upstream_url(&self) -> String {
        self.db.url()
    }

    /// The environment of a driver program (tests/compat/README.md).
    pub fn program_env(&self) -> Vec<(&'static str, String)> {
        let upstream = self.db.cluster.addr();
        vec![
            ("DW_HOST", self.proxy.addr.ip().to_string()),
            ("DW_PORT", self.proxy.addr.port().to_string()),
            ("DW_DATABASE", self.db.name.clone()),
            ("DW_USER", SCRAM_USER.to_owned()),
            ("DW_PASSWORD", SCRAM_PASSWORD.to_owned()),
            ("DW_PROXY_URL", self.proxy_url()),
            ("DW_UPSTREAM_URL", self.upstream_url()),
            ("DW_UPSTREAM_HOST", upstream.ip().to_string()),
            ("DW_UPSTREAM_PORT", upstream.port().to_string()),
            ("DW_UPSTREAM_USER", self.db.cluster.superuser().to_owned()),
            ("DW_PG_BINDIR", self.db.cluster.bin_dir().display().to_string()),
        ]
    }

    /// Runs a driver program (`program args...` in `tests/compat/<dir>`) with the connection details in its
    /// environment, and parses its check lines.
    pub async fn run_program(&self, dir: &str, program: &str, args: &[&str]) -> anyhow::Result<ProgramRun> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(compat_dir().join(dir))
            .envs(self.program_env())
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSWORD")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(PROGRAM_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{program} {args:?} ran longer than {PROGRAM_TIMEOUT:?}"))?
            .with_context(|| format!("running {program} (run tests/compat/install.sh?)"))?;
        Ok(ProgramRun {
            success: output.status.success(),
            status: output.status.to_string(),
            report: Report::parse(&String::from_utf8_lossy(&output.stdout)),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The outcome of each check, in the order reported.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<(String, Result<(), String>)>,
}

impl Report {
    /// Reads `ok name` and `FAIL name: why` lines; other lines are ignored.
    pub fn parse(stdout: &str) -> Report {
        let mut report = Report::default();
        for line in stdout.lines() {
            if let Some(name) = line.strip_prefix("ok ") {
                report.checks.push((name.trim().to_owned(), Ok(())));
            } else if let Some(rest) = line.strip_prefix("FAIL ") {
                let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
                report.checks.push((name.trim().to_owned(), Err(why.to_owned())));
            }
        }
        report
    }

    /// Records one check (in-process drivers) and prints its line like the programs do.
    pub fn record(&mut self, name: &str, outcome: anyhow::Result<()>) {
        let outcome = outcome.map_err(|e| format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" "));
        match &outcome {
            Ok(()) => println!("ok {name}"),
            Err(why) => println!("FAIL {name}: {why}"),
        }
        self.checks.push((name.to_owned(), outcome));
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|(name, outcome)| outcome.as_ref().err().map(|why| format!("{name}: {why}")))
            .collect()
    }

    /// Panics unless exactly `expected` were checked (so a program that died half-way is caught) and all
    /// passed, [`KNOWN_FAILURES`] aside; the message lists every failed check.
    #[track_caller]
    pub fn assert_all_ok(&self, driver: &str, expected: &[&str], context: &str) {
        let reported: Vec<&str> = self.checks.iter().map(|(n, _)| n.as_str()).collect();
        let missing: Vec<&&str> = expected.iter().filter(|n| !reported.contains(n)).collect();
        let failures = self.failures();
        let blocking: Vec<&String> = failures.iter().filter(|f| !is_known_failure(driver, f)).collect();
        if !failures.is_empty() {
            eprintln!("{driver}: failed checks (those of KNOWN_FAILURES are tolerated):\n  {}", failures.join("\n  "));
        }
        assert!(
            missing.is_empty() && blocking.is_empty() && reported.len() == expected.len(),
            "{driver}: {} of {} checks failed, not run: {missing:?}\n  {}\n{context}",
            failures.len(),
            expected.len(),
            failures.join("\n  ")
        );
    }
}

/// What a driver program did.
pub struct ProgramRun {
    pub success: bool,
    pub status: String,
    pub report: Report,
    pub stdout: String,
    pub stderr: String,
}

impl ProgramRun {
    /// Panics unless the program ran every check of `expected`, all passed (see [`Report::assert_all_ok`])
    /// and its exit status agrees.
    #[track_caller]
    pub fn assert_all_ok(&self, driver: &str, expected: &[&str]) {
        let context = format!(
            "exit: {}\nstdout:\n{}\nstderr (last lines):\n{}",
            self.status,
            self.stdout,
            tail(&self.stderr, 30)
        );
        self.report.assert_all_ok(driver, expected, &context);
        // Programs exit 1 exactly when a check failed; anything else is a crash or a lie.
        let clean = self.report.failures().is_empty();
        assert!(self.success == clean, "{driver}: exit status does not match the checks (clean: {clean})\n{context}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `ALL_CHECKS` without the ones a driver has no API for.
pub fn checks_except(excluded: &[&str]) -> Vec<&'static str> {
    ALL_CHECKS.iter().copied().filter(|c| !excluded.contains(c)).collect()
}
