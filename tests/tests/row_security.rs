//! Row-level security follows a migration onto its shadow: a shadow made beside an old table under
//! row-level security, without policies of its own, would let a v2 session read and change every row of
//! it. Such a migration is not registered (the refusal gives the statement that enables it); once the
//! shadow has row-level security and policies, it is, and a role the policies restrict sees and changes only
//! its own rows through the proxy, in both versions and in both tables. Dropping the shadow's row-level
//! security while the proxy runs refuses the migration's writes until it is back.

use dualwrite_tests::*;
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");
const MIGRATION: &str = "users_split_name";

/// The example migration's tables holding three users, the old table under row-level security that shows
/// the odd ids to `role`; the shadow has neither row-level security nor policies.
fn schema(role: &str) -> String {
    format!(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
         INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'),
             ('Alan Turing', 'alan@example.org'), ('Grace Hopper', 'grace@example.org');
         CREATE ROLE \"{role}\";
         GRANT ALL ON public.users, public.users_v2 TO \"{role}\";
         GRANT USAGE ON SEQUENCE public.users_id_seq TO \"{role}\";
         ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
         CREATE POLICY odd_ids ON public.users TO \"{role}\" USING (id % 2 = 1);"
    )
}

/// What makes the shadow as closed as the old table.
fn secure_shadow(role: &str) -> String {
    format!(
        "ALTER TABLE public.users_v2 ENABLE ROW LEVEL SECURITY;
         CREATE POLICY odd_ids ON public.users_v2 TO \"{role}\" USING (id % 2 = 1);"
    )
}

async fn database() -> (TestDb, Client, String) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let role = format!("{}_odd", db.name);
    let direct = db.connect().await.unwrap();
    direct.batch_execute(&schema(&role)).await.unwrap();
    (db, direct, role)
}

async fn rows(direct: &Client, sql: &str) -> Vec<(i32, String)> {
    direct.query(sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_without_the_old_tables_row_security_is_refused_and_with_it_a_restricted_role_sees_and_changes_only_its_rows(
) {
    let (db, direct, role) = database().await;
    let error = match TestProxy::with_rules_toml(&db, RULES).await {
        Ok(_) => panic!("a proxy started on a shadow without the old table's row-level security"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(
            "migration `users_split_name` cannot be registered: row-level security is enabled on public.users (1 \
             policy) but not on the shadow public.users_v2"
        ) && error.contains("ALTER TABLE public.users_v2 ENABLE ROW LEVEL SECURITY"),
        "{error}"
    );
    assert!(!registered(&direct, MIGRATION).await, "nothing was registered");

    direct.batch_execute(&secure_shadow(&role)).await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, RULES).await.expect("registered once the shadow is secured");
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    v2.batch_execute(&format!("SET ROLE \"{role}\"")).await.unwrap();
    let seen = v2.query("SELECT id FROM users ORDER BY id", &[]).await.unwrap();
    assert_eq!(seen.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), [1, 3], "the role's rows only");
    let changed = v2.execute("UPDATE users SET last_name = 'Odd'", &[]).await.unwrap();
    assert_eq!(changed, 2, "the role's rows only");
    let old = rows(&direct, "SELECT id, name FROM public.users ORDER BY id").await;
    let shadow = rows(&direct, "SELECT id, first_name || ' ' || last_name FROM public.users_v2 ORDER BY id").await;
    let expected = vec![(1, "Ada Odd".to_owned()), (2, "Alan Turing".to_owned()), (3, "Grace Odd".to_owned())];
    assert_eq!((old, shadow), (expected.clone(), expected), "both tables: the odd rows changed, Alan's kept");

    // The shadow's row-level security dropped while the proxy runs: the migration's writes wait for it.
    direct.batch_execute("ALTER TABLE public.users_v2 DISABLE ROW LEVEL SECURITY").await.unwrap();
    eventually(std::time::Duration::from_secs(30), "writes refused", || async {
        value(&status_of(&admin, MIGRATION).await, "writes_refused") == Some("t")
    })
    .await;
    let e = v2.execute("UPDATE users SET last_name = 'Even'", &[]).await.expect_err("refused");
    let (code, message) = db_error(&e);
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("row-level security is enabled on public.users"), "{message}");
    direct.batch_execute("ALTER TABLE public.users_v2 ENABLE ROW LEVEL SECURITY").await.unwrap();
    eventually(std::time::Duration::from_secs(30), "writes resume", || async {
        value(&status_of(&admin, MIGRATION).await, "writes_refused") == Some("f")
    })
    .await;
    assert_eq!(v2.execute("UPDATE users SET email = lower(email)", &[]).await.unwrap(), 2);
    proxy.stop().await.unwrap();
}
