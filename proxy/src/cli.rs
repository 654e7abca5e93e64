//! Command line: the subcommands (`serve`, `quickstart`, `backfill`, `verify`, `check`, `plan`, `apply`) and the flags that override the TOML config. Precedence: flag or
//! `DUALWRITE_*` environment variable, then the `--config` file, then the defaults in `config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_optional_addr, Config};

#[derive(Debug, Parser)]
#[command(name = "dualwrite", version, about = "A dual-write SQL proxy on the PostgreSQL wire protocol")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ConfigArgs),
    /// Try it out: without --upstream, a throwaway PostgreSQL with the example migration behind the proxy.
    Quickstart(ConfigArgs),
    /// Copy the rows that predate dual writes into the shadow table (exit 0 when done, 2 on failure).
    Backfill(crate::jobs::cli::BackfillArgs),
    /// Compare the old table, mapped forward, with the shadow (exit 0 clean, 1 divergence, 2 failure).
    Verify(crate::jobs::cli::VerifyArgs),
    /// Validate rules against the live schema and replay statements through the rewriter (exit 0 clean,
    /// 1 problems or rejected statements, 2 failure).
    Check(crate::check::CheckArgs),
    /// Plan a migration from a target shape: the shadow's DDL and the rules, after a round-trip check on
    /// real rows (exit 0 written, 1 refused, 2 failure).
    Plan(crate::planner::PlanArgs),
    /// Run a plan: create the shadow, register the migration, add it to the rules file (idempotent; exit 0
    /// applied, 2 failure).
    Apply(crate::planner::apply::ApplyArgs),
}

