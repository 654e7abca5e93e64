//! Throwaway PostgreSQL clusters: `initdb` + `pg_ctl` on a free port of 127.0.0.1, in a temporary
//! directory that is deleted again. Used by `dualwrite quickstart` and by the integration test harness.
//!
//! Why not the `pgtemp` crate: it runs the server as root through `sudo` (not installed on CI or here),
//! starts `postgres` as a foreground child (so the pid it knows is sudo's, and it cannot restart the
//! server with a given shutdown mode or crash it with SIGKILL), panics instead of returning errors, and
//! has no per-role pg_hba setup. We need all of those for the proxy's tests (upstream restart and crash
//! while clients are connected, SCRAM/md5 roles), so this module drives the installed binaries itself.
//!
//! Running as root: `initdb` and `postgres` refuse to run as root, so when the effective uid is 0 every
//! server-side command runs as the `postgres` OS account (uid/gid switched in the child before exec) and
//! the temporary directory is handed to that account. As a normal user everything runs as that user.
//!
//! Cleanup: dropping a [`PgCluster`] stops the server (immediate mode) and deletes the directory. A
//! cluster kept in a `static` is never dropped, and a test process may be killed, so each cluster also
//! has a *guardian*: a tiny `sh` in its own process group that blocks reading a pipe only this process
//! holds. When this process exits for any reason the pipe closes and the guardian stops the server and
//! removes the directory.
//!
//! All methods block (they wait for `pg_ctl`); async callers should use `spawn_blocking`.

mod error;
mod options;
mod os;
mod standby;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use error::io_err;
pub use error::ClusterError;
pub use options::{ClusterOptions, PasswordAuth, Role, StopMode};
use os::{children_of, process_alive, service_account, signal, wait_until_gone, Account};
pub use os::{find_bin_dir, free_port};

/// Attempts at finding a port nobody grabs between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// How long `pg_ctl` may wait for start-up or shutdown.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// A running (or stopped) throwaway cluster. See the module docs.
pub struct PgCluster {
    // Field order matters for Drop: the guardian is stopped in `drop`, the directory removed last.
    bin_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    superuser: String,
    account: Option<Account>,
    guardian: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster").field("port", &self.port).field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl PgCluster {
    /// Creates a cluster with `initdb`, starts it on a free port and creates the configured roles.
    pub fn start_new(options: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let mut cluster = PgCluster::unstarted(&options)?;
        cluster.initdb()?;
        cluster.write_hba(&options.roles)?;
        cluster.start_on_free_port(&options.settings)?;
        for role in &options.roles {
            cluster.create_role(role)?;
        }
        Ok(cluster)
    }

