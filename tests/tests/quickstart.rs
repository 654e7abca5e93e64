//! `dualwrite quickstart` end to end, in-process: it starts its own throwaway cluster with the example
//! migration's tables, psql works through the proxy, and shutdown removes the cluster.

use std::net::SocketAddr;

use dualwrite_proxy::quickstart::{self, Endpoints};
use dualwrite_proxy::Config;
use dualwrite_tests::*;
use tokio::sync::oneshot;

/// Free port, metrics off; an empty upstream asks for the throwaway cluster.
fn config(upstream: &str) -> Config {
    Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
}

/// Starts the quickstart on a task; returns its endpoints, the shutdown trigger and the task.
async fn start(config: Config) -> (Endpoints, oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    init_tracing();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(quickstart::run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |endpoints: &Endpoints| {
            let _ = ready_tx.send(endpoints.clone());
        },
    ));
    let endpoints = match ready_rx.await {
        Ok(endpoints) => endpoints,
        Err(_) => panic!("quickstart ended before it was ready: {:?}", task.await),
    };
    (endpoints, stop_tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_the_example_schema_and_cleans_up() {
    let (endpoints, stop, task) = start(config("")).await;
    let banner = quickstart::banner(&endpoints);
    assert!(banner.contains(&format!("psql \"{}\"", endpoints.proxy_url)), "{banner}");

    let out = psql(&endpoints.proxy_url, &["-A", "-t", "-c", "SELECT name, email FROM users ORDER BY id"], None)
        .await
        .unwrap();
    out.assert_success();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["Ada Lovelace|Ada@Example.com", "Alan Turing|alan@example.com", "Grace Hopper|GRACE@example.com"]
    );
    let client = connect(&endpoints.proxy_url).await.unwrap();
    let shadow_columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'users_v2' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(shadow_columns, ["id", "first_name", "last_name", "email"]);
    drop(client);

    let data_dir_url = endpoints.upstream_url.clone();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(connect(&data_dir_url).await.is_err(), "throwaway cluster still answers after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_upstream_serves_that_database() {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute("CREATE TABLE mine (v int); INSERT INTO mine VALUES (5)").await.unwrap();

    let (endpoints, stop, task) = start(config(&db.url())).await;
    assert!(endpoints.proxy_url.ends_with(&format!("/{}", db.name)), "{}", endpoints.proxy_url);
    let client = connect(&endpoints.proxy_url).await.unwrap();
    let v: i32 = client.query_one("SELECT v FROM mine", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    drop(client);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    // The user's database is untouched and still up.
    db.connect().await.unwrap();
}
