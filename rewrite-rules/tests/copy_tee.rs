//! COPY FROM STDIN dual-written with COPY alone (`src/copy_tee.rs`): the exact statements of the tee in
//! each version and phase where the rules allow it (the catalog check, the client's COPY into the session's
//! table, the COPY into the other table with the mapped names in the client's order, the options kept),
//! and every form that is left to the staging path. On Postgres through the proxy in
//! `tests/tests/copy_tee.rs`.

use std::sync::Arc;

use dualwrite_rules::{CopyTee, MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side, TagRewrite};

/// pgbench's accounts with `abalance` renamed to `balance` and widened to bigint, as the bench migrates them.
const ACCOUNTS: &str = include_str!("../examples/pgbench_accounts_balance.toml");

const USERS: &str = include_str!("../examples/users_split_name.toml");

fn tee_with(rules: &str, phase: Phase, version: Side, backfill_pending: bool, sql: &str) -> Option<CopyTee> {
    let rules = RuleSet::from_toml(rules, "rules.toml").unwrap();
    let mut route = Route::uniform(&rules, MigrationRoute::own(phase, version));
    if backfill_pending {
        route.backfill_pending = vec![0];
    }
    Rewriter::new(Arc::new(rules), 16).copy_tee(sql, &route)
}

fn tee(phase: Phase, version: Side, sql: &str) -> Option<CopyTee> {
    tee_with(ACCOUNTS, phase, version, false, sql)
}

/// The tee's three statements: the check, the client's COPY, the other COPY.
fn statements(tee: &CopyTee) -> (String, String, String) {
    let (check, rest) = tee.sql.split_once(" $dualwrite$; ").expect("the check first");
    let (client, other) = rest.split_once("; ").expect("two COPYs");
    (format!("{check} $dualwrite$"), client.to_owned(), other.to_owned())
}

#[test]
fn an_old_version_copy_is_sent_into_the_old_table_and_again_into_the_shadow_under_the_mapped_names() {
    for phase in [Phase::DualWrite, Phase::Cutover] {
        let sql = "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN csv";
        let tee = tee(phase, Side::Old, sql).expect("a tee");
        assert_eq!((tee.columns, tee.migration), (3, 0));
        let (check, client, other) = statements(&tee);
        assert_eq!(client, "COPY public.pgbench_accounts (aid, bid, abalance) FROM STDIN CSV");
        assert_eq!(other, "COPY public.pgbench_accounts_v2 (aid, bid, balance) FROM STDIN CSV");
        assert!(check.starts_with("DO $dualwrite$ BEGIN LOCK TABLE public.pgbench_accounts, public.pgbench_accounts_v2 IN ROW EXCLUSIVE MODE; "), "{check}");
        // Each pair sent is checked for its types, the cast for its type; the column not sent for NULLs.
        assert!(check.contains("s.attname = 'abalance'") && check.contains("t.attname = 'balance'"), "{check}");
        assert!(check.contains("t.atttypid = 'BIGINT'::pg_catalog.regtype"), "{check}");
        assert!(check.contains("s.attname = 'filler'") && check.contains("NOT s.atthasdef"), "{check}");
        assert!(check.contains("tgtype & 7 = 7"), "BEFORE INSERT row triggers: {check}");
        assert!(check.contains("pg_catalog.pg_rewrite WHERE ev_class"), "rules: {check}");
        assert!(check.contains("relrowsecurity"), "row-level security: {check}");
        assert!(check.contains("USING ERRCODE = '55000'"), "{check}");
        assert_eq!(CopyTee::CHECK, 0);
        assert_eq!(CopyTee::CLIENT_COPY, 1);
        assert_eq!(CopyTee::OTHER_COPY, 2);
    }
}

#[test]
fn a_new_version_copy_is_sent_into_the_shadow_and_again_into_the_old_table_in_the_clients_order() {
    let sql = "COPY pgbench_accounts (balance, aid, bid) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')";
    let tee = tee(Phase::Cutover, Side::New, sql).expect("a tee");
    let (check, client, other) = statements(&tee);
    assert_eq!(
        client,
        "COPY public.pgbench_accounts_v2 (balance, aid, bid) FROM STDIN (FORMAT csv, HEADER, DELIMITER ';')"
    );
    assert_eq!(
        other,
        "COPY public.pgbench_accounts (abalance, aid, bid) FROM STDIN (FORMAT csv, HEADER, DELIMITER ';')"
    );
    assert!(check.contains("t.atttypid = 'INT'::pg_catalog.regtype"), "{check}");
    // In dual_write too, once the backfill is done.
    assert!(tee_with(ACCOUNTS, Phase::DualWrite, Side::New, false, sql).is_some());
}

