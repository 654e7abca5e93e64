//! Name resolution as the server does it: three tenant schemas each hold a `users` table of the same
//! shape and only `tenant_a.users` is under migration. Whatever way a session's `search_path` is set
//! (startup options, SET, SET LOCAL, RESET, `set_config()`, role and database defaults, `$user`, inside
//! transactions that commit or roll back, savepoints) and whatever temporary table hides a name, a write
//! through the proxy reaches the shadow exactly when it lands in `tenant_a.users`, and statements on the
//! other tenants' tables are neither rewritten nor refused. A write naming the shadow itself is refused
//! where the name reaches `tenant_a.users_v2` and goes ahead where it reaches another relation of that name.
//! Every check compares the tables on Postgres.

mod proxy_support;

use dualwrite_tests::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const RULES: &str = r#"
[[migration]]
name   = "tenant_a_split_name"
table  = "tenant_a.users"
shadow = "tenant_a.users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
[migration.backward]
id   = "id"
name = "first_name || ' ' || last_name"
"#;

const SCHEMA: &str = "
    CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b; CREATE SCHEMA tenant_c;
    CREATE TABLE tenant_a.users (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE tenant_b.users (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE tenant_c.users (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE tenant_a.users_v2 (id int PRIMARY KEY, first_name text, last_name text);
";

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
    Fixture { db, direct, proxy }
}

impl Fixture {
    /// A session through the proxy with `search_path` set by the startup options.
    async fn session(&self, search_path: &str) -> Client {
        let options = format!("-c search_path={search_path}").replace(' ', "%20").replace('=', "%3D");
        connect(&format!("{}?options={options}", self.proxy.url(&self.db))).await.unwrap()
    }

    /// Ids in a tenant's `users`.
    async fn ids(&self, tenant: &str) -> Vec<i32> {
        let sql = format!("SELECT id FROM {tenant}.users ORDER BY id");
        self.direct.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
    }

    async fn shadow_ids(&self) -> Vec<i32> {
        let sql = "SELECT id FROM tenant_a.users_v2 ORDER BY id";
        self.direct.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
    }

    /// The shadow equals `tenant_a.users` under the mapping, row for row.
    async fn assert_in_sync(&self, step: &str) {
        let sql = "SELECT count(*) FROM (
                (SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2) FROM tenant_a.users
                 EXCEPT SELECT id, first_name, last_name FROM tenant_a.users_v2)
                UNION ALL
                (SELECT id, first_name, last_name FROM tenant_a.users_v2
                 EXCEPT SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2) FROM tenant_a.users)) d";
        let differences: i64 = self.direct.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(differences, 0, "tenant_a.users and its shadow differ after: {step}");
    }

    /// `id` is in exactly `tenant`'s table (and in the shadow exactly when that tenant is `tenant_a`).
    async fn assert_landed_in(&self, id: i32, tenant: &str, step: &str) {
        for t in ["tenant_a", "tenant_b", "tenant_c"] {
            assert_eq!(self.ids(t).await.contains(&id), t == tenant, "row {id} in {t}.users after: {step}");
        }
        assert_eq!(self.shadow_ids().await.contains(&id), tenant == "tenant_a", "row {id} in the shadow after: {step}");
        self.assert_in_sync(step).await;
    }
}

async fn insert(client: &Client, id: i32) {
    client
        .execute("INSERT INTO users (id, name) VALUES ($1, 'Ada Lovelace')", &[&id])
        .await
        .unwrap_or_else(|e| panic!("insert {id}: {e}"));
}

