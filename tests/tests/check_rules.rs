//! `dualwrite check` against real PostgreSQL: rules validated against the live schema (good rules, a
//! missing column, a mapping that does not prepare, a value that cannot be assigned, a key without a unique
//! index, a lossy round trip, key columns drawing from two sequences) and statements replayed through the rewriter (one per line, and a real
//! pg_stat_statements CSV export), with the exit code each outcome gives.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use dualwrite_proxy::check::{parse_statements, run, CheckArgs, Findings, ReplayCounts};
use dualwrite_proxy::cli::{Cli, Command};
use dualwrite_tests::{default_options, TestCluster, TestDb};

const SCHEMA: &str = "
    CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
    CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
    INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'), ('Alan Turing', 'alan@example.org');
";

/// The example migration of the README's Rules files section with `forward` and `backward` replaced.
fn rules(forward: &str, backward: &str) -> String {
    format!(
        "[[migration]]
name = \"users_split_name\"
table = \"public.users\"
shadow = \"public.users_v2\"
key = [\"id\"]
versions = {{ old = \"v1\", new = \"v2\" }}
[migration.forward]
{forward}
[migration.backward]
{backward}
"
    )
}

const FORWARD: &str = "id = \"id\"
first_name = \"split_part(name, ' ', 1)\"
last_name = \"split_part(name, ' ', 2)\"
email = \"lower(email)\"";
const BACKWARD: &str = "id = \"id\"
name = \"first_name || ' ' || last_name\"
email = \"email\"";

fn example_rules() -> String {
    rules(FORWARD, BACKWARD)
}

fn temp_file(suffix: &str, text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

async fn database(schema: &str) -> TestDb {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(schema).await.unwrap();
    db
}

/// Runs the check; returns what it found and its report.
async fn check(db: &TestDb, rules_text: &str, replay: Option<&str>) -> (Findings, String) {
    let rules_file = temp_file(".toml", rules_text);
    let replay_file = replay.map(|text| temp_file(".sql", text));
    let mut args = CheckArgs::new(rules_file.path(), db.url());
    args.replay = replay_file.as_ref().map(|f| f.path().to_owned());
    let mut out = Vec::new();
    let findings = run(&args, &mut out).await.expect("check runs");
    (findings, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn good_rules_are_valid() {
    let db = database(SCHEMA).await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert!(findings.clean(), "{report}");
    assert_eq!((findings.errors, findings.warnings), (0, 0), "{report}");
    assert_eq!(findings.exit_code(), ExitCode::SUCCESS);
    for line in [
        "ok       table public.users exists",
        "ok       key (id) is unique in public.users_v2",
        "ok       forward.first_name = split_part(name, ' ', 1) (text -> text)",
        "ok       backward.name = first_name || ' ' || last_name (text -> text)",
        "ok       round trip (forward then backward) on 2 sampled row(s) of public.users",
        "summary: rules valid (0 error(s), 0 warning(s))",
    ] {
        assert!(report.contains(line), "missing `{line}` in:\n{report}");
    }
}

#[tokio::test]
async fn a_missing_column_is_an_error() {
    let db = database(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, email text);",
    )
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert!(!findings.clean(), "{report}");
    assert_eq!(findings.exit_code(), ExitCode::from(1));
    assert!(
        report.contains("ERROR    forward.last_name: column \"last_name\" does not exist in public.users_v2"),
        "{report}"
    );
    assert!(report.contains("summary: rules INVALID"), "{report}");
}

#[tokio::test]
async fn a_missing_table_is_an_error() {
    let db = database("CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);").await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!(findings.errors, 1, "{report}");
    assert!(report.contains("ERROR    table public.users_v2 does not exist"), "{report}");
}

#[tokio::test]
async fn a_mapping_that_does_not_prepare_is_an_error() {
    let db = database(SCHEMA).await;
    let forward = FORWARD.replace("split_part(name, ' ', 1)", "no_such_function(name)");
    let (findings, report) = check(&db, &rules(&forward, BACKWARD), None).await;
    assert_eq!(findings.errors, 1, "{report}");
    assert!(
        report.contains("ERROR    forward.first_name = no_such_function(name): does not prepare over public.users: function no_such_function(text) does not exist (42883)"),
        "{report}"
    );
    // The other mappings are still checked, the round trip is not tried.
    assert!(report.contains("ok       forward.email = lower(email)"), "{report}");
    assert!(report.contains("skipped  round trip"), "{report}");
}

#[tokio::test]
async fn a_value_of_the_wrong_type_is_an_error() {
    let db = database(SCHEMA).await;
    let forward = FORWARD.replace("id = \"id\"", "id = \"id::text\"");
    let (findings, report) = check(&db, &rules(&forward, BACKWARD), None).await;
    assert_eq!(findings.errors, 1, "{report}");
    assert!(
        report.contains(
            "ERROR    forward.id = id::text: its text value cannot be assigned to public.users_v2.id (integer)"
        ),
        "{report}"
    );
}

#[tokio::test]
async fn a_key_without_a_unique_index_is_an_error() {
    let db = database(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int, first_name text, last_name text, email text);",
    )
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!(findings.errors, 1, "{report}");
    assert!(report.contains("ERROR    key (id) has no unique index or primary key in public.users_v2"), "{report}");
}

#[tokio::test]
async fn unmapped_columns_are_reported() {
    let db = database(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text,
                                       nickname text, tenant int NOT NULL);",
    )
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (1, 2), "{report}");
    assert!(report.contains("warning  public.users_v2.nickname is not mapped"), "{report}");
    assert!(report.contains("ERROR    public.users_v2.tenant is NOT NULL without a default"), "{report}");
    // (the other warning: no rows to sample)
    assert!(report.contains("warning  round trip not tried: public.users has no rows"), "{report}");
}

#[tokio::test]
async fn a_lossy_round_trip_is_a_warning_and_fails_with_strict() {
    let db = database(SCHEMA).await;
    db.connect()
        .await
        .unwrap()
        .batch_execute("INSERT INTO users (name, email) VALUES ('Plato', 'Plato@Athens.gr')")
        .await
        .unwrap();
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (0, 1), "{report}");
    assert!(findings.clean());
    assert!(
        report.contains("warning  round trip is lossy: 1 of 3 sampled row(s) of public.users")
            && report.contains("[id='3'] name 'Plato' -> 'Plato ', email 'Plato@Athens.gr' -> 'plato@athens.gr'"),
        "{report}"
    );
    let strict = Findings { strict: true, ..findings };
    assert_eq!(strict.exit_code(), ExitCode::from(1));
}

/// A shadow with a sequence of its own hands out the keys the old table's sequence hands out too.
#[tokio::test]
async fn key_columns_drawing_from_two_sequences_are_an_error_naming_both_and_the_fix() {
    let db = database(
        "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id serial PRIMARY KEY, first_name text, last_name text, email text);
         INSERT INTO public.users (id, name, email) VALUES (1, 'Ada Lovelace', 'ada@example.org');",
    )
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (1, 0), "{report}");
    assert!(
        report.contains(
            "ERROR    key column id draws from 2 sequences (public.users from public.users_id_seq; public.users_v2 \
             from public.users_v2_id_seq)"
        ) && report.contains("ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq')"),
        "{report}"
    );
}

