//! Every rewritten write runs on real Postgres 15, and afterwards the shadow table must equal the old
//! table under the forward mapping, row for row (and, for the orders example whose mappings are inverses,
//! the old table the shadow under the backward mapping). For old-shaped statements the client-visible answer (affected-row count, RETURNING columns and,
//! for deterministic statements, values) is also compared with what the original statement returns when
//! run alone inside a rolled-back transaction.

use std::sync::Arc;

use dualwrite_rules::quote_ident;
use dualwrite_rules::{Migration, MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side, TagRewrite};
use dualwrite_tests::TestCluster;
use tokio_postgres::{Client, SimpleQueryMessage};

const RULES: &str = concat!(
    include_str!("../../rewrite-rules/examples/users_split_name.toml"),
    "\n",
    include_str!("../../rewrite-rules/examples/orders_amount_numeric.toml")
);

const SCHEMA: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL DEFAULT 'Nobody Yet', email text);
    CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
    CREATE TABLE orders (shop_id int, id bigint, amount_cents int NOT NULL, meta text,
                         placed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shop_id, id));
    CREATE TABLE orders_v2 (shop_id int, id bigint, amount numeric(12,2) NOT NULL, attributes jsonb,
                            placed_at timestamptz NOT NULL, PRIMARY KEY (shop_id, id));
    CREATE TABLE accounts (user_id int, email text, balance int);
    CREATE TABLE staging (id int, name text, email text, batch int);
    CREATE TABLE banned (email text);
    INSERT INTO accounts VALUES (1, 'ONE@example.com', 10), (2, 'two@example.com', 20), (3, NULL, 30);
    INSERT INTO staging VALUES (100, 'Stan Staged', 'STAN@x', 1), (101, 'Stella Staged', NULL, 1),
                               (102, 'Not Me', 'no@x', 2);
    INSERT INTO banned VALUES ('spam@x');
    SELECT setval('users_id_seq', 1000);
";

