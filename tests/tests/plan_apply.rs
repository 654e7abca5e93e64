//! `dualwrite plan` and `dualwrite apply` against real PostgreSQL: a plan for each kind of target (rename,
//! split, merge, type change, added column, new primary key, a CREATE TABLE) gives DDL Postgres accepts
//! and rules `dualwrite check` finds valid; the round-trip check refuses lossy plans naming the column (and
//! rows that collide in a unique index of the shadow) and leaves nothing behind; apply creates the shadow,
//! registers the migration and adds it to the rules file, after which a proxy dual-writes into the shadow;
//! re-running apply changes nothing; an apply interrupted by a failed concurrent index build resumes; two
//! migrations on different tables are applied at once; the binary exits 1 on a refused plan and 0 on a
//! written plan and an apply.

use std::path::{Path, PathBuf};

use dualwrite_proxy::check::{run as run_check, CheckArgs};
use dualwrite_proxy::planner::apply::{run_apply, ApplyArgs};
use dualwrite_proxy::planner::{run_plan, PlanArgs, PlanOutcome, DDL_FILE, RULES_FILE};
use dualwrite_rules::migration_plan::{parse_script, DdlStep};
use dualwrite_rules::RuleSet;
use dualwrite_tests::{TestCluster, TestDb, TestProxy};

