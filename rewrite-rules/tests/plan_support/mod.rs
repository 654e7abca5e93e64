//! Shared helpers of the integration tests that check the plans of one rules file (split.rs, merge.rs,
//! merge_copy_truncate.rs, source_of_truth.rs): a statement planned for a session on one route, and the
//! checks that it was rewritten to exact SQL or refused.

#![allow(dead_code)]

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, StatementTransform};

/// An old-version session in `dual_write`, reading the old tables.
pub const DUAL_V1: MigrationRoute =
    MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source: Side::Old };

/// `sql` planned by a fresh rewriter of `rules` (a rules file's text, named `name`) for a session on `r` in
/// every migration.
pub fn plan(rules: &str, name: &str, r: MigrationRoute, sql: &str) -> Plan {
    let rules = RuleSet::from_toml(rules, name).unwrap();
    let route = Route::uniform(&rules, r);
    let rewriter = Rewriter::new(Arc::new(rules), 16);
    let plan = rewriter.rewrite(sql, &route);
    (*plan).clone()
}

/// Checks that `plan` (of `sql`) rewrote it into `want`, one statement with `transform`, for migration 0.
pub fn rewritten(plan: Plan, sql: &str, want: &str, transform: StatementTransform) {
    match plan {
        Plan::Rewritten { sql: got, statements, migrations, .. } => {
            assert_eq!(got, want, "for {sql}");
            assert_eq!(statements, vec![transform], "for {sql}");
            assert_eq!(migrations, [0]);
        }
        other => panic!("unexpected plan for {sql}: {other:?}"),
    }
}

/// Checks that `plan` (of `sql`) refused it with `reason` (SQLSTATE 0A000) for `migration`; the message.
pub fn refused(plan: Plan, sql: &str, reason: RejectReason, migration: &str) -> String {
    match plan {
        Plan::Rejected(rejection) => {
            assert_eq!(rejection.reason, reason, "for {sql}: {}", rejection.message);
            assert_eq!(rejection.sqlstate, "0A000");
            assert_eq!(rejection.migration, migration);
            rejection.message
        }
        other => panic!("unexpected plan for {sql}: {other:?}"),
    }
}
