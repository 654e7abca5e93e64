//! The operating-system side of a throwaway cluster: where the server binaries are, which account runs
//! them when we are root, free ports, and signalling and watching server processes through /proc.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::{io_err, ClusterError};

/// The OS account that owns the server processes when we are root.
const SERVICE_ACCOUNT: &str = "postgres";

/// The uid/gid server commands run as when we are root.
#[derive(Clone, Copy, Debug)]
pub(super) struct Account {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Server binaries: `$DUALWRITE_PG_BINDIR`, then `pg_config --bindir`, then the Debian path of 15.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("pg_ctl").is_file() && dir.join("initdb").is_file();
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os("DUALWRITE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if has_server(&debian) {
        return Ok(debian);
    }
    tried.push(debian);
    let tried: Vec<String> = tried.iter().map(|dir| dir.display().to_string()).collect();
    Err(ClusterError::BinariesNotFound(format!("tried {}", tried.join(", "))))
}

/// `None` when we may run the server ourselves; the postgres account when we are root.
pub(super) fn service_account() -> Result<Option<Account>, ClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new(SERVICE_ACCOUNT).expect("no NUL in a constant");
    // SAFETY: getpwnam returns NULL or a pointer to static storage that we read before any other
    // getpw* call; account lookups happen once per cluster.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(ClusterError::NoServiceAccount(SERVICE_ACCOUNT.to_owned()));
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(Account { uid, gid }))
}

/// A port that was free a moment ago on 127.0.0.1 (the caller retries if it is taken meanwhile).
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("probing for a free port"))?;
    Ok(listener.local_addr().map_err(io_err("probing for a free port"))?.port())
}

pub(super) fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a vanished pid just yields ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// `(state, ppid)` from /proc/<pid>/stat; the command name may contain spaces and parentheses.
pub(super) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive and not a zombie (zombies of killed servers linger where nothing reaps them).
pub(super) fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

pub(super) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

pub(super) fn wait_until_gone(pids: &[u32], timeout: Duration) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&pid| process_alive(pid)) {
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!("server processes {pids:?} survived SIGKILL")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (state, ppid) = proc_stat(std::process::id()).expect("own stat");
        assert!(state == 'R' || state == 'S');
        assert!(ppid > 0);
    }
}