const SCHEMA: &str = "
    CREATE TABLE public.orgs (id int PRIMARY KEY);
    INSERT INTO public.orgs VALUES (1), (2);
    CREATE TABLE public.users (
        id bigserial PRIMARY KEY,
        name text NOT NULL,
        email varchar(200),
        amount numeric(12,2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
        street text,
        city text,
        org_id int REFERENCES public.orgs (id)
    );
    CREATE UNIQUE INDEX users_email_key ON public.users (email);
    CREATE INDEX users_city_idx ON public.users (city);
    INSERT INTO public.users (name, email, amount, street, city, org_id) VALUES
        ('Ada Lovelace', 'ada@example.org', 12.00, 'St James Square', 'London', 1),
        ('Alan Turing', 'alan@example.org', 7.50, 'Adlington Road', 'Wilmslow', 2);
    CREATE TABLE public.orders (id int PRIMARY KEY, amount_cents int NOT NULL, note text);
    INSERT INTO public.orders VALUES (1, 1250, 'first'), (2, 99, NULL);
";

const SPLIT_NAME: &str = "
[[split]]
column = \"name\"
back = \"first_name || ' ' || last_name\"
into = [ { column = \"first_name\", expr = \"split_part(name, ' ', 1)\" },
         { column = \"last_name\",  expr = \"split_part(name, ' ', 2)\" } ]
";

async fn database() -> TestDb {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(SCHEMA).await.unwrap();
    db
}

/// `dualwrite plan` of `table` with the target in `target_file` (`--operations` unless it ends in .sql).
async fn plan(db: &TestDb, table: &str, shadow: &str, target_file: &Path, out: &Path) -> (PlanOutcome, String) {
    let sql = target_file.extension().is_some_and(|e| e == "sql");
    let args = PlanArgs {
        table: table.into(),
        create_table: sql.then(|| target_file.to_owned()),
        operations: (!sql).then(|| target_file.to_owned()),
        upstream: db.url(),
        shadow: Some(shadow.into()),
        name: None,
        old_version: "v1".into(),
        new_version: "v2".into(),
        sample: 100,
        out: out.to_owned(),
    };
    let mut report = Vec::new();
    let outcome = run_plan(&args, &mut report).await.expect("plan runs");
    (outcome, String::from_utf8(report).unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn apply(db: &TestDb, plan_dir: &Path, rules: &Path) -> dualwrite_proxy::planner::apply::Applied {
    let args = ApplyArgs { plan: plan_dir.to_owned(), upstream: db.url(), rules: rules.to_owned() };
    let mut report = Vec::new();
    let applied = run_apply(&args, &mut report).await;
    applied.unwrap_or_else(|e| panic!("apply failed: {e:#}\n{}", String::from_utf8_lossy(&report)))
}

/// `public.users` planned into `public.users_v2` with `SPLIT_NAME`: the temporary directory and the plan's
/// folder in it.
async fn split_name_planned(db: &TestDb) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "ops.toml", SPLIT_NAME);
    let out = dir.path().join("plan");
    let (outcome, report) = plan(db, "public.users", "public.users_v2", &target, &out).await;
    assert!(matches!(outcome, PlanOutcome::Written { .. }), "{report}");
    (dir, out)
}

async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
}

#[tokio::test]
async fn each_kind_of_target_plans_ddl_postgres_accepts_and_rules_check_finds_valid() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let targets = [
        ("rename", "[[rename]]\ncolumn = \"email\"\nto = \"email_address\"\n"),
        ("split", SPLIT_NAME),
        (
            "merge",
            "[[merge]]\ncolumns = [\"street\", \"city\"]\ninto = \"address\"\nexpr = \"street || '|' || city\"\n\
             back = { street = \"split_part(address, '|', 1)\", city = \"split_part(address, '|', 2)\" }\n",
        ),
        ("retype", "[[change_type]]\ncolumn = \"amount\"\ntype = \"numeric(14,2)\"\n"),
        ("added", "[[add_column]]\ncolumn = \"status\"\ntype = \"text\"\ndefault = \"'active'\"\n"),
        (
            "newkey",
            "[primary_key]\ncolumns = [\"email\", \"id\"]\n[[change_type]]\ncolumn = \"email\"\ntype = \"text\"\n",
        ),
        (
            "created.sql",
            "CREATE TABLE users_new (id bigint PRIMARY KEY DEFAULT nextval('users_id_seq'), name text NOT NULL,
                 email text UNIQUE, amount numeric(12,2) NOT NULL DEFAULT 0 CHECK (amount >= 0), street text,
                 city text, org_id int REFERENCES public.orgs (id), created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ON users_new (lower(email));",
        ),
    ];
    let direct = db.connect().await.unwrap();
    for (kind, text) in targets {
        let target = write(dir.path(), kind, text);
        let stem = kind.trim_end_matches(".sql");
        let out = dir.path().join(format!("plan_{stem}"));
        let shadow = format!("public.users_{stem}");
        let (outcome, report) = plan(&db, "public.users", &shadow, &target, &out).await;
        assert_eq!(outcome, PlanOutcome::Written { rows_checked: Some(2) }, "{kind}: {report}");
        // The DDL, step by step as apply runs it (concurrent index builds outside any transaction).
        let script = std::fs::read_to_string(out.join(DDL_FILE)).unwrap();
        let steps = parse_script(&script).unwrap();
        assert!(matches!(steps[0], DdlStep::CreateTable { .. }), "{kind}: {script}");
        for step in &steps {
            direct.batch_execute(step.sql()).await.unwrap_or_else(|e| panic!("{kind}: {e:?}\n{}", step.sql()));
        }
        let invalid = rows(
            &direct,
            &format!(
                "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = '{shadow}'::regclass AND NOT i.indisvalid
                 UNION ALL SELECT conname::text FROM pg_constraint WHERE conrelid = '{shadow}'::regclass AND NOT convalidated"
            ),
        )
        .await;
        assert!(invalid.is_empty(), "{kind}: not valid: {invalid:?}");
        // The rules load as the proxy loads them, and fit the live schema.
        let rules_text = std::fs::read_to_string(out.join(RULES_FILE)).unwrap();
        RuleSet::from_toml(&rules_text, "plan").unwrap_or_else(|e| panic!("{kind}: {e}\n{rules_text}"));
        let mut check_report = Vec::new();
        let findings = run_check(&CheckArgs::new(out.join(RULES_FILE), db.url()), &mut check_report).await.unwrap();
        let check_report = String::from_utf8(check_report).unwrap();
        assert_eq!(findings.errors, 0, "{kind}: {check_report}\n{rules_text}\n{script}");
    }
}

#[tokio::test]
async fn the_round_trip_check_refuses_lossy_plans_naming_the_column_and_leaves_nothing_behind() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let direct = db.connect().await.unwrap();
    for (kind, text, column, expected) in [
        // 7.50 comes back as 8.00.
        ("lossy_type", "[[change_type]]\ncolumn = \"amount\"\ntype = \"integer\"\n", "amount", "'7.50' -> '8.00'"),
        (
            "no_inverse",
            "[[split]]\ncolumn = \"name\"\nback = \"first_name\"\ninto = [ { column = \"first_name\", expr = \
             \"split_part(name, ' ', 1)\" }, { column = \"last_name\", expr = \"split_part(name, ' ', 2)\" } ]\n",
            "name",
            "'Ada Lovelace' -> 'Ada'",
        ),
        ("too_narrow", "[[change_type]]\ncolumn = \"email\"\ntype = \"varchar(5)\"\n", "email", "do not round-trip"),
        ("not_a_number", "[[change_type]]\ncolumn = \"name\"\ntype = \"integer\"\n", "name", "invalid input syntax"),
    ] {
        let target = write(dir.path(), kind, text);
        let out = dir.path().join(format!("plan_{kind}"));
        let (outcome, report) = plan(&db, "public.users", &format!("public.users_{kind}"), &target, &out).await;
        let PlanOutcome::Refused { column: refused_column, reason } = &outcome else {
            panic!("{kind}: not refused: {report}");
        };
        assert_eq!(refused_column.as_deref(), Some(column), "{kind}: {report}");
        assert!(reason.contains(expected), "{kind}: {report}");
        assert!(report.starts_with(&format!("REFUSED column {column}: ")), "{kind}: {report}");
        assert!(!out.exists(), "{kind}: a refused plan writes nothing");
        let left: Option<String> =
            direct.query_one(&format!("SELECT to_regclass('public.users_{kind}')::text"), &[]).await.unwrap().get(0);
        assert_eq!(left, None, "{kind}: the check's shadow was rolled back");
    }
    // Rows mapped forward that collide in one of the shadow's unique indexes (both emails end in example.org).
    let target = write(
        dir.path(),
        "collide",
        "[[change_type]]\ncolumn = \"email\"\ntype = \"text\"\nforward = \"split_part(email, '@', 2)\"\n",
    );
    let (outcome, report) = plan(&db, "public.users", "public.users_co", &target, &dir.path().join("co")).await;
    assert!(
        matches!(&outcome, PlanOutcome::Refused { column: None, reason }
            if reason.contains("(constraint users_co_email_key)") && reason.contains("duplicate key")),
        "{report}"
    );
    // A split without an inverse at all is refused before any row is read.
    let target = write(dir.path(), "no_back", &SPLIT_NAME.replace("back = \"first_name || ' ' || last_name\"\n", ""));
    let (outcome, report) = plan(&db, "public.users", "public.users_nb", &target, &dir.path().join("nb")).await;
    assert!(
        matches!(&outcome, PlanOutcome::Refused { column: Some(c), reason } if c == "name" && reason.contains("without `back`")),
        "{report}"
    );
}

#[tokio::test]
async fn apply_creates_the_shadow_and_registers_it_then_a_proxy_dual_writes_and_a_rerun_changes_nothing() {
    let db = database().await;
    let (dir, out) = split_name_planned(&db).await;
    let rules = dir.path().join("migrations.toml");

    let first = apply(&db, &out, &rules).await;
    assert!(first.steps_run > 0 && first.steps_skipped == 0 && first.registered && first.rules_added, "{first:?}");
    let direct = db.connect().await.unwrap();
    let phase: String =
        direct.query_one("SELECT phase FROM dualwrite.migrations WHERE name = 'users_v2'", &[]).await.unwrap().get(0);
    assert_eq!(phase, "dual_write");
    let indexes = rows(
        &direct,
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'public.users_v2'::regclass AND i.indisvalid ORDER BY 1",
    )
    .await;
    assert_eq!(indexes, ["users_v2_city_idx", "users_v2_email_key", "users_v2_pkey"]);
    let constraints =
        rows(&direct, "SELECT conname::text FROM pg_constraint WHERE conrelid = 'public.users_v2'::regclass AND convalidated AND contype IN ('c', 'f') ORDER BY 1").await;
    assert_eq!(constraints, ["users_v2_amount_check", "users_v2_org_id_fkey"]);
    let rules_text = std::fs::read_to_string(&rules).unwrap();

    let again = apply(&db, &out, &rules).await;
    assert!(again.was_noop(), "{again:?}");
    assert_eq!(again.steps_skipped, first.steps_run);
    assert_eq!(std::fs::read_to_string(&rules).unwrap(), rules_text, "the rules file is unchanged");
    let audits: i64 = direct
        .query_one("SELECT count(*) FROM dualwrite.audit_log WHERE migration = 'users_v2' AND action = 'register'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audits, 1, "registered once");

    let proxy = TestProxy::with_rules_file(&db, &rules).await.unwrap();
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO users (name, email, amount) VALUES ('Grace Hopper', 'grace@example.org', 3.25);
             UPDATE users SET name = 'Augusta Lovelace' WHERE email = 'ada@example.org';
             INSERT INTO users (name, email) VALUES ('Gone Soon', 'gone@example.org');
             DELETE FROM users WHERE email = 'gone@example.org';",
        )
        .await
        .unwrap();
    let shadow = rows(
        &direct,
        "SELECT first_name || '/' || last_name || '/' || email || '/' || amount FROM public.users_v2 ORDER BY id",
    )
    .await;
    // Ada's row was updated through the proxy (the upsert creates it in the shadow), Grace's inserted,
    // the deleted row is in neither table; Alan predates dual writes and awaits the backfill.
    assert_eq!(shadow, ["Augusta/Lovelace/ada@example.org/12.00", "Grace/Hopper/grace@example.org/3.25"]);
    drop(client);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn apply_resumes_after_a_failed_concurrent_index_build() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "ops.toml", "[[rename]]\ncolumn = \"email\"\nto = \"mail\"\n");
    let out = dir.path().join("plan");
    let (outcome, report) = plan(&db, "public.users", "public.users_v2", &target, &out).await;
    assert!(matches!(outcome, PlanOutcome::Written { .. }), "{report}");
    // An interruption: the table was created, then the unique index build failed (duplicates that
    // writers put in meanwhile), leaving an invalid index behind, as a killed CREATE INDEX CONCURRENTLY does.
    let steps = parse_script(&std::fs::read_to_string(out.join(DDL_FILE)).unwrap()).unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(steps[0].sql()).await.unwrap();
    direct
        .batch_execute("INSERT INTO public.users_v2 (id, name, mail) VALUES (100, 'x', 'dup'), (101, 'y', 'dup')")
        .await
        .unwrap();
    let unique =
        steps.iter().find(|s| matches!(s, DdlStep::CreateIndex { name, .. } if name == "users_v2_email_key")).unwrap();
    assert!(direct.batch_execute(unique.sql()).await.is_err(), "the build fails on the duplicates");
    let valid = || async {
        rows(
            &direct,
            "SELECT indisvalid::text FROM pg_index WHERE indexrelid = to_regclass('public.users_v2_email_key')",
        )
        .await
    };
    assert_eq!(valid().await, ["false"], "an invalid index is left behind");
    direct.batch_execute("DELETE FROM public.users_v2").await.unwrap();

    let rules = dir.path().join("migrations.toml");
    let resumed = apply(&db, &out, &rules).await;
    assert_eq!(resumed.steps_skipped, 1, "the table is not created again: {resumed:?}");
    assert_eq!(resumed.steps_run, steps.len() - 1, "{resumed:?}");
    assert_eq!(valid().await, ["true"], "the invalid index was built again");
    assert!(resumed.registered && resumed.rules_added);
}

