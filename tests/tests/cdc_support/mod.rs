//! Shared setup of the cdc_* tests: a database with the `users` -> `users_v2` migration and the objects
//! that write `users` behind the proxy's back (a cascading foreign key, a trigger on another table, a
//! function, a writable view), a proxy with the change-data-capture watch on, and comparisons of the two
//! tables and of what the watch recorded; `merge`, the same for the merge migration of the cdc_merge* tests.

#![allow(dead_code)]

pub mod merge;

use std::time::Duration;

use dualwrite_proxy::cdc::CdcConfig;
use dualwrite_proxy::config::Config;
use dualwrite_tests::{control, eventually, ProxyProcess, TestCluster, TestDb, TestProxy};
use tokio_postgres::Client;

pub const MIGRATION: &str = "users_split_name";

/// The rules; `{on_bypass}` is replaced by the test.
const RULES: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "public.users"
shadow = "public.users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
on_bypass = "{on_bypass}"
accept_unseen_writers = [{accept}]

[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
email      = "lower(email)"
account    = "account"

[migration.backward]
id      = "id"
name    = "first_name || ' ' || last_name"
email   = "email"
account = "account"
"#;

/// The writers of SCHEMA that bypass the proxy on purpose: registration refuses them unless accepted.
const SCHEMA_WRITERS: &str = r#""fk:users_account_fkey", "trigger:public.signups.signups_user",
    "function:public.rename_user(bigint, text)", "view:public.user_directory""#;

pub fn rules(on_bypass: &str) -> String {
    rules_accepting(on_bypass, SCHEMA_WRITERS)
}

/// The rules accepting the unseen writers `accept` (quoted identifiers, comma-separated) instead of
/// [`SCHEMA`]'s, for a test with a schema of its own.
pub fn rules_accepting(on_bypass: &str, accept: &str) -> String {
    RULES.replace("{on_bypass}", on_bypass).replace("{accept}", accept)
}

/// Tables, the objects that bypass the proxy, and `accounts` a1..a3.
pub const SCHEMA: &str = "
CREATE TABLE accounts (code text PRIMARY KEY);
INSERT INTO accounts VALUES ('a1'), ('a2'), ('a3');
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text,
                    account text REFERENCES accounts (code) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE users_v2 (id bigint PRIMARY KEY, first_name text, last_name text, email text, account text);
CREATE TABLE signups (user_id bigint, name text);
CREATE FUNCTION signups_create_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO users (id, name) VALUES (NEW.user_id, NEW.name); RETURN NEW; END $$;
CREATE TRIGGER signups_user AFTER INSERT ON signups FOR EACH ROW EXECUTE FUNCTION signups_create_user();
CREATE FUNCTION rename_user(bigint, text) RETURNS void LANGUAGE sql AS $$ UPDATE users SET name = $2 WHERE id = $1 $$;
CREATE VIEW user_directory AS SELECT id, name, email FROM users;
";

/// The watch's settings for tests: on, with the default WAL limit unless `max_retained_wal_mb` is given.
pub fn watch_on(max_retained_wal_mb: Option<u64>) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.cdc = CdcConfig { enabled: true, ..CdcConfig::default() };
        if let Some(mb) = max_retained_wal_mb {
            config.cdc.max_retained_wal_mb = mb;
        }
    }
}

pub struct Fixture {
    pub db: TestDb,
    /// A direct connection (superuser), bypassing the proxy.
    pub direct: Client,
}

/// A fresh database on `cluster` with the schema.
pub async fn fixture_on(cluster: &TestCluster) -> Fixture {
    let db = cluster.create_database().await.expect("database");
    let direct = db.connect().await.expect("connect");
    direct.batch_execute(SCHEMA).await.expect("schema");
    Fixture { db, direct }
}

pub async fn fixture() -> Fixture {
    fixture_on(&TestCluster::shared()).await
}

/// A proxy for the fixture's database with the watch on.
pub async fn proxy(f: &Fixture, on_bypass: &str, max_retained_wal_mb: Option<u64>) -> TestProxy {
    TestProxy::with_rules_toml_and(&f.db, &rules(on_bypass), watch_on(max_retained_wal_mb)).await.expect("proxy")
}

/// A `dualwrite` process for the fixture's database with the watch on, for tests that kill a leader
/// with SIGKILL as a crash would; the rules file lives as long as it.
pub struct WatchProcess {
    pub process: ProxyProcess,
    _rules: tempfile::NamedTempFile,
}

