//! Writers of a migrated table that the proxy never sees as statement text, found in the catalog of a real
//! PostgreSQL: one test per kind (foreign keys with ON DELETE CASCADE, ON UPDATE CASCADE and SET NULL,
//! a trigger on another table, PL/pgSQL and SQL functions, a procedure, writable views, rules, tables
//! related by inheritance or partitioning), look-alikes
//! that are not writers, registration refused (proxy start, a rules reload bringing a migration) and allowed
//! by `accept_unseen_writers`, a writer added to a registered migration found by the next start without
//! stopping it, `dualwrite check` naming each finding, and the divergence
//! an accepted writer really causes.

use std::io::Write as _;
use std::sync::Arc;

use dualwrite_proxy::check::writers::{self, Kind, UnseenWriter};
use dualwrite_proxy::check::{run, CheckArgs};
use dualwrite_proxy::state::{Actor, SchemaFindingKind, StateError, StateHandle, StateOptions};
use dualwrite_rules::RuleSet;
use dualwrite_tests::{TestCluster, TestDb, TestProxy};

const SCHEMA: &str = "
    CREATE TABLE orgs (id int PRIMARY KEY, name text);
    CREATE TABLE users (id int PRIMARY KEY, org_id int, name text);
    CREATE TABLE users_v2 (id int PRIMARY KEY, org_id int, full_name text);
    CREATE TABLE orders (id int PRIMARY KEY, user_id int, total int);
    INSERT INTO orgs VALUES (1, 'acme'), (2, 'initech');
";

/// The migration of `public.users`, with `extra` lines (e.g. `accept_unseen_writers = [...]`).
fn rules_text(extra: &str) -> String {
    format!(
        "[[migration]]
name = \"users_rename\"
table = \"public.users\"
shadow = \"public.users_v2\"
key = [\"id\"]
versions = {{ old = \"v1\", new = \"v2\" }}
{extra}
[migration.forward]
id = \"id\"
org_id = \"org_id\"
full_name = \"name\"
[migration.backward]
id = \"id\"
org_id = \"org_id\"
name = \"full_name\"
"
    )
}

fn rules(extra: &str) -> Arc<RuleSet> {
    Arc::new(RuleSet::from_toml(&rules_text(extra), "rules.toml").unwrap())
}

/// A fresh database with [`SCHEMA`] and then `objects`.
async fn database(objects: &str) -> TestDb {
    let db = TestCluster::shared().create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(objects).await.unwrap();
    db
}

/// What the catalog scan finds for the `users` migration.
async fn findings(db: &TestDb) -> Vec<UnseenWriter> {
    let client = db.connect().await.unwrap();
    writers::find(&client, &rules("").migrations[0]).await.unwrap()
}

fn ids(found: &[UnseenWriter]) -> Vec<&str> {
    found.iter().map(|w| w.id.as_str()).collect()
}

/// The one finding with `id`, checked to be of `kind`, to describe itself with `describes` and to say what
/// to do.
fn the_finding<'a>(found: &'a [UnseenWriter], id: &str, kind: Kind, describes: &str) -> &'a UnseenWriter {
    let matching: Vec<&UnseenWriter> = found.iter().filter(|w| w.id == id).collect();
    assert_eq!(matching.len(), 1, "expected one {id} in {found:#?}");
    let w = matching[0];
    assert_eq!(w.kind, kind, "{w:#?}");
    assert!(w.description.contains(describes), "{w:#?}");
    assert!(w.remedy.contains("accept_unseen_writers"), "{w:#?}");
    w
}

#[tokio::test]
async fn a_foreign_key_with_on_delete_cascade_into_a_parent_is_found() {
    let db = database("ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON DELETE CASCADE;").await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["fk:users_org_id_fkey"]);
    the_finding(&found, "fk:users_org_id_fkey", Kind::ForeignKey, "references public.orgs ON DELETE CASCADE");
}

#[tokio::test]
async fn a_foreign_key_with_on_update_cascade_is_found() {
    let db = database("ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON UPDATE CASCADE;").await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["fk:users_org_id_fkey"]);
    the_finding(&found, "fk:users_org_id_fkey", Kind::ForeignKey, "references public.orgs ON UPDATE CASCADE:");
}

