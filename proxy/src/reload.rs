//! Applying a new config to a running server (`dualwrite serve` does it on SIGHUP) without dropping a
//! session. All or nothing: the new config and its rules file are read and validated first; if anything is
//! wrong the running config stays in force, the error is logged naming the file and the reason, and
//! `dualwrite_config_reloads_total{result="error"}` counts it.
//!
//! Reloaded: the rules file (new statements of every session use the new rules; prepared statements are
//! prepared again when their rewrite changed), `admin_roles`, `[versions]` defaults (sessions that start
//! later), every `[limits]` setting (connections accepted later; the shutdown grace at shutdown), the TLS
//! certificate and key (re-read, for connections accepted later), `[shadow_reads]` (workers
//! restarted) and `[[peers]]` (cancel requests received afterwards). Needing a restart: `listen`,
//! `upstream` (with the certificate files its URL names, which a reload does not re-read: the control
//! plane's connections keep what was read at start, and the data plane keeps the same), `metrics_listen`,
//! `session_threads`, `[control]`, `[cdc]`, `peer_id` (the cancel keys already issued carry it), and
//! turning rules on or off (the list is `RESTART_ONLY`);
//! a change to those is logged as a warning and ignored, the rest of the reload applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::live::LiveDatabases;
use crate::server_context::ServerContext;

/// A setting a reload cannot change: its TOML key (a table's name for a table) and how a reload keeps
/// it at its running value.
struct RestartOnly {
    /// The TOML key, which is the `Config` field's name (`stringify!` of it).
    name: &'static str,
    /// Puts `old`'s value into `new`; returns whether they differed.
    keep: fn(old: &Config, new: &mut Config) -> bool,
}

/// One `RestartOnly` per `Config` field named, its key the field's name.
macro_rules! restart_only {
    ($($field:ident),* $(,)?) => {
        &[$(RestartOnly {
            name: stringify!($field),
            keep: |old, new| {
                let differs = old.$field != new.$field;
                if differs {
                    new.$field = old.$field.clone();
                }
                differs
            },
        }),*]
    };
}

/// Settings a reload cannot change: the one list both `keep_restart_only` (which keeps them) and
/// `setting_changes` (which never names them as changed) read. `peer_id`: the cancel keys already handed
/// out name the id in force. Turning rules on or off also needs a restart, but another rules file does
/// not, so `rules` is judged apart (`keep_restart_only`).
const RESTART_ONLY: &[RestartOnly] =
    restart_only![listen, upstream, metrics_listen, session_threads, control, peer_id, cdc];

/// Applies configs to one running server. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    context: Arc<ArcSwap<ServerContext>>,
    live: Option<Arc<LiveDatabases>>,
    busy: Arc<Mutex<()>>,
}

impl Reloader {
    pub(crate) fn new(context: Arc<ArcSwap<ServerContext>>, live: Option<Arc<LiveDatabases>>) -> Reloader {
        Reloader { context, live, busy: Arc::new(Mutex::new(())) }
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.context.load().config.clone()
    }

    /// Applies `config` (restart-only settings excepted) or changes nothing. Returns what changed, one
    /// line per setting, and the restart-only settings that differ (left as they are).
    pub async fn reload(&self, config: Config) -> anyhow::Result<ReloadReport> {
        let _one_at_a_time = self.busy.lock().await;
        let old = self.context.load_full();
        let (config, needs_restart) = keep_restart_only(&old.config, config, self.live.is_some());
        let mut changed = setting_changes(&old.config, &config);
        let kept_tls = Some(old.upstream.tls.clone());
        let cancel = Some(Arc::clone(&old.cancel));
        let mut next = ServerContext::build(config, cancel, Arc::clone(&old.interceptor), kept_tls)?;
        next.pools = Arc::clone(&old.pools);
        next.copy_budget = Arc::clone(&old.copy_budget);
        next.copy_budget.set_limit(next.config.limits.copy_tee_total_bytes());
        if let Some(live) = &self.live {
            changed.extend(live.reload(&next.config).await?);
        }
        if next.client_tls.is_some() {
            changed.push("TLS certificate and key re-read".into());
        }
        let max_clients = next.config.limits.max_client_connections;
        if max_clients > old.config.limits.max_client_connections {
            crate::overload::ensure_fd_limit(max_clients);
        }
        self.context.store(Arc::new(next));
        Ok(ReloadReport { changed, needs_restart })
    }