async fn insert_simple(client: &Client, id: i32) {
    client
        .simple_query(&format!("INSERT INTO users (id, name) VALUES ({id}, 'Grace Hopper')"))
        .await
        .unwrap_or_else(|e| panic!("insert {id}: {e}"));
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn schema_per_tenant_writes_reach_the_shadow_only_from_the_migrated_tenant() {
    let f = fixture().await;
    let (a, b, c) = (f.session("tenant_a").await, f.session("tenant_b").await, f.session("tenant_c").await);
    for (offset, client) in [(100, &a), (200, &b), (300, &c)] {
        insert(client, offset + 1).await;
        insert_simple(client, offset + 2).await;
        let upsert = "INSERT INTO users (id, name) VALUES ($1, 'Upserted Row') \
                      ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name";
        client.execute(upsert, &[&(offset + 1)]).await.unwrap();
        let id = offset + 2;
        let updated = client.execute("UPDATE users SET name = 'Changed Name' WHERE id = $1", &[&id]).await;
        assert_eq!(updated.unwrap(), 1);
        insert(client, offset + 3).await;
        assert_eq!(client.execute("DELETE FROM users WHERE id = $1", &[&(offset + 3)]).await.unwrap(), 1);
    }
    assert_eq!(f.ids("tenant_a").await, vec![101, 102]);
    assert_eq!(f.ids("tenant_b").await, vec![201, 202]);
    assert_eq!(f.ids("tenant_c").await, vec![301, 302]);
    assert_eq!(f.shadow_ids().await, vec![101, 102], "only tenant_a's rows reach the shadow");
    f.assert_in_sync("writes from three tenants").await;
    let names: Vec<String> =
        b.query("SELECT name FROM users ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["Upserted Row", "Changed Name"], "tenant_b reads its own rows");
}

#[tokio::test]
async fn search_path_changes_by_set_set_local_reset_and_set_config_are_followed() {
    let f = fixture().await;
    let s = f.session("tenant_b").await;
    insert(&s, 1).await;
    f.assert_landed_in(1, "tenant_b", "startup options search_path=tenant_b").await;

    s.batch_execute("SET search_path = tenant_a").await.unwrap();
    insert(&s, 2).await;
    f.assert_landed_in(2, "tenant_a", "SET search_path = tenant_a").await;

    s.batch_execute("BEGIN").await.unwrap();
    s.batch_execute("SET LOCAL search_path = tenant_c").await.unwrap();
    insert(&s, 3).await;
    s.batch_execute("COMMIT").await.unwrap();
    f.assert_landed_in(3, "tenant_c", "SET LOCAL search_path = tenant_c, committed").await;
    insert(&s, 4).await;
    f.assert_landed_in(4, "tenant_a", "after COMMIT ended SET LOCAL").await;

    s.batch_execute("BEGIN").await.unwrap();
    s.batch_execute("SET search_path = tenant_b").await.unwrap();
    insert(&s, 5).await;
    s.batch_execute("ROLLBACK").await.unwrap();
    insert(&s, 6).await;
    f.assert_landed_in(5, "none", "a write rolled back with its SET").await;
    f.assert_landed_in(6, "tenant_a", "ROLLBACK undid SET search_path = tenant_b").await;

    s.batch_execute("BEGIN; SAVEPOINT s1").await.unwrap();
    s.batch_execute("SET search_path = tenant_c").await.unwrap();
    s.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    insert(&s, 7).await;
    s.batch_execute("COMMIT").await.unwrap();
    f.assert_landed_in(7, "tenant_a", "ROLLBACK TO SAVEPOINT undid SET search_path = tenant_c").await;

    s.query("SELECT pg_catalog.set_config('search_path', 'tenant_b', false)", &[]).await.unwrap();
    insert(&s, 8).await;
    f.assert_landed_in(8, "tenant_b", "set_config('search_path', 'tenant_b', false)").await;

    s.batch_execute("RESET search_path").await.unwrap();
    insert(&s, 9).await;
    f.assert_landed_in(9, "tenant_b", "RESET search_path (back to the startup options' tenant_b)").await;

    s.batch_execute("SET search_path TO tenant_c, tenant_a").await.unwrap();
    insert(&s, 10).await;
    f.assert_landed_in(10, "tenant_c", "SET search_path TO tenant_c, tenant_a").await;
    s.batch_execute("ALTER TABLE tenant_c.users RENAME TO people").await.unwrap();
    insert(&s, 11).await;
    s.batch_execute("ALTER TABLE tenant_c.people RENAME TO users").await.unwrap();
    f.assert_landed_in(11, "tenant_a", "tenant_c.users renamed away, tenant_a next on the path").await;
}

#[tokio::test]
async fn role_and_database_defaults_and_user_schemas_decide_the_session_start() {
    let f = fixture().await;
    let tenant_role = format!("{}_tenant_a", f.db.name);
    let defaulted_role = format!("{}_defaulted", f.db.name);
    for role in [&tenant_role, &defaulted_role] {
        f.direct.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN SUPERUSER")).await.unwrap();
    }
    // `$user`: a schema named like the role, holding the migrated table through a view would be another
    // relation; here the role's schema is tenant_a itself through ALTER ROLE ... SET.
    f.direct.batch_execute(&format!("ALTER ROLE \"{tenant_role}\" SET search_path = tenant_a")).await.unwrap();
    f.direct.batch_execute(&format!("ALTER DATABASE \"{}\" SET search_path = tenant_b", f.db.name)).await.unwrap();
    f.direct
        .batch_execute(&format!("CREATE SCHEMA \"{defaulted_role}\"; CREATE TABLE \"{defaulted_role}\".users (id int PRIMARY KEY, name text)"))
        .await
        .unwrap();

    let as_tenant = connect(&f.proxy.url_as(&f.db, &tenant_role, None)).await.unwrap();
    insert(&as_tenant, 1).await;
    f.assert_landed_in(1, "tenant_a", "ALTER ROLE ... SET search_path = tenant_a").await;

    let plain = f.proxy.connect(&f.db).await.unwrap();
    insert(&plain, 2).await;
    f.assert_landed_in(2, "tenant_b", "ALTER DATABASE ... SET search_path = tenant_b").await;

    // The database default is `tenant_b`; a session resetting to "$user", tenant_a reaches its own schema.
    let as_defaulted = connect(&f.proxy.url_as(&f.db, &defaulted_role, None)).await.unwrap();
    as_defaulted.batch_execute("SET search_path = \"$user\", tenant_a").await.unwrap();
    insert(&as_defaulted, 3).await;
    let own: i64 = f
        .direct
        .query_one(&format!("SELECT count(*) FROM \"{defaulted_role}\".users WHERE id = 3"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, 1, "\"$user\" first on the path: the role's own users table");
    f.assert_landed_in(3, "none", "\"$user\" schema first").await;
    as_defaulted.batch_execute(&format!("SET ROLE \"{tenant_role}\"")).await.unwrap();
    let via_role: i32 = 4;
    as_defaulted.batch_execute("SET search_path = \"$user\", tenant_a").await.unwrap();
    insert(&as_defaulted, via_role).await;
    f.assert_landed_in(via_role, "tenant_a", "SET ROLE: \"$user\" names a schema that does not exist").await;
    for role in [&tenant_role, &defaulted_role] {
        f.direct.batch_execute(&format!("DROP OWNED BY \"{role}\"; ")).await.ok();
    }
}

#[tokio::test]
async fn quoted_and_qualified_names_resolve_like_the_server() {
    let f = fixture().await;
    let s = f.session("tenant_b").await;
    s.execute("INSERT INTO \"tenant_a\".\"users\" (id, name) VALUES (1, 'Quoted Name')", &[]).await.unwrap();
    f.assert_landed_in(1, "tenant_a", "\"tenant_a\".\"users\" from a tenant_b session").await;
    s.execute("INSERT INTO \"users\" (id, name) VALUES (2, 'Quoted Bare')", &[]).await.unwrap();
    f.assert_landed_in(2, "tenant_b", "\"users\" on tenant_b's path").await;
    s.execute("UPDATE tenant_a.users SET name = 'Ada Byron' WHERE id = 1", &[]).await.unwrap();
    f.assert_in_sync("a qualified UPDATE from another tenant's session").await;
}

#[tokio::test]
async fn writes_and_breaking_ddl_naming_the_shadow_are_refused_and_other_relations_of_its_name_are_written() {
    let f = fixture().await;
    let other = "CREATE TABLE tenant_b.users_v2 (id int PRIMARY KEY, first_name text, last_name text)";
    f.direct.batch_execute(other).await.unwrap();
    let a = f.session("tenant_a").await;
    insert(&a, 1).await;
    for sql in [
        "INSERT INTO users_v2 (id, first_name, last_name) VALUES (2, 'Shadow', 'Only')",
        "UPDATE users_v2 SET first_name = 'Edited' WHERE id = 1",
        "DELETE FROM tenant_a.users_v2",
        "TRUNCATE users_v2",
        "WITH gone AS (DELETE FROM users_v2 RETURNING id) SELECT count(*) FROM gone",
    ] {
        let extended = a.execute(sql, &[]).await.unwrap_err();
        let simple = a.simple_query(sql).await.unwrap_err();
        for e in [extended, simple] {
            assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
            let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
            assert!(message.contains("\"tenant_a_split_name\"") && message.contains("shadow"), "{sql}: {message}");
        }
    }
    let copy = a.copy_in::<_, bytes::Bytes>("COPY users_v2 (id, first_name, last_name) FROM STDIN").await;
    assert_eq!(copy.err().map(|e| sqlstate(&e)).as_deref(), Some("0A000"), "COPY into the shadow");
    assert_eq!((f.ids("tenant_a").await, f.shadow_ids().await), (vec![1], vec![1]), "nothing changed");
    f.assert_in_sync("refused writes to the shadow").await;
    let read: i64 = a.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0);
    assert_eq!(read, 1, "reads of the shadow pass through");
    for ddl in ["DROP TABLE users_v2", "ALTER TABLE tenant_a.users_v2 DROP COLUMN last_name"] {
        let refused = a.batch_execute(ddl).await.unwrap_err();
        assert_eq!(sqlstate(&refused), "0A000", "{ddl} would break the dual write: {refused}");
    }
    a.batch_execute("CREATE INDEX users_v2_first_name ON users_v2 (first_name)").await.unwrap();
    insert(&a, 3).await;
    f.assert_in_sync("DDL on the shadow refused or added to it, then a dual write").await;
    a.execute("DELETE FROM users WHERE id = 3", &[]).await.unwrap();

    // tenant_b's users_v2 is another relation: its writes pass through untouched.
    let b = f.session("tenant_b").await;
    b.execute("INSERT INTO users_v2 (id, first_name, last_name) VALUES (5, 'Other', 'Tenant')", &[]).await.unwrap();
    b.simple_query("UPDATE users_v2 SET last_name = 'B' WHERE id = 5").await.unwrap();
    b.batch_execute("ALTER TABLE users_v2 ADD COLUMN note text; ALTER TABLE users_v2 DROP COLUMN note").await.unwrap();
    let tenant_b: i64 = f.direct.query_one("SELECT count(*) FROM tenant_b.users_v2", &[]).await.unwrap().get(0);
    assert_eq!(tenant_b, 1);
    let qualified = b.execute("DELETE FROM tenant_a.users_v2", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&qualified), "0A000", "the qualified shadow is refused from any session: {qualified}");

    // A temporary users_v2 hides the shadow from the unqualified name, and only from it.
    a.batch_execute("CREATE TEMP TABLE users_v2 (id int, first_name text, last_name text)").await.unwrap();
    a.execute("INSERT INTO users_v2 (id, first_name, last_name) VALUES (7, 'Temp', 'Row')", &[]).await.unwrap();
    let temp: i64 = a.query_one("SELECT count(*) FROM pg_temp.users_v2", &[]).await.unwrap().get(0);
    assert_eq!(temp, 1, "the write landed in the temporary table");
    let refused = a.execute("INSERT INTO tenant_a.users_v2 (id) VALUES (8)", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&refused), "0A000", "{refused}");
    assert_eq!((f.ids("tenant_a").await, f.shadow_ids().await), (vec![1], vec![1]), "the shadow is untouched");
}

