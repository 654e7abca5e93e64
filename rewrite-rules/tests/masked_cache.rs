//! The plan cache by statement shape: a statement whose plan comes from a cached template (another
//! statement with the same text but other literal values was planned first) gets exactly the plan a full
//! parse and rewrite of it gives. Checked over the whole corpus with random literal values of every kind
//! (quotes, backslashes, non-ASCII text, leading zeros), and for the pgbench-like statements that must hit.

use std::sync::Arc;

use dualwrite_rules::corpus::{parse, CorpusEntry};
use dualwrite_rules::{MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side};
use proptest::prelude::*;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

const RULES: &str = concat!(
    include_str!("../examples/users_split_name.toml"),
    "\n",
    include_str!("../examples/orders_amount_numeric.toml")
);
const CORPUS: &str = include_str!("corpus/statements.sql");

fn fixture() -> &'static (RuleSet, Vec<CorpusEntry>) {
    static F: std::sync::OnceLock<(RuleSet, Vec<CorpusEntry>)> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let rules = RuleSet::from_toml(RULES, "examples").unwrap();
        let entries = parse(CORPUS, &rules).unwrap();
        (rules, entries)
    })
}

/// A small deterministic generator, so a failing case prints the seed that reproduces it.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next() as usize % from.len()]
    }

    fn digits(&mut self, max: u64) -> String {
        let n = 1 + self.next() % max;
        (0..n).map(|_| char::from(b'0' + (self.next() % 10) as u8)).collect()
    }

    /// String content; `dollar` leaves out `$` so the value cannot close its quote.
    fn text(&mut self, dollar: bool) -> String {
        let n = self.next() % 6;
        let pieces: &[&str] = if dollar {
            &["a", "'", "\\", "é", " ", "x1", "\n"]
        } else {
            &["a", "'", "\\", "é", " ", "$", "x1", "''"]
        };
        (0..n).map(|_| self.pick(pieces)).collect()
    }
}

/// `sql` with every number and string literal replaced by a random one of the same kind.
fn with_random_literals(sql: &str, gen: &mut Gen) -> String {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else { return sql.to_owned() };
    let mut out = String::new();
    let mut at = 0;
    for token in tokens {
        let literal = match &token.token {
            Token::Number(n, false) if n.bytes().all(|b| b.is_ascii_digit()) => gen.digits(12),
            Token::Number(n, false) if n.contains('.') && !n.contains('e') => {
                format!("{}.{}", gen.digits(6), gen.digits(4))
            }
            Token::SingleQuotedString(_) => format!("'{}'", gen.text(false).replace('\'', "''")),
            Token::NationalStringLiteral(_) => format!("N'{}'", gen.text(false).replace('\'', "''")),
            Token::EscapedStringLiteral(_) => {
                format!("E'{}'", gen.text(false).replace('\\', "\\\\").replace('\'', "\\'"))
            }
            Token::DollarQuotedString(d) => {
                let tag = d.tag.clone().unwrap_or_default();
                format!("${tag}${}${tag}$", gen.text(true))
            }
            _ => continue,
        };
        let start = byte_offset(sql, token.span.start);
        out.push_str(&sql[at..start]);
        out.push_str(&literal);
        at = byte_offset(sql, token.span.end);
    }
    out.push_str(&sql[at..]);
    out
}

fn byte_offset(sql: &str, location: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if (line, column) == (location.line, location.column) {
            return i;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    sql.len()
}

/// Plans `first` through the cache (making its shape's template), then checks that `second` gets from the
/// cache what a full rewrite gives it.
fn check(rewriter: &Rewriter, route: &Route, first: &str, second: &str) -> Result<(), String> {
    rewriter.rewrite(first, route);
    let cached = rewriter.rewrite(second, route);
    let full = rewriter.plan(second, route);
    if *cached != full {
        return Err(format!("after {first:?}\n  {second:?}\n  cached: {cached:?}\n  full:   {full:?}"));
    }
    Ok(())
}

#[test]
fn every_corpus_statement_gets_the_full_rewrite_from_the_shape_cache() {
    let (rules, entries) = fixture();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 4096);
    let mut failures = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let route = entry.route_for(rules);
        for round in 0..4u64 {
            let mut gen = Gen(i as u64 * 7919 + round);
            let first = with_random_literals(&entry.sql, &mut gen);
            let second = with_random_literals(&entry.sql, &mut gen);
            if let Err(e) = check(&rewriter, &route, &first, &second) {
                failures.push(format!("line {}: {e}", entry.line));
            }
        }
    }
    assert!(entries.len() >= 300);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn shape_cache_equals_full_rewrite(index in 0usize..10_000, seed_a: u64, seed_b: u64) {
        let (rules, entries) = fixture();
        let entry = &entries[index % entries.len()];
        let rewriter = Rewriter::new(Arc::new(rules.clone()), 64);
        let first = with_random_literals(&entry.sql, &mut Gen(seed_a));
        let second = with_random_literals(&entry.sql, &mut Gen(seed_b));
        if let Err(e) = check(&rewriter, &entry.route_for(rules), &first, &second) {
            prop_assert!(false, "line {}: {}", entry.line, e);
        }
    }
}

fn dual_write_route(rules: &RuleSet) -> Route {
    Route::uniform(rules, MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source: Side::Old })
}

#[test]
fn statements_differing_in_literals_share_one_plan_build() {
    let (rules, _) = fixture();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 64);
    let route = dual_write_route(rules);
    let statements = [
        "UPDATE users SET name = 'Ada Lovelace' WHERE id = 1",
        "UPDATE users SET name = 'O''Brien' WHERE id = 20",
        "UPDATE users SET name = E'back\\\\slash \\'quoted\\'' WHERE id = -3",
        "UPDATE users SET name = $$dollar 'quoted'$$ WHERE id = 4",
        "UPDATE users SET name = 'zoë'::text WHERE id = '5'::int",
    ];
    let mut rewritten = 0;
    for sql in statements {
        let cached = rewriter.rewrite(sql, &route);
        assert_eq!(*cached, rewriter.plan(sql, &route), "{sql}");
        rewritten += usize::from(matches!(*cached, Plan::Rewritten { writes: true, .. }));
    }
    assert_eq!(rewritten, statements.len());
    // Three shapes: plain, E'' and $$ strings are literals of different kinds; the cast does not change the
    // shape of `'5'::int` but is one more token, so it is a fourth.
    let stats = rewriter.cache_stats();
    assert_eq!((stats.misses, stats.hits), (4, 1), "{stats:?}");
}

#[test]
fn a_literal_the_parser_reads_keeps_its_shape_out_of_the_template_cache() {
    let (rules, _) = fixture();
    let rewriter = Rewriter::new(Arc::new(rules.clone()), 64);
    let route = dual_write_route(rules);
    // varchar(n) is read as an integer and printed back: `010` comes out as `10`.
    for sql in ["SELECT name::varchar(10) FROM users WHERE id = 1", "SELECT name::varchar(010) FROM users WHERE id = 2"]
    {
        assert_eq!(*rewriter.rewrite(sql, &route), rewriter.plan(sql, &route), "{sql}");
    }
}
