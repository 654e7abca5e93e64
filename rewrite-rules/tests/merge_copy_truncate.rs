//! TRUNCATE and COPY FROM STDIN of a merge's sources (README: Merging tables; `src/merge_truncate.rs`,
//! `src/copy.rs`): the exact statements they become for a v1 session in `dual_write`, and what stays
//! refused (CASCADE, v2 sessions, other phases, TRUNCATE through the extended protocol). Run on Postgres
//! through the proxy in `tests/tests/merge_copy_truncate.rs`.

use dualwrite_rules::{
    MigrationRoute, Phase, Plan, RejectReason, RowsDisposition, RuleSet, Side, StatementTransform, TagRewrite,
};

mod plan_support;
use plan_support::DUAL_V1;

const MERGE: &str = include_str!("../examples/users_merge_tables.toml");

fn rules() -> RuleSet {
    RuleSet::from_toml(MERGE, "merge").unwrap()
}

fn plan(r: MigrationRoute, sql: &str) -> Plan {
    plan_support::plan(MERGE, "merge", r, sql)
}

/// The rewritten SQL and the statements' transforms, checking it is a write of migration 0.
fn rewritten(sql: &str) -> (String, Vec<StatementTransform>) {
    match plan(DUAL_V1, sql) {
        Plan::Rewritten { sql: got, statements, migrations, writes } => {
            assert_eq!(migrations, [0], "{sql}");
            assert!(writes, "{sql}");
            (got, statements)
        }
        other => panic!("unexpected plan for {sql}: {other:?}"),
    }
}

fn refused(r: MigrationRoute, sql: &str) -> String {
    plan_support::refused(plan(r, sql), sql, RejectReason::MergedTablesWrite, "users_merge_tables")
}

const HIDDEN: StatementTransform = StatementTransform::HIDDEN;
const UNCHANGED: StatementTransform = StatementTransform::UNCHANGED;

/// The shadow's sync after a TRUNCATE of `profiles` alone.
const PROFILES_EMPTIED: &str = "WITH __dw_lock AS (SELECT __dw_t.id, (__dw_t.email IS NULL) AS __dw_gone FROM \
     public.users AS __dw_t WHERE (__dw_t.email IS NULL) OR __dw_t.display_name IS NOT NULL OR __dw_t.bio IS NOT \
     NULL FOR UPDATE OF __dw_t), __dw_shadow AS (DELETE FROM public.users AS __dw_t USING __dw_lock AS __dw_l WHERE \
     __dw_t.id = __dw_l.id AND __dw_l.__dw_gone), __dw_shadow_null AS (UPDATE public.users AS __dw_t SET \
     display_name = NULL, bio = NULL FROM __dw_lock AS __dw_l WHERE __dw_t.id = __dw_l.id AND NOT \
     __dw_l.__dw_gone) SELECT count(*) FROM __dw_lock";

#[test]
fn a_truncate_of_one_source_is_followed_by_the_locked_delete_or_null_of_its_shadow_columns() {
    let (sql, statements) = rewritten("TRUNCATE profiles");
    assert_eq!(sql, format!("TRUNCATE profiles; {PROFILES_EMPTIED}"));
    assert_eq!(statements, [UNCHANGED, HIDDEN], "the client sees the TRUNCATE's answer only");
    let (sql, _) = rewritten("TRUNCATE TABLE public.accounts RESTART IDENTITY");
    assert_eq!(
        sql,
        "TRUNCATE TABLE public.accounts RESTART IDENTITY; WITH __dw_lock AS (SELECT __dw_t.id, (__dw_t.display_name \
         IS NULL) AS __dw_gone FROM public.users AS __dw_t WHERE (__dw_t.display_name IS NULL) OR __dw_t.email IS NOT \
         NULL FOR UPDATE OF __dw_t), __dw_shadow AS (DELETE FROM public.users AS __dw_t USING __dw_lock AS __dw_l \
         WHERE __dw_t.id = __dw_l.id AND __dw_l.__dw_gone), __dw_shadow_null AS (UPDATE public.users AS __dw_t SET \
         email = NULL FROM __dw_lock AS __dw_l WHERE __dw_t.id = __dw_l.id AND NOT __dw_l.__dw_gone) SELECT count(*) \
         FROM __dw_lock"
    );
}

