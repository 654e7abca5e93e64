//! The `dualwrite` binary run as a child process, for tests that kill and restart a proxy instance
//! (SIGKILL ends it the way a crashed or OOM-killed process ends) or that read what it logs. Its
//! stdout and stderr go to one file that lives as long as the [`ProxyProcess`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a started proxy may take to listen before the start counts as failed.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `dualwrite` binary next to the test's executable (built by `cargo build --workspace`).
pub fn dualwrite_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let path = exe.parent().and_then(Path::parent).expect("target dir").join("dualwrite");
    assert!(path.exists(), "{} missing: run `cargo build -p dualwrite-proxy` first (.ci/test does)", path.display());
    path
}

/// A running `dualwrite serve` (or other command) child; killed when dropped.
pub struct ProxyProcess {
    args: Vec<String>,
    env: Vec<(String, String)>,
    listen: SocketAddr,
    /// Soft and hard RLIMIT_NOFILE to start it with (through util-linux's `prlimit`), if not inherited.
    open_files_limit: Option<(u64, u64)>,
    log: tempfile::NamedTempFile,
    child: Option<tokio::process::Child>,
}

impl ProxyProcess {
    /// Runs `dualwrite <args>` with only PATH and `env` in its environment (so RUST_LOG is the
    /// binary's default unless `env` sets it) and waits until `listen` accepts connections.
    pub async fn start(args: &[&str], env: &[(&str, &str)], listen: SocketAddr) -> anyhow::Result<ProxyProcess> {
        Self::launch(args, env, listen, None).await
    }

    /// `dualwrite serve --listen <free port> --metrics-listen off <args>`.
    pub async fn serve(args: &[&str]) -> anyhow::Result<ProxyProcess> {
        Self::serve_with_open_files_limit(None, args).await
    }

    /// [`serve`](Self::serve), started with `open_files_limit` (soft, hard) instead of this process's.
    pub async fn serve_with_open_files_limit(
        open_files_limit: Option<(u64, u64)>,
        args: &[&str],
    ) -> anyhow::Result<ProxyProcess> {
        let listen = SocketAddr::from(([127, 0, 0, 1], dualwrite_proxy::pgcluster::free_port()?));
        let listen_arg = listen.to_string();
        let mut full = vec!["serve", "--listen", &listen_arg, "--metrics-listen", "off"];
        full.extend_from_slice(args);
        Self::launch(&full, &[], listen, open_files_limit).await
    }

    async fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        listen: SocketAddr,
        open_files_limit: Option<(u64, u64)>,
    ) -> anyhow::Result<ProxyProcess> {
        let mut process = ProxyProcess {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            listen,
            open_files_limit,
            log: tempfile::NamedTempFile::new().context("log file")?,
            child: None,
        };
        process.spawn().await?;
        Ok(process)
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().append(true).open(self.log.path()).context("log file")?;
        let log_err = log.try_clone().context("log file")?;
        let mut command = match self.open_files_limit {
            Some((soft, hard)) => {
                let mut prlimit = tokio::process::Command::new("prlimit");
                prlimit.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(dualwrite_binary());
                prlimit
            }
            None => tokio::process::Command::new(dualwrite_binary()),
        };
        let mut child = command
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .context("spawning dualwrite")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(self.listen).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("dualwrite exited ({status}) before listening:\n{}", self.output());
            }
            if started.elapsed() > LISTEN_TIMEOUT {
                bail!("dualwrite did not listen on {} within {LISTEN_TIMEOUT:?}:\n{}", self.listen, self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash would end it; waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing dualwrite")?;
        }
        Ok(())
    }

    /// Starts it again with the same arguments, on the same address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    /// SIGTERM and the exit status (graceful shutdown).
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait().await
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`: reload the config) without waiting for anything.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("not running")?;
        let pid = child.id().context("no pid")? as i32;
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({signal}) failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits (up to a minute) for it to exit, e.g. after a signal; its exit status.
    pub async fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        Ok(tokio::time::timeout(Duration::from_secs(60), child.wait()).await.context("dualwrite did not stop")??)
    }

    /// Everything it wrote to stdout and stderr so far, across restarts.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log.path()).unwrap_or_default()).into_owned()
    }
}
