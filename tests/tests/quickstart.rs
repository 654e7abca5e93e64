//! `dualwrite quickstart` end to end, in-process: it starts its own throwaway cluster with the example
//! migration's tables, psql reads and writes through the proxy (each write landing in both tables), and
//! shutdown removes the cluster.

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
async fn quickstart_serves_the_example_schema_dual_writes_and_cleans_up() {
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

    // Writes through the proxy, as the banner suggests: each lands in both tables, the shadow's row
    // through the migration's forward mapping (the shadow starts empty: nothing is backfilled yet).
    let writes = "INSERT INTO users (name, email) VALUES ('Edsger Dijkstra', 'EWD@Example.com');
                  UPDATE users SET email = 'Ada@Lovelace.org' WHERE name = 'Ada Lovelace';
                  DELETE FROM users WHERE name = 'Alan Turing';";
    let out = psql(&endpoints.proxy_url, &["-c", writes], None).await.unwrap();
    out.assert_success();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["INSERT 0 1", "UPDATE 1", "DELETE 1"], "{}", out.stderr);
    let direct = connect(&endpoints.upstream_url).await.unwrap();
    let rows = |sql: &'static str| {
        let direct = &direct;
        async move {
            let rows = direct.query(sql, &[]).await.unwrap();
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect::<Vec<_>>().join("|"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        rows("SELECT id::text, name, email FROM users ORDER BY id").await,
        ["1|Ada Lovelace|Ada@Lovelace.org", "3|Grace Hopper|GRACE@example.com", "4|Edsger Dijkstra|EWD@Example.com"]
    );
    assert_eq!(
        rows("SELECT id::text, first_name, last_name, email FROM users_v2 ORDER BY id").await,
        ["1|Ada|Lovelace|ada@lovelace.org", "4|Edsger|Dijkstra|ewd@example.com"]
    );
    drop(direct);

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