    /// A temporary directory of its own (handed to the service account) with its guardian; no data yet.
    fn unstarted(options: &ClusterOptions) -> Result<PgCluster, ClusterError> {
        let bin_dir = match &options.bin_dir {
            Some(dir) => dir.clone(),
            None => find_bin_dir()?,
        };
        let account = service_account()?;
        let base_dir = options.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("dualwrite-pg-")
            .tempdir_in(&base_dir)
            .map_err(io_err(format!("creating a temporary directory in {}", base_dir.display())))?;
        if let Some(account) = account {
            std::os::unix::fs::chown(dir.path(), Some(account.uid), Some(account.gid))
                .map_err(io_err("handing the cluster directory to the postgres account"))?;
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting the cluster directory"))?;

        let cluster = PgCluster {
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("postgres.log"),
            bin_dir,
            port: 0,
            superuser: options.superuser.clone(),
            account,
            guardian: Mutex::new(None),
            dir,
        };
        cluster.spawn_guardian()?;
        Ok(cluster)
    }

    /// Always 127.0.0.1: the server listens on loopback only.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bootstrap superuser (trust authentication).
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// URL of the `postgres` database as the superuser over TCP.
    pub fn connection_string(&self) -> String {
        self.connection_string_for(&self.superuser, None, "postgres")
    }

    /// URL for another role/database; `password` is needed for the roles of [`ClusterOptions::roles`].
    pub fn connection_string_for(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let credentials = match password {
            Some(password) => format!("{}:{}", percent_encode(user), percent_encode(password)),
            None => percent_encode(user),
        };
        format!("postgres://{credentials}@{}:{}/{}", self.host(), self.port, percent_encode(database))
    }

    /// Directory holding the server's unix socket (also the cluster's temporary directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole server log, empty if there is none yet.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Process id of the running postmaster, from `postmaster.pid`; `None` when it is not running.
    pub fn pid(&self) -> Option<u32> {
        let pid = self.pid_file_pid()?;
        process_alive(pid).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Starts the stopped server on the same port. A no-op when it runs.
    pub fn start(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl(&["start", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-l", path_str(&self.log_path)?])
    }

    /// Stops the server with a fast shutdown. A no-op when it is not running.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with(StopMode::Fast)
    }

    pub fn stop_with(&self, mode: StopMode) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl(&["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", mode.as_arg()])
    }

    /// Stops with `mode` and starts again on the same port.
    pub fn restart(&self, mode: StopMode) -> Result<(), ClusterError> {
        self.stop_with(mode)?;
        self.start()
    }

    /// Crashes the server: SIGKILL to the postmaster and every backend, as a power cut would. The next
    /// [`start`](Self::start) runs crash recovery.
    pub fn kill(&self) -> Result<(), ClusterError> {
        let Some(postmaster) = self.pid() else {
            return Ok(());
        };
        // Freeze the postmaster first so it cannot fork a child between listing and killing.
        signal(postmaster, libc::SIGSTOP);
        let mut victims = children_of(postmaster);
        victims.push(postmaster);
        for &pid in &victims {
            signal(pid, libc::SIGKILL);
        }
        wait_until_gone(&victims, Duration::from_secs(20))?;
        // Killed processes may linger as zombies when nothing reaps them (no init in containers), and
        // postgres treats a lock file naming a live-looking pid as a running server. All are dead now.
        let _ = fs::remove_file(self.data_dir.join("postmaster.pid"));
        let _ = fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
        Ok(())
    }

    /// Runs SQL with psql over the unix socket as the superuser and returns its stdout. Stops at the
    /// first error. For set-up work; tests talk to the server through real clients.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let output = self.psql_command(database).args(["-c", sql]).output().map_err(io_err("running psql"))?;
        self.check("psql", output).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn psql_command(&self, database: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join("psql"));
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", &self.superuser, "-d", database])
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null());
        command
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-N", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions", "-U", &self.superuser])
            .output()
            .map_err(io_err("running initdb"))?;
        self.check("initdb", output).map(drop)
    }

    fn write_hba(&self, roles: &[Role]) -> Result<(), ClusterError> {
        // Physical replication (a standby's `pg_basebackup` and walreceiver) matches only `replication`.
        let mut hba = String::from(
            "# written by dualwrite pgcluster\nlocal all all trust\nlocal replication all trust\n\
             host replication all 127.0.0.1/32 trust\n",
        );
        for role in roles {
            let name = hba_quote(&role.name);
            let method = role.auth.hba_method();
            hba.push_str(&format!("host all {name} 127.0.0.1/32 {method}\nhost all {name} ::1/128 {method}\n"));
        }
        hba.push_str("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n");
        self.write_owned(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    fn write_settings(&self, settings: &[(String, String)]) -> Result<(), ClusterError> {
        let socket_dir = path_str(self.dir.path())?;
        let mut conf = vec![
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", socket_dir.to_owned()),
            // Throwaway data: surviving an OS crash buys nothing and costs test time. Commits still
            // write their WAL before answering, so a killed server (`kill`) keeps committed rows.
            ("fsync", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("max_connections", "300".to_owned()),
            ("shared_buffers", "64MB".to_owned()),
            // The change-data-capture watch streams a logical slot (one per database with a migration).
            ("wal_level", "logical".to_owned()),
            ("max_replication_slots", "64".to_owned()),
            ("max_wal_senders", "64".to_owned()),
        ];
        conf.extend(settings.iter().map(|(name, value)| (name.as_str(), value.clone())));
        let mut text = String::from("# written by dualwrite pgcluster; later lines win\n");
        for (name, value) in conf {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        self.write_owned(&self.data_dir.join("dualwrite_cluster.conf"), &text)
    }

    fn start_on_free_port(&mut self, settings: &[(String, String)]) -> Result<(), ClusterError> {
        let main_conf = self.data_dir.join("postgresql.conf");
        let mut conf = fs::read_to_string(&main_conf).map_err(io_err("reading postgresql.conf"))?;
        conf.push_str("\ninclude 'dualwrite_cluster.conf'\n");
        self.write_owned(&main_conf, &conf)?;
        self.start_on_a_port(settings)
    }

    /// Writes `dualwrite_cluster.conf` for a free port and starts, retrying another port when it is taken.
    fn start_on_a_port(&mut self, settings: &[(String, String)]) -> Result<(), ClusterError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            self.write_settings(settings)?;
            match self.start() {
                Ok(()) => return Ok(()),
                // Someone took the port between our probe and the server's bind: try another one.
                Err(err) if self.log().contains("could not bind") => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ClusterError::Timeout("no free port found".to_owned())))
    }

    fn create_role(&self, role: &Role) -> Result<(), ClusterError> {
        // psql's :"name" and :'pw' interpolation quote the identifier and the literal for us.
        let superuser = if role.superuser { "SUPERUSER" } else { "NOSUPERUSER" };
        let script = format!(
            "SET password_encryption = '{}';\nCREATE ROLE :\"name\" LOGIN CREATEDB {superuser} PASSWORD :'pw';\n",
            role.auth.password_encryption()
        );
        let mut child = self
            .psql_command("postgres")
            .args(["-v", &format!("name={}", role.name), "-v", &format!("pw={}", role.password)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running psql"))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin was piped");
            stdin.write_all(script.as_bytes()).map_err(io_err("writing to psql"))?;
        }
        let output = child.wait_with_output().map_err(io_err("waiting for psql"))?;
        self.check(&format!("creating role {}", role.name), output).map(drop)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let output = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .map_err(io_err("running pg_ctl"))?;
        self.check(&format!("pg_ctl {}", args.first().copied().unwrap_or_default()), output).map(drop)
    }

    /// A command from the server bin dir, run as the service account when we are root.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        // The caller's cwd may be unreadable for the postgres account (e.g. /root).
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGOPTIONS", "PGUSER", "PGDATABASE"] {
            command.env_remove(var);
        }
        if let Some(account) = self.account {
            command.uid(account.uid).gid(account.gid);
        }
        command
    }

    fn check(&self, what: &str, output: Output) -> Result<Output, ClusterError> {
        if output.status.success() {
            return Ok(output);
        }
        Err(ClusterError::Command {
            command: what.to_owned(),
            status: output.status.to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
            log_tail: self.log_tail(30),
        })
    }

    fn write_owned(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        fs::write(path, contents).map_err(io_err(format!("writing {}", path.display())))?;
        if let Some(account) = self.account {
            std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    fn pid_file_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// See the module docs: stops the server and removes the directory once this process is gone.
    fn spawn_guardian(&self) -> Result<(), ClusterError> {
        let script = r#"cat >/dev/null; "$1" stop -D "$2" -m immediate -w -t 30 >/dev/null 2>&1; rm -rf -- "$3""#;
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", script, "dualwrite-pg-guardian"])
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.data_dir)
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a test runner killing our group must not take the guardian with it.
            .process_group(0);
        if let Some(account) = self.account {
            command.uid(account.uid).gid(account.gid);
        }
        let child = command.spawn().map_err(io_err("starting the cluster guardian"))?;
        *self.guardian.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(child);
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // We clean up ourselves, synchronously; the guardian must not race us on the directory.
        if let Some(mut guardian) = self.guardian.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
        if self.stop_with(StopMode::Immediate).is_err() {
            let _ = self.kill();
        }
        // `dir` (TempDir) removes the directory when it drops after this.
    }
}

fn path_str(path: &Path) -> Result<&str, ClusterError> {
    path.to_str().ok_or_else(|| ClusterError::Io {
        context: format!("path {} is not UTF-8", path.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// pg_hba.conf names are double-quoted when they could be read as keywords or contain blanks.
fn hba_quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes a URL userinfo/path component (RFC 3986 unreserved characters stay).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("user_1.x~-"), "user_1.x~-");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn hba_names_are_quoted() {
        assert_eq!(hba_quote("all"), "\"all\"");
        assert_eq!(hba_quote("a\"b"), "\"a\"\"b\"");
    }
}
