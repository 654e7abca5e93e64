//! docker-compose.yml, tested outside containers (no Docker engine runs here): the file validates, and the
//! dualwrite service's own command and environment, with only the addresses swapped for local ones, serve
//! the example migration in front of a throwaway PostgreSQL initialised with the same docker/initdb.sql,
//! with /metrics and the service's healthcheck answering, and stop cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dualwrite_tests::{dualwrite_binary, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `docker-compose config` (resolved and validated), converted to JSON.
fn compose_config() -> serde_json::Value {
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; docker-compose -f docker-compose.yml config | python3 -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'")
        .current_dir(repo_root())
        .output()
        .expect("running docker-compose config");
    assert!(output.status.success(), "docker-compose config failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], dualwrite_proxy::pgcluster::free_port().unwrap()))
}

async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// (host source, container target) of a volume, in the short (`src:dst[:ro]`) or the long form.
fn volume_parts(volume: &serde_json::Value) -> (String, String) {
    match volume.as_str() {
        Some(short) => {
            let mut parts = short.split(':');
            (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned())
        }
        None => {
            (volume["source"].as_str().unwrap_or("").to_owned(), volume["target"].as_str().unwrap_or("").to_owned())
        }
    }
}

#[test]
fn the_compose_file_names_the_monitoring_files() {
    let config = compose_config();
    let services = config["services"].as_object().unwrap();
    for name in ["postgres", "dualwrite", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // Every file or directory a service mounts exists in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let (source, _) = volume_parts(volume);
            assert!(repo_root().join(&source).exists(), "{name} mounts missing {source}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dualwrite_service_runs_outside_containers() {
    let config = compose_config();
    let service = &config["services"]["dualwrite"];
    let mut env: BTreeMap<String, String> = service["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let command: Vec<String> =
        service["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();

    // The rules file: the host side of the volume mounted where DUALWRITE_RULES points.
    let rules_target = env["DUALWRITE_RULES"].clone();
    let rules_source = service["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(volume_parts)
        .find(|(_, target)| *target == rules_target)
        .expect("a volume mounts the rules file")
        .0;

    // The postgres service's database, initialised with its init script, on a throwaway cluster.
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let init = std::fs::read_to_string(repo_root().join("docker/initdb.sql")).unwrap();
    db.connect().await.unwrap().batch_execute(&init).await.unwrap();

    let (listen, metrics) = (free_addr(), free_addr());
    env.insert("DUALWRITE_LISTEN".into(), listen.to_string());
    env.insert("DUALWRITE_METRICS_LISTEN".into(), metrics.to_string());
    env.insert("DUALWRITE_UPSTREAM".into(), db.url());
    env.insert("DUALWRITE_RULES".into(), rules_source);
    env.insert("DUALWRITE_ADMIN_ROLES".into(), cluster.superuser().to_owned());

    let mut child = tokio::process::Command::new(dualwrite_binary())
        .args(&command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "dualwrite did not listen on {listen}");
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
            panic!("dualwrite exited ({status}):\n{stderr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = dualwrite_tests::connect(&db.url_via(listen)).await.unwrap();
    let rows: i64 = client.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(rows, 3, "the init script's rows, through the proxy");
    client
        .execute("INSERT INTO users (name, email) VALUES ($1, $2)", &[&"Edsger Dijkstra", &"ewd@example.org"])
        .await
        .unwrap();
    drop(client);

    let response = http_get(metrics, "/metrics").await.unwrap();
    assert!(response.starts_with("HTTP/1.") && response.contains(" 200 "), "{response}");
    assert!(response.contains("dualwrite_client_connections"), "{response}");

    // The service's healthcheck command, pointed at this run's metrics port, passes.
    let healthcheck: Vec<String> = service["healthcheck"]["test"]
        .as_array()
        .expect("the dualwrite service has a healthcheck")
        .iter()
        .map(|v| v.as_str().unwrap().replace("9187", &metrics.port().to_string()))
        .collect();
    assert_eq!(healthcheck[0], "CMD");
    let probe = std::process::Command::new(&healthcheck[1]).args(&healthcheck[2..]).output().unwrap();
    assert!(probe.status.success(), "healthcheck {healthcheck:?} failed: {}", String::from_utf8_lossy(&probe.stderr));

    // SIGTERM: the container's stop signal; the proxy shuts down gracefully and exits 0.
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await.expect("stops").unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
}