/// A row for the round trip to sample (a table without rows is a warning of its own).
const ONE_ROW: &str = "INSERT INTO public.users (id, name, email) VALUES (1, 'Ada Lovelace', 'ada@example.org');";

/// One sequence for both tables (a default drawing from the old table's, or an identity column with no
/// other), or no default at all in the shadow, is no concern.
#[tokio::test]
async fn key_columns_drawing_from_one_sequence_are_ok() {
    for (schema, line) in [
        (
            "CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
             CREATE TABLE public.users_v2 (id int PRIMARY KEY DEFAULT nextval('users_id_seq'), first_name text,
                                           last_name text, email text);",
            Some("ok       key column id takes its default from one sequence (public.users_id_seq)"),
        ),
        (
            "CREATE TABLE public.users (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text, email text);
             CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);",
            Some("ok       key column id takes its default from one sequence (public.users_id_seq)"),
        ),
        (
            "CREATE TABLE public.users (id int PRIMARY KEY, name text, email text);
             CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);",
            None,
        ),
    ] {
        let db = database(&format!("{schema} {ONE_ROW}")).await;
        let (findings, report) = check(&db, &example_rules(), None).await;
        assert_eq!((findings.errors, findings.warnings), (0, 0), "{report}");
        match line {
            Some(line) => assert!(report.contains(line), "missing `{line}` in:\n{report}"),
            None => assert!(!report.contains("sequence"), "no sequence, no line:\n{report}"),
        }
    }
}

