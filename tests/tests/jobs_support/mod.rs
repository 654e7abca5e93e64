//! Shared setup of the jobs_* tests: a fresh database with the `users` -> `users_v2` migration (the example
//! migration's rules plus a numeric column whose type differs between the tables), the proxy's dual-write
//! statements (from the rewriter) for writers, and comparisons of the two tables.

#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;

use dualwrite_proxy::jobs::TableMapping;
use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_rules::{MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side};
use dualwrite_tests::{TestCluster, TestDb};
use tokio_postgres::Client;

pub const MIGRATION: &str = "users_split_name";

pub const RULES: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "public.users"
shadow = "public.users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }

[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
email      = "lower(email)"
score      = "score"

[migration.backward]
id    = "id"
name  = "first_name || ' ' || last_name"
email = "email"
score = "score"
"#;

/// A database holding `rows` users (ids 1..=rows) and an empty shadow.
pub struct Fixture {
    pub db: TestDb,
    pub client: Client,
    pub config: PgTarget,
    pub mapping: TableMapping,
}

pub async fn fixture(rows: i64) -> Fixture {
    let db = TestCluster::shared().create_database().await.expect("database");
    let mut client = db.connect().await.expect("connect");
    dualwrite_proxy::state::schema::ensure_schema(&mut client).await.expect("state tables");
    client
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text, score numeric(10,2));
             CREATE TABLE users_v2 (id bigint PRIMARY KEY, first_name text, last_name varchar(100), email text,
                                    score numeric(12,3), created timestamptz DEFAULT now());",
        )
        .await
        .expect("tables");
    client
        .execute(
            "INSERT INTO users SELECT g, 'first' || g || ' last' || g, 'E' || g || '@Example.COM', (g % 1000) / 7.0
             FROM generate_series(1, $1::int8) g",
            &[&rows],
        )
        .await
        .expect("rows");
    client.batch_execute("ANALYZE users").await.expect("analyze");
    let rules = RuleSet::from_toml(RULES, "jobs test rules").expect("rules");
    let mapping = TableMapping::from_rules(&rules, MIGRATION).expect("mapping");
    let config = PgTarget::from_str(&db.url()).expect("config");
    Fixture { db, client, config, mapping }
}

/// What a client on the old version sends for an UPDATE of a user's name (and score).
pub const CLIENT_UPDATE: &str = "UPDATE users SET name = $1, score = score + 1 WHERE id = $2";
/// What a client sends to insert a user.
pub const CLIENT_INSERT: &str = "INSERT INTO users VALUES ($1, $2, $3, 1)";
/// What a client sends to delete a user.
pub const CLIENT_DELETE: &str = "DELETE FROM users WHERE id = $1";

/// The statement the proxy sends upstream for the client statement `sql` of a session on the old version
/// during dual write: the rewriter's own dual write, so the writers race the backfill with the real thing.
pub fn dual_write(sql: &str) -> String {
    let rewriter = Rewriter::new(Arc::new(RuleSet::from_toml(RULES, "jobs test rules").expect("rules")), 16);
    let route = Route::uniform(rewriter.rules(), MigrationRoute::own(Phase::DualWrite, Side::Old));
    match &*rewriter.rewrite(sql, &route) {
        Plan::Rewritten { sql: rewritten, writes: true, .. } => rewritten.clone(),
        other => panic!("the rewriter did not dual-write {sql:?}: {other:?}"),
    }
}

/// Rows that differ between the old table mapped forward and the shadow, counted independently of the
/// verifier (EXCEPT both ways over the whole tables).
pub async fn independent_difference(client: &Client) -> i64 {
    client
        .query_one(
            "WITH o AS (SELECT id, split_part(name, ' ', 1)::text AS first_name,
                               split_part(name, ' ', 2)::varchar(100) AS last_name, lower(email) AS email,
                               score::numeric(12,3) AS score FROM users),
                  s AS (SELECT id, first_name, last_name, email, score FROM users_v2)
             SELECT (SELECT count(*) FROM (SELECT * FROM o EXCEPT SELECT * FROM s) a)
                  + (SELECT count(*) FROM (SELECT * FROM s EXCEPT SELECT * FROM o) b)",
            &[],
        )
        .await
        .expect("difference")
        .get(0)
}

/// The backfill's state row: (state, rows_done, rows_total, last_key as text).
pub async fn backfill_row(client: &Client) -> Option<(String, i64, Option<i64>, Option<String>)> {
    client
        .query_opt(
            "SELECT state, rows_done, rows_total, last_key::text FROM dualwrite.backfill WHERE migration = $1",
            &[&MIGRATION],
        )
        .await
        .expect("backfill row")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// A small deterministic PRNG for writers (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
