//! Shadow reads: for a read the proxy sampled, the same statement in both shapes — reading the old table and
//! reading the shadow, each presented in the session's shape — so the proxy can run both in one snapshot and
//! compare the answers (README: Shadow reads).
//!
//! Nothing is sampled in `dual_write` before the backfill is done (the shadow lacks the rows not copied yet).
//! Only plain reads qualify, so that running them again changes nothing and answers the same in both shapes
//! when the tables agree: one SELECT (or VALUES / set operation, CTEs allowed) naming exactly one migration in
//! `dual_write` or `cutover`, with no data-modifying CTE, no `FOR UPDATE/SHARE`, no `SELECT INTO`, no
//! `TABLESAMPLE`, no LIMIT/OFFSET/FETCH without an ORDER BY at the same level (which rows come back would be
//! arbitrary), and no call of a volatile or side-effecting function from a fixed list ([`VOLATILE`]).

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, VisitMut, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::compiled::Compiled;
use crate::model::Phase;
use crate::reads::{alias_of, ReadRouter};
use crate::route::{Route, Side};
use crate::template::template_query;

/// The alias of the compared query inside the wrapper that turns each row into one text value.
const ROW_ALIAS: &str = "__dw_row";

/// Functions whose answer differs between two runs in one snapshot, or that have effects (lower case; a
/// trailing `*` matches a prefix).
pub const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "nextval",
    "setval",
    "currval",
    "lastval",
    "clock_timestamp",
    "statement_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_*",
    "pg_sleep*",
    "txid_current*",
    "pg_current_xact_id*",
    "set_config",
    "pg_advisory_*",
    "pg_try_advisory_*",
    "pg_notify",
    "dblink*",
    "lo_*",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_*",
    "pg_backend_pid",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile*",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
];

/// One sampled read in both shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRead {
    /// The migration the read names (index into `RuleSet::migrations`).
    pub migration: usize,
    /// The read answered by the old table, as a query returning one text column: each row's text form.
    pub old_sql: String,
    /// The same read answered by the shadow.
    pub new_sql: String,
    /// The side the session itself reads (its route's read source): its statement's parameter types are
    /// the ones the server infers for this shape.
    pub own_side: Side,
    /// The query orders its rows (top-level ORDER BY): compare as sequences, else as multisets.
    pub ordered: bool,
}

impl ShadowRead {
    /// The SQL of `side`.
    pub fn sql(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old_sql,
            Side::New => &self.new_sql,
        }
    }
}

/// Both shapes of `sql` under `route`, or `None` when it is not a plain read of one migration in
/// `dual_write` or `cutover`.
pub(crate) fn shadow_read(compiled: &Compiled, route: &Route, sql: &str) -> Option<ShadowRead> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Query(query)) = statements.pop() else { return None };
    if !is_plain_read(&query) {
        return None;
    }
    // Under a route where every migration is read from the other side than its shape, each reference to
    // an active migration is substituted, so the router's `touched` names the migrations the read uses.
    let mut flipped = route.clone();
    for r in &mut flipped.per_migration {
        r.read_source = r.version.other();
    }
    let mut probe = (*query).clone();
    let mut router = ReadRouter::new(compiled, &flipped, vec![]);
    if VisitMut::visit(&mut probe, &mut router).is_break() || router.touched.len() != 1 {
        return None;
    }
    let migration = *router.touched.iter().next()?;
    let own = route.get(migration);
    if !matches!(own.phase, Phase::DualWrite | Phase::Cutover) || compiled.migrations[migration].broken.is_some() {
        return None;
    }
    // Until the backfill is done the shadow lacks the rows not copied yet: every comparison of such a row
    // would be a mismatch that says nothing of the dual write.
    if own.phase == Phase::DualWrite && route.backfill_pending(migration) {
        return None;
    }
    let shape = |side: Side| -> Option<String> {
        let mut r = route.clone();
        if r.per_migration.len() <= migration {
            return None;
        }
        r.per_migration[migration].read_source = side;
        let mut q = (*query).clone();
        let mut router = ReadRouter::new(compiled, &r, vec![]);
        if VisitMut::visit(&mut q, &mut router).is_break() {
            return None;
        }
        Some(rows_as_text(q).to_string())
    };
    Some(ShadowRead {
        migration,
        old_sql: shape(Side::Old)?,
        new_sql: shape(Side::New)?,
        own_side: own.read_source,
        ordered: query.order_by.is_some(),
    })
}

/// `SELECT __dw_row::text FROM (<query>) AS __dw_row`: one text value per row, so that both shapes compare
/// by the values' text forms whatever column types each side computes them in.
fn rows_as_text(query: Query) -> Query {
    let mut wrapper = template_query("SELECT __dw_row::text FROM __dw_table");
    if let SetExpr::Select(select) = wrapper.body.as_mut() {
        select.from[0].relation = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(query),
            alias: Some(alias_of(sqlparser::ast::Ident::new(ROW_ALIAS))),
            sample: None,
        };
    }
    wrapper
}

