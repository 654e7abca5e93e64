//! The checks of tests/compat/README.md for the Rust drivers, run in-process (sqlx is a dev-dependency of
//! this crate, so it cannot be a separate program): tokio-postgres and sqlx.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use futures::{SinkExt, StreamExt};
use sqlx::{Connection, Executor, Row};
use tokio_postgres::error::SqlState;

use super::{CompatEnv, Report};

const V1_NAME: &str = "Ada Lovelace";
const V1_EMAIL: &str = "Ada.Lovelace@Example.ORG";
const V2_ROW: (&str, &str, &str) = ("Ada", "Lovelace", "ada.lovelace@example.org");
const UPDATED_NAME: &str = "Grace Hopper";
const UPDATED_V2: (&str, &str) = ("Grace", "Hopper");

fn expect_eq<T: PartialEq + std::fmt::Debug>(actual: T, expected: T, what: &str) -> anyhow::Result<()> {
    ensure!(actual == expected, "{what}: expected {expected:?}, got {actual:?}");
    Ok(())
}

/// A direct connection to the upstream, to look at both tables.
async fn upstream(env: &CompatEnv) -> anyhow::Result<tokio_postgres::Client> {
    dualwrite_tests::connect(&env.upstream_url()).await
}

/// `(name, email)` in users and `(first_name, last_name, email)` in users_v2 for `id`, each if present.
async fn both_tables(
    env: &CompatEnv,
    id: i32,
) -> anyhow::Result<(Option<(String, String)>, Option<(String, String, String)>)> {
    let up = upstream(env).await?;
    let old = up.query_opt("SELECT name, email FROM users WHERE id = $1", &[&id]).await?.map(|r| (r.get(0), r.get(1)));
    let new = up
        .query_opt("SELECT first_name, last_name, email FROM users_v2 WHERE id = $1", &[&id])
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    Ok((old, new))
}

fn owned_v2(row: (&str, &str, &str)) -> Option<(String, String, String)> {
    Some((row.0.into(), row.1.into(), row.2.into()))
}

async fn expect_dual_written(env: &CompatEnv, id: i32) -> anyhow::Result<()> {
    let (old, new) = both_tables(env, id).await?;
    expect_eq(old, Some((V1_NAME.into(), V1_EMAIL.into())), "row in users")?;
    expect_eq(new, owned_v2(V2_ROW), "row in users_v2")
}

async fn expect_updated(env: &CompatEnv, id: i32) -> anyhow::Result<()> {
    let (_, new) = both_tables(env, id).await?;
    expect_eq(
        new.map(|(f, l, _)| (f, l)),
        Some((UPDATED_V2.0.into(), UPDATED_V2.1.into())),
        "users_v2 after the update",
    )
}

async fn expect_absent(env: &CompatEnv, id: i32) -> anyhow::Result<()> {
    let (old, new) = both_tables(env, id).await?;
    expect_eq((old.is_some(), new.is_some()), (false, false), "row present in users, users_v2")
}

async fn upstream_count(env: &CompatEnv, sql: &str) -> anyhow::Result<i64> {
    Ok(upstream(env).await?.query_one(sql, &[]).await?.get(0))
}

fn sqlstate_of(error: &tokio_postgres::Error) -> Option<&SqlState> {
    error.as_db_error().map(|e| e.code())
}

fn need(id: Option<i32>) -> anyhow::Result<i32> {
    id.ok_or_else(|| anyhow!("no row: dual_write_insert failed"))
}