/// (session version, phase, statement, answer deterministic enough to compare values with the original)
const WRITES: &[(Side, Phase, &str, bool)] = &[
    (Side::Old, Phase::DualWrite, "INSERT INTO users (id, name, email) VALUES (1, 'Ada Lovelace', 'ADA@x'), (2, 'Alan Turing', 'alan@X'), (3, 'Spam Bot', 'spam@x')", true),
    (Side::Old, Phase::DualWrite, "INSERT INTO users (id, name, email) VALUES (4, 'Grace Hopper', 'G@h') RETURNING id, users.name AS full_name, *", true),
    (Side::Old, Phase::DualWrite, "INSERT INTO users (id, name, email) SELECT id, name, email FROM staging WHERE batch = 1", true),
    (Side::Old, Phase::DualWrite, "INSERT INTO users (name) VALUES ('Serial Person') RETURNING id", false),
    (Side::Old, Phase::DualWrite, "INSERT INTO users DEFAULT VALUES", false),
    (Side::Old, Phase::DualWrite, "INSERT INTO users (id, name) VALUES (1, 'Ignored Dup'), (5, 'Edsger Dijkstra') ON CONFLICT DO NOTHING RETURNING id", true),
    (Side::Old, Phase::DualWrite, "INSERT INTO public.users AS u (id, name, email) VALUES (2, 'Alan Mathison', 'am@x') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name WHERE u.email IS NOT NULL RETURNING u.id, u.name", true),
    (Side::Old, Phase::DualWrite, "UPDATE users SET name = 'Ada King' WHERE id = 1", true),
    (Side::Old, Phase::DualWrite, "UPDATE users SET (name, email) = ('Grace Murray', 'GRACE@h') WHERE id = 4 RETURNING *", true),
    (Side::Old, Phase::DualWrite, "UPDATE users u SET email = a.email FROM accounts a WHERE a.user_id = u.id AND a.email IS NOT NULL RETURNING u.id, u.email", true),
    (Side::Old, Phase::DualWrite, "WITH s AS (SELECT 100 AS id) UPDATE users SET email = NULL WHERE id IN (SELECT id FROM s)", true),
    (Side::Old, Phase::DualWrite, "/* app='test' */ DELETE FROM users USING banned b WHERE b.email = users.email RETURNING users.*", true),
    (Side::Old, Phase::DualWrite, "DELETE FROM users WHERE id = 101", true),
    (Side::Old, Phase::DualWrite, "UPDATE users SET email = upper(email) WHERE id > 1000", true),
    (Side::Old, Phase::Cutover, "UPDATE users SET email = 'ada@new' WHERE id = 1 RETURNING email", true),
    (Side::New, Phase::Cutover, "INSERT INTO users (id, first_name, last_name, email) VALUES (20, 'Barbara', 'Liskov', 'bl@x') RETURNING id, first_name", false),
    (Side::New, Phase::Cutover, "INSERT INTO users (id, first_name, last_name, email) VALUES (20, 'Barbara', 'Liskov', 'liskov@x') ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email", false),
    (Side::New, Phase::DualWrite, "UPDATE users SET last_name = 'Jones' WHERE email = 'liskov@x'", false),
    (Side::New, Phase::Cutover, "UPDATE users SET first_name = 'Kay' WHERE id IN (SELECT id FROM users WHERE last_name = 'Jones')", false),
    (Side::New, Phase::Cutover, "DELETE FROM users WHERE id = 5", false),
    (Side::Old, Phase::DualWrite, "INSERT INTO orders (shop_id, id, amount_cents, meta) VALUES (1, 1, 1234, '{\"gift\": true}'), (1, 2, 500, NULL), (2, 1, 99, '[]')", false),
    (Side::Old, Phase::DualWrite, "UPDATE orders SET amount_cents = amount_cents + 100 WHERE shop_id = 1 RETURNING id, amount_cents", true),
    (Side::Old, Phase::DualWrite, "UPDATE orders SET meta = '{\"gift\": false}' WHERE shop_id = 2 AND id = 1", true),
    (Side::New, Phase::Cutover, "INSERT INTO orders (shop_id, id, amount, attributes, placed_at) VALUES (3, 7, 12.50, '{\"a\": 1}', now())", false),
    (Side::New, Phase::Cutover, "UPDATE orders SET amount = amount * 2 WHERE shop_id = 3", false),
    (Side::Old, Phase::DualWrite, "DELETE FROM orders WHERE shop_id = 1 AND id = 2 RETURNING amount_cents", true),
    (Side::Old, Phase::DualWrite, "BEGIN; UPDATE users SET name = 'Alan Turing' WHERE id = 2; INSERT INTO users (id, name) VALUES (30, 'Multi Statement'); COMMIT", false),
];

fn route(rules: &RuleSet, version: Side, phase: Phase) -> Route {
    Route::uniform(rules, MigrationRoute::own(phase, version))
}

/// Rows that differ between `a` and `b` as multisets (each a query), as text.
async fn difference(client: &Client, a: &str, b: &str) -> Vec<String> {
    let sql = format!(
        "SELECT 'missing' AS side, x::text FROM (({a}) EXCEPT ALL ({b})) x \
         UNION ALL SELECT 'extra', y::text FROM (({b}) EXCEPT ALL ({a})) y"
    );
    let rows = client.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1))).collect()
}

fn mapped_select(mapping: &[(String, String)], from: &str) -> String {
    let items: Vec<String> = mapping.iter().map(|(c, e)| format!("{e} AS {}", quote_ident(c))).collect();
    format!("SELECT {} FROM {from}", items.join(", "))
}

fn plain_select(mapping: &[(String, String)], from: &str) -> String {
    let cols: Vec<String> = mapping.iter().map(|(c, _)| quote_ident(c)).collect();
    format!("SELECT {} FROM {from}", cols.join(", "))
}

async fn assert_in_sync(client: &Client, m: &Migration, after: &str) {
    let forward = difference(
        client,
        &mapped_select(&m.forward, &m.table.to_string()),
        &plain_select(&m.forward, &m.shadow.to_string()),
    )
    .await;
    assert!(forward.is_empty(), "after `{after}`: shadow != forward(old): {forward:#?}");
    // users' forward mapping is lossy (lower(email)); orders' mappings are inverses, so check both ways.
    if m.name == "orders_amount_numeric" {
        let backward = difference(
            client,
            &mapped_select(&m.backward, &m.shadow.to_string()),
            &plain_select(&m.backward, &m.table.to_string()),
        )
        .await;
        assert!(backward.is_empty(), "after `{after}`: old != backward(shadow): {backward:#?}");
    }
}

