//! The invariants the `rewrite` fuzz target checks (fuzz/fuzz_targets/rewrite.rs), kept here so the
//! regression test (tests/fuzz_regressions.rs) replays the fuzzers' corpus and findings through the very
//! same code on stable Rust. A violated invariant panics: that is how libFuzzer and the test notice.

use std::sync::{Arc, OnceLock};

use crate::{MigrationRoute, Phase, Plan, RejectReason, Rewriter, Route, RuleSet, Side, TagRewrite, UnsafeSchema};

/// Both example migrations (`users` split by name, `orders` with a composite key) in one rule set.
fn rewriter() -> &'static Rewriter {
    static REWRITER: OnceLock<Rewriter> = OnceLock::new();
    REWRITER.get_or_init(|| {
        let text =
            [include_str!("../examples/users_split_name.toml"), include_str!("../examples/orders_amount_numeric.toml")]
                .join("\n");
        let rules = RuleSet::from_toml(&text, "examples").expect("the example rules are valid");
        Rewriter::new(Arc::new(rules), 1_000)
    })
}

/// One migration's route from the low bits of a byte: phase, the session's version, its read source.
fn migration_route(b: u8) -> MigrationRoute {
    let side = |bit: u8| if b & bit == 0 { Side::Old } else { Side::New };
    MigrationRoute { phase: Phase::ALL[(b & 3) as usize], version: side(4), read_source: side(8) }
}

/// Input layout: byte 0 = how many migrations the route covers (mod 3; missing ones count as `off`; bit 7:
/// the first migration's unqualified name reaches another relation in the session; bit 6: its shadow's;
/// bit 5: its backfill has not finished),
/// bytes 1 and 2 = each migration's route, the rest = SQL text (invalid UTF-8 replaced, as the proxy does).
///
/// Invariants: the cached plan equals a fresh one; text the cheap check calls unrelated, or a route with
/// every migration off, passes through; a rewritten statement parses again as PostgreSQL, has one answer
/// transform per statement and names valid migrations in ascending order; a rejection names a migration
/// and a reason (55000 for an unsafe schema, which without a finding only a key default changed earlier in the
/// string causes). The same route with the first migration's schema found unsafe plans the same, except
/// that a write of that migration alone is refused (55000) and nothing else is refused for that reason. A
/// COPY written with COPYs alone is offered only where the plan stages it, and reads back as PostgreSQL.
pub fn check_rewrite(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let rewriter = rewriter();
    let count = rewriter.rules().migrations.len();
    let covered = (data[0] % 3) as usize;
    // Bits 7 and 6 of the first byte: unqualified old-table (shadow) names reach another relation in the
    // session.
    let unqualified_elsewhere = if data[0] & 0x80 != 0 { vec![0] } else { Vec::new() };
    let shadow_unqualified_elsewhere = if data[0] & 0x40 != 0 { vec![0] } else { Vec::new() };
    let backfill_pending = if data[0] & 0x20 != 0 { vec![0] } else { Vec::new() };
    let route = Route {
        per_migration: data[1..3].iter().take(covered).map(|&b| migration_route(b)).collect(),
        unqualified_elsewhere,
        shadow_unqualified_elsewhere,
        backfill_pending,
        unsafe_schema: Vec::new(),
    };
    let sql = String::from_utf8_lossy(&data[3..]);

    let plan = rewriter.plan(&sql, &route);
    check_unsafe_schema(rewriter, &sql, &route, &plan);
    check_copy_tee(rewriter, &sql, &route, &plan);
    assert_eq!(*rewriter.rewrite(&sql, &route), plan, "the plan cache must not change the decision");
    assert_eq!(*rewriter.rewrite(&sql, &route), plan, "a cached plan must equal the first");
    if !rewriter.mentions_migrated_table(&sql) || route.per_migration.iter().all(|r| r.phase == Phase::Off) {
        assert_eq!(plan, Plan::PassThrough, "unrelated text or an all-off route must pass through");
    }
    match &plan {
        Plan::PassThrough => {}
        Plan::Rewritten { sql: out, statements, migrations, .. } => {
            let reparsed =
                crate::parse_rewritten(out).unwrap_or_else(|e| panic!("rewritten SQL does not parse ({e}): {out}"));
            assert_eq!(reparsed, statements.len(), "one transform per statement of {out}");
            assert!(!migrations.is_empty(), "a rewrite involves a migration");
            assert!(migrations.windows(2).all(|w| w[0] < w[1]), "migrations ascending: {migrations:?}");
            assert!(migrations.iter().all(|&m| m < count), "migration index out of range: {migrations:?}");
        }
        Plan::Rejected(rejection) => {
            assert!(rejection.migration_index < count, "rejection names a migration");
            assert_eq!(rejection.migration, rewriter.rules().migrations[rejection.migration_index].name);
            assert!(!rejection.message.is_empty(), "rejection says why");
            if rejection.reason == RejectReason::UnsafeSchema {
                // No schema finding in this route: only the string's own change of a key default refuses
                // the writes after it (`key_default_ddl`).
                let changes = rewriter.key_default_changes(&sql, &route);
                assert!(
                    changes.iter().any(|c| c.migration == rejection.migration_index),
                    "an unsafe-schema refusal without a finding or a key default change: {sql}"
                );
                assert_eq!(rejection.sqlstate, "55000");
            } else {
                assert_eq!(rejection.sqlstate, "0A000", "refusals are feature_not_supported");
            }
        }
    }
}

/// A COPY written with COPYs alone is offered only where `plan` stages a COPY (the proxy's fallback), and
/// its statements read back as PostgreSQL: the check, then two COPYs.
fn check_copy_tee(rewriter: &Rewriter, sql: &str, route: &Route, plan: &Plan) {
    let Some(tee) = rewriter.copy_tee(sql, route) else { return };
    let staged = match plan {
        Plan::Rewritten { statements, .. } => statements.iter().any(|t| t.command_tag == Some(TagRewrite::Copy)),
        _ => false,
    };
    assert!(staged, "a tee for a COPY the plan does not stage: {sql} -> {plan:?}");
    let statements =
        crate::parse_rewritten(&tee.sql).unwrap_or_else(|e| panic!("the tee does not parse ({e}): {}", tee.sql));
    assert_eq!(statements, 3, "the check and two COPYs: {}", tee.sql);
}

/// `plan` is `sql`'s plan under `route`; under the same route with migration 0's schema unsafe, the plan is
/// the same or that refusal, and the refusal where `plan` writes migration 0 and no other.
fn check_unsafe_schema(rewriter: &Rewriter, sql: &str, route: &Route, plan: &Plan) {
    let finding = UnsafeSchema { migration: 0, finding: "a finding".into() };
    let unsafe_route = Route { unsafe_schema: vec![finding], ..route.clone() };
    let guarded = rewriter.plan(sql, &unsafe_route);
    let refused = match &guarded {
        // (A string whose own key default change refused a write is refused alike.)
        same if same == plan => matches!(same, Plan::Rejected(r) if r.migration_index == 0),
        Plan::Rejected(r) if r.reason == RejectReason::UnsafeSchema => {
            assert_eq!((r.migration_index, r.sqlstate), (0, "55000"), "{r:?}");
            assert!(r.message.contains("a finding"), "the refusal names the finding: {}", r.message);
            true
        }
        other => panic!("only a write of the unsafe migration changes its plan: {other:?}, was {plan:?}"),
    };
    if let Plan::Rewritten { writes: true, migrations, .. } = plan {
        if migrations == &[0] {
            assert!(refused, "a write of the unsafe migration alone is refused: {sql}");
        }
    }
}