#[tokio::test]
async fn two_migrations_on_different_tables_apply_at_once_and_both_dual_write() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let users_ops = write(dir.path(), "users.toml", SPLIT_NAME);
    let orders_ops = write(
        dir.path(),
        "orders.toml",
        "[[change_type]]\ncolumn = \"amount_cents\"\ntype = \"numeric(12,2)\"\nforward = \"amount_cents / 100.0\"\n\
         backward = \"round(amount_cents * 100)::int\"\n[[add_column]]\ncolumn = \"currency\"\ntype = \"text\"\n\
         default = \"'EUR'\"\n",
    );
    let (users_plan, orders_plan) = (dir.path().join("users_plan"), dir.path().join("orders_plan"));
    let (users, report) = plan(&db, "public.users", "public.users_v2", &users_ops, &users_plan).await;
    assert!(matches!(users, PlanOutcome::Written { .. }), "{report}");
    let (orders, report) = plan(&db, "public.orders", "public.orders_v2", &orders_ops, &orders_plan).await;
    assert!(matches!(orders, PlanOutcome::Written { .. }), "{report}");

    let rules = dir.path().join("migrations.toml");
    let (a, b) = tokio::join!(apply(&db, &users_plan, &rules), apply(&db, &orders_plan, &rules));
    assert!(a.registered && a.rules_added && b.registered && b.rules_added, "{a:?} {b:?}");
    let loaded = RuleSet::from_toml(&std::fs::read_to_string(&rules).unwrap(), "migrations.toml").unwrap();
    let mut names: Vec<&str> = loaded.migrations.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["orders_v2", "users_v2"]);

    let proxy = TestProxy::with_rules_file(&db, &rules).await.unwrap();
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO users (name, email) VALUES ('Barbara Liskov', 'bl@example.org');
             UPDATE orders SET amount_cents = 1999 WHERE id = 1;
             INSERT INTO orders (id, amount_cents) VALUES (3, 5);
             COMMIT;",
        )
        .await
        .unwrap();
    let direct = db.connect().await.unwrap();
    assert_eq!(rows(&direct, "SELECT first_name || ' ' || last_name FROM public.users_v2").await, ["Barbara Liskov"]);
    assert_eq!(
        rows(&direct, "SELECT id || ':' || amount_cents || ':' || currency FROM public.orders_v2 ORDER BY id").await,
        ["1:19.99:EUR", "3:0.05:EUR"]
    );
    drop(client);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_binary_exits_1_on_a_refused_plan_then_0_on_plan_and_apply() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(dualwrite_tests::dualwrite_binary())
            .args(&args)
            .env_clear()
            .output()
            .await
            .expect("the binary runs")
    };
    let args = |ops: &Path, out: &Path| {
        let (ops, out) = (ops.display().to_string(), out.display().to_string());
        ["plan", "--table", "public.orders", "--upstream", &db.url(), "--operations", &ops, "--out", &out]
            .map(String::from)
            .to_vec()
    };
    // Integer division drops the cents: 1250 comes back as 1200.
    let lossy = write(
        dir.path(),
        "lossy.toml",
        "[[change_type]]\ncolumn = \"amount_cents\"\ntype = \"numeric(12,2)\"\n\
         forward = \"amount_cents / 100\"\nbackward = \"(amount_cents * 100)::int\"\n",
    );
    let refused = run(args(&lossy, &dir.path().join("lossy_plan"))).await;
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("REFUSED column amount_cents:"), "{stdout}");

    let ops = write(dir.path(), "ops.toml", "[[rename]]\ncolumn = \"note\"\nto = \"comment\"\n");
    let plan_dir = dir.path().join("plan");
    let planned = run(args(&ops, &plan_dir)).await;
    assert_eq!(planned.status.code(), Some(0), "{}", String::from_utf8_lossy(&planned.stderr));
    let rules = dir.path().join("migrations.toml").display().to_string();
    let plan_arg = plan_dir.display().to_string();
    let applied =
        run(["apply", "--plan", &plan_arg, "--upstream", &db.url(), "--rules", &rules].map(String::from).to_vec())
            .await;
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert_eq!(applied.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&applied.stderr));
    assert!(stdout.contains("applied: 1 step(s) run, 0 already done"), "{stdout}");
}