    /// Loads and applies a config, logging and counting the outcome (`load` re-reads the config file and
    /// whatever else sets it: flags and environment still win). Returns whether it applied.
    pub async fn reload_with(&self, load: impl FnOnce() -> anyhow::Result<Config>) -> bool {
        let result = match load() {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
                for setting in &report.needs_restart {
                    tracing::warn!(setting = %setting, "changed in the config, but takes effect only after a restart");
                }
                if report.changed.is_empty() {
                    tracing::info!("configuration reloaded: nothing changed");
                } else {
                    tracing::info!(changes = %report.changed.join("; "), "configuration reloaded");
                }
                true
            }
            Err(e) => {
                metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                let error = format!("{e:#}");
                tracing::error!(%error, "configuration reload refused; the running configuration stays in force");
                false
            }
        }
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// One line per change applied ("limits.max_client_connections: 1000 -> 50", "migration m added").
    pub changed: Vec<String>,
    /// Settings that differ but need a restart (ignored).
    pub needs_restart: Vec<String>,
}

/// The process's SIGHUP handler, installed now. Call it before the proxy says it is listening: until a
/// handler is installed, SIGHUP's default action ends the process, so a reload asked for right after the
/// start (an operator, a supervisor, a test that waited for "proxy listening") would kill the proxy.
/// `None` where no handler can be installed (logged; config reload is then disabled).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload disabled");
            None
        }
    }
}

/// Reloads `reloader` on each SIGHUP of `hangups` ([`hangups`]) with a fresh `load()`, until the
/// process ends.
pub async fn on_sighup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: Reloader,
    load: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) {
    let Some(mut hangups) = hangups else { return };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the configuration");
        reloader.reload_with(&load).await;
    }
}

/// `new` with the restart-only settings of `old`, and the names of those that differed.
fn keep_restart_only(old: &Config, mut new: Config, has_rules: bool) -> (Config, Vec<String>) {
    let mut ignored: Vec<String> = RESTART_ONLY
        .iter()
        .filter(|setting| (setting.keep)(old, &mut new))
        .map(|setting| setting.name.to_owned())
        .collect();
    if has_rules != new.rules.is_some() {
        ignored.push("rules (turning rules on or off)".to_owned());
        new.rules = old.rules.clone();
    }
    (new, ignored)
}

/// Reloadable settings that differ, as `key: old -> new` lines (dotted TOML keys).
fn setting_changes(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (flatten(old), flatten(new));
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let show = |v: Option<&Value>| v.map(Value::to_string).unwrap_or_else(|| "(unset)".into());
    keys.into_iter()
        .filter(|k| !RESTART_ONLY.iter().any(|r| *k == r.name || k.starts_with(&format!("{}.", r.name))))
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| format!("{k}: {} -> {}", show(old.get(k)), show(new.get(k))))
        .collect()
}

