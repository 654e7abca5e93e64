//! Proves the test harness itself: throwaway clusters start, restart, survive kill + start, give each
//! test its own database, authenticate password roles, and real clients (psql, pgbench) work on them.

use dualwrite_tests::*;

#[tokio::test]
async fn shared_cluster_answers_queries() {
    let cluster = TestCluster::shared();
    assert!(cluster.pid().is_some(), "postmaster pid");
    let client = connect(&cluster.connection_string()).await.unwrap();
    let row = client.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap();
    let version: i32 = row.get(0);
    assert!((150000..160000).contains(&version), "PostgreSQL 15 expected, got {version}");
    let row = client.query_one("SELECT current_setting('port')::int", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(cluster.port()));
}

#[tokio::test]
async fn each_test_gets_its_own_database() {
    let cluster = TestCluster::shared();
    let first = cluster.create_database().await.unwrap();
    let second = cluster.create_database().await.unwrap();
    assert_ne!(first.name, second.name);

    let a = first.connect().await.unwrap();
    a.batch_execute("CREATE TABLE only_here (id int); INSERT INTO only_here VALUES (1)").await.unwrap();
    let b = second.connect().await.unwrap();
    let err = b.query("SELECT * FROM only_here", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE));
    let current: String = b.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(current, second.name);
}

#[tokio::test]
async fn password_roles_authenticate_with_their_method_only() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    for (user, password, method) in [
        (SCRAM_USER, SCRAM_PASSWORD, "SCRAM-SHA-256"),
        (MD5_USER, MD5_PASSWORD, "md5"),
        (CLEARTEXT_USER, CLEARTEXT_PASSWORD, "SCRAM-SHA-256"),
    ] {
        let client = connect(&db.url_as(user, Some(password))).await.unwrap();
        let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
        // The stored hash shows which password_encryption the role was created with.
        let stored: String = client
            .query_one("SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = current_user", &[])
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with(method), "{user}: stored hash starts {stored}");

        let wrong = connect(&db.url_as(user, Some("wrong password"))).await.unwrap_err();
        let code =
            wrong.chain().find_map(|e| e.downcast_ref::<tokio_postgres::Error>()).and_then(|e| e.code().cloned());
        assert_eq!(code, Some(tokio_postgres::error::SqlState::INVALID_PASSWORD), "{user}: {wrong:#}");
    }
}

#[tokio::test]
async fn psql_runs_scripts_and_copy() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let script = "CREATE TABLE t (id int, name text);\n\
                  \\copy t FROM STDIN\n1\tone\n2\ttwo\n\\.\n\
                  SELECT name FROM t ORDER BY id;\n";
    let out = psql(&db.url(), &["-q", "-A", "-t"], Some(script)).await.unwrap();
    out.assert_success();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["one", "two"], "{out:?}");

    let failing = psql(&db.url(), &["-c", "SELECT * FROM missing_table"], None).await.unwrap();
    assert!(!failing.success());
    assert!(failing.stderr.contains("missing_table"), "{failing:?}");
}

#[tokio::test]
async fn pgbench_initializes_and_runs() {
    let db = TestCluster::shared().create_database().await.unwrap();
    pgbench(&db.url(), &["-i", "-q", "-s", "1"]).await.unwrap().assert_success();
    let out = pgbench(&db.url(), &["-c", "2", "-t", "20", "-M", "prepared", "-n"]).await.unwrap();
    out.assert_success();
    assert!(out.stdout.contains("number of failed transactions: 0"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_port_and_changes_pid() {
    let cluster = TestCluster::start().await.unwrap();
    let port = cluster.port();
    let first_pid = cluster.pid().unwrap();
    let client = connect(&cluster.connection_string()).await.unwrap();
    client.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)").await.unwrap();

    for mode in [StopMode::Fast, StopMode::Immediate] {
        cluster.restart(mode).await.unwrap();
        assert_eq!(cluster.port(), port);
    }
    let second_pid = cluster.pid().unwrap();
    assert_ne!(first_pid, second_pid);

    // The old connection was terminated by the restart; a new one sees the committed row.
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    let client = connect(&cluster.connection_string()).await.unwrap();
    let v: i32 = client.query_one("SELECT v FROM kept", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);

    cluster.stop(StopMode::Fast).await.unwrap();
    assert!(cluster.pid().is_none());
    assert!(connect(&cluster.connection_string()).await.is_err());
    cluster.start_again().await.unwrap();
    connect(&cluster.connection_string()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_then_start_recovers() {
    let cluster = TestCluster::start().await.unwrap();
    let client = connect(&cluster.connection_string()).await.unwrap();
    client.batch_execute("CREATE TABLE survived (v int); INSERT INTO survived VALUES (7)").await.unwrap();
    let backend_pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let postmaster = cluster.pid().unwrap();

    cluster.kill().await.unwrap();
    assert!(cluster.pid().is_none());
    for pid in [postmaster, backend_pid as u32] {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "process {pid} survived kill: {stat}");
    }
    assert!(client.query_one("SELECT 1", &[]).await.is_err());

    cluster.start_again().await.unwrap();
    let client = connect(&cluster.connection_string()).await.unwrap();
    let v: i32 = client.query_one("SELECT v FROM survived", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    assert!(cluster.log().contains("database system was interrupted") || cluster.log().contains("crash"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_stops_it_and_removes_its_directory() {
    let cluster =
        TestCluster::start_with(ClusterOptions::default().setting("application_name", "from_conf")).await.unwrap();
    let client = connect(&cluster.connection_string()).await.unwrap();
    let name: String = client.query_one("SHOW application_name", &[]).await.unwrap().get(0);
    // tokio-postgres does not send application_name, so the server default from our setting shows.
    assert_eq!(name, "from_conf");
    let dir = cluster.socket_dir().to_owned();
    let pid = cluster.pid().unwrap();
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "postmaster {pid} survived drop: {stat}");
}

/// A cluster whose owner dies without dropping it (a `static`, a killed test) is still removed: this
/// test re-runs itself as a child process that starts a cluster and exits at once.
#[test]
fn guardian_removes_the_cluster_when_its_process_exits() {
    const CHILD_MARKER: &str = "DUALWRITE_GUARDIAN_CHILD";
    if std::env::var_os(CHILD_MARKER).is_some() {
        let cluster = PgCluster::start_new(ClusterOptions::default()).unwrap();
        println!("cluster {} {}", cluster.pid().unwrap(), cluster.socket_dir().display());
        std::process::exit(0); // no destructors run
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "guardian_removes_the_cluster_when_its_process_exits", "--nocapture"])
        .env(CHILD_MARKER, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("cluster "))
        .unwrap_or_else(|| panic!("child printed no cluster: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    let (pid, dir) = line.split_once(' ').unwrap();
    let dir = std::path::Path::new(dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let postmaster_gone = stat.is_empty() || stat.contains(") Z");
        if postmaster_gone && !dir.exists() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cluster left behind: pid {pid} ({stat}), dir {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn test_proxy_relays_to_a_test_database() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let proxy = TestProxy::relay(&db).await.unwrap();
    let client = proxy.connect(&db).await.unwrap();
    let name: String = client.query_one("SELECT current_database()::text", &[]).await.unwrap().get(0);
    assert_eq!(name, db.name);
    let out = psql(&proxy.url(&db), &["-A", "-t", "-c", "SELECT 40 + 2"], None).await.unwrap();
    assert_eq!(out.assert_success().stdout.trim(), "42");
    drop(client);
    proxy.stop().await.unwrap();
}
