//! Shared fixture of the merge_* tests: the `accounts` + `profiles` -> `users` merge
//! (rewrite-rules/examples/users_merge_tables.toml), the sources' seed, a fresh database with a proxy on
//! those rules, and direct reads of the shadow and of every table.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use dualwrite_tests::*;
use tokio_postgres::Client;

pub const MIGRATION: &str = "users_merge_tables";

pub fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rewrite-rules/examples/users_merge_tables.toml")
}

/// Keys 1-20 only in accounts, 21-40 in both, 41-60 only in profiles (every third bio NULL).
pub const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);
    CREATE TABLE profiles (id int PRIMARY KEY, name text NOT NULL, bio text);
    CREATE TABLE users (id int PRIMARY KEY, email text, display_name text, bio text);
    INSERT INTO accounts SELECT g, 'User' || g || '@X.org' FROM generate_series(1, 40) g;
    INSERT INTO profiles SELECT g, 'Name ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'bio ' || g END
      FROM generate_series(21, 60) g;
";

/// `SCHEMA` with every table's key drawing from one sequence (accounts' serial), which has issued no value
/// (registration refuses a key drawing from more than one).
pub fn serial_schema() -> String {
    SCHEMA
        .replacen(" int PRIMARY KEY", " serial PRIMARY KEY", 1)
        .replace(" int PRIMARY KEY", " int PRIMARY KEY DEFAULT nextval('accounts_id_seq')")
}

/// A fresh database holding a schema, and a proxy on the merge's rules.
pub struct Merge {
    pub db: TestDb,
    pub direct: Client,
    pub proxy: TestProxy,
}

impl Merge {
    /// A fresh database with `schema` run on it, then the proxy started on it.
    pub async fn start(schema: &str) -> Merge {
        let db = TestCluster::shared().create_database().await.unwrap();
        let direct = db.connect().await.unwrap();
        direct.batch_execute(schema).await.unwrap();
        let proxy = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
        Merge { db, direct, proxy }
    }
}

/// A session through `proxy` to `db` with `dualwrite.version` v2 from its startup options.
pub async fn v2_session(proxy: &TestProxy, db: &TestDb) -> Client {
    connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(db))).await.unwrap()
}

/// The shadow row of one key, read directly: (email, display_name, bio).
pub type Row = Option<(Option<String>, Option<String>, Option<String>)>;

pub async fn shadow(direct: &Client, id: i32) -> Row {
    direct
        .query_opt("SELECT email, display_name, bio FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

pub fn row(email: Option<&str>, name: Option<&str>, bio: Option<&str>) -> Row {
    Some((email.map(str::to_string), name.map(str::to_string), bio.map(str::to_string)))
}

/// Rows of the sources' join mapped forward that the shadow lacks or holds differently, and the other way.
pub async fn differences(direct: &Client) -> (i64, i64) {
    let mapped =
        "SELECT id, lower(email) AS email, name AS display_name, bio FROM accounts FULL JOIN profiles USING (id)";
    let shadow = "SELECT id, email, display_name, bio FROM users";
    (
        count(direct, &format!("SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) d")).await,
        count(direct, &format!("SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) d")).await,
    )
}

/// Every table's rows (accounts, profiles, users) as text in key order, to compare before and after.
pub async fn contents(direct: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["accounts", "profiles", "users"] {
        let sql = format!("SELECT coalesce(string_agg(t::text, ';' ORDER BY t.id), '') FROM {table} t");
        out.push(direct.query_one(&sql, &[]).await.unwrap().get(0));
    }
    out
}

pub async fn count(direct: &Client, sql: &str) -> i64 {
    direct.query_one(sql, &[]).await.unwrap().get(0)
}

/// Asserts that moving the merge to `complete` is refused (55000): it would retire the sources.
pub async fn complete_is_refused(admin: &Client) {
    let e = admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} complete")).await.unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "55000");
    assert!(
        message
            .starts_with(&format!("cannot move to complete migration \"{MIGRATION}\": it merges several old tables")),
        "{message}"
    );
}

/// Waits until some backend runs a statement containing `fragment` and waits on a lock (`what` names the
/// wait in the failure message).
pub async fn until_blocked(direct: &Client, fragment: &str, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 in query) > 0";
        direct.query_one(sql, &[&fragment]).await.unwrap().get::<_, i64>(0) > 0
    })
    .await;
}