#[tokio::test]
async fn temporary_tables_hide_the_migrated_table_and_ddl_on_them_is_not_refused() {
    let f = fixture().await;
    let s = f.session("tenant_a").await;
    insert(&s, 1).await;
    f.assert_landed_in(1, "tenant_a", "before the temporary table").await;
    s.batch_execute("CREATE TEMP TABLE users (id int PRIMARY KEY, name text)").await.unwrap();
    insert(&s, 2).await;
    f.assert_landed_in(2, "none", "a write into the temporary users").await;
    let temp: i64 = s.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(temp, 1, "the temporary table answers the unqualified name");
    s.batch_execute("ALTER TABLE users ADD COLUMN note text").await.unwrap();
    s.batch_execute("DROP TABLE users").await.unwrap();
    insert(&s, 3).await;
    f.assert_landed_in(3, "tenant_a", "after the temporary table was dropped").await;
    let refused = s.batch_execute("DROP TABLE users").await.unwrap_err();
    assert_eq!(sqlstate(&refused), "0A000", "DDL on the migrated table itself is still refused: {refused}");
    assert_eq!(f.ids("tenant_a").await, vec![1, 3]);
}

#[tokio::test]
async fn prepared_statements_follow_the_search_path_at_each_execution() {
    let f = fixture().await;
    let s = f.session("tenant_a").await;
    let statement = s.prepare("INSERT INTO users (id, name) VALUES ($1, 'Prepared Row')").await.unwrap();
    s.execute(&statement, &[&1i32]).await.unwrap();
    f.assert_landed_in(1, "tenant_a", "prepared on tenant_a").await;
    s.batch_execute("SET search_path = tenant_b").await.unwrap();
    s.execute(&statement, &[&2i32]).await.unwrap();
    f.assert_landed_in(2, "tenant_b", "the same prepared statement after SET search_path = tenant_b").await;
    s.batch_execute("SET search_path = tenant_a").await.unwrap();
    s.execute(&statement, &[&3i32]).await.unwrap();
    f.assert_landed_in(3, "tenant_a", "and back on tenant_a").await;
}