#[tokio::test]
async fn foreign_keys_with_set_null_and_a_self_reference_are_found() {
    let db = database(
        "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs ON DELETE SET NULL;
         ALTER TABLE users ADD COLUMN manager_id int;
         ALTER TABLE users ADD CONSTRAINT users_manager_fk FOREIGN KEY (manager_id) REFERENCES users
             ON DELETE SET NULL ON UPDATE CASCADE;",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["fk:users_manager_fk", "fk:users_org_fk"]);
    the_finding(&found, "fk:users_org_fk", Kind::ForeignKey, "references public.orgs ON DELETE SET NULL:");
    let manager = the_finding(
        &found,
        "fk:users_manager_fk",
        Kind::ForeignKey,
        "references public.users ON DELETE SET NULL ON UPDATE CASCADE",
    );
    assert!(manager.description.contains("which the statement does not return"), "{manager:#?}");
}

#[tokio::test]
async fn a_trigger_on_another_table_that_writes_the_table_is_found() {
    let db = database(
        "CREATE FUNCTION orders_touch_user() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE users SET name = name || '*' WHERE id = NEW.user_id;
             RETURN NEW;
         END $$;
         CREATE TRIGGER orders_touch_user AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch_user();
         CREATE TABLE shipments (id int, user_id int) PARTITION BY RANGE (id);
         CREATE TABLE shipments_1 PARTITION OF shipments FOR VALUES FROM (0) TO (100);
         CREATE TRIGGER shipments_touch_user AFTER INSERT ON shipments
             FOR EACH ROW EXECUTE FUNCTION orders_touch_user();",
    )
    .await;
    let found = findings(&db).await;
    // The trigger function is reported through its triggers, not a second time as a function; the clone of
    // a partitioned table's trigger on each partition is not reported again.
    assert_eq!(
        ids(&found),
        ["trigger:public.orders.orders_touch_user", "trigger:public.shipments.shipments_touch_user"]
    );
    the_finding(
        &found,
        "trigger:public.orders.orders_touch_user",
        Kind::Trigger,
        "runs public.orders_touch_user(), which runs UPDATE on public.users",
    );
}

#[tokio::test]
async fn a_plpgsql_function_that_writes_the_table_is_found() {
    let db = database(
        "CREATE FUNCTION rename_user(p_id int, p_name text) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE public.users SET name = p_name WHERE id = p_id;
         END $$;
         CREATE FUNCTION purge_org(p_org int) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             EXECUTE format('DELETE FROM %I WHERE org_id = $1', 'users') USING p_org;
         END $$;",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["function:public.purge_org(integer)", "function:public.rename_user(integer, text)"]);
    the_finding(
        &found,
        "function:public.rename_user(integer, text)",
        Kind::Function,
        "(plpgsql) runs UPDATE on public.users",
    );
    the_finding(&found, "function:public.purge_org(integer)", Kind::Function, "names public.users inside a string");
}

#[tokio::test]
async fn sql_functions_that_write_the_table_are_found() {
    let db = database(
        "CREATE FUNCTION add_user(int, text) RETURNS int LANGUAGE sql
             AS 'INSERT INTO users (id, name) VALUES ($1, $2) RETURNING id';
         CREATE FUNCTION drop_user(p int) RETURNS void LANGUAGE sql
             BEGIN ATOMIC DELETE FROM users WHERE id = p; END;",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["function:public.add_user(integer, text)", "function:public.drop_user(integer)"]);
    the_finding(
        &found,
        "function:public.add_user(integer, text)",
        Kind::Function,
        "(sql) runs INSERT INTO on public.users",
    );
    // A SQL-standard body has no source text: it is read back from the catalog's parsed form.
    the_finding(&found, "function:public.drop_user(integer)", Kind::Function, "(sql) runs DELETE FROM on public.users");
}

#[tokio::test]
async fn a_procedure_that_writes_the_table_is_found() {
    let db = database(
        "CREATE PROCEDURE archive_org(p_org int) LANGUAGE plpgsql AS $$
         BEGIN
             DELETE FROM users WHERE org_id = p_org;
             COMMIT;
         END $$;",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["procedure:public.archive_org(integer)"]);
    let w = the_finding(
        &found,
        "procedure:public.archive_org(integer)",
        Kind::Procedure,
        "runs DELETE FROM on public.users",
    );
    assert!(w.description.contains("`CALL public.archive_org(...)` writes it unseen"), "{w:#?}");
}

#[tokio::test]
async fn writable_views_over_the_table_are_found() {
    let db = database(
        "CREATE VIEW acme_users AS SELECT * FROM users WHERE org_id = 1;
         CREATE VIEW acme_names AS SELECT id, name FROM acme_users;
         CREATE VIEW user_orgs AS SELECT u.id, u.name, o.name AS org FROM users u JOIN orgs o ON o.id = u.org_id;
         CREATE FUNCTION user_orgs_rename() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE users SET name = NEW.name WHERE id = OLD.id;
             RETURN NEW;
         END $$;
         CREATE TRIGGER user_orgs_rename INSTEAD OF UPDATE ON user_orgs
             FOR EACH ROW EXECUTE FUNCTION user_orgs_rename();",
    )
    .await;
    let found = findings(&db).await;
    // The INSTEAD OF trigger is how `user_orgs` writes the table: reported once, as the view.
    assert_eq!(ids(&found), ["view:public.acme_names", "view:public.acme_users", "view:public.user_orgs"]);
    the_finding(&found, "view:public.acme_users", Kind::View, "accepts INSERT, UPDATE, DELETE (auto-updatable)");
    // A view over a view over the table.
    the_finding(&found, "view:public.acme_names", Kind::View, "view public.acme_names over public.users");
    the_finding(&found, "view:public.user_orgs", Kind::View, "accepts UPDATE (through INSTEAD OF triggers)");
}

#[tokio::test]
async fn rules_on_the_table_and_rules_writing_it_are_found() {
    let db = database(
        "CREATE TABLE deleted_users (id int, at timestamptz DEFAULT now());
         CREATE RULE users_keep_deleted AS ON DELETE TO users DO ALSO INSERT INTO deleted_users (id) VALUES (OLD.id);
         CREATE RULE orders_rename_buyer AS ON INSERT TO orders
             DO ALSO UPDATE users SET name = name || '+' WHERE id = NEW.user_id;",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["rule:public.orders.orders_rename_buyer", "rule:public.users.users_keep_deleted"]);
    the_finding(
        &found,
        "rule:public.users.users_keep_deleted",
        Kind::Rule,
        "rule users_keep_deleted on public.users (ON DELETE)",
    );
    the_finding(
        &found,
        "rule:public.orders.orders_rename_buyer",
        Kind::Rule,
        "(ON INSERT) runs UPDATE on public.users: a write to public.orders writes public.users",
    );
}

#[tokio::test]
async fn tables_the_table_inherits_from_and_tables_inheriting_from_it_are_found() {
    let db = database(
        "CREATE TABLE people (id int, name text);
         CREATE TABLE beings (id int);
         ALTER TABLE people INHERIT beings;
         ALTER TABLE users INHERIT people;
         CREATE TABLE archived_users (archived_at timestamptz) INHERITS (users);",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(
        ids(&found),
        ["inheritance:public.beings", "inheritance:public.people", "inheritance:public.archived_users"],
        "ancestors (every level) first, then descendants"
    );
    the_finding(
        &found,
        "inheritance:public.people",
        Kind::Inheritance,
        "public.users inherits from public.people: an UPDATE or DELETE of public.people without ONLY writes the rows of public.users",
    );
    let child = &found[2];
    assert_eq!(child.kind, Kind::Inheritance);
    assert!(
        child.description.contains(
            "public.archived_users is a table inheriting from public.users: its rows are rows of public.users"
        ),
        "{child:#?}"
    );
    assert!(
        child.remedy.contains("ALTER TABLE public.archived_users NO INHERIT public.users")
            && child.remedy.contains("accepting it leaves its writes unwatched"),
        "an inheriting table's writes are not published under the parent's name: {child:#?}"
    );
}

/// A partition of a partitioned table: the partitioned parent routes INSERTs into it, and its own partitions
/// hold its rows.
#[tokio::test]
async fn a_partitioned_parent_and_the_partitions_of_the_table_are_found() {
    let db = database(
        "ALTER TABLE users RENAME TO users_flat;
         CREATE TABLE all_users (id int, org_id int, name text) PARTITION BY RANGE (id);
         CREATE TABLE users PARTITION OF all_users (PRIMARY KEY (id)) FOR VALUES FROM (0) TO (1000)
             PARTITION BY RANGE (id);
         CREATE TABLE users_low PARTITION OF users FOR VALUES FROM (0) TO (500);",
    )
    .await;
    let found = findings(&db).await;
    assert_eq!(ids(&found), ["inheritance:public.all_users", "inheritance:public.users_low"]);
    the_finding(
        &found,
        "inheritance:public.all_users",
        Kind::Inheritance,
        "(and an INSERT into it routes rows into it)",
    );
    the_finding(
        &found,
        "inheritance:public.users_low",
        Kind::Inheritance,
        "public.users_low is a partition of public.users",
    );
}

/// Objects that name or touch the table without writing it (or write another table of the same name, or
/// the shadow, or belong to the proxy) are not reported.
#[tokio::test]
async fn look_alikes_that_do_not_write_the_table_are_not_reported() {
    let db = database(
        "CREATE VIEW user_org_names AS SELECT u.name, o.name AS org FROM users u JOIN orgs o ON o.id = u.org_id;
         CREATE VIEW user_count AS SELECT count(*) FROM users;
         ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON DELETE NO ACTION ON UPDATE RESTRICT;
         ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users ON DELETE CASCADE ON UPDATE CASCADE;
         CREATE FUNCTION count_users() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM users';
         CREATE FUNCTION lock_user(p int) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM 1 FROM users WHERE id = p FOR UPDATE;
             UPDATE orders SET total = 0 WHERE user_id = (SELECT id FROM users WHERE id = p);
         END $$;
         CREATE FUNCTION copy_to_shadow() RETURNS void LANGUAGE sql AS 'INSERT INTO users_v2 SELECT id, org_id, name FROM users';
         CREATE SCHEMA audit;
         CREATE TABLE audit.users (id int);
         CREATE FUNCTION audit.clear() RETURNS void LANGUAGE sql AS 'DELETE FROM audit.users';
         CREATE FUNCTION orders_check_buyer() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NOT EXISTS (SELECT 1 FROM users WHERE id = NEW.user_id) THEN RAISE EXCEPTION 'no buyer'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER orders_check_buyer BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_check_buyer();
         CREATE TABLE order_log (id int, buyer text);
         CREATE RULE orders_log AS ON INSERT TO orders
             DO ALSO INSERT INTO order_log SELECT NEW.id, name FROM users WHERE id = NEW.user_id;
         CREATE SCHEMA dualwrite;
         CREATE FUNCTION dualwrite.sync() RETURNS void LANGUAGE sql AS 'DELETE FROM public.users WHERE false';",
    )
    .await;
    let found = findings(&db).await;
    assert!(found.is_empty(), "{found:#?}");
}

/// Every kind at once, for the registration and `check` tests.
const ALL_KINDS: &str = "
    ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON DELETE CASCADE;
    CREATE FUNCTION orders_touch_user() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE users SET name = name WHERE id = NEW.user_id; RETURN NEW; END $$;
    CREATE TRIGGER orders_touch_user AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch_user();
    CREATE FUNCTION rename_user(int, text) RETURNS void LANGUAGE sql AS 'UPDATE users SET name = $2 WHERE id = $1';
    CREATE PROCEDURE purge_users() LANGUAGE sql BEGIN ATOMIC DELETE FROM users WHERE name IS NULL; END;
    CREATE VIEW acme_users AS SELECT * FROM users WHERE org_id = 1;
    CREATE RULE orders_rename_buyer AS ON INSERT TO orders DO ALSO UPDATE users SET name = name WHERE id = NEW.user_id;
";

const ALL_IDS: [&str; 6] = [
    "fk:users_org_id_fkey",
    "trigger:public.orders.orders_touch_user",
    "function:public.rename_user(integer, text)",
    "procedure:public.purge_users()",
    "view:public.acme_users",
    "rule:public.orders.orders_rename_buyer",
];

fn accept_all() -> String {
    let quoted: Vec<String> = ALL_IDS.iter().map(|id| format!("{id:?}")).collect();
    format!("accept_unseen_writers = [{}]", quoted.join(", "))
}

#[tokio::test]
async fn check_names_each_unseen_writer_with_what_to_do_and_fails_until_they_are_accepted() {
    let db = database(ALL_KINDS).await;
    let (findings, report) = check(&db, &rules_text("")).await;
    for id in ALL_IDS {
        assert!(report.contains(&format!("  ERROR    unseen writer {id}: ")), "no {id} in:\n{report}");
    }
    assert_eq!(report.matches("           what to do: ").count(), ALL_IDS.len(), "{report}");
    assert!(report.contains(&format!("to accept them: {}", accept_all())), "{report}");
    assert_eq!(findings.errors, ALL_IDS.len(), "{report}");
    assert!(!findings.clean(), "{report}");

    let (findings, report) = check(&db, &rules_text(&accept_all())).await;
    for id in ALL_IDS {
        assert!(report.contains(&format!("  accepted unseen writer {id}: ")), "no accepted {id} in:\n{report}");
    }
    assert_eq!(findings.errors, 0, "{report}");
    assert!(findings.clean(), "{report}");
}

#[tokio::test]
async fn check_says_when_nothing_writes_unseen_and_when_an_accepted_writer_is_gone() {
    let db = database("").await;
    let (findings, report) = check(&db, &rules_text("accept_unseen_writers = [\"fk:users_gone_fkey\"]")).await;
    assert!(report.contains("  ok       no writers of public.users that the proxy cannot see"), "{report}");
    assert!(
        report.contains("  note     accept_unseen_writers lists fk:users_gone_fkey, which the catalog does not show"),
        "{report}"
    );
    assert_eq!(findings.errors, 0, "{report}");
}

#[tokio::test]
async fn check_notes_foreign_keys_into_the_table_to_move_before_complete() {
    let db = database("ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users ON DELETE CASCADE;").await;
    let (findings, report) = check(&db, &rules_text("")).await;
    assert!(
        report.contains(
            "  note     foreign key orders_user_id_fkey of public.orders references public.users: \
             point it at public.users_v2 before `complete`"
        ),
        "{report}"
    );
    assert_eq!(findings.errors, 0, "{report}");
}

async fn check(db: &TestDb, rules_text: &str) -> (dualwrite_proxy::check::Findings, String) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(rules_text.as_bytes()).unwrap();
    let mut out = Vec::new();
    let findings = run(&CheckArgs::new(file.path(), db.url()), &mut out).await.expect("check runs");
    (findings, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn the_proxy_does_not_start_with_unaccepted_unseen_writers_and_starts_once_they_are_accepted() {
    let db = database(ALL_KINDS).await;
    let error = match TestProxy::with_rules_toml(&db, &rules_text("")).await {
        Ok(_) => panic!("the proxy started with unaccepted unseen writers"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("migration `users_rename` cannot be registered: 6 writer(s) of public.users"), "{error}");
    for id in ALL_IDS {
        assert!(error.contains(&format!("  {id}: ")), "no {id} in:\n{error}");
    }
    assert!(error.contains(&format!("add to migration `users_rename` in the rules file: {}", accept_all())), "{error}");
    // Nothing was registered.
    let registered = db.connect().await.unwrap().query_one("SELECT count(*) FROM dualwrite.migrations", &[]).await;
    assert_eq!(registered.unwrap().get::<_, i64>(0), 0);

    let proxy = TestProxy::with_rules_toml(&db, &rules_text(&accept_all())).await.unwrap();
    let client = proxy.connect(&db).await.unwrap();
    client.execute("INSERT INTO users (id, org_id, name) VALUES (7, 1, 'Ada')", &[]).await.unwrap();
    let shadow = db.connect().await.unwrap().query_one("SELECT full_name FROM users_v2 WHERE id = 7", &[]).await;
    assert_eq!(shadow.unwrap().get::<_, String>(0), "Ada");
}

/// Part of the writers accepted: only the others are refused, and the line to add lists them all.
#[tokio::test]
async fn registration_refuses_only_the_writers_the_rules_do_not_accept() {
    let db = database(ALL_KINDS).await;
    let extra = "accept_unseen_writers = [\"fk:users_org_id_fkey\", \"view:public.acme_users\"]";
    let refusal = match StateHandle::connect(db.url().parse().unwrap(), rules(extra), StateOptions::default()).await {
        Err(StateError::UnseenWriters(refusal)) => refusal,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("registered with unaccepted unseen writers"),
    };
    assert_eq!(refusal.0.len(), 1);
    let refused: Vec<&str> = ids(&refusal.0[0].writers);
    assert_eq!(refused, [ALL_IDS[1], ALL_IDS[2], ALL_IDS[3], ALL_IDS[5]]);
    assert_eq!(refusal.0[0].accept_all, ALL_IDS);
}

/// A registered migration is checked again at every start: a foreign key added since is found by the
/// schema watch's first check, in force before the handle serves, and does not stop the start (refusing it
/// would stop every session of the instance over one migration's table).
#[tokio::test]
async fn a_writer_added_after_registration_is_found_before_the_next_start_serves_and_does_not_stop_it() {
    let db = database("").await;
    let first = StateHandle::connect(db.url().parse().unwrap(), rules(""), StateOptions::default()).await.unwrap();
    assert!(first.snapshot().migrations.contains_key("users_rename"));
    drop(first);
    db.connect()
        .await
        .unwrap()
        .batch_execute("ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON UPDATE CASCADE;")
        .await
        .unwrap();
    let next = StateHandle::connect(db.url().parse().unwrap(), rules(""), StateOptions::default())
        .await
        .expect("a registered migration's new writer does not stop the start");
    let snapshot = next.snapshot();
    let findings = &snapshot.migration("users_rename").expect("registered").schema_findings;
    assert!(
        findings
            .iter()
            .any(|f| f.kind == SchemaFindingKind::UnseenWriters && f.description.contains("fk:users_org_id_fkey")),
        "{findings:?}"
    );
}

/// A second migration, of `public.orders` into `orders_v2`, after the `users` one of `users_extra`.
fn with_orders(users_extra: &str, orders_extra: &str) -> Arc<RuleSet> {
    let orders = format!(
        "[[migration]]
name = \"orders_copy\"
table = \"public.orders\"
shadow = \"public.orders_v2\"
key = [\"id\"]
versions = {{ old = \"v1\", new = \"v2\" }}
{orders_extra}
[migration.forward]
id = \"id\"
user_id = \"user_id\"
total = \"total\"
[migration.backward]
id = \"id\"
user_id = \"user_id\"
total = \"total\"
"
    );
    let text = format!("{}\n{orders}", rules_text(users_extra));
    Arc::new(RuleSet::from_toml(&text, "rules.toml").unwrap())
}

/// A rules reload that brings a migration whose old table has an unaccepted writer is refused and changes
/// nothing; a writer of a migration registered before (a view over `users` created since) refuses no
/// reload: the schema watch reports it.
#[tokio::test]
async fn a_rules_reload_bringing_a_migration_with_unaccepted_unseen_writers_is_refused_and_changes_nothing() {
    let db = database("CREATE TABLE orders_v2 (id int PRIMARY KEY, user_id int, total int);").await;
    let state = StateHandle::connect(db.url().parse().unwrap(), rules(""), StateOptions::default()).await.unwrap();
    db.connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE VIEW acme_users AS SELECT * FROM users WHERE org_id = 1;
             CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;",
        )
        .await
        .unwrap();
    let actor = Actor { role: "test".into(), client_addr: None };
    match state.set_rules(with_orders("", ""), &actor).await {
        Err(StateError::UnseenWriters(refusal)) => {
            assert_eq!(refusal.0.len(), 1, "only the migration the reload brings is refused");
            assert_eq!(ids(&refusal.0[0].writers), ["view:public.big_orders"]);
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(()) => panic!("reloaded with an unaccepted writable view"),
    }
    assert_eq!(*state.rules(), *rules(""), "the refused reload changed the rules in force");
    let accepting = with_orders("", "accept_unseen_writers = [\"view:public.big_orders\"]");
    state.set_rules(Arc::clone(&accepting), &actor).await.expect("the registered migration's new view refuses nothing");
    assert_eq!(*state.rules(), *accepting);
    assert!(state.snapshot().migrations.contains_key("orders_copy"));
}

/// What an accepted writer means: a cascade the proxy does not see leaves the shadow behind (until the
/// change-data-capture watch or a verify repairs it). The finding is about this.
#[tokio::test]
async fn an_accepted_cascading_delete_really_leaves_the_shadow_behind() {
    let db = database("ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs ON DELETE CASCADE;").await;
    let proxy = TestProxy::with_rules_toml(&db, &rules_text("accept_unseen_writers = [\"fk:users_org_id_fkey\"]"))
        .await
        .unwrap();
    let client = proxy.connect(&db).await.unwrap();
    client.execute("INSERT INTO users (id, org_id, name) VALUES (1, 2, 'Peter')", &[]).await.unwrap();
    client.execute("DELETE FROM orgs WHERE id = 2", &[]).await.unwrap();
    let counts = db
        .connect()
        .await
        .unwrap()
        .query_one("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM users_v2)", &[])
        .await
        .unwrap();
    assert_eq!((counts.get::<_, i64>(0), counts.get::<_, i64>(1)), (0, 1));
}