#[test]
fn a_truncate_of_every_source_truncates_the_shadow_in_the_same_statement() {
    let (sql, statements) = rewritten("TRUNCATE accounts, profiles, audit_log");
    assert_eq!(sql, "TRUNCATE accounts, profiles, audit_log, public.users");
    assert_eq!(statements, [UNCHANGED]);
    // A source named twice is one source.
    let (sql, _) = rewritten("TRUNCATE profiles, public.profiles RESTRICT");
    assert_eq!(sql, format!("TRUNCATE profiles, public.profiles RESTRICT; {PROFILES_EMPTIED}"));
}

#[test]
fn a_truncate_of_a_source_keeps_the_other_tables_it_names() {
    let (sql, statements) = rewritten("BEGIN; TRUNCATE ONLY profiles, audit_log; COMMIT");
    assert_eq!(sql, format!("BEGIN; TRUNCATE ONLY profiles, audit_log; {PROFILES_EMPTIED}; COMMIT"));
    assert_eq!(statements, [UNCHANGED, UNCHANGED, HIDDEN, UNCHANGED]);
}

#[test]
fn what_a_merge_truncate_cannot_mirror_is_refused() {
    let message = refused(DUAL_V1, "TRUNCATE profiles CASCADE");
    assert!(message.contains("TRUNCATE ... CASCADE of a source"), "{message}");
    // Even when every source is named: the cascade reaches tables the statement does not name.
    refused(DUAL_V1, "TRUNCATE accounts, profiles CASCADE");
    let v2 = MigrationRoute::own(Phase::DualWrite, Side::New);
    assert!(refused(v2, "TRUNCATE profiles").contains("new-version session"));
    // In cutover the sources' old-shaped writes are dual-written as in dual_write; after it, refused.
    let cutover = MigrationRoute::own(Phase::Cutover, Side::Old);
    assert_eq!(plan(cutover, "TRUNCATE accounts"), plan(DUAL_V1, "TRUNCATE accounts"));
    let complete = MigrationRoute::own(Phase::Complete, Side::Old);
    assert!(refused(complete, "TRUNCATE accounts").contains("phase complete"));
    // Off: not the proxy's business.
    assert_eq!(plan(MigrationRoute::own(Phase::Off, Side::Old), "TRUNCATE profiles"), Plan::PassThrough);
}

#[test]
fn a_truncate_of_some_sources_through_the_extended_protocol_is_refused() {
    let rules = rules();
    let partial = plan(DUAL_V1, "TRUNCATE profiles");
    let refusal = partial.extended_protocol_refusal(&rules).expect("refused for a Parse");
    assert_eq!(refusal.reason, RejectReason::MergedTablesWrite);
    assert!(refusal.message.contains("send the TRUNCATE as a simple Query"), "{}", refusal.message);
    // One statement: nothing to refuse.
    assert_eq!(plan(DUAL_V1, "TRUNCATE accounts, profiles").extended_protocol_refusal(&rules), None);
}

/// The COPY expansion: (create, copy, first attempt, upsert, tables the block's fallback accepts).
fn copy_expansion(sql: &str) -> (String, String, String, String, String) {
    let (rewritten, statements) = rewritten(sql);
    let copy_count = StatementTransform { command_tag: Some(TagRewrite::Copy), rows: RowsDisposition::CountRow };
    assert_eq!(statements, [HIDDEN, HIDDEN, HIDDEN, copy_count, HIDDEN], "{sql}");
    assert_eq!(dualwrite_rules::parse_rewritten(&rewritten), Ok(5), "{rewritten}");
    let parts: Vec<&str> = rewritten.splitn(3, "; ").collect();
    let block = parts[2].rsplitn(3, "; ").nth(2).unwrap();
    let mut attempts = block.lines().filter(|l| l.starts_with("WITH "));
    let synced = block.lines().find(|l| l.starts_with("IF (__dw_schema")).unwrap();
    (
        parts[0].to_string(),
        parts[1].to_string(),
        attempts.next().unwrap().to_string(),
        attempts.next().unwrap().to_string(),
        synced.to_string(),
    )
}

