//! A migration whose key defaults can repeat each other's values (a shadow with a serial or identity key of
//! its own, a function default beside the old table's sequence) is not registered: rows inserted without a key by a v1 and a v2 session take the same
//! value from the two sequences, and the dual write's upsert on the key then overwrites an unrelated row
//! (the hazard is shown first, on the tables alone). The refusal names every sequence and the statements
//! that make the defaults draw from one; after running exactly those statements the proxy registers the
//! migration, and keyless inserts of both versions get distinct keys in both tables. A default that appears
//! later is a finding of the schema watch (which refuses the migration's writes), not a refused reload.

use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::state::{Actor, SchemaFindingKind, StateHandle, StateOptions};
use dualwrite_rules::RuleSet;
use dualwrite_tests::*;
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

/// The example migration's tables, the shadow's key declared as `shadow_key`, and two old rows.
fn schema(shadow_key: &str) -> String {
    format!(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id {shadow_key}, first_name text, last_name text, email text);
         INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'),
                                                       ('Alan Turing', 'alan@example.org');"
    )
}

async fn database(schema: &str) -> (TestDb, Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(schema).await.unwrap();
    (db, direct)
}

/// The error of a proxy start that must fail.
async fn start_refused(db: &TestDb) -> String {
    match TestProxy::with_rules_toml(db, RULES).await {
        Ok(_) => panic!("a proxy started on a migration whose key defaults are separate sources"),
        Err(e) => format!("{e:#}"),
    }
}

/// The statements the refusal gives to make every default draw from one sequence.
fn remedy(error: &str) -> String {
    let start =
        error.find("make every default draw from one (").expect(error) + "make every default draw from one (".len();
    let end = error[start..].find("), or drop the other defaults").expect(error);
    error[start..start + end].to_owned()
}

