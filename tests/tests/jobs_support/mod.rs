//! Shared setup of the jobs_* tests: a fresh database with the `users` -> `users_v2` migration (the rules
//! of DESIGN section 2 plus a numeric column whose type differs between the tables), the proxy's dual-write
//! statements for writers, and comparisons of the two tables.

#![allow(dead_code)]

use std::str::FromStr;

use dualwrite_proxy::jobs::TableMapping;
use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_rules::RuleSet;
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

/// The dual-write UPDATE the proxy sends for `UPDATE users SET name = $1, score = score + 1 WHERE id = $2`.
pub const DUAL_UPDATE: &str = "
WITH __dw_primary AS (UPDATE users SET name = $1, score = score + 1 WHERE id = $2 RETURNING *),
     __dw_shadow AS (INSERT INTO users_v2 (id, first_name, last_name, email, score)
                     SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email), score FROM __dw_primary
                     ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                         email = EXCLUDED.email, score = EXCLUDED.score)
SELECT FROM __dw_primary";

/// The dual-write INSERT for `INSERT INTO users VALUES ($1, $2, $3, 1)`.
pub const DUAL_INSERT: &str = "
WITH __dw_primary AS (INSERT INTO users (id, name, email, score) VALUES ($1, $2, $3, 1) RETURNING *),
     __dw_shadow AS (INSERT INTO users_v2 (id, first_name, last_name, email, score)
                     SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email), score FROM __dw_primary
                     ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                         email = EXCLUDED.email, score = EXCLUDED.score)
SELECT FROM __dw_primary";

/// The dual-write DELETE for `DELETE FROM users WHERE id = $1`.
pub const DUAL_DELETE: &str = "
WITH __dw_primary AS (DELETE FROM users WHERE id = $1 RETURNING *),
     __dw_shadow AS (DELETE FROM users_v2 USING __dw_primary WHERE users_v2.id = __dw_primary.id)
SELECT FROM __dw_primary";

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
