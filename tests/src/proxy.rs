//! The proxy under test, run in-process on a free port of 127.0.0.1 and stopped (gracefully) when the
//! test ends.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use dualwrite_proxy::config::Config;
use dualwrite_proxy::reload::Reloader;
use dualwrite_proxy::server::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::TestDb;

/// A running in-process proxy. Dropping it signals shutdown without waiting; [`TestProxy::stop`] waits
/// and reports how the server ended.
pub struct TestProxy {
    addr: SocketAddr,
    config: Config,
    reloader: Reloader,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    // Keeps a rules file written by `with_rules_toml` alive as long as the proxy.
    _rules_file: Option<tempfile::NamedTempFile>,
}

impl TestProxy {
    /// Starts a proxy with `config` as given, except that it listens on a free port of 127.0.0.1.
    pub async fn start(mut config: Config) -> anyhow::Result<TestProxy> {
        crate::init_tracing();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = Server::bind(config.clone()).await.context("binding the proxy")?;
        let (addr, reloader) = (server.local_addr(), server.reloader());
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            // A dropped sender (test ended without stop) shuts down too.
            let _ = shutdown_rx.await;
        }));
        Ok(TestProxy { addr, config, reloader, shutdown: Some(shutdown), task: Some(task), _rules_file: None })
    }

    /// A plain relay to the cluster of `db` (no rules, metrics off); the control plane uses `db`.
    pub async fn relay(db: &TestDb) -> anyhow::Result<TestProxy> {
        Self::start(Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), db.url())).await
    }

    /// A proxy for `db` with the migration rules given as TOML text, the superuser as admin role.
    pub async fn with_rules_toml(db: &TestDb, rules_toml: &str) -> anyhow::Result<TestProxy> {
        Self::with_rules_toml_and(db, rules_toml, |_| {}).await
    }

    /// As [`with_rules_toml`](Self::with_rules_toml), with the config adjusted by `tweak` before start.
    pub async fn with_rules_toml_and(
        db: &TestDb,
        rules_toml: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestProxy> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().context("rules temp file")?;
        std::io::Write::write_all(&mut file, rules_toml.as_bytes()).context("writing rules")?;
        let mut config = Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), db.url());
        config.rules = Some(file.path().to_owned());
        config.admin_roles = vec![db.cluster.superuser().to_owned()];
        tweak(&mut config);
        let mut proxy = Self::start(config).await?;
        proxy._rules_file = Some(file);
        Ok(proxy)
    }

    /// A proxy for `db` with the rules file at `path`, the superuser as admin role.
    pub async fn with_rules_file(db: &TestDb, path: impl Into<PathBuf>) -> anyhow::Result<TestProxy> {
        let mut config = Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), db.url());
        config.rules = Some(path.into());
        config.admin_roles = vec![db.cluster.superuser().to_owned()];
        Self::start(config).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The config the proxy runs with (listen shows port 0; use [`addr`](Self::addr)).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What applies a new config to the running proxy, as SIGHUP does (`reload(config)`).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// URL of `db` through the proxy as the superuser.
    pub fn url(&self, db: &TestDb) -> String {
        db.url_via(self.addr)
    }

    /// URL of `db` through the proxy as `user`/`password`.
    pub fn url_as(&self, db: &TestDb, user: &str, password: Option<&str>) -> String {
        db.url_via_as(self.addr, user, password)
    }

    /// A tokio-postgres connection to `db` through the proxy.
    pub async fn connect(&self, db: &TestDb) -> anyhow::Result<tokio_postgres::Client> {
        crate::connect(&self.url(db)).await
    }

    /// Signals shutdown and waits for the server to finish; returns its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("proxy task panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
