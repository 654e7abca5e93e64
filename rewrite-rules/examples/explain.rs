//! Prints the plan for each SQL statement given on the command line (or one per line on stdin):
//!
//! ```text
//! cargo run -p dualwrite-rules --example explain -- rewrite-rules/examples/users_split_name.toml \
//!     dual_write v1 v1 "UPDATE users SET name = \$1 WHERE id = \$2"
//! ```
//! Arguments: rules file, phase, the session's version, the read source's version, then SQL.

use std::io::BufRead;
use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: explain <rules.toml> <phase> <version> <read version> [sql...]");
        std::process::exit(2);
    }
    let text = std::fs::read_to_string(&args[0]).unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let rules = RuleSet::from_toml(&text, &args[0]).unwrap_or_else(|e| panic!("{e}"));
    let phase: Phase = args[1].parse().unwrap_or_else(|e| panic!("{e}"));
    let side = |v: &str| if rules.migrations[0].versions.new == v { Side::New } else { Side::Old };
    let route = Route::uniform(&rules, MigrationRoute { phase, version: side(&args[2]), read_source: side(&args[3]) });
    let rewriter = Rewriter::new(Arc::new(rules), 0);
    let mut sqls: Vec<String> = args[4..].to_vec();
    if sqls.is_empty() {
        sqls = std::io::stdin().lock().lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).collect();
    }
    for sql in sqls {
        match rewriter.plan(&sql, &route) {
            Plan::PassThrough => println!("PASS     {sql}"),
            Plan::Rewritten { sql: out, statements, .. } => println!("REWRITE  {out}\n         {statements:?}"),
            Plan::Rejected(r) => println!("REJECT   {sql}\n         {}\n         {:?}", r.message, r.reason),
        }
    }
}
