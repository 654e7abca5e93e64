//! The proxy's settings: a plain serde struct read from a TOML file (`--config`), with every setting also
//! a CLI flag and a `DUALWRITE_*` environment variable (see `cli`). Other modules read it as it is. Config
//! owns its option structs (`[cdc]`, `[shadow_reads]`, `[versions]`, `[[peers]]` in files of their own) and imports
//! nothing above it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

mod cdc;
mod peers;
mod shadow_reads;
mod versions;

pub use cdc::CdcConfig;
pub use peers::{PeerAddress, PeerConfig, Peering, MAX_PEER_ID};
pub use shadow_reads::ShadowReadsConfig;
pub use versions::VersionDefaults;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";

/// Everything `dualwrite serve` needs. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// `postgres://user@host:port/db?sslmode=...`, with libpq's TLS parameters: sslmode
    /// disable|prefer|require|verify-ca|verify-full, sslrootcert, sslcert, sslkey. The data plane uses its
    /// host, port and TLS settings (clients' own user, database and startup parameters are relayed as
    /// given); its user, password and database are the control plane's defaults, which also connects
    /// with its TLS settings.
    pub upstream: String,
    /// The migration rules file (TOML, see rewrite-rules/).
    pub rules: Option<PathBuf>,
    /// Where /metrics is served; `"off"` (or absent in TOML when set so) disables the exporter.
    #[serde(deserialize_with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Roles allowed to run control SQL (`DUALWRITE ...`).
    pub admin_roles: Vec<String>,
    /// PEM certificate chain and key: when both are set, clients' SSLRequest is accepted and TLS ends at
    /// the proxy.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Threads client sessions run on, each session pinned to one (see `session_threads`); 0 = one per CPU.
    pub session_threads: usize,
    pub limits: Limits,
    pub control: ControlConfig,
    /// Default `dualwrite.version` per role / application_name (`[versions.roles]`, `[versions.applications]`).
    pub versions: VersionDefaults,
    /// Workers of shadow reads (`[shadow_reads]`); the sample rates are per migration in the rules file.
    pub shadow_reads: ShadowReadsConfig,
    /// The change-data-capture watch (`[cdc]`): on by default; needs `wal_level = logical`.
    pub cdc: CdcConfig,
    /// How client sessions use server connections (`session` or `transaction`), for every database and
    /// user unless `[databases.<name>]` or `[users.<name>]` say otherwise.
    pub pool_mode: PoolMode,
    /// Transaction mode: server connections per pool (database, user and startup parameters).
    pub pool_size: usize,
    /// Transaction mode: connections a pool may open beyond `pool_size` for clients authenticating while
    /// it is full; closed when given back.
    pub reserve_pool_size: usize,
    /// Transaction mode: seconds a client waits for a server connection before it is refused (08P01
    /// `query_wait_timeout`).
    pub pool_wait_timeout_secs: u64,
    /// Pool settings of one database (`[databases.app]`), over the top-level ones.
    pub databases: BTreeMap<String, PoolOverride>,
    /// Pool settings of one user (`[users.alice]`), over the database's and the top-level ones.
    pub users: BTreeMap<String, PoolOverride>,
    /// This instance's id among several behind one address (1 to `MAX_PEER_ID`), carried by the cancel
    /// keys it issues; 0 (the default) turns peering off.
    pub peer_id: u32,
    /// The other instances (`[[peers]]` with `id` and `address`), to which a CancelRequest whose key
    /// names them is forwarded.
    pub peers: Vec<PeerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            upstream: String::new(),
            rules: None,
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            admin_roles: Vec::new(),
            tls_cert: None,
            tls_key: None,
            session_threads: 0,
            limits: Limits::default(),
            control: ControlConfig::default(),
            versions: Default::default(),
            shadow_reads: Default::default(),
            cdc: Default::default(),
            pool_mode: PoolMode::Session,
            pool_size: DEFAULT_POOL_SIZE,
            reserve_pool_size: 0,
            pool_wait_timeout_secs: DEFAULT_POOL_WAIT_TIMEOUT_SECS,
            databases: BTreeMap::new(),
            users: BTreeMap::new(),
            peer_id: 0,
            peers: Vec::new(),
        }
    }
}

