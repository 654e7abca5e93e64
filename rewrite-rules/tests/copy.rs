//! COPY on a migrated table (`src/copy.rs`): the exact statements COPY FROM STDIN becomes in each phase
//! and version, with the client's columns, names and options kept and the statements around it hidden;
//! the forms refused; the extended-protocol refusal. Each expansion also runs on Postgres through the
//! proxy in `tests/tests/copy_dual_write.rs`.

use std::sync::Arc;

use dualwrite_rules::{
    MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RowsDisposition, RuleSet, Side, StatementTransform,
    TagRewrite,
};

const USERS: &str = include_str!("../examples/users_split_name.toml");

const CREATE_OLD: &str =
    "CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT * FROM public.users LIMIT 0";
const FORWARD_PLAIN: &str =
    "__dw_shadow AS (INSERT INTO public.users_v2 (id, first_name, last_name, email) SELECT id, \
     split_part(name, ' ', 1), split_part(name, ' ', 2), lower(email) FROM __dw_primary";
const UPSERT_FORWARD: &str =
    " ON CONFLICT(id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = \
     EXCLUDED.email";
const BACKWARD_PLAIN: &str = "__dw_old AS (INSERT INTO public.users (id, name, email) SELECT id, first_name || ' ' || \
     last_name, email FROM __dw_primary";
const UPSERT_BACKWARD: &str = " ON CONFLICT(id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email";
const COUNT: &str = "SELECT current_setting('dualwrite.copy_rows')";
const DROP: &str = "DROP TABLE pg_temp.__dw_copy";

fn rewriter() -> (Rewriter, RuleSet) {
    let rules = RuleSet::from_toml(USERS, "example").unwrap();
    (Rewriter::new(Arc::new(rules.clone()), 16), rules)
}

fn plan(phase: Phase, version: Side, sql: &str) -> Plan {
    let (rewriter, rules) = rewriter();
    let route = Route::uniform(&rules, MigrationRoute::own(phase, version));
    (*rewriter.rewrite(sql, &route)).clone()
}

/// The statements of an expansion.
struct Expansion {
    create: String,
    copy: String,
    /// The `DO` block, whole.
    block: String,
    /// The dual write inside the block: first with plain INSERTs as syncs, then with the upserts (none when
    /// the syncs write the phase's source of truth, which is never upserted).
    plain: String,
    upsert: Option<String>,
}

/// The rewritten SQL of an expansion, split back into its statements, after checking the transforms (the
/// COPY's CopyInResponse passes as COPY traffic does; its `COPY n` comes from the count's row read after
/// the block, so a failing block shows no tag; everything else hidden), the count query and the DROP, and
/// that it is a write of migration 0.
fn expansion(phase: Phase, version: Side, sql: &str) -> Expansion {
    let Plan::Rewritten { sql: rewritten, statements, migrations, writes } = plan(phase, version, sql) else {
        panic!("{sql} not rewritten");
    };
    let hidden = StatementTransform::HIDDEN;
    let copy_count = StatementTransform { command_tag: Some(TagRewrite::Copy), rows: RowsDisposition::CountRow };
    assert_eq!(statements, vec![hidden, hidden, hidden, copy_count, hidden], "{sql}");
    assert_eq!(migrations, [0]);
    assert!(writes);
    assert_eq!(dualwrite_rules::parse_rewritten(&rewritten), Ok(5), "{rewritten}");
    let mut head = rewritten.splitn(3, "; ");
    let (create, copy, rest) = (head.next().unwrap(), head.next().unwrap(), head.next().unwrap());
    let mut tail = rest.rsplitn(3, "; ");
    let (drop, count, block) = (tail.next().unwrap(), tail.next().unwrap(), tail.next().unwrap());
    assert_eq!((count, drop), (COUNT, DROP));
    let mut dual_writes = block.lines().filter(|l| l.starts_with("WITH "));
    let plain = dual_writes.next().expect("the first attempt").to_string();
    let upsert = dual_writes.next().map(str::to_string);
    Expansion { create: create.into(), copy: copy.into(), block: block.into(), plain, upsert }
}