#[tokio::test]
async fn invalid_rules_file_is_reported() {
    let db = database(SCHEMA).await;
    let (findings, report) = check(&db, "[[migration]]\nname = \"x\"\n", None).await;
    assert_eq!(findings.errors, 1);
    assert!(report.starts_with("rules: INVALID: "), "{report}");
    assert_eq!(findings.exit_code(), ExitCode::from(1));
}

#[tokio::test]
async fn an_unreachable_upstream_fails_to_run() {
    let rules_file = temp_file(".toml", &example_rules());
    let port = dualwrite_proxy::pgcluster::free_port().unwrap();
    let args = CheckArgs::new(rules_file.path(), format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let error = run(&args, &mut Vec::new()).await.expect_err("no database there");
    assert!(format!("{error:#}").contains("connecting to --upstream"), "{error:#}");
}

#[tokio::test]
async fn replay_reports_each_outcome() {
    let db = database(SCHEMA).await;
    let statements = "-- one of each
SELECT 1
INSERT INTO users (name, email) VALUES ($1, $2)

COPY users FROM '/tmp/users.csv'
";
    let (findings, report) = check(&db, &example_rules(), Some(statements)).await;
    assert_eq!(findings.replay, ReplayCounts { passed_through: 1, rewritten: 1, rejected: 1 }, "{report}");
    assert_eq!(findings.errors, 0, "{report}");
    assert!(!findings.clean(), "a rejected statement makes the check fail");
    assert_eq!(findings.exit_code(), ExitCode::from(1));
    assert!(report.contains("replay: ") && report.contains("(3 statement(s))"), "{report}");
    assert!(report.contains("  passed-through  SELECT 1\n"), "{report}");
    assert!(
        report.contains("  rewritten       INSERT INTO users (name, email) VALUES ($1, $2)\n      -> WITH "),
        "{report}"
    );
    assert!(report.contains("INSERT INTO public.users_v2"), "{report}");
    assert!(report.contains("  REJECTED        COPY users FROM '/tmp/users.csv'\n      why: "), "{report}");
    assert!(report.contains("users_split_name") && report.contains("(SQLSTATE 0A000)"), "{report}");
    assert!(report.ends_with("replay: 1 passed through, 1 rewritten, 1 rejected\n"), "{report}");
}

#[tokio::test]
async fn replay_without_rejections_is_clean() {
    let db = database(SCHEMA).await;
    let (findings, report) = check(
        &db,
        &example_rules(),
        Some("SELECT name FROM users WHERE id = $1\nUPDATE users SET name = 'x y' WHERE id = 1\n"),
    )
    .await;
    assert_eq!(findings.replay.rejected, 0, "{report}");
    assert!(findings.clean(), "{report}");
}

/// A real pg_stat_statements export (`COPY ... TO STDOUT WITH CSV HEADER`), queries spanning lines included.
#[tokio::test]
async fn replay_reads_a_pg_stat_statements_export() {
    let cluster = TestCluster::start_with(default_options().setting("shared_preload_libraries", "pg_stat_statements"))
        .await
        .unwrap();
    let db = cluster.create_database().await.unwrap();
    let client = db.connect().await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute("CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()").await.unwrap();
    client.execute("INSERT INTO users (name, email) VALUES ($1, $2)", &[&"Grace Hopper", &"g@h"]).await.unwrap();
    client.query("SELECT name,\n       email FROM users WHERE id = $1", &[&1i32]).await.unwrap();
    client.execute("DELETE FROM users WHERE id = $1", &[&2i32]).await.unwrap();
    let export = dualwrite_tests::psql(
        &db.url(),
        &["-c", "COPY (SELECT * FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) TO STDOUT WITH CSV HEADER"],
        None,
    )
    .await
    .unwrap();
    export.assert_success();
    let statements = parse_statements(&export.stdout).unwrap();
    assert!(statements.iter().any(|s| s.contains("SELECT name,\n       email FROM users")), "{statements:?}");

    let (findings, report) = check(&db, &example_rules(), Some(&export.stdout)).await;
    assert!(findings.replay.rewritten >= 2, "the INSERT and the DELETE are dual writes:\n{report}");
    assert!(report.contains("rewritten       INSERT INTO users (name, email) VALUES ($1, $2)"), "{report}");
    assert!(report.contains("rewritten       DELETE FROM users WHERE id = $1"), "{report}");
    assert!(report.contains("passed-through  SELECT name, email FROM users WHERE id = $1"), "{report}");
    assert_eq!(findings.replay.rejected, 0, "{report}");
}

#[test]
fn statements_file_formats() {
    assert_eq!(parse_statements("-- c\nSELECT 1\n\n  SELECT 2  \n").unwrap(), vec!["SELECT 1", "SELECT 2"]);
    // A statement with commas and the word query is not a CSV header.
    assert_eq!(parse_statements("SELECT query, calls FROM t\n").unwrap(), vec!["SELECT query, calls FROM t"]);
    let csv = "userid,query,calls\n10,\"SELECT 1,\n 2\",3\n10,\"SELECT \"\"x\"\"\",1\n";
    assert_eq!(parse_statements(csv).unwrap(), vec!["SELECT 1,\n 2", "SELECT \"x\""]);
}

#[test]
fn the_cli_has_the_check_subcommand() {
    let cli = Cli::try_parse_from([
        "dualwrite",
        "check",
        "--rules",
        "r.toml",
        "--upstream",
        "postgres://u@h/db",
        "--replay",
        "s.sql",
        "--as-version",
        "v2",
        "--phase",
        "cutover",
        "--sample",
        "5",
        "--strict",
    ])
    .unwrap();
    let Command::Check(args) = cli.command else { panic!("not check") };
    assert_eq!(args.rules.to_str(), Some("r.toml"));
    assert_eq!(args.replay.as_deref().and_then(|p| p.to_str()), Some("s.sql"));
    assert_eq!(args.as_version.as_deref(), Some("v2"));
    assert_eq!(args.phase, Some(dualwrite_rules::Phase::Cutover));
    assert_eq!((args.sample, args.strict), (5, true));
}

/// A BEFORE row trigger on the shadow runs on the row the mapping wrote: a warning naming it, its function
/// and what it can break. A disabled one, an AFTER one and one on another table are not reported.
#[tokio::test]
async fn before_row_triggers_on_the_tables_of_a_migration_are_warnings_naming_each() {
    let db = database(&format!(
        "CREATE TABLE public.users (id int PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
         CREATE TABLE public.elsewhere (id int);
         CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER shadow_stamp BEFORE INSERT OR UPDATE ON public.users_v2
             FOR EACH ROW EXECUTE FUNCTION public.stamp();
         CREATE TRIGGER old_stamp BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.stamp();
         CREATE TRIGGER after_stamp AFTER INSERT ON public.users_v2 FOR EACH ROW EXECUTE FUNCTION public.stamp();
         CREATE TRIGGER off_stamp BEFORE INSERT ON public.users_v2 FOR EACH ROW EXECUTE FUNCTION public.stamp();
         ALTER TABLE public.users_v2 DISABLE TRIGGER off_stamp;
         CREATE TRIGGER other_stamp BEFORE INSERT ON public.elsewhere FOR EACH ROW EXECUTE FUNCTION public.stamp();
         {ONE_ROW}"
    ))
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (0, 2), "{report}");
    assert!(
        report.contains(
            "warning  BEFORE INSERT or UPDATE row trigger shadow_stamp on public.users_v2 (a shadow, function stamp) \
             runs on the row the mapping wrote for a v1 write's shadow side"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "warning  BEFORE UPDATE row trigger old_stamp on public.users (the old table, function stamp) runs on \
             the row the mapping wrote for a v2 write's old side"
        ),
        "{report}"
    );
    for absent in ["after_stamp", "off_stamp", "other_stamp"] {
        assert!(!report.contains(absent), "{absent}: {report}");
    }
}