/// The old table's row-level security and policies are carried onto the shadow, re-expressed over its
/// columns (a policy on the split `name` reads the shadow's two parts), so the proxy registers the applied
/// migration, and a role the policies restrict sees the same rows in a v2 session as in a v1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_and_policies_are_carried_onto_the_shadow_and_restrict_v2_sessions_alike() {
    let db = database().await;
    let role = format!("{}_reader", db.name);
    let direct = db.connect().await.unwrap();
    direct
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\";
             GRANT SELECT ON public.users TO \"{role}\";
             CREATE POLICY not_alan ON public.users FOR SELECT TO \"{role}\" USING (name <> 'Alan Turing');
             ALTER TABLE public.users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;"
        ))
        .await
        .unwrap();
    let (dir, out) = split_name_planned(&db).await;
    let rules = dir.path().join("migrations.toml");
    let applied = apply(&db, &out, &rules).await;
    assert!(applied.registered, "{applied:?}");

    let security: (bool, bool) = direct
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.users_v2'::regclass",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(security, (true, true), "enabled and forced, as on the old table");
    let policy = rows(
        &direct,
        "SELECT polname || ': ' || pg_get_expr(polqual, polrelid) FROM pg_policy
          WHERE polrelid = 'public.users_v2'::regclass",
    )
    .await;
    assert_eq!(policy, ["not_alan: (((first_name || ' '::text) || last_name) <> 'Alan Turing'::text)"]);
    direct.batch_execute(&format!("GRANT SELECT ON public.users_v2 TO \"{role}\"")).await.unwrap();

    let proxy = TestProxy::with_rules_file(&db, &rules).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    dualwrite_tests::backfill_until_done(&admin, "users_v2").await;
    for version in ["v1", "v2"] {
        let url = format!("{}?options=-c%20dualwrite.version%3D{version}", proxy.url(&db));
        let session = dualwrite_tests::connect(&url).await.unwrap();
        session.batch_execute(&format!("SET ROLE \"{role}\"")).await.unwrap();
        let seen: i64 = session.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
        assert_eq!(seen, 1, "{version}: Ada only");
    }
    proxy.stop().await.unwrap();
}