/// True for a query that only reads and answers the same when run twice in one snapshot.
fn is_plain_read(query: &Query) -> bool {
    struct Check;
    impl Visitor for Check {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            let unordered_limit = q.order_by.is_none() && (q.limit_clause.is_some() || q.fetch.is_some());
            let dml = matches!(q.body.as_ref(), SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_));
            let into = matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some());
            if unordered_limit || dml || into || !q.locks.is_empty() || q.for_clause.is_some() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
            // A statement nested in a query is a data-modifying CTE.
            ControlFlow::Break(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Table { sample: Some(_), .. } | TableFactor::Derived { sample: Some(_), .. } => {
                    ControlFlow::Break(())
                }
                TableFactor::Table { name, args: Some(_), .. } if is_volatile(name.0.last()) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f) if is_volatile(f.name.0.last()) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    query.visit(&mut Check).is_continue()
}

fn is_volatile(name: Option<&ObjectNamePart>) -> bool {
    let Some(ObjectNamePart::Identifier(ident)) = name else { return false };
    let name = ident.value.to_lowercase();
    VOLATILE.iter().any(|v| match v.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *v,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::RuleSet;
    use crate::route::{MigrationRoute, Route, Side};
    use crate::{Phase, Rewriter};

    fn rewriter() -> Rewriter {
        Rewriter::new(
            Arc::new(RuleSet::from_toml(include_str!("../examples/users_split_name.toml"), "t.toml").unwrap()),
            0,
        )
    }

    fn route(phase: Phase, version: Side, read_source: Side) -> Route {
        Route { per_migration: vec![MigrationRoute { phase, version, read_source }], ..Route::default() }
    }

    fn v1() -> Route {
        route(Phase::DualWrite, Side::Old, Side::Old)
    }

    #[test]
    fn a_v1_read_reads_the_old_table_as_is_and_the_shadow_through_the_mapping() {
        let r = rewriter().shadow_read("SELECT id, name FROM users WHERE id = $1", &v1()).unwrap();
        assert_eq!(r.migration, 0);
        assert_eq!(r.old_sql, "SELECT __dw_row::TEXT FROM (SELECT id, name FROM users WHERE id = $1) AS __dw_row");
        assert!(r.new_sql.contains("FROM public.users_v2"), "{}", r.new_sql);
        assert!(r.new_sql.contains("first_name || ' ' || last_name AS name"), "{}", r.new_sql);
        assert_eq!(r.own_side, Side::Old);
        assert!(!r.ordered);
    }

    #[test]
    fn a_v2_read_reads_the_shadow_by_name_and_the_old_table_through_the_mapping() {
        let r = rewriter()
            .shadow_read("SELECT first_name FROM users ORDER BY id", &route(Phase::Cutover, Side::New, Side::New))
            .unwrap();
        assert!(r.new_sql.contains("FROM public.users_v2 AS users ORDER BY id"), "{}", r.new_sql);
        assert!(r.old_sql.contains("split_part(name, ' ', 1) AS first_name"), "{}", r.old_sql);
        assert_eq!(r.own_side, Side::New);
        assert!(r.ordered);
    }

    #[test]
    fn only_plain_reads_of_an_active_migration_qualify() {
        let rw = rewriter();
        let none = |sql: &str, route: &Route| assert_eq!(rw.shadow_read(sql, route), None, "{sql}");
        for sql in [
            "SELECT * FROM accounts",
            "SELECT * FROM users FOR UPDATE",
            "SELECT * FROM users; SELECT 1",
            "SELECT random(), id FROM users",
            "SELECT id FROM users ORDER BY random()",
            "SELECT nextval('s'), id FROM users",
            "SELECT * FROM users LIMIT 5",
            "SELECT * FROM (SELECT * FROM users OFFSET 2) AS u ORDER BY id",
            "SELECT * INTO t FROM users",
            "SELECT * FROM users TABLESAMPLE SYSTEM (10)",
            "WITH d AS (DELETE FROM accounts RETURNING id) SELECT * FROM users",
            "UPDATE users SET name = 'x' WHERE id = 1",
            "INSERT INTO users (id, name) VALUES (1, 'a')",
            "EXPLAIN SELECT * FROM users",
            "not sql at all FROM users",
        ] {
            none(sql, &v1());
        }
        for phase in [Phase::Off, Phase::Complete] {
            none("SELECT * FROM users", &route(phase, Side::Old, Side::Old));
        }
        // Before the backfill is done in dual_write (not in a cutover forced before it).
        let mut pending = v1();
        pending.backfill_pending = vec![0];
        none("SELECT * FROM users", &pending);
        pending.per_migration[0].phase = Phase::Cutover;
        assert!(rw.shadow_read("SELECT * FROM users", &pending).is_some());
        assert!(rw.shadow_read("SELECT * FROM users ORDER BY id LIMIT 5", &v1()).is_some());
        assert!(rw.shadow_read("WITH u AS (SELECT * FROM users) SELECT count(*) FROM u", &v1()).is_some());
        assert!(rw.shadow_read("SELECT now(), id FROM users", &v1()).is_some());
    }
}