/// Every setting of [`Config`] as a flag and environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML config file; flags and environment variables override its values.
    #[arg(long, env = "DUALWRITE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "DUALWRITE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Upstream PostgreSQL: postgres://user@host:port/db[?sslmode=prefer|require].
    #[arg(long, env = "DUALWRITE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Migration rules file (TOML).
    #[arg(long, env = "DUALWRITE_RULES")]
    pub rules: Option<PathBuf>,
    /// Prometheus /metrics address, or "off" [default: 127.0.0.1:9187].
    #[arg(long, env = "DUALWRITE_METRICS_LISTEN", value_parser = parse_metrics_addr)]
    pub metrics_listen: Option<MetricsAddr>,
    /// Role allowed to run control SQL (repeatable; the variable takes a comma-separated list).
    #[arg(long = "admin-role", env = "DUALWRITE_ADMIN_ROLES", value_delimiter = ',')]
    pub admin_roles: Vec<String>,
    /// PEM certificate chain for TLS between clients and the proxy.
    #[arg(long, env = "DUALWRITE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "DUALWRITE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Threads client sessions run on, each session pinned to one; 0 = one per CPU [default: 0].
    #[arg(long, env = "DUALWRITE_SESSION_THREADS")]
    pub session_threads: Option<usize>,
    /// Largest client message in bytes [default: 67108864].
    #[arg(long, env = "DUALWRITE_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Client connections served at once [default: 1000].
    #[arg(long, env = "DUALWRITE_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<usize>,
    /// Seconds a client has to send its startup packet [default: 10].
    #[arg(long, env = "DUALWRITE_STARTUP_TIMEOUT")]
    pub startup_timeout_secs: Option<u64>,
    /// Seconds to wait for the upstream connection [default: 10].
    #[arg(long, env = "DUALWRITE_CONNECT_TIMEOUT")]
    pub connect_timeout_secs: Option<u64>,
    /// Seconds sessions get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "DUALWRITE_SHUTDOWN_GRACE")]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds the migration state may go unconfirmed before statements on migrated tables are
    /// refused [default: 10].
    #[arg(long, env = "DUALWRITE_STATE_MAX_AGE")]
    pub state_max_age_secs: Option<u64>,
    /// Seconds an upstream connection may idle before TCP keepalive probes; 0 = off [default: 60].
    #[arg(long, env = "DUALWRITE_UPSTREAM_KEEPALIVE")]
    pub upstream_keepalive_secs: Option<u64>,
    /// TCP_USER_TIMEOUT seconds of upstream connections; 0 = system default [default: 0].
    #[arg(long, env = "DUALWRITE_UPSTREAM_TCP_USER_TIMEOUT")]
    pub upstream_tcp_user_timeout_secs: Option<u64>,
    /// Control-plane connection URL [default: the upstream URL].
    #[arg(long, env = "DUALWRITE_CONTROL_URL")]
    pub control_url: Option<String>,
    /// Control-plane user [default: the control URL's].
    #[arg(long, env = "DUALWRITE_CONTROL_USER")]
    pub control_user: Option<String>,
    /// Control-plane password [default: the control URL's].
    #[arg(long, env = "DUALWRITE_CONTROL_PASSWORD", hide_env_values = true)]
    pub control_password: Option<String>,
    /// Upstream connections running shadow reads [default: 1].
    #[arg(long, env = "DUALWRITE_SHADOW_READ_CONNECTIONS")]
    pub shadow_read_connections: Option<usize>,
    /// Sampled reads waiting for a shadow-read worker; beyond, samples are skipped [default: 256].
    #[arg(long, env = "DUALWRITE_SHADOW_READ_QUEUE")]
    pub shadow_read_queue: Option<usize>,
    /// Rows per side beyond which a shadow read is skipped [default: 10000].
    #[arg(long, env = "DUALWRITE_SHADOW_READ_MAX_ROWS")]
    pub shadow_read_max_rows: Option<usize>,
    /// statement_timeout of the shadow-read connections, in milliseconds [default: 5000].
    #[arg(long, env = "DUALWRITE_SHADOW_READ_STATEMENT_TIMEOUT_MS")]
    pub shadow_read_statement_timeout_ms: Option<u64>,
    /// Verify every migration this often, in seconds (0: only on demand) [default: 0].
    #[arg(long, env = "DUALWRITE_VERIFY_EVERY")]
    pub verify_every_secs: Option<u64>,
    /// Backfills started by control SQL hold off while replication replay lag exceeds this (ms).
    #[arg(long, env = "DUALWRITE_BACKFILL_MAX_REPLICATION_LAG_MS")]
    pub backfill_max_replication_lag_ms: Option<u64>,
    /// Backfills started by control SQL hold off while this instance's p99 query latency exceeds this (ms).
    #[arg(long, env = "DUALWRITE_BACKFILL_MAX_P99_LATENCY_MS")]
    pub backfill_max_p99_latency_ms: Option<u64>,
    /// Run the change-data-capture watch (true/false; needs wal_level = logical) [default: true].
    #[arg(long, env = "DUALWRITE_CDC")]
    pub cdc: Option<bool>,
    /// WAL the watch's slot may hold back before it is dropped (verify-only), in MiB [default: 1024].
    #[arg(long, env = "DUALWRITE_CDC_MAX_RETAINED_WAL_MB")]
    pub cdc_max_retained_wal_mb: Option<u64>,
    /// How sessions use server connections: session or transaction (per database and user in the config
    /// file's [databases.*] and [users.*]) [default: session].
    #[arg(long, env = "DUALWRITE_POOL_MODE")]
    pub pool_mode: Option<crate::config::PoolMode>,
    /// Transaction mode: server connections per pool [default: 20].
    #[arg(long, env = "DUALWRITE_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// Transaction mode: extra connections for clients authenticating while the pool is full [default: 0].
    #[arg(long, env = "DUALWRITE_RESERVE_POOL_SIZE")]
    pub reserve_pool_size: Option<usize>,
    /// Transaction mode: seconds a client waits for a server connection [default: 120].
    #[arg(long, env = "DUALWRITE_POOL_WAIT_TIMEOUT")]
    pub pool_wait_timeout_secs: Option<u64>,
    /// This instance's id among several behind one address, 1 to 15, carried by its cancel keys; 0 = no
    /// peering [default: 0].
    #[arg(long, env = "DUALWRITE_PEER_ID")]
    pub peer_id: Option<u32>,
    /// Another instance, as ID=HOST:PORT, to which cancels for its keys are forwarded (repeatable; the
    /// variable takes a comma-separated list; replaces the file's peers).
    #[arg(long = "peer", env = "DUALWRITE_PEERS", value_delimiter = ',', value_name = "ID=HOST:PORT")]
    pub peers: Vec<crate::config::PeerConfig>,
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    parse_optional_addr(s).map(MetricsAddr)
}

