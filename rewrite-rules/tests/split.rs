//! Splitting one table into several shadows (`[[migration.targets]]`): the model, the exact dual-write SQL
//! of every write form into both targets, reads of the joined shape, and the refusals (new-shape writes,
//! a `table` list, malformed splits). Each write here also runs on real Postgres in `tests/tests/split_tables.rs`.

use std::sync::Arc;

use dualwrite_rules::RowsDisposition::*;
use dualwrite_rules::TagRewrite::*;
use dualwrite_rules::{
    MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, StatementTransform, TableName,
};

mod plan_support;
use plan_support::DUAL_V1;

const SPLIT: &str = include_str!("../examples/users_split_tables.toml");

fn route(phase: Phase, version: Side, read_source: Side) -> MigrationRoute {
    MigrationRoute { phase, version, read_source }
}

fn plan(r: MigrationRoute, sql: &str) -> Plan {
    plan_support::plan(SPLIT, "split", r, sql)
}

fn rewritten(r: MigrationRoute, sql: &str, want: &str, transform: StatementTransform) {
    plan_support::rewritten(plan(r, sql), sql, want, transform)
}

fn refused(r: MigrationRoute, sql: &str, reason: RejectReason) -> String {
    plan_support::refused(plan(r, sql), sql, reason, "users_split_tables")
}

const SUPPRESS: fn(dualwrite_rules::TagRewrite) -> StatementTransform =
    |tag| StatementTransform { command_tag: Some(tag), rows: Suppress };

const ACCOUNTS_UPSERT: &str = "INSERT INTO public.accounts (id, email) SELECT id, lower(email) FROM __dw_primary \
     ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email";
const PROFILES_UPSERT: &str = "INSERT INTO public.profiles (id, first_name, last_name) SELECT id, \
     split_part(name, ' ', 1), split_part(name, ' ', 2) FROM __dw_primary ON CONFLICT(id) DO UPDATE SET \
     first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name";

#[test]
fn the_example_loads_with_the_targets_making_up_the_new_shape() {
    let rules = RuleSet::from_toml(SPLIT, "split").unwrap();
    let m = &rules.migrations[0];
    assert!(m.is_split());
    assert_eq!(m.shadow.to_string(), "public.accounts");
    assert_eq!(m.shadow_columns().collect::<Vec<_>>(), ["id", "email", "first_name", "last_name"]);
    let targets = m.targets();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[1].table, &TableName { schema: Some("public".into()), name: "profiles".into() });
    assert_eq!(
        targets[1].forward.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["id", "first_name", "last_name"]
    );
    let single = RuleSet::from_toml(include_str!("../examples/users_split_name.toml"), "single").unwrap();
    assert!(!single.migrations[0].is_split());
    assert_eq!(single.migrations[0].targets().len(), 1);
    assert_eq!(single.migrations[0].targets()[0].forward, &single.migrations[0].forward[..]);
}

#[test]
fn an_insert_writes_the_old_table_then_every_target() {
    rewritten(
        DUAL_V1,
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3)",
        &format!(
            "WITH __dw_primary AS (INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING users.*), \
             __dw_shadow AS ({ACCOUNTS_UPSERT}), __dw_shadow_2 AS ({PROFILES_UPSERT}) SELECT FROM __dw_primary AS users"
        ),
        SUPPRESS(Insert),
    );
}

#[test]
fn an_upsert_and_returning_keep_their_forms() {
    // In cutover the targets are the source of truth: the client's DO UPDATE sets there only the columns
    // its assignments feed (`name`: profiles), and a target they do not feed is left alone on a conflict.
    rewritten(
        route(Phase::Cutover, Side::Old, Side::Old),
        "INSERT INTO users AS u (id, name, email) VALUES (1, 'a b', 'X') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name RETURNING u.id",
        &format!(
            "WITH __dw_primary AS (INSERT INTO users AS u (id, name, email) VALUES (1, 'a b', 'X') ON CONFLICT(id) \
             DO UPDATE SET name = EXCLUDED.name RETURNING u.*), __dw_shadow AS (INSERT INTO public.accounts (id, email) \
             SELECT id, lower(email) FROM __dw_primary ON CONFLICT(id) DO NOTHING), \
             __dw_shadow_2 AS ({PROFILES_UPSERT}) SELECT u.id FROM __dw_primary AS u"
        ),
        StatementTransform { command_tag: Some(Insert), rows: Keep },
    );
}