/// (affected-row count from the last CommandComplete, column names, rows as text)
type Answer = (u64, Vec<String>, Vec<Vec<Option<String>>>);

async fn answer(client: &Client, sql: &str) -> Result<Answer, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let mut count = 0;
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => {
                columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
            }
            SimpleQueryMessage::CommandComplete(n) => count = n,
            _ => {}
        }
    }
    Ok((count, columns, rows))
}

#[tokio::test]
async fn rewritten_writes_keep_old_and_shadow_equal_row_for_row() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 128);

    for &(version, phase, sql, deterministic) in WRITES {
        let plan = rewriter.rewrite(sql, &route(&rules, version, phase));
        let Plan::Rewritten { sql: rewritten, statements, .. } = &*plan else {
            panic!("`{sql}` was not rewritten: {plan:?}");
        };
        let single = statements.len() == 1;
        let expected = if version == Side::Old && single {
            client.batch_execute("BEGIN").await.unwrap();
            let original = answer(&client, sql).await.unwrap_or_else(|e| panic!("original `{sql}`: {e}"));
            client.batch_execute("ROLLBACK").await.unwrap();
            Some(original)
        } else {
            None
        };
        let got = answer(&client, rewritten).await.unwrap_or_else(|e| panic!("`{rewritten}` (from `{sql}`): {e}"));
        if let Some((count, columns, rows)) = expected {
            let transform = statements[0];
            assert!(transform.command_tag.is_some(), "{sql}");
            assert_eq!(got.0, count, "affected rows of `{sql}`");
            if transform.rows == dualwrite_rules::RowsDisposition::Keep {
                assert_eq!(got.1, columns, "RETURNING columns of `{sql}`");
                assert_eq!(got.2.len(), rows.len(), "RETURNING rows of `{sql}`");
                if deterministic {
                    let (mut a, mut b) = (got.2.clone(), rows.clone());
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "RETURNING values of `{sql}`");
                }
            } else {
                assert!(got.2.iter().all(|r| r.is_empty()), "suppressed rows carry no columns: {sql}");
            }
        }
        for m in &rules.migrations {
            assert_in_sync(&client, m, sql).await;
        }
    }

    // The writes above really landed: spot-check a few rows on each side.
    let shadow: Vec<(i32, String, String)> = client
        .query("SELECT id, first_name, last_name FROM users_v2 WHERE id IN (1, 20, 100) ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        shadow,
        vec![
            (1, "Ada".into(), "King".into()),
            (20, "Kay".into(), "Jones".into()),
            (100, "Stan".into(), "Staged".into())
        ]
    );
    let gone: i64 =
        client.query_one("SELECT count(*) FROM users_v2 WHERE email = 'spam@x' OR id = 5", &[]).await.unwrap().get(0);
    assert_eq!(gone, 0);
}

#[tokio::test]
async fn parameters_survive_the_rewrite_in_the_extended_protocol() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 128);
    let v1 = route(&rules, Side::Old, Phase::DualWrite);
    let plan_sql = |sql: &str, route: &Route| match &*rewriter.rewrite(sql, route) {
        Plan::Rewritten { sql, .. } => sql.clone(),
        other => panic!("{other:?}"),
    };

    let insert = plan_sql("INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING id", &v1);
    let rows = client.query(&insert, &[&7i32, &"Niklaus Wirth", &"NW@x"]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 7);
    let update = plan_sql("UPDATE users SET name = $1 WHERE id = $2", &v1);
    // Affected rows come back as the SELECT's row count, which the proxy turns into `UPDATE n`.
    assert_eq!(client.execute(&update, &[&"Nick Wirth", &7i32]).await.unwrap(), 1);
    let statement = client.prepare(&update).await.unwrap();
    assert!(statement.columns().is_empty(), "a write without RETURNING describes no columns");
    let v2 = route(&rules, Side::New, Phase::Cutover);
    let v2_update = plan_sql("UPDATE users SET email = $1 WHERE id = $2", &v2);
    assert_eq!(client.execute(&v2_update, &[&"nw@new", &7i32]).await.unwrap(), 1);
    let delete = plan_sql("DELETE FROM users WHERE id = $1", &v1);
    assert_eq!(client.execute(&delete, &[&7i32]).await.unwrap(), 1);
    for m in &rules.migrations {
        assert_in_sync(&client, m, "parameterized statements").await;
    }
    let count: i64 = client.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0);
    assert_eq!(count, 0);
    assert_eq!(TagRewrite::Update.tag(1), "UPDATE 1");
}