#[test]
fn a_copy_into_a_source_stages_it_and_merges_each_row_through_the_merge_insert_upsert() {
    let (create, copy, plain, upsert, synced) = copy_expansion("COPY profiles (id, name) FROM STDIN (FORMAT csv)");
    assert_eq!(
        create,
        "CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT id, name FROM public.profiles LIMIT 0"
    );
    assert_eq!(copy, "COPY pg_temp.__dw_copy (id, name) FROM STDIN (FORMAT csv)");
    let merge_insert = "INSERT INTO public.users (id, email, display_name, bio) SELECT id, lower(email), name, bio \
         FROM (SELECT id, name, bio FROM __dw_primary) AS __dw_s2 LEFT JOIN (SELECT id, email FROM public.accounts) \
         AS __dw_s1 USING(id)";
    let head = "WITH __dw_primary AS (INSERT INTO profiles (id, name) OVERRIDING SYSTEM VALUE SELECT id, name FROM \
         pg_temp.__dw_copy RETURNING profiles.*), __dw_shadow AS (";
    let tail = ") SELECT count(*) INTO __dw_rows FROM __dw_primary AS profiles;";
    // A key new to the shadow gets the whole row (the other source's columns as its table holds them);
    // one the shadow holds raises unique_violation there, and the upsert sets only this source's columns.
    assert_eq!(plain, format!("{head}{merge_insert}{tail}"));
    assert_eq!(
        upsert,
        format!(
            "{head}{merge_insert} ON CONFLICT(id) DO UPDATE SET display_name = EXCLUDED.display_name, bio = \
             EXCLUDED.bio{tail}"
        )
    );
    assert_eq!(synced, "IF (__dw_schema, __dw_table) NOT IN (('public', 'users')) THEN RAISE; END IF;");
}

#[test]
fn a_copy_into_the_first_source_stages_its_own_columns() {
    let (create, _, plain, _, _) = copy_expansion("COPY public.accounts FROM STDIN");
    assert_eq!(
        create,
        "CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT * FROM public.accounts LIMIT 0"
    );
    assert!(
        plain.contains(
            "__dw_shadow AS (INSERT INTO public.users (id, email, display_name, bio) SELECT id, lower(email), name, \
             bio FROM (SELECT id, email FROM __dw_primary) AS __dw_s1 LEFT JOIN (SELECT id, name, bio FROM \
             public.profiles) AS __dw_s2 USING(id))"
        ),
        "{plain}"
    );
}

#[test]
fn a_copy_into_a_source_outside_dual_write_and_cutover_v1_is_refused() {
    let v2 = MigrationRoute::own(Phase::DualWrite, Side::New);
    assert!(refused(v2, "COPY profiles FROM STDIN").contains("COPY FROM in a new-version session"));
    let cutover = MigrationRoute::own(Phase::Cutover, Side::Old);
    assert_eq!(plan(cutover, "COPY accounts FROM STDIN"), plan(DUAL_V1, "COPY accounts FROM STDIN"));
    let complete_v1 = MigrationRoute::own(Phase::Complete, Side::Old);
    assert!(refused(complete_v1, "COPY accounts FROM STDIN").contains("COPY FROM in phase complete"));
    let complete = MigrationRoute::own(Phase::Complete, Side::New);
    assert!(refused(complete, "COPY accounts FROM STDIN").contains("new-version session"));
    // The forms no migration copies from stay refused as COPY's own refusals.
    match plan(DUAL_V1, "COPY accounts FROM '/tmp/accounts.csv'") {
        Plan::Rejected(r) => assert_eq!(r.reason, RejectReason::CopyFrom),
        other => panic!("{other:?}"),
    }
}