/// tokio-postgres: every check of the README.
pub async fn tokio_postgres_checks(env: &CompatEnv) -> Report {
    let mut report = Report::default();
    let url = env.proxy_url();
    let proxy = || dualwrite_tests::connect(&url);

    report.record(
        "connect_scram",
        async {
            let user: String = proxy().await?.query_one("SELECT current_user::text", &[]).await?.get(0);
            expect_eq(user.as_str(), dualwrite_tests::SCRAM_USER, "current_user")
        }
        .await,
    );

    report.record(
        "simple_query",
        async {
            let messages = proxy().await?.simple_query("SELECT 1; SELECT 'two'").await?;
            let values: Vec<String> = messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            expect_eq(values, vec!["1".to_owned(), "two".to_owned()], "results")
        }
        .await,
    );

    report.record(
        "prepared_query",
        async {
            let client = proxy().await?;
            let statement = client.prepare("SELECT $1::int + 1, $2::text").await?;
            for n in 0..3i32 {
                let row = client.query_one(&statement, &[&n, &"x"]).await?;
                expect_eq((row.get::<_, i32>(0), row.get::<_, String>(1)), (n + 1, "x".to_owned()), "prepared result")?;
            }
            Ok(())
        }
        .await,
    );

    report.record(
        "transaction_commit",
        async {
            let mut client = proxy().await?;
            let tx = client.transaction().await?;
            tx.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", &[&1i32, &"kept"]).await?;
            tx.commit().await?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id = 1").await?, 1, "committed rows")
        }
        .await,
    );

    report.record(
        "transaction_rollback",
        async {
            let mut client = proxy().await?;
            let tx = client.transaction().await?;
            tx.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", &[&2i32, &"dropped"]).await?;
            tx.rollback().await?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id = 2").await?, 0, "rolled-back rows")
        }
        .await,
    );

    let mut inserted = None;
    report.record(
        "dual_write_insert",
        async {
            let row = proxy()
                .await?
                .query_one("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", &[&V1_NAME, &V1_EMAIL])
                .await?;
            let id: i32 = row.get(0);
            inserted = Some(id);
            expect_dual_written(env, id).await
        }
        .await,
    );

    report.record(
        "dual_write_update",
        async {
            let id = need(inserted)?;
            let client = proxy().await?;
            let outcome = async {
                let n = client.execute("UPDATE users SET name = $1 WHERE id = $2", &[&UPDATED_NAME, &id]).await?;
                expect_eq(n, 1, "rows updated")?;
                expect_updated(env, id).await
            }
            .await;
            client.execute("UPDATE users SET name = $1 WHERE id = $2", &[&V1_NAME, &id]).await?;
            outcome
        }
        .await,
    );

    report.record(
        "dual_write_rollback",
        async {
            let mut client = proxy().await?;
            let tx = client.transaction().await?;
            let id: i32 = tx
                .query_one("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", &[&"Rolled Back", &"r@b"])
                .await?
                .get(0);
            tx.rollback().await?;
            expect_absent(env, id).await
        }
        .await,
    );

    report.record(
        "read_v1",
        async {
            let id = need(inserted)?;
            let client = dualwrite_tests::connect(&env.proxy_url_as_version("v1")).await?;
            let row = client.query_one("SELECT name, email FROM users WHERE id = $1", &[&id]).await?;
            expect_eq((row.get::<_, String>(0), row.get::<_, String>(1)), (V1_NAME.into(), V1_EMAIL.into()), "v1 row")
        }
        .await,
    );

    report.record(
        "read_v2",
        async {
            let id = need(inserted)?;
            let client = dualwrite_tests::connect(&env.proxy_url_as_version("v2")).await?;
            let row = client.query_one("SELECT first_name, last_name, email FROM users WHERE id = $1", &[&id]).await?;
            expect_eq(Some((row.get(0), row.get(1), row.get(2))), owned_v2(V2_ROW), "v2 row")
        }
        .await,
    );

    report.record(
        "show_version",
        async {
            let client = dualwrite_tests::connect(&env.proxy_url_as_version("v2")).await?;
            let row = client.query_one("SHOW dualwrite.version", &[]).await?;
            expect_eq(row.get::<_, String>(0).as_str(), "v2", "dualwrite.version")
        }
        .await,
    );

    report.record(
        "copy_in",
        async {
            let client = proxy().await?;
            let sink = client.copy_in("COPY notes (id, body) FROM STDIN").await?;
            futures::pin_mut!(sink);
            let data: String = (100..110).map(|n| format!("{n}\tcopied {n}\n")).collect();
            sink.send(bytes::Bytes::from(data)).await?;
            expect_eq(sink.finish().await?, 10, "rows copied")?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id >= 100").await?, 10, "copied rows")
        }
        .await,
    );

    report.record(
        "copy_out",
        async {
            let client = proxy().await?;
            let stream =
                client.copy_out("COPY (SELECT id, body FROM notes WHERE id >= 100 ORDER BY id) TO STDOUT").await?;
            futures::pin_mut!(stream);
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
            }
            let text = String::from_utf8(data)?;
            expect_eq(text.lines().count(), 10, "rows copied out")?;
            expect_eq(text.lines().next(), Some("100\tcopied 100"), "first row")
        }
        .await,
    );

    report.record(
        "copy_into_migrated",
        async {
            // tokio-postgres sends COPY through the extended protocol (Parse, Bind, Execute), which cannot
            // carry the proxy's staging statements: refused with 0A000, nothing written.
            let before = upstream_count(env, "SELECT count(*) FROM users").await?;
            let client = proxy().await?;
            let outcome: Result<u64, tokio_postgres::Error> = async {
                let sink = client.copy_in("COPY users (name, email) FROM STDIN").await?;
                futures::pin_mut!(sink);
                sink.send(bytes::Bytes::from_static(b"Copy Person\tcopy@example.org\n")).await?;
                sink.finish().await
            }
            .await;
            match outcome {
                Ok(_) => bail!("COPY into the migrated table was accepted"),
                Err(e) => expect_eq(sqlstate_of(&e), Some(&SqlState::FEATURE_NOT_SUPPORTED), "SQLSTATE")?,
            }
            expect_eq(upstream_count(env, "SELECT count(*) FROM users").await?, before, "rows in users")
        }
        .await,
    );

    report.record(
        "cancel",
        async {
            let client = proxy().await?;
            let direct = upstream(env).await?;
            let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            let token = client.cancel_token();
            let started = Instant::now();
            let (outcome, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), async {
                dualwrite_tests::wait_until_running(&direct, pid, "SELECT pg_sleep(30)").await;
                token.cancel_query(tokio_postgres::NoTls).await
            });
            cancelled.context("sending the cancel")?;
            match outcome {
                Ok(_) => bail!("pg_sleep(30) was not cancelled"),
                Err(e) => expect_eq(sqlstate_of(&e), Some(&SqlState::QUERY_CANCELED), "SQLSTATE")?,
            }
            ensure!(started.elapsed() < Duration::from_secs(20), "cancel took too long");
            expect_eq(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1, "query after the cancel")
        }
        .await,
    );

    report
}