/// The first attempt and the upsert of a dual write whose primary CTE is `primary`, sync CTE `sync_plain`
/// (without its closing parenthesis) and upsert clause `upsert`, as the block runs them.
fn dual_writes(primary: &str, sync_plain: &str, upsert: &str, exposed: &str) -> (String, Option<String>) {
    let tail = format!(" SELECT count(*) INTO __dw_rows FROM __dw_primary AS {exposed};");
    (
        format!("WITH __dw_primary AS ({primary}), {sync_plain}){tail}"),
        Some(format!("WITH __dw_primary AS ({primary}), {sync_plain}{upsert}){tail}")),
    )
}

/// The one dual write of a block whose syncs write the phase's source of truth: plain INSERTs, no
/// fallback, no subtransaction.
fn truth_dual_write(primary: &str, sync_plain: &str, exposed: &str) -> (String, Option<String>) {
    let tail = format!(" SELECT count(*) INTO __dw_rows FROM __dw_primary AS {exposed};");
    (format!("WITH __dw_primary AS ({primary}), {sync_plain}){tail}"), None)
}

fn rejection(phase: Phase, version: Side, sql: &str) -> (RejectReason, String) {
    match plan(phase, version, sql) {
        Plan::Rejected(r) => {
            assert_eq!(r.sqlstate, "0A000");
            (r.reason, r.message)
        }
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn copy_without_columns_stages_every_column_then_dual_writes_through_the_insert() {
    let got = expansion(Phase::DualWrite, Side::Old, "COPY users FROM STDIN");
    assert_eq!(got.create, CREATE_OLD);
    assert_eq!(got.copy, "COPY pg_temp.__dw_copy FROM STDIN");
    let (plain, upsert) = dual_writes(
        "INSERT INTO users OVERRIDING SYSTEM VALUE SELECT * FROM pg_temp.__dw_copy RETURNING users.*",
        FORWARD_PLAIN,
        UPSERT_FORWARD,
        "users",
    );
    assert_eq!(
        got.block,
        format!(
            "DO $dualwrite$\n#variable_conflict use_column\nDECLARE __dw_rows bigint; __dw_schema text; __dw_table \
             text;\nBEGIN\nBEGIN\n{plain}\nEXCEPTION WHEN unique_violation THEN\nGET STACKED DIAGNOSTICS \
             __dw_schema = SCHEMA_NAME, __dw_table = TABLE_NAME;\nIF (__dw_schema, __dw_table) NOT IN (('public', \
             'users_v2')) THEN RAISE; END IF;\n{}\nEND;\nPERFORM set_config('dualwrite.copy_rows', \
             __dw_rows::text, true);\nEND\n$dualwrite$",
            upsert.expect("a sync into the shadow in dual_write falls back to the upsert")
        )
    );
}

#[test]
fn column_list_quoted_names_schema_and_csv_options_are_kept() {
    let sql = "COPY public.\"users\" (\"name\", email) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';', \
               NULL 'NA', FORCE_NULL (email))";
    let got = expansion(Phase::DualWrite, Side::Old, sql);
    assert_eq!(
        got.create,
        "CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT \"name\", email FROM public.users LIMIT 0"
    );
    assert_eq!(
        got.copy,
        "COPY pg_temp.__dw_copy (\"name\", email) FROM STDIN (FORMAT csv, HEADER, DELIMITER ';', NULL 'NA', \
         FORCE_NULL (email))"
    );
    let expected = dual_writes(
        "INSERT INTO public.\"users\" (\"name\", email) OVERRIDING SYSTEM VALUE SELECT \"name\", email FROM \
         pg_temp.__dw_copy RETURNING \"users\".*",
        FORWARD_PLAIN,
        UPSERT_FORWARD,
        "\"users\"",
    );
    assert_eq!((got.plain, got.upsert), expected);
}

#[test]
fn legacy_options_are_kept() {
    let got = expansion(Phase::DualWrite, Side::Old, "copy users (id, name) from stdin csv header delimiter '|'");
    assert_eq!(got.copy, "COPY pg_temp.__dw_copy (id, name) FROM STDIN CSV HEADER DELIMITER '|'");
}

#[test]
fn old_version_in_cutover_writes_the_old_table_first_and_never_upserts_the_shadow() {
    let got = expansion(Phase::Cutover, Side::Old, "COPY users (id, name) FROM STDIN");
    // The shadow is the source of truth in cutover: a key it holds fails the COPY (23505), as a COPY into
    // the logical table would, instead of having its row replaced.
    let expected = truth_dual_write(
        "INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE SELECT id, name FROM pg_temp.__dw_copy RETURNING \
         users.*",
        FORWARD_PLAIN,
        "users",
    );
    assert_eq!((got.plain, got.upsert), expected);
    assert!(!got.block.contains("EXCEPTION") && !got.block.contains("NOT IN"), "{}", got.block);
}

#[test]
fn new_version_stages_the_shadow_shape_and_writes_the_shadow_first() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        let got = expansion(phase, Side::New, "COPY users (id, first_name, last_name, email) FROM STDIN");
        assert_eq!(
            got.create,
            "CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT id, first_name, last_name, email \
             FROM public.users_v2 LIMIT 0"
        );
        let primary = "INSERT INTO public.users_v2 AS users (id, first_name, last_name, email) OVERRIDING SYSTEM \
                       VALUE SELECT id, first_name, last_name, email FROM pg_temp.__dw_copy RETURNING users.*";
        if phase == Phase::DualWrite {
            // The old table is the source of truth in dual_write: never upserted.
            assert_eq!((got.plain, got.upsert), truth_dual_write(primary, BACKWARD_PLAIN, "users"));
            assert!(!got.block.contains("EXCEPTION"), "{}", got.block);
            continue;
        }
        let expected = dual_writes(primary, BACKWARD_PLAIN, UPSERT_BACKWARD, "users");
        assert_eq!((got.plain, got.upsert), expected);
        // A unique violation on the old table (the one synced) sends the block to the upsert.
        assert!(got.block.contains("NOT IN (('public', 'users'))"), "{}", got.block);
    }
}

