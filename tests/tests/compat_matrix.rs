//! The driver compatibility matrix (issue 7, tests/compat/README.md): each client library talks to the
//! proxy, with the example migration (users -> users_v2) active, and must pass every check it has an API
//! for. A failing test lists the checks that failed. The `*_transaction_mode` tests run the same checks
//! with the proxy pooling server connections per transaction (`pool_mode = "transaction"`, 2 per pool).

mod compat_support;

use compat_support::{checks_except, rust_checks, CompatEnv, ALL_CHECKS};
use dualwrite_proxy::config::PoolMode;

async fn env() -> CompatEnv {
    CompatEnv::start().await.expect("cluster, compat schema and proxy")
}

async fn pooled_env() -> CompatEnv {
    CompatEnv::start_in(PoolMode::Transaction).await.expect("cluster, compat schema and pooling proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql() {
    let env = env().await;
    let run = env.run_program("cli", "bash", &["psql.sh"]).await.unwrap();
    run.assert_all_ok("psql", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench() {
    let env = env().await;
    let run = env.run_program("cli", "bash", &["pgbench.sh"]).await.unwrap();
    run.assert_all_ok(
        "pgbench",
        &[
            "connect_scram",
            "copy_in",
            "simple_query",
            "prepared_query",
            "transaction_commit",
            "dual_write_insert",
            "dual_write_update",
            "read_v1",
            "read_v2",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres() {
    let env = env().await;
    let report = rust_checks::tokio_postgres_checks(&env).await;
    report.assert_all_ok("tokio-postgres", ALL_CHECKS, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    let env = env().await;
    let report = rust_checks::sqlx_checks(&env).await;
    report.assert_all_ok("sqlx", &checks_except(&["cancel"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg() {
    let env = env().await;
    let run = env.run_program("python", "python3", &["psycopg_compat.py"]).await.unwrap();
    run.assert_all_ok("psycopg", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    let env = env().await;
    let run = env.run_program("python", "python3", &["asyncpg_compat.py"]).await.unwrap();
    run.assert_all_ok("asyncpg", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy() {
    let env = env().await;
    let run = env.run_program("python", "python3", &["sqlalchemy_compat.py"]).await.unwrap();
    run.assert_all_ok("SQLAlchemy", &checks_except(&["copy_in", "copy_out", "copy_into_migrated", "cancel"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let env = env().await;
    let run = env.run_program("node", "node", &["compat.js"]).await.unwrap();
    run.assert_all_ok("node-postgres", &checks_except(&["copy_in", "copy_out", "copy_into_migrated"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    let env = env().await;
    let run = env.run_program("java", "java", &["-cp", "/usr/share/java/postgresql.jar", "Compat.java"]).await.unwrap();
    run.assert_all_ok("pgjdbc", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("cli", "bash", &["psql.sh"]).await.unwrap();
    run.assert_all_ok("psql", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_transaction_mode() {
    let env = pooled_env().await;
    let report = rust_checks::tokio_postgres_checks(&env).await;
    report.assert_all_ok("tokio-postgres", ALL_CHECKS, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("python", "python3", &["psycopg_compat.py"]).await.unwrap();
    run.assert_all_ok("psycopg", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("python", "python3", &["asyncpg_compat.py"]).await.unwrap();
    run.assert_all_ok("asyncpg", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("node", "node", &["compat.js"]).await.unwrap();
    run.assert_all_ok("node-postgres", &checks_except(&["copy_in", "copy_out", "copy_into_migrated"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("java", "java", &["-cp", "/usr/share/java/postgresql.jar", "Compat.java"]).await.unwrap();
    run.assert_all_ok("pgjdbc", ALL_CHECKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("cli", "bash", &["pgbench.sh"]).await.unwrap();
    run.assert_all_ok(
        "pgbench",
        &[
            "connect_scram",
            "copy_in",
            "simple_query",
            "prepared_query",
            "transaction_commit",
            "dual_write_insert",
            "dual_write_update",
            "read_v1",
            "read_v2",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_transaction_mode() {
    let env = pooled_env().await;
    let report = rust_checks::sqlx_checks(&env).await;
    report.assert_all_ok("sqlx", &checks_except(&["cancel"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_transaction_mode() {
    let env = pooled_env().await;
    let run = env.run_program("python", "python3", &["sqlalchemy_compat.py"]).await.unwrap();
    run.assert_all_ok("SQLAlchemy", &checks_except(&["copy_in", "copy_out", "copy_into_migrated", "cancel"]));
}