impl ConfigArgs {
    /// The effective config: file (if any), then every flag or variable that was given.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut cfg);
        Ok(cfg)
    }

    fn apply(&self, cfg: &mut Config) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut cfg.listen, &self.listen);
        set(&mut cfg.upstream, &self.upstream);
        if self.rules.is_some() {
            cfg.rules = self.rules.clone();
        }
        if let Some(MetricsAddr(addr)) = self.metrics_listen {
            cfg.metrics_listen = addr;
        }
        if !self.admin_roles.is_empty() {
            cfg.admin_roles = self.admin_roles.clone();
        }
        if self.tls_cert.is_some() {
            cfg.tls_cert = self.tls_cert.clone();
            cfg.tls_key = self.tls_key.clone();
        }
        set(&mut cfg.session_threads, &self.session_threads);
        set(&mut cfg.pool_mode, &self.pool_mode);
        set(&mut cfg.pool_size, &self.pool_size);
        set(&mut cfg.reserve_pool_size, &self.reserve_pool_size);
        set(&mut cfg.pool_wait_timeout_secs, &self.pool_wait_timeout_secs);
        set(&mut cfg.peer_id, &self.peer_id);
        if !self.peers.is_empty() {
            cfg.peers = self.peers.clone();
        }
        set(&mut cfg.limits.max_message_size, &self.max_message_size);
        set(&mut cfg.limits.max_client_connections, &self.max_client_connections);
        set(&mut cfg.limits.startup_timeout_secs, &self.startup_timeout_secs);
        set(&mut cfg.limits.connect_timeout_secs, &self.connect_timeout_secs);
        set(&mut cfg.limits.shutdown_grace_secs, &self.shutdown_grace_secs);
        set(&mut cfg.limits.state_max_age_secs, &self.state_max_age_secs);
        set(&mut cfg.limits.upstream_keepalive_secs, &self.upstream_keepalive_secs);
        set(&mut cfg.limits.upstream_tcp_user_timeout_secs, &self.upstream_tcp_user_timeout_secs);
        set(&mut cfg.shadow_reads.connections, &self.shadow_read_connections);
        set(&mut cfg.shadow_reads.queue, &self.shadow_read_queue);
        set(&mut cfg.shadow_reads.max_rows, &self.shadow_read_max_rows);
        set(&mut cfg.shadow_reads.statement_timeout_ms, &self.shadow_read_statement_timeout_ms);
        if self.control_url.is_some() {
            cfg.control.url = self.control_url.clone();
        }
        if self.control_user.is_some() {
            cfg.control.user = self.control_user.clone();
        }
        if self.control_password.is_some() {
            cfg.control.password = self.control_password.clone();
        }
        if self.verify_every_secs.is_some() {
            cfg.control.verify_every_secs = self.verify_every_secs;
        }
        if self.backfill_max_replication_lag_ms.is_some() {
            cfg.control.backfill_max_replication_lag_ms = self.backfill_max_replication_lag_ms;
        }
        if self.backfill_max_p99_latency_ms.is_some() {
            cfg.control.backfill_max_p99_latency_ms = self.backfill_max_p99_latency_ms;
        }
        if let Some(enabled) = self.cdc {
            cfg.cdc.enabled = enabled;
        }
        if let Some(mb) = self.cdc_max_retained_wal_mb {
            cfg.cdc.max_retained_wal_mb = mb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile_dir();
        let path = dir.join("dw.toml");
        std::fs::write(&path, "upstream = \"postgres://a@h:1/d\"\nadmin_roles = [\"x\"]\n").unwrap();
        let cli = Cli::try_parse_from([
            "dualwrite",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7777",
            "--admin-role",
            "ops",
            "--admin-role",
            "dba",
            "--metrics-listen",
            "off",
            "--max-message-size",
            "4096",
            "--shadow-read-queue",
            "8",
            "--peer-id",
            "2",
            "--peer",
            "1=10.0.0.11:6432",
            "--peer",
            "3=dualwrite-3:6432",
        ])
        .unwrap();
        #[allow(irrefutable_let_patterns)]
        let Command::Serve(args) = cli.command
        else {
            panic!("not serve")
        };
        let cfg = args.load().unwrap();
        assert_eq!(cfg.upstream, "postgres://a@h:1/d");
        assert_eq!(cfg.listen, "127.0.0.1:7777".parse().unwrap());
        assert_eq!(cfg.admin_roles, vec!["ops", "dba"]);
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.limits.max_message_size, 4096);
        assert_eq!(cfg.shadow_reads.queue, 8);
        assert_eq!(cfg.shadow_reads.connections, 1, "not given: the default");
        assert_eq!(cfg.peer_id, 2);
        let peers: Vec<(u32, &str)> = cfg.peers.iter().map(|p| (p.id, p.address.as_str())).collect();
        assert_eq!(peers, vec![(1, "10.0.0.11:6432"), (3, "dualwrite-3:6432")]);
        assert_eq!(cfg.peering().unwrap().own_id(), Some(2));
    }

    #[test]
    fn plan_takes_exactly_one_target_form_and_apply_a_plan_directory() {
        let base = ["dualwrite", "plan", "--table", "public.users", "--upstream", "postgres://u@h/d", "--out", "p"];
        let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        let Ok(Cli { command: Command::Plan(args) }) = with(&["--operations", "ops.toml"]) else {
            panic!("plan with --operations parses")
        };
        assert_eq!((args.sample, args.old_version.as_str(), args.new_version.as_str()), (1000, "v1", "v2"));
        assert!(with(&["--create-table", "t.sql"]).is_ok());
        assert!(with(&[]).is_err(), "a target is required");
        assert!(with(&["--operations", "o.toml", "--create-table", "t.sql"]).is_err(), "only one target");
        let apply = Cli::try_parse_from([
            "dualwrite",
            "apply",
            "--plan",
            "p",
            "--upstream",
            "postgres://u@h/d",
            "--rules",
            "r.toml",
        ]);
        assert!(matches!(apply, Ok(Cli { command: Command::Apply(_) })));
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dw-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