/// sqlx: the README's checks except `cancel` (sqlx has no cancel API: dropping a query future does not
/// send a CancelRequest).
pub async fn sqlx_checks(env: &CompatEnv) -> Report {
    let mut report = Report::default();
    let url = env.proxy_url();
    let (v1_url, v2_url) = (env.proxy_url_as_version("v1"), env.proxy_url_as_version("v2"));
    let proxy = || sqlx::PgConnection::connect(&url);

    report.record(
        "connect_scram",
        async {
            let mut conn = proxy().await?;
            let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut conn).await?;
            expect_eq(user.as_str(), dualwrite_tests::SCRAM_USER, "current_user")
        }
        .await,
    );

    report.record(
        "simple_query",
        async {
            let mut conn = proxy().await?;
            // raw_sql: one simple Query message, several statements allowed.
            let rows = conn.fetch_all(sqlx::raw_sql("SELECT 1::int4 AS n; SELECT 2::int4 AS n")).await?;
            let values: Vec<i32> = rows.iter().map(|r| r.get::<i32, _>(0)).collect();
            expect_eq(values, vec![1, 2], "results")
        }
        .await,
    );

    report.record(
        "prepared_query",
        async {
            let mut conn = proxy().await?;
            for n in 0..3i32 {
                // sqlx prepares each query under a name once per connection and caches it.
                let (sum, text): (i32, String) =
                    sqlx::query_as("SELECT $1::int4 + 1, $2::text").bind(n).bind("x").fetch_one(&mut conn).await?;
                expect_eq((sum, text), (n + 1, "x".to_owned()), "prepared result")?;
            }
            Ok(())
        }
        .await,
    );

    report.record(
        "transaction_commit",
        async {
            let mut conn = proxy().await?;
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
                .bind(1i32)
                .bind("kept")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id = 1").await?, 1, "committed rows")
        }
        .await,
    );

    report.record(
        "transaction_rollback",
        async {
            let mut conn = proxy().await?;
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
                .bind(2i32)
                .bind("dropped")
                .execute(&mut *tx)
                .await?;
            tx.rollback().await?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id = 2").await?, 0, "rolled-back rows")
        }
        .await,
    );

    let mut inserted = None;
    report.record(
        "dual_write_insert",
        async {
            let mut conn = proxy().await?;
            let id: i32 = sqlx::query_scalar("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id")
                .bind(V1_NAME)
                .bind(V1_EMAIL)
                .fetch_one(&mut conn)
                .await?;
            inserted = Some(id);
            expect_dual_written(env, id).await
        }
        .await,
    );

    report.record(
        "dual_write_update",
        async {
            let id = need(inserted)?;
            let mut conn = proxy().await?;
            let outcome = async {
                let done = sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
                    .bind(UPDATED_NAME)
                    .bind(id)
                    .execute(&mut conn)
                    .await?;
                expect_eq(done.rows_affected(), 1, "rows updated")?;
                expect_updated(env, id).await
            }
            .await;
            sqlx::query("UPDATE users SET name = $1 WHERE id = $2").bind(V1_NAME).bind(id).execute(&mut conn).await?;
            outcome
        }
        .await,
    );

    report.record(
        "dual_write_rollback",
        async {
            let mut conn = proxy().await?;
            let mut tx = conn.begin().await?;
            let id: i32 = sqlx::query_scalar("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id")
                .bind("Rolled Back")
                .bind("r@b")
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            expect_absent(env, id).await
        }
        .await,
    );

    report.record(
        "read_v1",
        async {
            let id = need(inserted)?;
            let mut conn = sqlx::PgConnection::connect(&v1_url).await?;
            let row: (String, String) =
                sqlx::query_as("SELECT name, email FROM users WHERE id = $1").bind(id).fetch_one(&mut conn).await?;
            expect_eq(row, (V1_NAME.into(), V1_EMAIL.into()), "v1 row")
        }
        .await,
    );

    report.record(
        "read_v2",
        async {
            let id = need(inserted)?;
            let mut conn = sqlx::PgConnection::connect(&v2_url).await?;
            let row: (String, String, String) =
                sqlx::query_as("SELECT first_name, last_name, email FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await?;
            expect_eq(Some(row), owned_v2(V2_ROW), "v2 row")
        }
        .await,
    );

    report.record(
        "show_version",
        async {
            let mut conn = sqlx::PgConnection::connect(&v2_url).await?;
            let row = conn.fetch_one(sqlx::raw_sql("SHOW dualwrite.version")).await?;
            expect_eq(row.get::<String, _>(0).as_str(), "v2", "dualwrite.version")
        }
        .await,
    );

    report.record(
        "copy_in",
        async {
            let mut conn = proxy().await?;
            let mut copy = conn.copy_in_raw("COPY notes (id, body) FROM STDIN").await?;
            let data: String = (100..110).map(|n| format!("{n}\tcopied {n}\n")).collect();
            copy.send(data.into_bytes()).await?;
            expect_eq(copy.finish().await?, 10, "rows copied")?;
            expect_eq(upstream_count(env, "SELECT count(*) FROM notes WHERE id >= 100").await?, 10, "copied rows")
        }
        .await,
    );

    report.record(
        "copy_out",
        async {
            let mut conn = proxy().await?;
            let mut stream =
                conn.copy_out_raw("COPY (SELECT id, body FROM notes WHERE id >= 100 ORDER BY id) TO STDOUT").await?;
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
            }
            let text = String::from_utf8(data)?;
            expect_eq(text.lines().count(), 10, "rows copied out")?;
            expect_eq(text.lines().next(), Some("100\tcopied 100"), "first row")
        }
        .await,
    );

    report.record(
        "copy_into_migrated",
        async {
            // sqlx sends COPY FROM STDIN as a simple Query: the proxy dual-writes it.
            let mut conn = proxy().await?;
            let mut copy = conn.copy_in_raw("COPY users (name, email) FROM STDIN").await?;
            copy.send(&b"Copy Person\tCOPY@Example.org\n"[..]).await?;
            expect_eq(copy.finish().await?, 1, "rows copied")?;
            let both = "SELECT (SELECT count(*) FROM users WHERE email = 'COPY@Example.org') * 10 + \
                        (SELECT count(*) FROM users_v2 WHERE first_name = 'Copy' AND last_name = 'Person' \
                        AND email = 'copy@example.org')";
            expect_eq(upstream_count(env, both).await?, 11, "one row in users and one in users_v2")
        }
        .await,
    );

    report
}