/// What the refusal prevents, on the tables alone: with two sequences a keyless v2 INSERT (the shadow's
/// default) takes a key the old table already holds, and the old side's upsert, as the dual write sends it,
/// rewrites that unrelated row.
#[tokio::test]
async fn two_sequences_hand_a_v2_insert_a_key_whose_old_row_the_dual_writes_upsert_overwrites() {
    let (_db, direct) = database(&schema("serial PRIMARY KEY")).await;
    // The dual write of a v2 INSERT (rewrite-rules forms v2_insert_cutover), by hand.
    let taken: i32 = direct
        .query_one(
            "WITH p AS (INSERT INTO public.users_v2 (first_name, last_name, email)
                        VALUES ('Grace', 'Hopper', 'grace@example.org') RETURNING *),
                  o AS (INSERT INTO public.users (id, name, email)
                        SELECT id, first_name || ' ' || last_name, email FROM p
                        ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email)
             SELECT id FROM p",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(taken, 1, "the shadow's own sequence starts where the old table's did");
    let ada: String = direct.query_one("SELECT name FROM public.users WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(ada, "Grace Hopper", "Ada's row in the old table was overwritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_serial_of_its_own_is_refused_and_the_printed_remedy_makes_keyless_inserts_of_both_versions_distinct()
{
    let (db, direct) = database(&schema("serial PRIMARY KEY")).await;
    let error = start_refused(&db).await;
    assert!(
        error.contains(
            "migration `users_split_name` cannot be registered: key column id draws from 2 sequences \
             (public.users from public.users_id_seq; public.users_v2 from public.users_v2_id_seq)"
        ),
        "{error}"
    );
    assert!(!registered(&direct, "users_split_name").await);
    let remedy = remedy(&error);
    assert_eq!(remedy, "ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq')");

    direct.batch_execute(&remedy).await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, "users_split_name").await;
    let v1 = proxy.connect(&db).await.unwrap();
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let one: i32 = v1
            .query_one("INSERT INTO users (name, email) VALUES ('Vee One', 'v1@example.org') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        let two: i32 = v2
            .query_one(
                "INSERT INTO users (first_name, last_name, email) VALUES ('Vee', 'Two', 'v2@example.org') RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        keys.extend([one, two]);
    }
    assert_eq!(keys, [3, 4, 5, 6, 7, 8], "one sequence hands every version its own keys");
    // Nothing was overwritten: the old rows and each version's rows are what each wrote, in both tables.
    let old: Vec<String> = direct
        .query("SELECT id || ' ' || name FROM public.users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        old,
        [
            "1 Ada Lovelace",
            "2 Alan Turing",
            "3 Vee One",
            "4 Vee Two",
            "5 Vee One",
            "6 Vee Two",
            "7 Vee One",
            "8 Vee Two"
        ]
    );
    let verify = control(&admin, "DUALWRITE VERIFY users_split_name").await;
    assert_eq!((value(&verify, "clean"), value(&verify, "rows_checked")), (Some("t"), Some("8")), "{verify:?}");
}

/// An identity column's default cannot be replaced while it is one: the remedy drops the identity first.
#[tokio::test]
async fn a_shadow_identity_key_is_refused_and_the_printed_remedy_drops_the_identity_first() {
    let (db, direct) = database(&schema("int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")).await;
    let error = start_refused(&db).await;
    let remedy = remedy(&error);
    assert_eq!(
        remedy,
        "ALTER TABLE public.users_v2 ALTER COLUMN id DROP IDENTITY; \
         ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq')"
    );
    direct.batch_execute(&remedy).await.unwrap();
    TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    assert!(registered(&direct, "users_split_name").await);
}

/// Where the application always supplies keys, the shadow's default can go instead.
#[tokio::test]
async fn a_shadow_key_without_a_default_is_registered() {
    let (db, direct) = database(&schema("serial PRIMARY KEY")).await;
    start_refused(&db).await;
    direct.batch_execute("ALTER TABLE public.users_v2 ALTER COLUMN id DROP DEFAULT").await.unwrap();
    TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    assert!(registered(&direct, "users_split_name").await);
}

/// A shadow default added after registration does not refuse a rules reload (a reload refused over one
/// migration's table would block every other change): the schema watch's check, woken by the reload, finds
/// it, which refuses the migration's writes.
#[tokio::test]
async fn a_shadow_sequence_of_its_own_added_after_registration_is_a_finding_of_the_watch_not_a_refused_reload() {
    let (db, direct) = database(&schema("int PRIMARY KEY")).await;
    let rules = Arc::new(RuleSet::from_toml(RULES, "rules.toml").unwrap());
    // Only the reload wakes the check: the periodic one is an hour away, and DDL does not wake it.
    let options = StateOptions {
        schema_check_interval: Duration::from_secs(3600),
        check_schema_on_ddl: false,
        ..StateOptions::default()
    };
    let state = StateHandle::connect(db.url().parse().unwrap(), Arc::clone(&rules), options).await.unwrap();
    direct
        .batch_execute(
            "CREATE SEQUENCE public.users_v2_id_seq;
             ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_v2_id_seq')",
        )
        .await
        .unwrap();
    let reloaded = Arc::new(
        RuleSet::from_toml(&RULES.replace("[[migration]]", "[[migration]]\nshadow_read_sample = 0.5"), "rules.toml")
            .unwrap(),
    );
    let actor = Actor { role: "test".into(), client_addr: None };
    state.set_rules(Arc::clone(&reloaded), &actor).await.expect("the reload goes through");
    assert_eq!(*state.rules(), *reloaded);
    eventually(Duration::from_secs(30), "the reload's check finds the shadow's sequence", || async {
        state.snapshot().migration("users_split_name").is_some_and(|m| {
            m.schema_findings.iter().any(|f| {
                f.kind == SchemaFindingKind::KeyDefaults
                    && f.description.contains("public.users_v2 from public.users_v2_id_seq")
            })
        })
    })
    .await;
}

/// A key default calling a function of the database's own hides which sequence it draws from: beside the old
/// table's sequence it is refused (its body might draw from another), and the printed remedy gives the shadow
/// the old table's default.
#[tokio::test]
async fn a_shadow_function_default_beside_the_old_sequence_is_refused_and_the_printed_remedy_registers_it() {
    let (db, direct) = database(&format!(
        "CREATE SEQUENCE public.other_ids;
         CREATE FUNCTION public.next_id() RETURNS int LANGUAGE sql AS $$ SELECT nextval('public.other_ids')::int $$;
         {}",
        schema("int PRIMARY KEY DEFAULT public.next_id()")
    ))
    .await;
    let error = start_refused(&db).await;
    assert!(
        error.contains(
            "migration `users_split_name` cannot be registered: key column id takes its default from 2 separate \
             sources (public.users from public.users_id_seq; public.users_v2 from next_id())"
        ),
        "{error}"
    );
    assert!(!registered(&direct, "users_split_name").await);
    let remedy = remedy(&error);
    assert_eq!(remedy, "ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq')");
    direct.batch_execute(&remedy).await.unwrap();
    TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    assert!(registered(&direct, "users_split_name").await);
}

/// The same call of one function in every table is one source, as are random UUIDs from different
/// generators: both are registered.
#[tokio::test]
async fn the_same_function_in_both_tables_and_random_uuids_are_registered() {
    let (db, direct) = database(
        "CREATE SEQUENCE public.ids;
         CREATE FUNCTION public.next_id() RETURNS int LANGUAGE sql AS $$ SELECT nextval('public.ids')::int $$;
         CREATE TABLE public.users (id int PRIMARY KEY DEFAULT public.next_id(), name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY DEFAULT public.next_id(), first_name text,
                                       last_name text, email text);",
    )
    .await;
    TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    assert!(registered(&direct, "users_split_name").await);

    let (db, direct) = database(
        "CREATE EXTENSION \"uuid-ossp\";
         CREATE TABLE public.users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text, email text);
         CREATE TABLE public.users_v2 (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), first_name text,
                                       last_name text, email text);",
    )
    .await;
    TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    assert!(registered(&direct, "users_split_name").await);
}

/// Two draws of `random()` read alike but are two sources: refused.
#[tokio::test]
async fn the_same_random_expression_in_both_tables_is_refused() {
    let (db, direct) = database(
        "CREATE TABLE public.users (id int PRIMARY KEY DEFAULT (random() * 1000000)::int, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY DEFAULT (random() * 1000000)::int, first_name text,
                                       last_name text, email text);",
    )
    .await;
    let error = start_refused(&db).await;
    assert!(error.contains("key column id takes its default from 2 separate sources"), "{error}");
    assert!(!registered(&direct, "users_split_name").await);
}