/// The config as dotted keys -> values (tables flattened, arrays kept whole).
fn flatten(config: &Config) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", serde_json::to_value(config).unwrap_or(Value::Null), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml(toml).unwrap()
    }

    #[test]
    fn lists_reloadable_changes_with_values() {
        let old = config("upstream = \"postgres://a@h/d\"\n[limits]\nmax_client_connections = 10\n");
        let new = config(
            "upstream = \"postgres://a@h/d\"\nadmin_roles = [\"ops\"]\n[limits]\nmax_client_connections = 2\n[versions.roles]\nr = \"v2\"\n",
        );
        let changes = setting_changes(&old, &new);
        assert_eq!(
            changes,
            vec![
                "admin_roles: [] -> [\"ops\"]".to_owned(),
                "limits.max_client_connections: 10 -> 2".to_owned(),
                "versions.roles.r: (unset) -> \"v2\"".to_owned(),
            ]
        );
    }

    #[test]
    fn restart_only_settings_keep_their_running_value_and_are_named() {
        let old = config("listen = \"127.0.0.1:1\"\nupstream = \"postgres://a@h/d\"\nrules = \"r.toml\"\n");
        let new = config(
            "listen = \"127.0.0.1:2\"\nupstream = \"postgres://b@h/d\"\nrules = \"other.toml\"\n[control]\npassword = \"secret\"\n",
        );
        let (kept, ignored) = keep_restart_only(&old, new, true);
        assert_eq!(kept.listen, old.listen);
        assert_eq!(kept.upstream, old.upstream);
        assert_eq!(kept.control, old.control);
        assert_eq!(kept.rules.as_deref(), Some(std::path::Path::new("other.toml")), "another rules file is a reload");
        assert_eq!(ignored, vec!["listen", "upstream", "control"]);
        // Secrets of restart-only settings never reach the change lines.
        assert!(setting_changes(&old, &kept).iter().all(|l| !l.contains("secret")));
    }

    #[test]
    fn peer_id_needs_a_restart_and_peers_reload() {
        let old = config("upstream = \"postgres://a@h/d\"\npeer_id = 1\n[[peers]]\nid = 2\naddress = \"h2:6432\"\n");
        let new = config("upstream = \"postgres://a@h/d\"\npeer_id = 3\n[[peers]]\nid = 2\naddress = \"h2b:6432\"\n");
        let (kept, ignored) = keep_restart_only(&old, new, false);
        assert_eq!(kept.peer_id, 1, "the keys already issued name the running id");
        assert_eq!(ignored, vec!["peer_id"]);
        assert_eq!(kept.peers[0].address, "h2b:6432");
        assert_eq!(setting_changes(&old, &kept).len(), 1, "{:?}", setting_changes(&old, &kept));
        assert!(setting_changes(&old, &kept)[0].starts_with("peers: "));
    }

    #[test]
    fn a_cdc_change_is_named_restart_only_and_not_as_a_change() {
        let old = config("upstream = \"postgres://a@h/d\"\n[cdc]\npoll_interval_ms = 200\n");
        let new = config("upstream = \"postgres://a@h/d\"\n[cdc]\npoll_interval_ms = 50\nenabled = false\n");
        // Even given the config before its restart-only settings are put back, the change lines leave
        // `[cdc]` out.
        assert_eq!(setting_changes(&old, &new), Vec::<String>::new());
        let (kept, ignored) = keep_restart_only(&old, new, false);
        assert_eq!(kept.cdc, old.cdc, "the watch keeps running with the settings it started with");
        assert_eq!(ignored, vec!["cdc"]);
        assert_eq!(setting_changes(&old, &kept), Vec::<String>::new());
    }

    #[test]
    fn every_restart_only_name_is_a_config_key_and_is_left_out_of_the_change_lines() {
        let keys = flatten(&Config::default());
        for setting in RESTART_ONLY {
            let prefix = format!("{}.", setting.name);
            assert!(
                keys.keys().any(|k| *k == setting.name || k.starts_with(&prefix)),
                "{} is not a key of the config",
                setting.name
            );
        }
        // A config differing in every restart-only setting: each named, none a change line.
        let old = config("upstream = \"postgres://a@h/d\"\n");
        let new = config(
            "listen = \"127.0.0.1:2\"\nupstream = \"postgres://b@h/d\"\nmetrics_listen = \"127.0.0.1:3\"\n\
             session_threads = 3\npeer_id = 2\n[control]\npassword = \"x\"\n[cdc]\nenabled = false\n",
        );
        assert_eq!(setting_changes(&old, &new), Vec::<String>::new());
        let (_, ignored) = keep_restart_only(&old, new, false);
        let names: Vec<&str> = RESTART_ONLY.iter().map(|s| s.name).collect();
        assert_eq!(ignored, names);
    }

    #[test]
    fn turning_rules_on_needs_a_restart() {
        let old = config("upstream = \"postgres://a@h/d\"\n");
        let new = config("upstream = \"postgres://a@h/d\"\nrules = \"r.toml\"\n");
        let (kept, ignored) = keep_restart_only(&old, new, false);
        assert_eq!(kept.rules, None);
        assert_eq!(ignored.len(), 1);
    }
}
