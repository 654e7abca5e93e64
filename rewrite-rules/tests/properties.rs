//! Property tests: for generated statements (well-formed ones built from ORM-like pieces, and arbitrary
//! text naming a migrated table) under every route, the rewriter never panics, and whatever it rewrites
//! parses again as as many statements as it has transforms.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side};
use proptest::prelude::*;

const RULES: &str = concat!(
    include_str!("../examples/users_split_name.toml"),
    "\n",
    include_str!("../examples/orders_amount_numeric.toml")
);

fn rewriter() -> &'static (Rewriter, RuleSet) {
    static R: std::sync::OnceLock<(Rewriter, RuleSet)> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let rules = RuleSet::from_toml(RULES, "examples").unwrap();
        (Rewriter::new(Arc::new(rules.clone()), 256), rules)
    })
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Old), Just(Side::New)]
}

fn route() -> impl Strategy<Value = MigrationRoute> {
    (prop::sample::select(Phase::ALL.to_vec()), side(), side())
        .prop_map(|(phase, version, read_source)| MigrationRoute { phase, version, read_source })
}

fn table() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["users", "\"users\"", "public.users", "USERS", "orders", "accounts", "users_v2"])
        .prop_map(str::to_string)
}

fn column() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["id", "name", "email", "first_name", "amount_cents", "shop_id", "x.id", "users.id"])
        .prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["$1", "$2", "1", "'a b'", "NULL", "DEFAULT", "now()", "(SELECT max(id) FROM users)"])
        .prop_map(str::to_string)
}

fn predicate() -> impl Strategy<Value = String> {
    prop_oneof![
        (column(), value()).prop_map(|(c, v)| format!("{c} = {v}")),
        column().prop_map(|c| format!("{c} IN (SELECT id FROM users WHERE email IS NULL)")),
        table().prop_map(|t| format!("EXISTS (SELECT 1 FROM {t} y WHERE y.id = 1)")),
        Just("true".to_string()),
    ]
}

fn alias() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", " u", " AS x", " AS users"]).prop_map(str::to_string)
}

fn returning() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", " RETURNING *", " RETURNING id", " RETURNING users.id, email", " RETURNING a.id"])
        .prop_map(str::to_string)
}

fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        (table(), alias(), predicate(), prop::sample::select(vec!["", " FOR UPDATE", " FOR SHARE OF u", " LIMIT 1"]))
            .prop_map(|(t, a, p, tail)| format!("SELECT * FROM {t}{a} WHERE {p}{tail}")),
        (table(), table(), predicate()).prop_map(|(a, b, p)| format!("SELECT * FROM {a} JOIN {b} ON {p}")),
        (table(), prop::collection::vec(column(), 1..3), value(), returning()).prop_map(|(t, cols, v, r)| {
            let values = vec![v; cols.len()].join(", ");
            format!("INSERT INTO {t} ({}) VALUES ({values}){r}", cols.join(", "))
        }),
        (table(), prop::sample::select(vec!["DO NOTHING", "(id) DO UPDATE SET name = EXCLUDED.name"]))
            .prop_map(|(t, c)| format!("INSERT INTO {t} (id, name) VALUES ($1, $2) ON CONFLICT {c}")),
        (table(), alias(), column(), value(), predicate(), returning())
            .prop_map(|(t, a, c, v, p, r)| format!("UPDATE {t}{a} SET {c} = {v} WHERE {p}{r}")),
        (table(), alias(), predicate(), returning())
            .prop_map(|(t, a, p, r)| format!("UPDATE {t}{a} SET email = a.email FROM accounts a WHERE {p}{r}")),
        (table(), alias(), predicate(), returning())
            .prop_map(|(t, a, p, r)| format!("DELETE FROM {t}{a} WHERE {p}{r}")),
        (table(), predicate(), returning())
            .prop_map(|(t, p, r)| format!("DELETE FROM {t} USING accounts a WHERE {p}{r}")),
        (table(), table()).prop_map(|(a, b)| format!("TRUNCATE {a}, {b}")),
        (table(), statement_cte_body()).prop_map(|(t, body)| format!("WITH c AS ({body}) SELECT * FROM c, {t}")),
        table().prop_map(|t| format!("COPY {t} TO STDOUT")),
        table().prop_map(|t| format!("COPY {t} FROM STDIN")),
        table().prop_map(|t| format!("ALTER TABLE {t} ADD COLUMN z int")),
        table().prop_map(|t| format!("MERGE INTO {t} t USING s ON t.id = s.id WHEN MATCHED THEN DELETE")),
    ]
}

fn statement_cte_body() -> impl Strategy<Value = String> {
    prop_oneof![
        table().prop_map(|t| format!("SELECT id FROM {t}")),
        table().prop_map(|t| format!("DELETE FROM {t} RETURNING id")),
        table().prop_map(|t| format!("UPDATE {t} SET name = 'x' RETURNING id")),
    ]
}

fn check(sql: &str, migration_route: MigrationRoute) -> Result<(), TestCaseError> {
    let (rewriter, rules) = rewriter();
    let route = Route::uniform(rules, migration_route);
    let plan = rewriter.rewrite(sql, &route);
    if let Plan::Rewritten { sql: out, statements, .. } = &*plan {
        let parsed = dualwrite_rules::parse_rewritten(out)
            .map_err(|e| TestCaseError::fail(format!("`{sql}` -> `{out}` does not parse: {e}")))?;
        prop_assert_eq!(parsed, statements.len(), "`{}` -> `{}`", sql, out);
    }
    if let Plan::Rejected(r) = &*plan {
        prop_assert_eq!(r.sqlstate, "0A000");
        prop_assert!(r.message.contains(&r.migration));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn generated_statements_rewrite_to_sql_that_parses(
        statements in prop::collection::vec(statement(), 1..3),
        route in route(),
    ) {
        check(&statements.join("; "), route)?;
    }

    #[test]
    fn arbitrary_text_naming_a_table_never_panics(
        before in "\\PC{0,40}",
        after in "\\PC{0,40}",
        route in route(),
    ) {
        check(&format!("{before} users {after}"), route)?;
        check(&format!("SELECT {before} FROM users WHERE {after}"), route)?;
        check(&format!("UPDATE users SET {before} WHERE {after}"), route)?;
    }
}
