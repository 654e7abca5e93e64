//! The driver compatibility matrix (issue 7, tests/compat/README.md): each client library talks to the
//! proxy, with the example migration (users -> users_v2) active, and must pass every check it has an API
//! for. A failing test lists the checks that failed. The `*_transaction_mode` tests run the same checks
//! with the proxy pooling server connections per transaction (`pool_mode = "transaction"`, 2 per pool).

mod compat_support;

use compat_support::{checks_except, rust_checks, CompatEnv, ALL_CHECKS};
use dualwrite_proxy::config::PoolMode;

async fn env(mode: PoolMode) -> CompatEnv {
    CompatEnv::start_in(mode).await.expect("cluster, compat schema and proxy")
}

/// One driver's checks as two tests: `$session` against a session-mode proxy, `$pooled` against a
/// transaction-mode one; the same checks must pass in both.
macro_rules! driver {
    ($session:ident, $pooled:ident, |$env:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $session() {
            let $env = env(PoolMode::Session).await;
            $body
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pooled() {
            let $env = env(PoolMode::Transaction).await;
            $body
        }
    };
}

driver!(psql, psql_transaction_mode, |env| {
    let run = env.run_program("cli", "bash", &["psql.sh"]).await.unwrap();
    run.assert_all_ok("psql", ALL_CHECKS);
});

driver!(pgbench, pgbench_transaction_mode, |env| {
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
});

driver!(tokio_postgres, tokio_postgres_transaction_mode, |env| {
    let report = rust_checks::tokio_postgres_checks(&env).await;
    report.assert_all_ok("tokio-postgres", ALL_CHECKS, "");
});

driver!(sqlx, sqlx_transaction_mode, |env| {
    let report = rust_checks::sqlx_checks(&env).await;
    report.assert_all_ok("sqlx", &checks_except(&["cancel"]), "");
});

driver!(psycopg, psycopg_transaction_mode, |env| {
    let run = env.run_program("python", "python3", &["psycopg_compat.py"]).await.unwrap();
    run.assert_all_ok("psycopg", ALL_CHECKS);
});

driver!(asyncpg, asyncpg_transaction_mode, |env| {
    let run = env.run_program("python", "python3", &["asyncpg_compat.py"]).await.unwrap();
    run.assert_all_ok("asyncpg", ALL_CHECKS);
});

driver!(sqlalchemy, sqlalchemy_transaction_mode, |env| {
    let run = env.run_program("python", "python3", &["sqlalchemy_compat.py"]).await.unwrap();
    run.assert_all_ok("SQLAlchemy", &checks_except(&["copy_in", "copy_out", "copy_into_migrated", "cancel"]));
});

driver!(node_postgres, node_postgres_transaction_mode, |env| {
    let run = env.run_program("node", "node", &["compat.js"]).await.unwrap();
    run.assert_all_ok("node-postgres", &checks_except(&["copy_in", "copy_out", "copy_into_migrated"]));
});

driver!(pgjdbc, pgjdbc_transaction_mode, |env| {
    let run = env.run_program("java", "java", &["-cp", "/usr/share/java/postgresql.jar", "Compat.java"]).await.unwrap();
    run.assert_all_ok("pgjdbc", ALL_CHECKS);
});