#[test]
fn complete_renames_a_new_shaped_copy_onto_the_shadow_and_refuses_the_old_shape() {
    match plan(Phase::Complete, Side::New, "COPY users (id, first_name) FROM STDIN") {
        Plan::Rewritten { sql, statements, writes: true, .. } => {
            assert_eq!(sql, "COPY public.users_v2 (id, first_name) FROM STDIN");
            assert_eq!(statements, [StatementTransform::UNCHANGED]);
        }
        other => panic!("{other:?}"),
    }
    let (reason, _) = rejection(Phase::Complete, Side::Old, "COPY users FROM STDIN");
    assert_eq!(reason, RejectReason::RetiredVersionWrite);
}

#[test]
fn copy_of_other_tables_and_in_off_passes_through() {
    assert_eq!(plan(Phase::Off, Side::Old, "COPY users FROM STDIN"), Plan::PassThrough);
    assert_eq!(plan(Phase::Off, Side::Old, "COPY users_v2 FROM STDIN"), Plan::PassThrough);
    // Into the shadow itself while both tables are kept: it would fill the shadow alone.
    let (reason, _) = rejection(Phase::DualWrite, Side::Old, "COPY users_v2 FROM STDIN");
    assert_eq!(reason, RejectReason::ShadowWrite);
    assert_eq!(plan(Phase::DualWrite, Side::Old, "COPY other.users FROM STDIN"), Plan::PassThrough);
    assert_eq!(plan(Phase::DualWrite, Side::Old, "COPY accounts_users FROM STDIN"), Plan::PassThrough);
}

#[test]
fn copy_from_a_file_or_program_is_refused_with_the_reason() {
    let (reason, message) = rejection(Phase::DualWrite, Side::Old, "COPY users FROM '/tmp/users.csv' (FORMAT csv)");
    assert_eq!(reason, RejectReason::CopyFrom);
    assert_eq!(
        message,
        "dualwrite: statement refused for migration \"users_split_name\": this form of COPY FROM into a migrated \
         table is not supported (COPY FROM a server file; use COPY ... FROM STDIN (psql's \\copy))"
    );
    let (reason, message) = rejection(Phase::Cutover, Side::New, "COPY users FROM PROGRAM 'cat /tmp/u'");
    assert_eq!(reason, RejectReason::CopyFrom);
    assert!(message.ends_with("(COPY FROM PROGRAM; use COPY ... FROM STDIN (psql's \\copy))"), "{message}");
}