impl Config {
    /// A config relaying `listen` to `upstream`, other settings at their defaults but metrics and the
    /// change-data-capture watch off (convenient for tests and embedding: one process may run several
    /// proxies).
    pub fn relay(listen: SocketAddr, upstream: impl Into<String>) -> Self {
        let cdc = CdcConfig::off();
        Config { listen, upstream: upstream.into(), metrics_listen: None, cdc, ..Config::default() }
    }

    /// Reads a TOML config file.
    pub fn from_toml_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The control plane's connection: `control.url`, else the upstream URL (its TLS settings included:
    /// sslmode, sslrootcert, ...), with `control.user` and `control.password` applied on top.
    pub fn control_connection(&self) -> anyhow::Result<crate::pg_client::PgTarget> {
        let url = self.control.url.as_deref().unwrap_or(&self.upstream);
        let mut target: crate::pg_client::PgTarget =
            url.parse().map_err(|e: anyhow::Error| e.context("control plane connection (control.url or upstream)"))?;
        if let Some(user) = &self.control.user {
            target.config_mut().user(user);
        }
        if let Some(password) = &self.control.password {
            target.config_mut().password(password);
        }
        Ok(target)
    }

    /// `peer_id` and `peers`, validated together.
    pub fn peering(&self) -> anyhow::Result<Peering> {
        Peering::from_settings(self.peer_id, &self.peers)
    }

    /// The pool settings of `user` on `database`: the user's overrides, else the database's, else the
    /// top-level settings.
    pub fn pool_settings(&self, database: &str, user: &str) -> PoolConfig {
        let layers = [self.users.get(user), self.databases.get(database)];
        let pick = |f: fn(&PoolOverride) -> Option<u64>, default: u64| {
            layers.iter().flatten().find_map(|o| f(o)).unwrap_or(default)
        };
        PoolConfig {
            mode: layers.iter().flatten().find_map(|o| o.pool_mode).unwrap_or(self.pool_mode),
            size: pick(|o| o.pool_size.map(|v| v as u64), self.pool_size as u64).max(1) as usize,
            reserve: pick(|o| o.reserve_pool_size.map(|v| v as u64), self.reserve_pool_size as u64) as usize,
            wait_timeout: Duration::from_secs(pick(|o| o.pool_wait_timeout_secs, self.pool_wait_timeout_secs)),
        }
    }
}

/// Default `pool_size` (pgbouncer's `default_pool_size`).
pub const DEFAULT_POOL_SIZE: usize = 20;
/// Default `pool_wait_timeout_secs` (pgbouncer's `query_wait_timeout`).
pub const DEFAULT_POOL_WAIT_TIMEOUT_SECS: u64 = 120;

/// How a client session uses server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One server connection per client session, for its whole life.
    #[default]
    Session,
    /// A server connection per transaction, from a pool shared by the clients of one database and user.
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

impl std::str::FromStr for PoolMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            other => Err(format!("invalid pool mode {other:?}: expected \"session\" or \"transaction\"")),
        }
    }
}

/// Pool settings of one database or user; absent ones come from the level below.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOverride {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub reserve_pool_size: Option<usize>,
    pub pool_wait_timeout_secs: Option<u64>,
}

/// The pool settings a client session runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// At least 1.
    pub size: usize,
    pub reserve: usize,
    pub wait_timeout: Duration,
}

/// Default `limits.max_client_connections`. Each session takes two descriptors, so with the headroom the
/// proxy keeps (`overload::fds_needed`) 1000 sessions need 3280 open files, within the kernel's default hard
/// limit of 4096 and far within systemd's and Docker's: a default start raises the soft limit if it must but
/// never warns. It is also ten times Postgres's own default `max_connections`, which each session uses one of.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 1000;