#[test]
fn an_update_re_derives_only_the_affected_columns_of_each_target() {
    rewritten(
        DUAL_V1,
        "UPDATE users SET email = $1 WHERE id = $2",
        "WITH __dw_primary AS (UPDATE users SET email = $1 WHERE id = $2 RETURNING users.*), \
         __dw_shadow AS (INSERT INTO public.accounts (id, email) SELECT id, lower(email) FROM __dw_primary \
         ON CONFLICT(id) DO UPDATE SET email = EXCLUDED.email), \
         __dw_shadow_2 AS (INSERT INTO public.profiles (id, first_name, last_name) SELECT id, \
         split_part(name, ' ', 1), split_part(name, ' ', 2) FROM __dw_primary ON CONFLICT(id) DO NOTHING) \
         SELECT FROM __dw_primary AS users",
        SUPPRESS(Update),
    );
    rewritten(
        DUAL_V1,
        "UPDATE users SET name = 'x y' WHERE id = 1",
        "WITH __dw_primary AS (UPDATE users SET name = 'x y' WHERE id = 1 RETURNING users.*), \
         __dw_shadow AS (INSERT INTO public.accounts (id, email) SELECT id, lower(email) FROM __dw_primary \
         ON CONFLICT(id) DO NOTHING), \
         __dw_shadow_2 AS ({PROFILES_UPSERT}) SELECT FROM __dw_primary AS users"
            .replace("{PROFILES_UPSERT}", PROFILES_UPSERT)
            .as_str(),
        SUPPRESS(Update),
    );
}

#[test]
fn in_cutover_the_targets_are_the_source_of_truth_and_never_get_a_row_back_or_replaced() {
    let cutover = route(Phase::Cutover, Side::Old, Side::New);
    // An UPDATE changes only the targets' rows that are there, and a target it does not feed is not written.
    rewritten(
        cutover,
        "UPDATE users SET email = $1 WHERE id = $2",
        "WITH __dw_primary AS (UPDATE users SET email = $1 WHERE id = $2 RETURNING users.*), \
         __dw_shadow AS (UPDATE public.accounts AS __dw_t SET email = __dw_u.email FROM (SELECT id, lower(email) \
         FROM __dw_primary) AS __dw_u (id, email) WHERE __dw_t.id = __dw_u.id) SELECT FROM __dw_primary AS users",
        SUPPRESS(Update),
    );
    // An INSERT fails on a key a target holds instead of replacing its row.
    rewritten(
        cutover,
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3)",
        "WITH __dw_primary AS (INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING users.*), \
         __dw_shadow AS (INSERT INTO public.accounts (id, email) SELECT id, lower(email) FROM __dw_primary), \
         __dw_shadow_2 AS (INSERT INTO public.profiles (id, first_name, last_name) SELECT id, split_part(name, ' ', \
         1), split_part(name, ' ', 2) FROM __dw_primary) SELECT FROM __dw_primary AS users",
        SUPPRESS(Insert),
    );
}

#[test]
fn a_delete_deletes_from_every_target() {
    rewritten(
        DUAL_V1,
        "DELETE FROM users WHERE id = $1",
        "WITH __dw_primary AS (DELETE FROM users WHERE id = $1 RETURNING users.*), \
         __dw_shadow AS (DELETE FROM public.accounts AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k \
         WHERE __dw_t.id = __dw_k.id), \
         __dw_shadow_2 AS (DELETE FROM public.profiles AS __dw_t USING (SELECT id AS id FROM __dw_primary) AS __dw_k \
         WHERE __dw_t.id = __dw_k.id) SELECT FROM __dw_primary AS users",
        SUPPRESS(Delete),
    );
}

#[test]
fn truncate_empties_the_old_table_and_every_target() {
    rewritten(
        DUAL_V1,
        "TRUNCATE users",
        "TRUNCATE users, public.accounts, public.profiles",
        StatementTransform::UNCHANGED,
    );
    rewritten(
        route(Phase::Complete, Side::New, Side::New),
        "TRUNCATE users",
        "TRUNCATE public.accounts, public.profiles",
        StatementTransform::UNCHANGED,
    );
}

#[test]
fn a_key_changing_update_is_refused() {
    refused(DUAL_V1, "UPDATE users SET id = id + 1", RejectReason::KeyChangingUpdate);
}

