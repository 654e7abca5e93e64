//! Runs tests/corpus/statements.sql: every statement gets its expected outcome, and every rewritten
//! statement parses again (with its comments) as the same number of statements.

use std::sync::Arc;

use dualwrite_rules::corpus::{parse, Expected};
use dualwrite_rules::{Plan, Rewriter, RuleSet};

const RULES: &str = concat!(
    include_str!("../examples/users_split_name.toml"),
    "\n",
    include_str!("../examples/orders_amount_numeric.toml")
);
const CORPUS: &str = include_str!("corpus/statements.sql");

#[test]
fn corpus_statements_get_their_expected_outcome() {
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let entries = parse(CORPUS, &rules).unwrap();
    assert!(entries.len() >= 300, "corpus has {} statements", entries.len());
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 1024);
    let mut failures = Vec::new();
    for entry in &entries {
        let plan = rewriter.rewrite(&entry.sql, &entry.route_for(&rules));
        let got = Expected::of(&plan);
        if got != entry.expected {
            let detail = match &*plan {
                Plan::Rewritten { sql, .. } => sql.clone(),
                Plan::Rejected(r) => r.message.clone(),
                Plan::PassThrough => String::new(),
            };
            failures.push(format!(
                "line {}: expected {:?}, got {:?}: {}\n    {}",
                entry.line, entry.expected, got, entry.sql, detail
            ));
        }
        if let Plan::Rewritten { sql, statements, .. } = &*plan {
            match dualwrite_rules::parse_rewritten(sql) {
                Ok(parsed) => {
                    if parsed != statements.len() {
                        failures.push(format!(
                            "line {}: {} statements but {} transforms",
                            entry.line,
                            parsed,
                            statements.len()
                        ));
                    }
                }
                Err(e) => failures.push(format!("line {}: rewritten SQL does not parse: {e}\n    {sql}", entry.line)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus statements failed:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}
