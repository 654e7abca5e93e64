//! A migration's tables must agree on when two keys are equal. With an old `text` key and a shadow key under
//! a case-insensitive collation, two old rows (`Bob@example.org`, `bob@example.org`) share one shadow key,
//! and the dual write's upsert of one overwrites the other (the hazard, on the tables alone). Such a
//! migration is not registered; with the same collation in both tables it is.

use dualwrite_tests::*;
use tokio_postgres::Client;

const MIGRATION: &str = "users_email";

const RULES: &str = r#"
[[migration]]
name = "users_email"
table = "public.users"
shadow = "public.users_v2"
key = ["email"]
versions = { old = "v1", new = "v2" }
[migration.forward]
email = "email"
full_name = "name"
[migration.backward]
email = "email"
name = "full_name"
"#;

const SCHEMA: &str = "
    CREATE COLLATION public.case_insensitive (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
    CREATE TABLE public.users (email text PRIMARY KEY, name text);
    CREATE TABLE public.users_v2 (email text COLLATE public.case_insensitive PRIMARY KEY, full_name text);
    INSERT INTO public.users VALUES ('Bob@example.org', 'Robert'), ('bob@example.org', 'Bobby');
    INSERT INTO public.users_v2 VALUES ('Bob@example.org', 'Robert');
";

async fn database() -> (TestDb, Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    (db, direct)
}

/// What the refusal prevents: the dual write of a v1 UPDATE of Bobby (rewrite-rules forms `update_by_key`),
/// by hand: the shadow's upsert on the key lands on Robert's row.
#[tokio::test]
async fn a_coarser_key_equality_in_the_shadow_sends_the_dual_writes_upsert_onto_another_row() {
    let (_db, direct) = database().await;
    direct
        .batch_execute(
            "WITH p AS (UPDATE public.users SET name = 'Bobby B' WHERE email = 'bob@example.org' RETURNING *),
                  s AS (INSERT INTO public.users_v2 (email, full_name) SELECT email, name FROM p
                        ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name)
             SELECT FROM p",
        )
        .await
        .unwrap();
    let robert: String = direct
        .query_one("SELECT full_name FROM public.users_v2 WHERE email = 'Bob@example.org' COLLATE \"C\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(robert, "Bobby B", "Robert's shadow row was overwritten with Bobby's");
}

#[tokio::test]
async fn a_key_whose_tables_disagree_on_equality_is_not_registered_and_is_once_they_agree() {
    let (db, direct) = database().await;
    let error = match TestProxy::with_rules_toml(&db, RULES).await {
        Ok(_) => panic!("a proxy started on a shadow key under another collation"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(
            "migration `users_email` cannot be registered: key column email is text collate pg_catalog.\"default\" \
             in public.users but text collate public.case_insensitive in public.users_v2"
        ),
        "{error}"
    );
    assert!(!registered(&direct, MIGRATION).await, "nothing was registered");

    direct
        .batch_execute(
            "TRUNCATE public.users_v2;
             ALTER TABLE public.users_v2 ALTER COLUMN email TYPE text COLLATE pg_catalog.\"default\"",
        )
        .await
        .unwrap();
    let proxy = TestProxy::with_rules_toml(&db, RULES).await.expect("registered once the collations agree");
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    let app = proxy.connect(&db).await.unwrap();
    app.execute("UPDATE users SET name = 'Bobby B' WHERE email = 'bob@example.org'", &[]).await.unwrap();
    let shadow: Vec<(String, String)> = direct
        .query("SELECT email, full_name FROM public.users_v2 ORDER BY email COLLATE \"C\"", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [("Bob@example.org", "Robert"), ("bob@example.org", "Bobby B")];
    assert_eq!(shadow, expected.map(|(e, n)| (e.to_owned(), n.to_owned())), "each row keeps its own key");
    proxy.stop().await.unwrap();
}