/// A BEFORE row trigger whose body may assign the key (here a shadow's own sequence, unguarded) is an error
/// of `check` naming it, the assignment and the `accept_key_triggers` entry; the same assignment under
/// `IF NEW.id IS NULL` is a warning, and so is the unguarded one once the rules accept it.
#[tokio::test]
async fn a_before_row_trigger_that_may_assign_the_key_is_an_error_unless_guarded_or_accepted() {
    let db = database(&format!(
        "CREATE TABLE public.users (id int PRIMARY KEY, name text, email text);
         CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
         CREATE SEQUENCE public.own_ids;
         CREATE FUNCTION public.own_id() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN NEW.id := nextval('public.own_ids'); RETURN NEW; END $$;
         CREATE TRIGGER own_id BEFORE INSERT ON public.users_v2 FOR EACH ROW EXECUTE FUNCTION public.own_id();
         {ONE_ROW}"
    ))
    .await;
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (1, 0), "{report}");
    assert!(
        report.contains(
            "ERROR    BEFORE INSERT row trigger own_id on public.users_v2 (a shadow, function own_id) assigns a key \
             column outside an IS NULL guard (`NEW.id :=`)"
        ) && report.contains("list \"public.users_v2.own_id\" in accept_key_triggers"),
        "{report}"
    );

    let accepted =
        example_rules().replace("[[migration]]", "[[migration]]\naccept_key_triggers = [\"public.users_v2.own_id\"]");
    let (findings, report) = check(&db, &accepted, None).await;
    assert_eq!((findings.errors, findings.warnings), (0, 1), "{report}");
    assert!(report.contains("it is listed in accept_key_triggers"), "{report}");

    db.connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE OR REPLACE FUNCTION public.own_id() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN IF NEW.id IS NULL THEN NEW.id := nextval('public.own_ids'); END IF; RETURN NEW; END $$",
        )
        .await
        .unwrap();
    let (findings, report) = check(&db, &example_rules(), None).await;
    assert_eq!((findings.errors, findings.warnings), (0, 1), "{report}");
    assert!(report.contains("its body leaves the key alone as far as the check reads it"), "{report}");
}