#[test]
fn lines_after_copy_from_stdin_in_one_string_are_refused() {
    // sqlparser reads the second line as COPY data; the server would run it as a statement.
    let (reason, message) =
        rejection(Phase::DualWrite, Side::Old, "COPY accounts FROM STDIN;\nDELETE FROM users WHERE id = 1");
    assert_eq!(reason, RejectReason::Unparseable);
    assert!(message.contains("statements on the lines after COPY ... FROM STDIN"), "{message}");
    let (reason, _) = rejection(Phase::DualWrite, Side::Old, "COPY users FROM STDIN;\n1\tAda Lovelace\tada@x\n\\.");
    assert_eq!(reason, RejectReason::Unparseable);
}

#[test]
fn two_copies_in_one_string_each_get_their_staging() {
    let Plan::Rewritten { sql, statements, .. } =
        plan(Phase::DualWrite, Side::Old, "COPY users (id) FROM STDIN; COPY users (name) FROM STDIN")
    else {
        panic!("not rewritten");
    };
    assert_eq!(statements.len(), 10);
    assert_eq!(dualwrite_rules::parse_rewritten(&sql), Ok(10));
    assert_eq!(sql.matches(CREATE_OLD.split(" AS ").next().unwrap()).count(), 2);
    assert_eq!(sql.matches("DO $dualwrite$").count(), 2);
    assert_eq!(sql.matches(DROP).count(), 2);
    assert_eq!(statements.iter().filter(|t| t.rows == RowsDisposition::Hidden).count(), 8);
    assert_eq!(statements.iter().filter(|t| t.rows == RowsDisposition::CountRow).count(), 2);
}

#[test]
fn a_copy_plan_is_refused_for_the_extended_protocol_and_other_plans_are_not() {
    let (rewriter, rules) = rewriter();
    let route = Route::uniform(&rules, MigrationRoute::own(Phase::DualWrite, Side::Old));
    let copy = rewriter.rewrite("COPY users FROM STDIN", &route);
    let refusal = copy.extended_protocol_refusal(&rules).expect("refused through Parse");
    assert_eq!(refusal.reason, RejectReason::CopyFrom);
    assert_eq!(refusal.sqlstate, "0A000");
    assert!(refusal.message.starts_with(
        "dualwrite: statement refused for migration \"users_split_name\": this form of COPY FROM into a migrated \
         table is not supported (through the extended protocol; send COPY ... FROM STDIN as a simple Query"
    ));
    let insert = rewriter.rewrite("INSERT INTO users (id, name) VALUES ($1, $2)", &route);
    assert_eq!(insert.extended_protocol_refusal(&rules), None);
    let complete = Route::uniform(&rules, MigrationRoute::own(Phase::Complete, Side::New));
    assert_eq!(rewriter.rewrite("COPY users FROM STDIN", &complete).extended_protocol_refusal(&rules), None);
}

#[test]
fn explain_of_a_copy_is_refused() {
    let (reason, _) = rejection(Phase::DualWrite, Side::Old, "EXPLAIN COPY users FROM STDIN");
    assert_eq!(reason, RejectReason::UnsupportedWrite);
}

#[test]
fn copy_to_is_still_routed_as_a_read() {
    match plan(Phase::DualWrite, Side::New, "COPY users TO STDOUT") {
        Plan::Rewritten { sql, writes: false, .. } => assert_eq!(sql, "COPY public.users_v2 TO STDOUT"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn copy_forms_the_parser_cannot_read_are_refused() {
    for sql in [
        "COPY users FROM STDIN WHERE id > 10",
        "COPY users FROM STDIN (FORMAT csv, HEADER MATCH)",
        "COPY users FROM STDIN (FORMAT csv, FORCE_NOT_NULL *)",
    ] {
        let (reason, message) = rejection(Phase::DualWrite, Side::Old, sql);
        assert_eq!(reason, RejectReason::Unparseable, "{sql}: {message}");
    }
}