/// Protective limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest client message accepted (bytes, header included); larger ones get 54000 and a close.
    pub max_message_size: usize,
    /// Client connections served at once; more get 53300.
    pub max_client_connections: usize,
    /// Seconds a new connection has to complete SSL/GSS negotiation and send its whole startup packet;
    /// slower ones (slowloris) are closed, counted in `dualwrite_refused_connections_total`.
    pub startup_timeout_secs: u64,
    /// Seconds to wait for the upstream's TCP (and TLS) connection.
    pub connect_timeout_secs: u64,
    /// Seconds sessions get to finish after a shutdown signal before they are closed.
    pub shutdown_grace_secs: u64,
    /// Seconds the migration state may go unconfirmed (state database unreachable) before statements
    /// on tables under migration are refused with 57P03; other statements are unaffected.
    pub state_max_age_secs: u64,
    /// Seconds between two checks of the key defaults and `present` columns of the migrations' tables
    /// (`state::schema_watch`): a schema that became unsafe for dual writes refuses the migration's writes
    /// from the first check that sees it.
    pub schema_check_interval_secs: u64,
    /// Whether DDL wakes those checks (and the next one) at its commit, through event triggers the instance
    /// creates in the state database when its control role is a superuser (`state::ddl_watch`).
    pub schema_check_on_ddl: bool,
    /// Seconds between two searches for writers of the old tables the proxy cannot see (each reads every
    /// function body of the database); what is found is reported.
    pub unseen_writers_check_interval_secs: u64,
    /// Seconds an upstream connection may be idle before TCP keepalive probes start (then every quarter
    /// of that, four probes): a dead upstream host or a broken network path ends the session with 08006
    /// instead of leaving it hanging. 0 turns keepalive off.
    pub upstream_keepalive_secs: u64,
    /// TCP_USER_TIMEOUT of upstream connections: seconds sent data may stay unacknowledged before the
    /// connection is dropped. 0 keeps the system's default.
    pub upstream_tcp_user_timeout_secs: u64,
    /// MiB of one COPY FROM STDIN's data a session keeps to dual-write it with COPYs alone (README: COPY);
    /// a larger COPY goes through the staging table. 0 turns dual writes of COPYs alone off.
    pub copy_buffer_mb: u64,
    /// MiB of COPY data all sessions together keep for such dual writes: a COPY whose next rows do not
    /// fit goes on through the staging table, so many large COPYs at once cannot exhaust the proxy's
    /// memory. 0 turns dual writes of COPYs alone off.
    pub copy_buffer_total_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024 * 1024,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            startup_timeout_secs: 10,
            connect_timeout_secs: 10,
            shutdown_grace_secs: 30,
            state_max_age_secs: 10,
            schema_check_interval_secs: 1,
            schema_check_on_ddl: true,
            unseen_writers_check_interval_secs: 30,
            upstream_keepalive_secs: 60,
            upstream_tcp_user_timeout_secs: 0,
            copy_buffer_mb: 64,
            copy_buffer_total_mb: 512,
        }
    }
}

impl Limits {
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// [`copy_buffer_mb`](Self::copy_buffer_mb) in bytes; 0 when either COPY setting turns the path off.
    pub fn copy_tee_buffer_bytes(&self) -> usize {
        if self.copy_buffer_total_mb == 0 {
            return 0;
        }
        mib_in_bytes(self.copy_buffer_mb)
    }

    /// [`copy_buffer_total_mb`](Self::copy_buffer_total_mb) in bytes.
    pub fn copy_tee_total_bytes(&self) -> usize {
        mib_in_bytes(self.copy_buffer_total_mb)
    }

    /// `None` when off (0).
    pub fn upstream_keepalive(&self) -> Option<Duration> {
        (self.upstream_keepalive_secs > 0).then(|| Duration::from_secs(self.upstream_keepalive_secs))
    }

    /// `None` when the system default applies (0).
    pub fn upstream_tcp_user_timeout(&self) -> Option<Duration> {
        (self.upstream_tcp_user_timeout_secs > 0).then(|| Duration::from_secs(self.upstream_tcp_user_timeout_secs))
    }

    /// At least a second: the state is polled twice a second.
    pub fn state_max_age(&self) -> Duration {
        Duration::from_secs(self.state_max_age_secs.max(1))
    }

    /// At least a second apart.
    pub fn schema_check_interval(&self) -> Duration {
        Duration::from_secs(self.schema_check_interval_secs.max(1))
    }

    /// At least a second apart.
    pub fn unseen_writers_check_interval(&self) -> Duration {
        Duration::from_secs(self.unseen_writers_check_interval_secs.max(1))
    }
}