pub async fn process_proxy(db: &TestDb, on_bypass: &str) -> WatchProcess {
    let rules_file = tempfile::Builder::new().suffix(".toml").tempfile().expect("rules file");
    std::fs::write(rules_file.path(), rules(on_bypass)).expect("rules");
    let upstream = db.url();
    let rules_path = rules_file.path().to_str().expect("path").to_owned();
    let args =
        ["--upstream", &upstream, "--rules", &rules_path, "--admin-role", db.cluster.superuser(), "--cdc", "true"];
    let process = ProxyProcess::serve(&args).await.expect("dualwrite process");
    WatchProcess { process, _rules: rules_file }
}

/// Which instance leads the watch, as its row says (`proxy pid <pid>`), while it streams.
pub async fn streaming_leader(client: &Client) -> Option<String> {
    client
        .query_opt("SELECT leader FROM dualwrite.cdc_watch WHERE id = 1 AND state = 'watching'", &[])
        .await
        .expect("cdc_watch")
        .and_then(|r| r.get(0))
}

/// The walsender streaming this database's watch slot, if one does.
pub async fn slot_walsender(client: &Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE database = current_database() \
             AND slot_name LIKE 'dualwrite_cdc_%' AND active",
            &[],
        )
        .await
        .expect("slots")
        .and_then(|r| r.get(0))
}

/// Rows that differ between the old table mapped forward and the shadow (EXCEPT both ways, independent of
/// the proxy's own comparison).
pub async fn difference(client: &Client) -> i64 {
    client
        .query_one(
            "WITH o AS (SELECT id, split_part(name, ' ', 1) AS first_name, split_part(name, ' ', 2) AS last_name,
                               lower(email) AS email, account FROM users),
                  s AS (SELECT id, first_name, last_name, email, account FROM users_v2)
             SELECT (SELECT count(*) FROM (SELECT * FROM o EXCEPT SELECT * FROM s) a)
                  + (SELECT count(*) FROM (SELECT * FROM s EXCEPT SELECT * FROM o) b)",
            &[],
        )
        .await
        .expect("difference")
        .get(0)
}

/// One recorded bypass: (kind, side, key as jsonb text, repaired).
pub type Recorded = (String, String, Option<String>, bool);

pub async fn bypasses(client: &Client) -> Vec<Recorded> {
    client
        .query("SELECT kind, side, key::text, repaired_at IS NOT NULL FROM dualwrite.cdc_bypasses ORDER BY id", &[])
        .await
        .expect("bypasses")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The watch's stored state (`state`, `detail`), once it wrote one.
pub async fn watch_state(client: &Client) -> Option<(String, Option<String>)> {
    client
        .query_opt("SELECT state, detail FROM dualwrite.cdc_watch WHERE id = 1", &[])
        .await
        .expect("cdc_watch")
        .map(|r| (r.get(0), r.get(1)))
}

/// Whether this database's watch slot exists.
pub async fn slot_exists(client: &Client) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() \
             AND slot_name LIKE 'dualwrite_cdc_%')",
            &[],
        )
        .await
        .expect("slots")
        .get(0)
}

/// Waits until the watch streams (its state row says `watching`).
pub async fn until_watching(client: &Client) {
    eventually(Duration::from_secs(30), "the watch streams", || async {
        watch_state(client).await.is_some_and(|(state, _)| state == "watching")
    })
    .await;
}

/// Waits until the watch's leader (the backend named `dualwrite cdc watch` that holds an advisory lock)
/// has started a query `passes` seconds or more after now, by the server's clock. Its loop sleeps a second
/// between passes, each of which queries the state row first, so at least `passes - 1` whole passes began
/// and ended meanwhile: what a test asserts afterwards held through them.
pub async fn until_the_leader_has_looped(client: &Client, passes: u32) {
    let since: String = client.query_one("SELECT clock_timestamp()::text", &[]).await.expect("clock").get(0);
    let later = "SELECT EXISTS (SELECT FROM pg_stat_activity
                                WHERE application_name = 'dualwrite cdc watch'
                                  AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)
                                  AND query_start >= $1::text::timestamptz + make_interval(secs => $2::int4))";
    let passes = passes as i32;
    eventually(Duration::from_secs(30), "the watch's leader goes round its loop", || async {
        client.query_one(later, &[&since, &passes]).await.expect("pg_stat_activity").get::<_, bool>(0)
    })
    .await;
}

/// `DUALWRITE STATUS` through the proxy, as (column, value) pairs of the migration's row.
pub async fn status(proxy_client: &Client) -> Vec<(String, Option<String>)> {
    control(proxy_client, "DUALWRITE STATUS").await
}

pub fn column(status: &[(String, Option<String>)], name: &str) -> Option<String> {
    status.iter().find(|(c, _)| c == name).and_then(|(_, v)| v.clone())
}
