//! The `dualwrite` binary run as a child process (for tests that SIGKILL the proxy or measure its
//! memory): `dualwrite serve` configured through `DUALWRITE_*` variables, on an address of the test's
//! choosing so a restarted proxy comes back where clients expect it. Killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use tokio::process::Child;

/// How long a starting proxy may take to listen.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The `dualwrite` binary next to the test executable (built by `cargo build --workspace`).
pub fn dualwrite_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target dir").join("dualwrite")
}

/// A free address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], dualwrite_proxy::pgcluster::free_port().expect("a free port")))
}

pub struct ChildProxy {
    child: Child,
    pub addr: SocketAddr,
    // Keeps a rules file written by `with_rules` alive as long as the proxy.
    _rules_file: Option<tempfile::NamedTempFile>,
}

impl ChildProxy {
    /// `dualwrite serve` on `addr` in front of `upstream`, metrics off, with `env` added (e.g.
    /// `DUALWRITE_RULES`); returns once it accepts connections.
    pub async fn spawn(addr: SocketAddr, upstream: &str, env: &[(&str, &str)]) -> anyhow::Result<ChildProxy> {
        let binary = dualwrite_binary();
        if !binary.exists() {
            bail!("{} missing: run `cargo build -p dualwrite-proxy` first (.ci/test does)", binary.display());
        }
        let mut child = tokio::process::Command::new(&binary)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .env("DUALWRITE_LISTEN", addr.to_string())
            .env("DUALWRITE_UPSTREAM", upstream)
            .env("DUALWRITE_METRICS_LISTEN", "off")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr).await;
                }
                bail!("dualwrite exited ({status}):\n{stderr}");
            }
            if started.elapsed() > START_LIMIT {
                bail!("dualwrite did not listen on {addr} within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ChildProxy { child, addr, _rules_file: None })
    }

    /// As [`spawn`](Self::spawn), with `rules_toml` as the rules file and the superuser `admin` as
    /// admin role.
    pub async fn with_rules(addr: SocketAddr, db: &crate::TestDb, rules_toml: &str) -> anyhow::Result<ChildProxy> {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().context("rules temp file")?;
        std::fs::write(file.path(), rules_toml).context("writing rules")?;
        let path = file.path().to_str().context("rules path")?.to_owned();
        let env = [("DUALWRITE_RULES", path.as_str()), ("DUALWRITE_ADMIN_ROLES", db.cluster.superuser())];
        let mut proxy = Self::spawn(addr, &db.url(), &env).await?;
        proxy._rules_file = Some(file);
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the proxy is running")
    }

    /// Resident memory of the proxy process in bytes (VmRSS of /proc/<pid>/status).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        let kb: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
        Ok(kb * 1024)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