#[test]
fn new_shape_writes_are_refused_naming_the_migration() {
    for r in [
        route(Phase::DualWrite, Side::New, Side::New),
        route(Phase::Cutover, Side::New, Side::Old),
        route(Phase::Complete, Side::New, Side::New),
    ] {
        for sql in [
            "INSERT INTO users (id, email, first_name, last_name) VALUES (1, 'a', 'b', 'c')",
            "UPDATE users SET first_name = 'x' WHERE id = 1",
            "DELETE FROM users WHERE id = 1",
        ] {
            let message = refused(r, sql, RejectReason::SplitNewShapeWrite);
            assert!(message.starts_with("dualwrite: statement refused for migration \"users_split_tables\": "));
            assert!(message.contains("several shadow tables"), "{message}");
        }
    }
    refused(route(Phase::Complete, Side::New, Side::New), "COPY users FROM STDIN", RejectReason::SplitNewShapeWrite);
    // After `complete` the old table is retired for old-shaped writes, as for one shadow.
    refused(
        route(Phase::Complete, Side::Old, Side::New),
        "DELETE FROM users WHERE id = 1",
        RejectReason::SplitNewShapeWrite,
    );
}

#[test]
fn new_version_reads_see_the_targets_joined_on_the_key() {
    rewritten(
        route(Phase::DualWrite, Side::New, Side::New),
        "SELECT first_name, email FROM users WHERE id = $1",
        "SELECT first_name, email FROM (SELECT id, email, first_name, last_name FROM public.accounts \
         JOIN public.profiles USING(id)) AS users WHERE id = $1",
        StatementTransform::UNCHANGED,
    );
}

#[test]
fn old_version_reads_routed_to_the_new_tables_go_through_backward_over_the_join() {
    rewritten(
        route(Phase::Cutover, Side::Old, Side::New),
        "SELECT u.name FROM users u JOIN orders o ON o.user_id = u.id",
        "SELECT u.name FROM (SELECT id, first_name || ' ' || last_name AS name, email FROM public.accounts \
         JOIN public.profiles USING(id)) u JOIN orders o ON o.user_id = u.id",
        StatementTransform::UNCHANGED,
    );
}

#[test]
fn new_version_reads_of_the_old_table_present_the_split_shape() {
    rewritten(
        route(Phase::DualWrite, Side::New, Side::Old),
        "SELECT * FROM users",
        "SELECT * FROM (SELECT id, lower(email) AS email, split_part(name, ' ', 1) AS first_name, \
         split_part(name, ' ', 2) AS last_name FROM public.users) AS users",
        StatementTransform::UNCHANGED,
    );
}

#[test]
fn old_version_sessions_reading_the_old_table_pass_through() {
    assert_eq!(plan(DUAL_V1, "SELECT * FROM users"), Plan::PassThrough);
}

fn error_of(text: &str) -> String {
    RuleSet::from_toml(text, "rules.toml").unwrap_err().to_string()
}

const HEAD: &str = r#"
[[migration]]
name = "s"
table = "a"
key = ["id"]
versions = { old = "v1", new = "v2" }
backward = { id = "id", x = "x", y = "y" }
"#;

#[test]
fn a_table_list_is_refused_pointing_at_merge_sources() {
    let text = include_str!("fixtures/merge_tables.toml");
    let e = error_of(text);
    assert!(
        e.starts_with("rules.toml: migration `orders_merge`: field `table`: a migration's `table` is one old table"),
        "{e}"
    );
    assert!(e.contains("[[migration.sources]]") && e.contains("(given: public.orders, public.order_details)"), "{e}");
}

#[test]
fn malformed_splits_are_refused_naming_the_field() {
    let t = |a: &str, b: &str| {
        format!("{HEAD}[[migration.targets]]\ntable = \"a_1\"\nforward = {a}\n[[migration.targets]]\ntable = \"a_2\"\nforward = {b}\n")
    };
    RuleSet::from_toml(&t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", y = \"y\" }"), "ok").unwrap();
    let e = error_of(&t("{ id = \"id\", x = \"x\" }", "{ y = \"y\" }"));
    assert!(e.ends_with("field `targets[2].forward`: must map key column `id` (every target holds the key)"), "{e}");
    let e = error_of(&t("{ id = \"id\", x = \"x\" }", "{ id = \"id + 0\", y = \"y\" }"));
    assert!(e.contains("field `targets[2].forward.id`: key column `id` must be mapped as in the first target"), "{e}");
    let e = error_of(&t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", x = \"y\" }"));
    assert!(e.contains("field `targets[2].forward.x`: column `x` is already held by targets[1]"), "{e}");
    let e = error_of(&t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", y = \"z\" }"));
    assert!(e.contains("field `forward.y`: refers to `z`"), "{e}");
    let one = format!("{HEAD}[[migration.targets]]\ntable = \"a_1\"\nforward = {{ id = \"id\", x = \"x\" }}\n");
    assert!(error_of(&one).ends_with("field `targets`: a split needs at least two [[migration.targets]]"));
    let same = t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", y = \"y\" }").replace("a_2", "a_1");
    assert!(error_of(&same).contains("field `targets[2].table`: `a_1` is already a target of this migration"));
    let old = t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", y = \"y\" }").replace("a_2", "public.a");
    assert!(error_of(&old).contains("field `targets[2].table`: must differ from `table`"));
    let both = t("{ id = \"id\", x = \"x\" }", "{ id = \"id\", y = \"y\" }")
        .replace("backward =", "shadow = \"a_v2\"\nbackward =");
    assert!(error_of(&both).contains("field `targets`: a split ([[migration.targets]]) names its tables"), "{both}");
    let neither = HEAD.to_string();
    assert!(error_of(&neither).contains("field `shadow`: missing (or give [[migration.targets]] to split)"));
}