fn mib_in_bytes(mib: u64) -> usize {
    usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}

/// Credentials of the control plane's own connections (state schema, jobs), defaulting to the upstream
/// URL's, and the schedule of its jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Verify every migration this often (seconds; absent or 0: only on demand). Every instance schedules
    /// it; the one that gets the migration's verify lock runs it, the others skip that round.
    pub verify_every_secs: Option<u64>,
    /// Backfills started by control SQL hold off while the upstream's replication replay lag exceeds this
    /// many milliseconds (absent: not checked).
    pub backfill_max_replication_lag_ms: Option<u64>,
    /// ... and while this instance's p99 query latency over the last seconds exceeds this many
    /// milliseconds (absent: not checked).
    pub backfill_max_p99_latency_ms: Option<u64>,
}

/// Parses `"off"`/`""` as `None`, otherwise a socket address.
pub fn parse_optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim() {
        "" | "off" | "none" | "disabled" => Ok(None),
        addr => addr.parse().map(Some).map_err(|e| format!("invalid address {addr:?}: {e}")),
    }
}

fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_optional_addr(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults() {
        let cfg = Config::from_toml(
            r#"
            listen = "0.0.0.0:7000"
            upstream = "postgres://app@db:5432/app?sslmode=require"
            metrics_listen = "off"
            admin_roles = ["ops"]
            [limits]
            max_message_size = 1024
            [control]
            user = "dw"
            [shadow_reads]
            queue = 16
            "#,
        )
        .unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.admin_roles, vec!["ops"]);
        assert_eq!(cfg.limits.max_message_size, 1024);
        assert_eq!(cfg.limits.shutdown_grace_secs, 30);
        assert_eq!((cfg.shadow_reads.queue, cfg.shadow_reads.max_rows), (16, 10_000));
        let control = cfg.control_connection().unwrap();
        assert_eq!(control.config().get_user(), Some("dw"));
        assert_eq!(control.config().get_dbname(), Some("app"));
    }

    #[test]
    fn pool_settings_of_a_user_override_the_databases_which_override_the_top_level() {
        let cfg = Config::from_toml(
            r#"
            pool_mode = "transaction"
            pool_size = 8
            pool_wait_timeout_secs = 5
            [databases.app]
            pool_size = 4
            reserve_pool_size = 2
            [users.reporting]
            pool_mode = "session"
            pool_size = 1
            "#,
        )
        .unwrap();
        let secs = Duration::from_secs;
        let pool = |mode, size, reserve, wait| PoolConfig { mode, size, reserve, wait_timeout: wait };
        assert_eq!(cfg.pool_settings("other", "alice"), pool(PoolMode::Transaction, 8, 0, secs(5)));
        assert_eq!(cfg.pool_settings("app", "alice"), pool(PoolMode::Transaction, 4, 2, secs(5)));
        assert_eq!(cfg.pool_settings("app", "reporting"), pool(PoolMode::Session, 1, 2, secs(5)));
        let default = Config::default().pool_settings("app", "alice");
        assert_eq!(default, pool(PoolMode::Session, DEFAULT_POOL_SIZE, 0, secs(DEFAULT_POOL_WAIT_TIMEOUT_SECS)));
        assert!(Config::from_toml("pool_mode = \"statement\"").is_err());
    }

    #[test]
    fn peers_are_an_array_of_tables() {
        let cfg = Config::from_toml(
            r#"
            peer_id = 1
            [[peers]]
            id = 2
            address = "10.0.0.12:6432"
            [[peers]]
            id = 3
            address = "dualwrite-3.internal:6432"
            "#,
        )
        .unwrap();
        let peering = cfg.peering().unwrap();
        assert_eq!(peering.own_id(), Some(1));
        assert_eq!(peering.address(3).map(ToString::to_string).as_deref(), Some("dualwrite-3.internal:6432"));
        assert_eq!(Config::default().peering().unwrap().own_id(), None, "peering is off by default");
        assert!(Config::from_toml("[[peers]]\nid = 2\naddress = \"h:1\"\nport = 3\n").is_err(), "unknown keys");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("listne = \"1.2.3.4:5\"").is_err());
    }
}