#[tokio::test]
async fn routed_reads_return_the_session_shape_from_either_table() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO users VALUES (1, 'Ada Lovelace', 'ADA@x'), (2, 'Alan Turing', 'alan@x');
             INSERT INTO users_v2 VALUES (1, 'Ada', 'Lovelace', 'ada@x'), (2, 'Alan', 'Turing', 'alan@x');",
        )
        .await
        .unwrap();
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 128);
    let reads = [
        "SELECT users.id, name FROM users WHERE users.id IN (SELECT id FROM users WHERE id < 10) ORDER BY 1",
        "SELECT u.id, u.name FROM users u JOIN accounts a ON a.user_id = u.id ORDER BY u.id FOR UPDATE OF u",
        "SELECT id, name FROM public.users WHERE EXISTS (SELECT 1 FROM users x WHERE x.id = users.id) ORDER BY id FOR SHARE",
        "WITH t AS (SELECT * FROM users) SELECT id, name FROM t ORDER BY id",
    ];
    for sql in reads {
        let direct = answer(&client, sql).await.unwrap();
        for phase in [Phase::DualWrite, Phase::Cutover, Phase::Complete] {
            let r = Route::uniform(&rules, MigrationRoute { phase, version: Side::Old, read_source: Side::New });
            let Plan::Rewritten { sql: routed, .. } = &*rewriter.rewrite(sql, &r) else { panic!("{sql}") };
            let via_shadow = answer(&client, routed).await.unwrap_or_else(|e| panic!("{routed}: {e}"));
            assert_eq!(via_shadow.1, direct.1, "columns of {routed}");
            assert_eq!(via_shadow.2, direct.2, "rows of {routed}");
        }
    }
    // A v2 session sees the shadow's shape whichever table answers.
    let v2_sql = "SELECT id, first_name, last_name FROM users ORDER BY id";
    let mut answers = Vec::new();
    for source in [Side::Old, Side::New] {
        let r =
            Route::uniform(&rules, MigrationRoute { phase: Phase::DualWrite, version: Side::New, read_source: source });
        let Plan::Rewritten { sql: routed, .. } = &*rewriter.rewrite(v2_sql, &r) else { panic!() };
        answers.push(answer(&client, routed).await.unwrap());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].2[0], vec![Some("1".into()), Some("Ada".into()), Some("Lovelace".into())]);
}

const CORPUS_SCHEMA: &str = "
    CREATE TABLE posts (id bigserial PRIMARY KEY, user_id int, title text, body text, published boolean,
                        created_at timestamptz, updated_at timestamptz);
    CREATE TABLE comments (id bigserial PRIMARY KEY, post_id bigint, user_id int, body text,
                           created_at timestamptz);
    CREATE TABLE audit (user_id int, name text);
";

/// Every statement of the rewrite corpus that gets rewritten is prepared (parsed, analyzed and planned,
/// not run) on Postgres: the rewritten SQL names real columns, types check, parameters are inferred.
#[tokio::test]
async fn rewritten_corpus_statements_prepare_on_postgres() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(CORPUS_SCHEMA).await.unwrap();
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 1024);
    let corpus = include_str!("../../rewrite-rules/tests/corpus/statements.sql");
    let entries = dualwrite_rules::corpus::parse(corpus, &rules).unwrap();
    let mut failures = Vec::new();
    let mut prepared = 0;
    for entry in &entries {
        let plan = rewriter.rewrite(&entry.sql, &entry.route_for(&rules));
        let Plan::Rewritten { sql, statements, .. } = &*plan else { continue };
        if statements.len() != 1 {
            continue;
        }
        match client.prepare(sql).await {
            Ok(_) => prepared += 1,
            Err(e) => failures.push(format!("line {}: {}\n    {sql}\n    {e:?}", entry.line, entry.sql)),
        }
    }
    assert!(failures.is_empty(), "{} rewritten statements do not prepare:\n{}", failures.len(), failures.join("\n"));
    assert!(prepared > 150, "only {prepared} statements prepared");
}
