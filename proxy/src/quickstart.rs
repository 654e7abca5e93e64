//! `dualwrite quickstart`: a working proxy in one command. Without `--upstream` it starts a throwaway
//! PostgreSQL 15 cluster (see `pgcluster`), creates the schema of the example migration
//! (rewrite-rules/examples/users_split_name.toml: `public.users` split into `public.users_v2`) with a few
//! rows, serves it through the proxy with those rules, prints the psql connection string, and on Ctrl-C or
//! SIGTERM stops the proxy and deletes the cluster. With `--upstream` it just serves that database.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::config::Config;
use crate::pgcluster::{ClusterOptions, PgCluster};
use crate::server::Server;

/// The example migration shipped with the rules crate; written next to the throwaway cluster.
const EXAMPLE_RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");
const EXAMPLE_DATABASE: &str = "app";
/// The tables the example rules map (README: Rules files), with rows to play with. users_v2 starts empty
/// so a backfill has something to do; it shares users' id sequence so v2 sessions can insert too.
const EXAMPLE_SCHEMA: &str = "
CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
CREATE TABLE public.users_v2 (id int PRIMARY KEY DEFAULT nextval('public.users_id_seq'), first_name text, last_name text, email text);
INSERT INTO public.users (name, email) VALUES
    ('Ada Lovelace', 'Ada@Example.com'),
    ('Alan Turing', 'alan@example.com'),
    ('Grace Hopper', 'GRACE@example.com');
";

/// What a started quickstart serves; printed for the user and handy for tests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Connection string for psql through the proxy.
    pub proxy_url: String,
    /// The upstream the proxy serves.
    pub upstream_url: String,
    pub proxy_addr: SocketAddr,
    /// Whether the upstream is the quickstart's own throwaway cluster.
    pub throwaway: bool,
    pub rules: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
}

/// Runs the quickstart until `shutdown` completes; `on_ready` gets the endpoints once clients can
/// connect. An empty `config.upstream` means a throwaway cluster with the example migration (and the
/// example rules unless `config.rules` is set); it is removed before this returns.
pub async fn run(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Endpoints),
) -> anyhow::Result<()> {
    let cluster = if config.upstream.is_empty() {
        let cluster = start_example_cluster().await?;
        if config.rules.is_none() {
            let path = cluster.socket_dir().join("users_split_name.toml");
            std::fs::write(&path, EXAMPLE_RULES).context("writing the example rules")?;
            config.rules = Some(path);
        }
        config.upstream = cluster.connection_string_for(cluster.superuser(), None, EXAMPLE_DATABASE);
        if config.admin_roles.is_empty() {
            // The user the printed URL connects as may run DUALWRITE commands.
            config.admin_roles = vec![cluster.superuser().to_owned()];
        }
        Some(cluster)
    } else {
        None
    };

    let served = serve(config, shutdown, on_ready, cluster.as_ref()).await;
    if let Some(cluster) = cluster {
        // Stopping waits for pg_ctl; keep it off the async workers.
        tokio::task::spawn_blocking(move || drop(cluster)).await.context("removing the throwaway cluster")?;
    }
    served
}

async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Endpoints),
    cluster: Option<&PgCluster>,
) -> anyhow::Result<()> {
    let upstream_url = config.upstream.clone();
    let rules = config.rules.clone();
    let metrics = config.metrics_listen;
    let server = Server::bind(config).await.context("starting the proxy")?;
    let proxy_addr = server.local_addr();
    let user = cluster.map(|c| c.superuser().to_owned()).unwrap_or_else(|| upstream_user(&upstream_url));
    let database = match cluster {
        Some(_) => EXAMPLE_DATABASE.to_owned(),
        None => upstream_database(&upstream_url),
    };
    let endpoints = Endpoints {
        proxy_url: format!("postgres://{user}@{}:{}/{database}", proxy_addr.ip(), proxy_addr.port()),
        upstream_url,
        proxy_addr,
        throwaway: cluster.is_some(),
        rules,
        metrics,
    };
    on_ready(&endpoints);
    server.run(shutdown).await
}

/// The user and database a client would use by default: the upstream URL's own.
fn upstream_user(url: &str) -> String {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_user().map(str::to_owned))
        .unwrap_or_else(|| "postgres".to_owned())
}

fn upstream_database(url: &str) -> String {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_owned))
        .unwrap_or_else(|| upstream_user(url))
}

async fn start_example_cluster() -> anyhow::Result<PgCluster> {
    tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start_new(ClusterOptions::default())?;
        cluster.psql("postgres", &format!("CREATE DATABASE {EXAMPLE_DATABASE}"))?;
        cluster.psql(EXAMPLE_DATABASE, EXAMPLE_SCHEMA)?;
        anyhow::Ok(cluster)
    })
    .await
    .context("starting the throwaway PostgreSQL")?
    .context("starting the throwaway PostgreSQL")
}

/// The banner printed when the quickstart is ready.
pub fn banner(endpoints: &Endpoints) -> String {
    let mut text = String::from("dualwrite quickstart is running\n\n");
    if endpoints.throwaway {
        text.push_str(&format!("  PostgreSQL 15 (throwaway): {}\n", endpoints.upstream_url));
    }
    text.push_str(&format!("  proxy:   {}\n", endpoints.proxy_addr));
    if let Some(rules) = &endpoints.rules {
        text.push_str(&format!("  rules:   {}\n", rules.display()));
    }
    if let Some(metrics) = endpoints.metrics {
        text.push_str(&format!("  metrics: http://{metrics}/metrics\n"));
    }
    text.push_str(&format!("\nConnect with:\n\n  psql \"{}\"\n\n", endpoints.proxy_url));
    if endpoints.throwaway {
        text.push_str(
            "Then try (users is being split into users_v2 by the example migration users_split_name):\n\n  \
             INSERT INTO users (name, email) VALUES ('Edsger Dijkstra', 'EWD@Example.com');\n  \
             SELECT * FROM users_v2;\n  DUALWRITE STATUS;\n\n\
             Ctrl-C stops the proxy and deletes the throwaway database.\n",
        );
    } else {
        text.push_str("Ctrl-C stops the proxy.\n");
    }
    text
}

/// `dualwrite quickstart` from the CLI: runs until SIGINT (Ctrl-C) or SIGTERM, printing the banner when
/// ready.
pub async fn main(config: Config) -> anyhow::Result<()> {
    run(config, crate::shutdown::signal(), |endpoints| println!("{}", banner(endpoints))).await?;
    println!("dualwrite quickstart stopped");
    Ok(())
}