/// What a proxy would do with rules that redefine a registered migration, said before loading them: the
/// recorded definition matches (ok), differs while the migration dual-writes (ERROR: a proxy refuses
/// them), or differs while it is off (a warning: loading them records the new definition).
#[tokio::test]
async fn rules_that_redefine_a_registered_migration_are_reported_as_a_proxy_would_treat_them() {
    use dualwrite_proxy::state::{Actor, StateHandle, StateOptions};
    use dualwrite_rules::{Phase, RuleSet};
    let db = database(SCHEMA).await;
    let registered = std::sync::Arc::new(RuleSet::from_toml(&example_rules(), "rules").unwrap());
    let state = StateHandle::connect(db.url().parse().unwrap(), registered, StateOptions::default()).await.unwrap();

    let (findings, report) = check(&db, &example_rules(), None).await;
    assert!(report.contains("ok       definition (tables, key, mappings) as registered"), "{report}");
    assert_eq!(findings.errors, 0, "{report}");

    let remapped = rules(&FORWARD.replace("lower(email)", "email"), BACKWARD);
    let (findings, report) = check(&db, &remapped, None).await;
    assert!(
        report.contains(
            "ERROR    the rules define it differently from when it was registered (forward changed), and it is in \
             dual_write: a proxy refuses them"
        ),
        "{report}"
    );
    assert_eq!(findings.errors, 1, "{report}");

    let actor = Actor { role: "ops".into(), client_addr: None };
    state.change_phase("users_split_name", Phase::Off, true, &actor).await.unwrap();
    let (findings, report) = check(&db, &remapped, None).await;
    assert!(report.contains("warning  the rules redefine it (forward changed)"), "{report}");
    assert_eq!((findings.errors, findings.warnings), (0, 1), "{report}");
}
