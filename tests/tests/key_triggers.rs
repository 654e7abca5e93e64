//! A BEFORE row trigger that assigns the key on a table the dual write syncs into (a shadow, for v1 writes)
//! sends the sync's upsert on the key to whichever row holds the trigger's key: an unrelated row is
//! overwritten (the hazard is shown first, on the tables alone). Such a migration is not registered; the
//! refusal names the trigger, the assignment and how to accept it. The same assignment under
//! `IF NEW.id IS NULL` (the sync always gives the key), or a trigger the rules list in
//! `accept_key_triggers`, is registered, and dual writes land on their own rows.

use dualwrite_tests::*;
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

/// The example migration's tables, both holding Ada and Alan, and a shadow trigger running `trigger_body`.
fn schema(trigger_body: &str) -> String {
    format!(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
         INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'),
                                                       ('Alan Turing', 'alan@example.org');
         INSERT INTO public.users_v2 VALUES (1, 'Ada', 'Lovelace', 'ada@example.org'),
                                            (2, 'Alan', 'Turing', 'alan@example.org');
         CREATE SEQUENCE public.shadow_ids;
         CREATE FUNCTION public.shadow_id() RETURNS trigger LANGUAGE plpgsql AS $$ {trigger_body} $$;
         CREATE TRIGGER shadow_id BEFORE INSERT ON public.users_v2 FOR EACH ROW EXECUTE FUNCTION public.shadow_id();"
    )
}

/// Gives every row the shadow's own next key.
const UNGUARDED: &str = "BEGIN NEW.id := nextval('public.shadow_ids'); RETURN NEW; END";
/// Gives a key only to a row that has none.
const GUARDED: &str = "BEGIN IF NEW.id IS NULL THEN NEW.id := nextval('public.shadow_ids'); END IF; RETURN NEW; END";

async fn database(schema: &str) -> (TestDb, Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(schema).await.unwrap();
    (db, direct)
}

