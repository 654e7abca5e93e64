//! Schema-qualified column references to the migrated table (`public.users.col`) through a real proxy on
//! real Postgres: each statement the proxy rewrites returns what Postgres returns for the same statement
//! on the same rows without the proxy (run directly in a rolled-back transaction), in v1 and v2 sessions;
//! a statement whose rewritten reference would bind another `users` (here `tenant.users`, whose `name`
//! differs, so such a re-binding would show) is refused with 0A000 and changes nothing.

use dualwrite_tests::{backfill_until_done, connect, db_error, simple_rows, TestCluster, TestDb, TestProxy};
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

const SCHEMA: &str = "
    CREATE SCHEMA tenant;
    CREATE TABLE public.users (id int PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
    CREATE TABLE tenant.users (id int PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE public.orders (id int PRIMARY KEY, user_id int NOT NULL);
    CREATE TABLE public.audit (user_id int, note text);
    INSERT INTO tenant.users VALUES (1, 'Tenant Person', 'tenant@x'), (7, 'Other Tenant', 'other@x');
    INSERT INTO public.orders VALUES (1, 1), (2, 1), (3, 2);
";

type Rows = Vec<Vec<Option<String>>>;

struct Fixture {
    db: TestDb,
    direct: Client,
    proxy: TestProxy,
}

async fn fixture() -> Fixture {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    // Written through the proxy, so the shadow holds the same rows.
    let v1 = proxy.connect(&db).await.unwrap();
    v1.batch_execute("INSERT INTO public.users VALUES (1, 'Ada Lovelace', 'ada@x'), (2, 'Alan Turing', 'alan@x')")
        .await
        .unwrap();
    // v2 writes wait for the backfill (README: v2 writes wait for the backfill).
    backfill_until_done(&v1, "users_split_name").await;
    Fixture { db, direct, proxy }
}

impl Fixture {
    async fn v1(&self) -> Client {
        self.proxy.connect(&self.db).await.unwrap()
    }

    async fn v2(&self) -> Client {
        connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", self.proxy.url(&self.db))).await.unwrap()
    }

    /// What Postgres returns for `sql` on the current rows, without the proxy (rolled back).
    async fn postgres_answer(&self, sql: &str) -> Rows {
        self.direct.batch_execute("BEGIN").await.unwrap();
        let rows = simple_rows(&self.direct.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
        self.direct.batch_execute("ROLLBACK").await.unwrap();
        rows
    }

    /// Both tables and the audit table, as text, to show that a refused statement changed nothing.
    async fn snapshot(&self) -> Rows {
        let sql = "SELECT (SELECT string_agg(u::text, ',' ORDER BY id) FROM public.users u),
                          (SELECT string_agg(v::text, ',' ORDER BY id) FROM public.users_v2 v),
                          (SELECT count(*) FROM public.audit)::text";
        simple_rows(&self.direct.simple_query(sql).await.unwrap())
    }
}

async fn through(client: &Client, sql: &str) -> Rows {
    simple_rows(&client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
}

#[tokio::test]
async fn rewritten_statements_return_what_postgres_returns_for_the_same_statement() {
    let f = fixture().await;
    let (v1, v2) = (f.v1().await, f.v2().await);
    let statements = [
        "UPDATE public.users SET email = 'ada@new' WHERE id = 1 RETURNING public.users.id, public.users.email, \
         (SELECT count(*) FROM public.orders o WHERE o.user_id = public.users.id) AS orders",
        "UPDATE public.users SET email = 'ada@newer' WHERE id = 1 RETURNING public.users.*",
        "UPDATE public.users SET email = 'ada@x' WHERE id = 1 RETURNING (SELECT max(public.users.id) FROM public.users)",
        "UPDATE public.users SET email = 'alan@x' WHERE id = 2 \
         RETURNING (SELECT public.users.email FROM tenant.users AS t WHERE t.id = 7)",
        "UPDATE public.users SET email = 'alan@y' WHERE id = 2 \
         RETURNING (SELECT (SELECT public.users.email FROM public.orders o WHERE o.id = 3) FROM tenant.users AS t LIMIT 1)",
    ];
    for sql in statements {
        let want = f.postgres_answer(sql).await;
        assert!(!want.is_empty(), "{sql} returns a row");
        assert_eq!(through(&v1, sql).await, want, "v1: {sql}");
    }
    let reads = [
        "SELECT public.users.id, public.users.email FROM public.users ORDER BY public.users.id",
        "SELECT public.users.email, (SELECT max(public.users.id) FROM public.users) FROM public.users ORDER BY 1",
        "SELECT (SELECT public.users.email FROM tenant.users AS t WHERE t.id = 7) FROM public.users ORDER BY 1",
    ];
    for sql in reads {
        let want = f.postgres_answer(sql).await;
        assert_eq!(through(&v1, sql).await, want, "v1: {sql}");
        assert_eq!(through(&v2, sql).await, want, "v2: {sql}");
    }
    // A v2 write of the same statement: the shadow first, the answer as Postgres gives it on the old table.
    let sql = "UPDATE public.users SET email = 'ada@v2' WHERE id = 1 RETURNING public.users.id, public.users.email, \
               (SELECT max(public.users.id) FROM public.users)";
    let want = f.postgres_answer(sql).await;
    assert_eq!(through(&v2, sql).await, want, "v2: {sql}");
}

#[tokio::test]
async fn statements_whose_rewritten_reference_would_bind_another_users_are_refused_and_change_nothing() {
    let f = fixture().await;
    let (v1, v2) = (f.v1().await, f.v2().await);
    let returning = "UPDATE public.users SET email = 'changed@x' WHERE id = 1 \
                     RETURNING (SELECT public.users.name FROM tenant.users LIMIT 1)";
    // Postgres binds the inner reference to the updated row, not to tenant.users.
    assert_eq!(f.postgres_answer(returning).await, vec![vec![Some("Ada Lovelace".to_owned())]]);
    let in_cte = "WITH x AS (UPDATE public.users SET email = 'changed@x' WHERE id = 1 \
                  RETURNING id, (SELECT public.users.name FROM tenant.users LIMIT 1) AS note) \
                  INSERT INTO public.audit SELECT id, note FROM x";
    let read = "SELECT (SELECT public.users.name FROM tenant.users LIMIT 1) FROM public.users";
    let before = f.snapshot().await;
    for (session, client, sql) in
        [("v1", &v1, returning), ("v2", &v2, returning), ("v1", &v1, in_cte), ("v2", &v2, in_cte), ("v2", &v2, read)]
    {
        let e = client.simple_query(sql).await.expect_err(sql);
        let (code, message) = db_error(&e);
        assert_eq!(code, "0A000", "{session}: {sql}: {message}");
        assert!(message.contains("users_split_name"), "{message}");
        assert_eq!(f.snapshot().await, before, "{session}: {sql} changed nothing");
    }
    // The same read in a v1 session reads the old table in place, as Postgres would.
    assert_eq!(through(&v1, read).await, f.postgres_answer(read).await);
}
