//! Backfill, verify and repair of a migration with a composite key of mixed types (text, int) and a
//! quoted mixed-case table name: keyset batches and checksum chunks compare whole key rows.

mod jobs_support;

use std::str::FromStr;

use dualwrite_proxy::jobs::{run_backfill, run_verify, BackfillOptions, BackfillOutcome, TableMapping, VerifyOptions};
use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_rules::RuleSet;
use dualwrite_tests::TestCluster;

const RULES: &str = r#"
[[migration]]
name   = "orders_cents"
table  = 'public."Orders"'
shadow = "public.orders_v2"
key    = ["region", "id"]
versions = { old = "v1", new = "v2" }

[migration.forward]
region = "region"
id = "id"
amount_cents = "(amount * 100)::bigint"

[migration.backward]
region = "region"
id = "id"
amount = "amount_cents / 100.0"
"#;

#[tokio::test]
async fn composite_key_backfill_verify_and_repair() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let mut client = db.connect().await.unwrap();
    dualwrite_proxy::state::schema::ensure_schema(&mut client).await.unwrap();
    client
        .batch_execute(
            r#"CREATE TABLE "Orders" (region text, id int, amount numeric(10,2), PRIMARY KEY (region, id));
               CREATE TABLE orders_v2 (region text, id int, amount_cents bigint, PRIMARY KEY (region, id));
               INSERT INTO "Orders" SELECT r, g, g / 3.0 FROM unnest(ARRAY['eu', 'us', 'apac']) r,
                                                          generate_series(1, 700) g;"#,
        )
        .await
        .unwrap();
    let rules = RuleSet::from_toml(RULES, "composite").expect("rules");
    let mapping = TableMapping::from_rules(&rules, "orders_cents").unwrap();
    let config = PgTarget::from_str(&db.url()).unwrap();

    let options = BackfillOptions { batch_size: 97, ..BackfillOptions::default() };
    let outcome = run_backfill(&config, &mapping, &options, &|_| {}).await.expect("backfill");
    assert_eq!(outcome, BackfillOutcome::Done { rows_done: 2_100 });
    let last_key: String = client
        .query_one("SELECT last_key::text FROM dualwrite.backfill WHERE migration = 'orders_cents'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_key, r#"{"id": 700, "region": "us"}"#);

    let verify = VerifyOptions { chunk_rows: 300, leaf_rows: 8, ..VerifyOptions::default() };
    let clean = run_verify(&config, &mapping, &verify, &|_, _| {}).await.unwrap();
    assert!(clean.clean() && clean.rows_checked == 2_100, "{clean:?}");

    client
        .batch_execute(
            r#"UPDATE "Orders" SET amount = amount + 1 WHERE region = 'eu' AND id = 350;
               DELETE FROM "Orders" WHERE region = 'us' AND id = 1;
               INSERT INTO orders_v2 VALUES ('zz', 1, 5);"#,
        )
        .await
        .unwrap();
    let report = run_verify(&config, &mapping, &verify, &|_, _| {}).await.unwrap();
    let mut found: Vec<(String, String)> =
        report.divergent.iter().map(|d| (d.kind.as_str().to_string(), d.key.clone())).collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("different".to_string(), r#"{"id": 350, "region": "eu"}"#.to_string()),
            ("extra".to_string(), r#"{"id": 1, "region": "us"}"#.to_string()),
            ("extra".to_string(), r#"{"id": 1, "region": "zz"}"#.to_string()),
        ]
    );
    let repair = VerifyOptions { repair: true, ..verify.clone() };
    assert_eq!(run_verify(&config, &mapping, &repair, &|_, _| {}).await.unwrap().repaired, 3);
    assert!(run_verify(&config, &mapping, &verify, &|_, _| {}).await.unwrap().clean());
}