async fn shadow_names(direct: &Client) -> Vec<(i32, String)> {
    let rows = direct.query("SELECT id, first_name || ' ' || last_name FROM public.users_v2 ORDER BY id", &[]).await;
    rows.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// What the refusal prevents, on the tables alone: the dual write of a v1 INSERT (rewrite-rules forms
/// `insert_without_key`), by hand; the trigger gives the shadow's row key 1, and the upsert overwrites Ada.
#[tokio::test]
async fn a_shadow_trigger_that_assigns_the_key_sends_the_dual_writes_upsert_to_an_unrelated_row() {
    let (_db, direct) = database(&schema(UNGUARDED)).await;
    let id: i32 = direct
        .query_one(
            "WITH p AS (INSERT INTO public.users (name, email) VALUES ('Grace Hopper', 'grace@example.org')
                        RETURNING *),
                  s AS (INSERT INTO public.users_v2 (id, first_name, last_name, email)
                        SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM p
                        ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name,
                                                       last_name = EXCLUDED.last_name, email = EXCLUDED.email)
             SELECT id FROM p",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 3, "the old table gave Grace key 3");
    let shadow = shadow_names(&direct).await;
    assert_eq!(shadow, [(1, "Grace Hopper".to_owned()), (2, "Alan Turing".to_owned())], "Ada's shadow row is gone");
}

#[tokio::test]
async fn a_migration_whose_shadow_trigger_may_assign_the_key_is_not_registered_and_the_refusal_says_what_to_do() {
    let (db, direct) = database(&schema(UNGUARDED)).await;
    let error = match TestProxy::with_rules_toml(&db, RULES).await {
        Ok(_) => panic!("a proxy started on a migration whose shadow trigger assigns the key"),
        Err(e) => format!("{e:#}"),
    };
    for part in [
        "migration `users_split_name` cannot be registered: BEFORE INSERT row trigger shadow_id on public.users_v2 (a shadow, function \
         shadow_id) assigns a key column outside an IS NULL guard (`NEW.id :=`)",
        "sends the dual write's upsert to an unrelated row",
        "list \"public.users_v2.shadow_id\" in accept_key_triggers",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
    assert!(!registered(&direct, "users_split_name").await, "nothing was registered");
}

/// The guarded assignment never fires on a synced row, and an accepted trigger is the operator's word that
/// it leaves given keys alone (here it gives a row the key it already has): both are registered, and a v1
/// INSERT and UPDATE land on their own rows in the shadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_assignment_and_an_accepted_trigger_are_registered_and_dual_writes_land_on_their_rows() {
    let keeps_the_key = "BEGIN NEW.id := coalesce(NEW.id, nextval('public.shadow_ids')); RETURN NEW; END";
    let accepted =
        RULES.replace("[[migration]]", "[[migration]]\naccept_key_triggers = [\"public.users_v2.shadow_id\"]");
    for (body, rules) in [(GUARDED, RULES.to_owned()), (keeps_the_key, accepted)] {
        let (db, direct) = database(&schema(body)).await;
        let proxy = TestProxy::with_rules_toml(&db, &rules).await.unwrap_or_else(|e| panic!("{body}: {e:#}"));
        let app = proxy.connect(&db).await.unwrap();
        let id: i32 = app
            .query_one("INSERT INTO users (name, email) VALUES ('Grace Hopper', 'grace@example.org') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        app.execute("UPDATE users SET name = 'Alan Mathison' WHERE id = 2", &[]).await.unwrap();
        assert_eq!(id, 3);
        let expected =
            [(1, "Ada Lovelace".to_owned()), (2, "Alan Mathison".to_owned()), (3, "Grace Hopper".to_owned())];
        assert_eq!(shadow_names(&direct).await, expected, "{body}");
        proxy.stop().await.unwrap();
    }
}

/// A partition's own trigger fires on the rows the sync routes to it: one on a partition of a partitioned
/// shadow is found as one on the shadow is.
#[tokio::test]
async fn a_trigger_on_a_partition_of_the_shadow_that_may_assign_the_key_is_refused_too() {
    let (db, direct) = database(&format!(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text)
             PARTITION BY RANGE (id);
         CREATE TABLE public.users_v2_low PARTITION OF public.users_v2 FOR VALUES FROM (0) TO (1000000);
         CREATE SEQUENCE public.shadow_ids;
         CREATE FUNCTION public.shadow_id() RETURNS trigger LANGUAGE plpgsql AS $$ {UNGUARDED} $$;
         CREATE TRIGGER shadow_id BEFORE INSERT ON public.users_v2_low
             FOR EACH ROW EXECUTE FUNCTION public.shadow_id();"
    ))
    .await;
    let error = match TestProxy::with_rules_toml(&db, RULES).await {
        Ok(_) => panic!("a proxy started on a migration whose shadow partition's trigger assigns the key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("list \"public.users_v2_low.shadow_id\" in accept_key_triggers"), "{error}");
    assert!(!registered(&direct, "users_split_name").await, "nothing was registered");
}

/// A rules-file name without a schema means `public`, whatever the control connection's `search_path`
/// finds first: with a clean `users_v2` in the control role's own schema (`"$user"`, first on the default
/// path), the trigger of `public.users_v2` is still the one judged.
#[tokio::test]
async fn an_unqualified_rules_name_is_judged_in_public_whatever_the_control_roles_search_path_finds_first() {
    let (db, direct) = database(&schema(UNGUARDED)).await;
    let own = db.cluster.superuser();
    direct
        .batch_execute(&format!(
            "CREATE SCHEMA \"{own}\";
             CREATE TABLE \"{own}\".users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);"
        ))
        .await
        .unwrap();
    let unqualified = RULES.replace("\"public.users_v2\"", "\"users_v2\"").replace("\"public.users\"", "\"users\"");
    assert!(!unqualified.contains("public."), "{unqualified}");
    let error = match TestProxy::with_rules_toml(&db, &unqualified).await {
        Ok(_) => panic!("the trigger of public.users_v2 was judged on another users_v2"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("row trigger shadow_id on users_v2 (a shadow"), "{error}");
    assert!(error.contains("list \"public.users_v2.shadow_id\" in accept_key_triggers"), "{error}");
}