#[tokio::test]
async fn reads_are_routed_to_the_shadow_only_where_the_name_reaches_the_migrated_table() {
    let f = fixture().await;
    f.direct
        .batch_execute(
            "INSERT INTO tenant_a.users VALUES (1, 'Alan Turing'); INSERT INTO tenant_a.users_v2 VALUES (1, 'Alan', 'Turing');
             INSERT INTO tenant_b.users VALUES (1, 'Barbara Liskov');",
        )
        .await
        .unwrap();
    let url =
        |path: &str| format!("{}?options=-c%20dualwrite.version%3Dv2%20-c%20search_path%3D{path}", f.proxy.url(&f.db));
    let v2_on_a = connect(&url("tenant_a")).await.unwrap();
    let first: String = v2_on_a.query_one("SELECT first_name FROM users WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(first, "Alan", "a v2 session on tenant_a reads the shadow's shape");
    let v2_on_b = connect(&url("tenant_b")).await.unwrap();
    let name: String = v2_on_b.query_one("SELECT name FROM users WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(name, "Barbara Liskov", "tenant_b's users is not migrated: its own shape, untouched");
}

#[tokio::test]
async fn a_write_after_a_search_path_change_in_the_same_query_string_is_refused_not_guessed() {
    let f = fixture().await;
    let s = f.session("tenant_a").await;
    let err = s
        .simple_query("SET search_path = tenant_b; INSERT INTO users (id, name) VALUES (1, 'Same String')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("tenant_a_split_name"), "the refusal names the migration: {message}");
    for tenant in ["tenant_a", "tenant_b", "tenant_c"] {
        assert!(f.ids(tenant).await.is_empty(), "nothing written to {tenant}");
    }
    let path = s.simple_query("SHOW search_path").await.unwrap();
    let shown = path.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("tenant_a"), "the refused string's SET did not run either");
    // Sent on their own, the same two statements are judged each by what the server resolves.
    s.batch_execute("SET search_path = tenant_b").await.unwrap();
    insert_simple(&s, 1).await;
    f.assert_landed_in(1, "tenant_b", "the same statements sent one at a time").await;
}

/// Extended-protocol frames for a hand-made pipelined batch.
mod batch {
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// Parse (unnamed), Bind (unnamed portal, no parameters), Execute of `sql`.
    pub fn statement(sql: &str) -> Vec<u8> {
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        let mut out = frame(b'P', &parse);
        out.extend(frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
        out
    }

    pub fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }
}

/// The messages' tags up to ReadyForQuery, and the SQLSTATEs of the errors among them.
async fn read_batch(client: &mut proxy_support::RawClient) -> (Vec<u8>, Vec<String>) {
    let frames = client.read_until_ready().await;
    let errors = frames.iter().filter(|(tag, _)| *tag == b'E').map(|(_, body)| proxy_support::error_field(body, b'C'));
    (frames.iter().map(|(tag, _)| *tag).collect(), errors.collect())
}

#[tokio::test]
async fn a_pipelined_batch_is_judged_by_what_its_own_earlier_statements_set() {
    let f = fixture().await;
    let user = f.db.cluster.superuser().to_owned();
    let mut client = proxy_support::RawClient::connect(f.proxy.addr(), &user, &f.db.name).await;
    // One batch: the path changes, then an unqualified write, then back and another write.
    let mut bytes = batch::statement("SET search_path = tenant_b");
    bytes.extend(batch::statement("INSERT INTO users (id, name) VALUES (1, 'In Batch')"));
    bytes.extend(batch::statement("SET search_path = tenant_a"));
    bytes.extend(batch::statement("INSERT INTO users (id, name) VALUES (2, 'In Batch')"));
    bytes.extend(batch::sync());
    client.send(&bytes).await;
    let (tags, errors) = read_batch(&mut client).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.iter().filter(|&&t| t == b'C').count(), 4, "four statements completed: {tags:?}");
    assert_eq!(tags.iter().filter(|&&t| t == b'1').count(), 4, "one ParseComplete each, none of the probe's");
    f.assert_landed_in(1, "tenant_b", "an INSERT after SET search_path = tenant_b in the same batch").await;
    f.assert_landed_in(2, "tenant_a", "an INSERT after SET search_path = tenant_a in the same batch").await;
}

#[tokio::test]
async fn a_batch_that_failed_before_the_probe_fails_once_and_the_session_goes_on() {
    let f = fixture().await;
    let user = f.db.cluster.superuser().to_owned();
    let mut client = proxy_support::RawClient::connect(f.proxy.addr(), &user, &f.db.name).await;
    client.send(&[batch::statement("SET search_path = tenant_a"), batch::sync()].concat()).await;
    read_batch(&mut client).await;
    // The failing statement comes first; the write that would need a probe is skipped by the server.
    let mut bytes = batch::statement("SELECT 1 / 0");
    bytes.extend(batch::statement("SET search_path = tenant_b"));
    bytes.extend(batch::statement("INSERT INTO users (id, name) VALUES (1, 'Skipped Row')"));
    bytes.extend(batch::sync());
    client.send(&bytes).await;
    let (_, errors) = read_batch(&mut client).await;
    assert_eq!(errors, vec!["22012"], "the client's own error, once");
    for tenant in ["tenant_a", "tenant_b", "tenant_c"] {
        assert!(f.ids(tenant).await.is_empty(), "nothing written to {tenant}");
    }
    client
        .send(&[batch::statement("INSERT INTO users (id, name) VALUES (2, 'After Error')"), batch::sync()].concat())
        .await;
    let (_, errors) = read_batch(&mut client).await;
    assert!(errors.is_empty(), "{errors:?}");
    f.assert_landed_in(2, "tenant_a", "the next batch after the failed one").await;
}

/// Postgres accepts `database.schema.table` for the current database; through the proxy such a write of the
/// migrated table is refused (0A000) and changes neither table, where passed through it would have changed
/// `tenant_a.users` alone. Another tenant's table so named is written as Postgres writes it.
#[tokio::test]
async fn database_qualified_writes_of_the_migrated_table_are_refused_and_change_nothing() {
    let f = fixture().await;
    let client = f.session("public").await;
    client.execute("INSERT INTO tenant_a.users (id, name) VALUES (1, 'Ada Lovelace')", &[]).await.unwrap();
    let db = &f.db.name;
    f.direct
        .execute(&format!("UPDATE {db}.tenant_c.users SET name = 'Direct Write' WHERE id = 1"), &[])
        .await
        .expect("Postgres accepts the database-qualified name of the current database");
    for sql in [
        format!("UPDATE {db}.tenant_a.users SET name = 'Grace Hopper' WHERE id = 1"),
        format!("DELETE FROM {db}.tenant_a.users WHERE id = 1"),
        format!("INSERT INTO {db}.tenant_a.users (id, name) VALUES (2, 'Alan Turing')"),
    ] {
        let e = client.execute(&sql, &[]).await.expect_err(&sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
        let e = client.simple_query(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
        let names: Vec<String> = f
            .direct
            .query("SELECT name FROM tenant_a.users ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(names, vec!["Ada Lovelace"], "after {sql}");
        f.assert_in_sync(&sql).await;
    }
    client.execute("INSERT INTO tenant_b.users (id, name) VALUES (5, 'Five')", &[]).await.unwrap();
    let updated = client.execute(&format!("UPDATE {db}.tenant_b.users SET name = 'Six' WHERE id = 5"), &[]).await;
    assert_eq!(updated.unwrap(), 1, "another tenant's table is not the proxy's business");
}

/// `U&"\0075sers"` is `users` to Postgres. Through the proxy a write so spelled of the migrated table is
/// refused and changes nothing (passed through, it changed `tenant_a.users` alone); another tenant's table
/// so spelled is written.
#[tokio::test]
async fn unicode_escaped_writes_of_the_migrated_table_are_refused_and_change_nothing() {
    let f = fixture().await;
    let client = f.session("tenant_a").await;
    insert(&client, 1).await;
    f.direct
        .execute(r#"UPDATE tenant_c.U&"\0075sers" SET name = 'Direct Write' WHERE id = 1"#, &[])
        .await
        .expect("Postgres reads the escaped name");
    for sql in [
        r#"UPDATE U&"\0075sers" SET name = 'Grace Hopper' WHERE id = 1"#,
        r#"DELETE FROM tenant_a.U&"\0075sers" WHERE id = 1"#,
    ] {
        let e = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
        assert_eq!(f.ids("tenant_a").await, vec![1], "after {sql}");
        let name: String =
            f.direct.query_one("SELECT name FROM tenant_a.users WHERE id = 1", &[]).await.unwrap().get(0);
        assert_eq!(name, "Ada Lovelace", "after {sql}");
        f.assert_in_sync(sql).await;
    }
    let other = f.session("tenant_b").await;
    insert(&other, 7).await;
    let updated = other.simple_query(r#"UPDATE U&"\0075sers" SET name = 'Seven Up' WHERE id = 7"#).await;
    assert!(updated.is_ok(), "tenant_b's table so spelled is written: {updated:?}");
    let name: String = f.direct.query_one("SELECT name FROM tenant_b.users WHERE id = 7", &[]).await.unwrap().get(0);
    assert_eq!(name, "Seven Up");
}
