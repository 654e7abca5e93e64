//! A throwaway pgbouncer (the Debian package's binary) on loopback TCP in front of the benchmark's Postgres:
//! the one-hop alternative the proxy is measured against, in session mode, and in transaction mode against
//! the proxy's own pooling.
//!
//! pgbouncer refuses to run as root, so when we are root it runs as the `postgres` account (the same one
//! `dualwrite_proxy::pgcluster` runs the server as), with its files in a directory handed to that account.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::arms::POOL_SIZE;

pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";

/// pgbouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// One server connection per client (`default_pool_size` above any client count of the run).
    Session,
    /// A client holds a server connection only during a transaction; [`POOL_SIZE`] per pool.
    Transaction,
}

pub struct Pgbouncer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Pgbouncer {
    pub fn start(pg_port: u16, user: &str, base_dir: &Path, mode: PoolMode) -> Result<Pgbouncer> {
        let (pool_mode, pool_size) = match mode {
            PoolMode::Session => ("session", 1200),
            PoolMode::Transaction => ("transaction", POOL_SIZE),
        };
        let dir = tempfile::Builder::new()
            .prefix("dualwrite-bench-pgbouncer-")
            .tempdir_in(base_dir)
            .context("pgbouncer directory")?;
        let port = dualwrite_proxy::pgcluster::free_port()?;
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={pg_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = {pool_mode}\n\
             max_client_conn = 1500\n\
             default_pool_size = {pool_size}\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             stats_period = 3600\n",
            dir = dir.path().display()
        );
        fs::write(dir.path().join("pgbouncer.ini"), ini)?;
        fs::write(dir.path().join("userlist.txt"), format!("\"{user}\" \"\"\n"))?;
        let account = service_account();
        if let Some((uid, gid)) = account {
            for entry in ["", "pgbouncer.ini", "userlist.txt"] {
                std::os::unix::fs::chown(dir.path().join(entry), Some(uid), Some(gid))?;
            }
        }
        let mut command = Command::new(PGBOUNCER_BIN);
        command
            .arg(dir.path().join("pgbouncer.ini"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = account {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().context("starting pgbouncer")?;
        let mut bouncer = Pgbouncer { child, port, dir };
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("pgbouncer exited ({status}): {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen within 15 s: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (uid, gid) of the `postgres` account when we are root, `None` otherwise. pgcluster keeps its own
/// lookup private, and this is all pgbouncer needs of it.
fn service_account() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: checked non-null above.
    Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}