#[test]
fn a_target_of_one_migration_cannot_be_used_by_another() {
    let text = format!(
        "{SPLIT}\n[[migration]]\nname = \"other\"\ntable = \"public.orders\"\nshadow = \"public.profiles\"\nkey = [\"id\"]\n\
         versions = {{ old = \"v1\", new = \"v2\" }}\nforward = {{ id = \"id\" }}\nbackward = {{ id = \"id\" }}\n"
    );
    let e = error_of(&text);
    assert!(
        e.contains(
            "migration `other`: field `shadow`: `public.profiles` is already used by migration `users_split_tables`"
        ),
        "{e}"
    );
}

#[test]
fn a_shadow_read_of_a_split_reads_the_targets_joined_on_the_key() {
    let rules = RuleSet::from_toml(SPLIT, "split").unwrap();
    let route = Route::uniform(&rules, route(Phase::DualWrite, Side::New, Side::New));
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let read = rewriter.shadow_read("SELECT first_name FROM users WHERE id = $1", &route).unwrap();
    assert_eq!(
        read.new_sql,
        "SELECT __dw_row::TEXT FROM (SELECT first_name FROM (SELECT id, email, first_name, last_name FROM \
         public.accounts JOIN public.profiles USING(id)) AS users WHERE id = $1) AS __dw_row"
    );
    assert!(read.old_sql.contains("split_part(name, ' ', 1) AS first_name"), "{}", read.old_sql);
    assert!(read.old_sql.contains("FROM public.users) AS users"), "{}", read.old_sql);
}

#[test]
fn an_old_shaped_copy_reaches_every_target_through_the_staging_insert() {
    let Plan::Rewritten { sql, migrations, writes, .. } = plan(DUAL_V1, "COPY users (id, name, email) FROM STDIN")
    else {
        panic!("COPY not rewritten");
    };
    assert_eq!((migrations, writes), (vec![0], true));
    assert_eq!(dualwrite_rules::parse_rewritten(&sql), Ok(5), "{sql}");
    let statements: Vec<&str> = sql.splitn(3, "; ").collect();
    assert_eq!(statements[1], "COPY pg_temp.__dw_copy (id, name, email) FROM STDIN");
    // The block tries every target with plain INSERTs, then with the upserts; a unique violation on any
    // target sends it to the upserts.
    let primary = "WITH __dw_primary AS (INSERT INTO users (id, name, email) OVERRIDING SYSTEM VALUE SELECT id, \
                   name, email FROM pg_temp.__dw_copy RETURNING users.*)";
    let plain = |upsert: &str| upsert[..upsert.find(" ON CONFLICT").unwrap()].to_string();
    let tail = "SELECT count(*) INTO __dw_rows FROM __dw_primary AS users;";
    let dual_writes: Vec<&str> = sql.lines().filter(|l| l.starts_with("WITH ")).collect();
    assert_eq!(
        dual_writes,
        [
            format!(
                "{primary}, __dw_shadow AS ({}), __dw_shadow_2 AS ({}) {tail}",
                plain(ACCOUNTS_UPSERT),
                plain(PROFILES_UPSERT)
            ),
            format!("{primary}, __dw_shadow AS ({ACCOUNTS_UPSERT}), __dw_shadow_2 AS ({PROFILES_UPSERT}) {tail}"),
        ]
    );
    assert!(sql.contains("NOT IN (('public', 'accounts'), ('public', 'profiles'))"), "{sql}");
    let message = refused(
        route(Phase::DualWrite, Side::New, Side::New),
        "COPY users FROM STDIN",
        RejectReason::SplitNewShapeWrite,
    );
    assert!(message.ends_with("(COPY FROM)"), "{message}");
}