#[test]
fn copies_the_rules_or_the_statement_keep_on_the_staging_path_have_no_tee() {
    let old = |sql: &str| tee(Phase::DualWrite, Side::Old, sql);
    // No column list: the proxy would not know how many columns the client sends.
    assert_eq!(old("COPY pgbench_accounts FROM STDIN"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance) FROM STDIN (FORMAT binary)"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance) FROM STDIN BINARY"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (bid))"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance) FROM '/tmp/rows.csv'"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid) TO STDOUT"), None);
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance) FROM STDIN; SELECT 1"), None);
    // A column that feeds no column of the shadow.
    assert_eq!(old("COPY pgbench_accounts (aid, bid, abalance, nope) FROM STDIN"), None);
    assert_eq!(old("COPY other_table (a) FROM STDIN"), None);
    for phase in [Phase::Off, Phase::Complete] {
        assert_eq!(tee(phase, Side::Old, "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN"), None, "{phase}");
    }
    let new = "COPY pgbench_accounts (aid, bid, balance) FROM STDIN";
    assert_eq!(tee_with(ACCOUNTS, Phase::DualWrite, Side::New, true, new), None, "the backfill is pending");
    // Columns computed by expressions (`split_part`, `lower`): only the staging path evaluates them.
    let users = "COPY users (id, name, email) FROM STDIN";
    assert_eq!(tee_with(USERS, Phase::DualWrite, Side::Old, false, users), None);
}

#[test]
fn a_column_sent_that_feeds_two_columns_or_a_mapped_constant_keeps_the_staging_path() {
    let twice =
        ACCOUNTS.replace("filler  = \"filler\"\n\n[migration.backward]", "filler  = \"bid\"\n\n[migration.backward]");
    let sql = "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN";
    assert_eq!(tee_with(&twice, Phase::DualWrite, Side::Old, false, sql), None);
    let constant =
        ACCOUNTS.replace("filler  = \"filler\"\n\n[migration.backward]", "filler  = \"'x'\"\n\n[migration.backward]");
    assert_eq!(tee_with(&constant, Phase::DualWrite, Side::Old, false, sql), None);
}

#[test]
fn a_tee_is_offered_only_where_the_plan_stages_the_copy() {
    let rules = RuleSet::from_toml(ACCOUNTS, "rules.toml").unwrap();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 16);
    let copies = [
        "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN",
        "COPY public.pgbench_accounts (aid, bid, abalance) FROM STDIN (FORMAT csv)",
        "COPY pgbench_accounts (aid, bid, balance) FROM STDIN",
        // The shadow named directly: refused while both tables are kept, never teed.
        "COPY pgbench_accounts_v2 (aid, bid, balance) FROM STDIN",
        "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN BINARY",
    ];
    let mut teed = 0;
    for phase in Phase::ALL {
        for version in [Side::Old, Side::New] {
            for (pending, elsewhere) in [(false, false), (true, false), (false, true)] {
                let mut route = Route::uniform(&rules, MigrationRoute::own(phase, version));
                route.backfill_pending = if pending { vec![0] } else { vec![] };
                route.unqualified_elsewhere = if elsewhere { vec![0] } else { vec![] };
                for sql in copies {
                    let Some(tee) = rewriter.copy_tee(sql, &route) else { continue };
                    teed += 1;
                    let staged = match &*rewriter.rewrite(sql, &route) {
                        Plan::Rewritten { statements, .. } => {
                            statements.iter().any(|t| t.command_tag == Some(TagRewrite::Copy))
                        }
                        _ => false,
                    };
                    assert!(staged, "{sql} teed but not staged in {phase} {version:?}: {}", tee.sql);
                    assert!(!sql.contains("_v2"), "the shadow named directly: {sql}");
                }
            }
        }
    }
    assert!(teed > 0);
}
