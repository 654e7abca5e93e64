//! Literal masking for the plan cache. Simple-protocol clients inline their values into the SQL text, so
//! without this every execution of the same statement would be a new cache key, parsed and rewritten
//! again. A statement's *shape* is its text with each number and string literal replaced by a sentinel of
//! the same token kind; the plan of the shape, split at the sentinels, is a [`Template`] into which each
//! statement of that shape splices its own literals, printed as the AST printer prints them.
//!
//! The rewriter never decides by a literal's value, but the parser reads a few literals (type modifiers
//! as integers, COPY options as single characters) and some printers reprint them. So a shape is only
//! templated after checking, on its first statement, that splicing reproduces the full rewrite of both that
//! statement and a probe of the same shape with awkward values (quotes, backslashes, a leading zero); any
//! difference leaves the shape to the exact-text cache.

use std::ops::Range;

use sqlparser::ast::{DollarQuotedString, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// Digits every sentinel carries; a statement whose text contains them anyway is never masked.
const MARK: &str = "48151623420";
/// Sentinels carry a 6-digit literal index.
const MAX_LITERALS: usize = 999_999;
/// Inner value of every string probe.
const PROBE_STRING: &str = "a'b\\c";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Digits only (at most 18, so any integer parse of the parser accepts sentinel and value alike).
    Integer,
    /// `digits.digits`.
    Decimal,
    Quoted,
    /// `E'...'`
    Escaped,
    /// `$tag$...$tag$`
    Dollar(Option<String>),
    /// `N'...'`
    National,
}

impl Kind {
    fn of(token: &Token) -> Option<(Kind, &str)> {
        let digits = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        match token {
            Token::Number(n, false) if digits(n) => Some((Kind::Integer, n)),
            Token::Number(n, false) => {
                let (int, frac) = n.split_once('.')?;
                (digits(int) && digits(frac)).then_some((Kind::Decimal, n.as_str()))
            }
            Token::SingleQuotedString(s) => Some((Kind::Quoted, s)),
            Token::EscapedStringLiteral(s) => Some((Kind::Escaped, s)),
            Token::NationalStringLiteral(s) => Some((Kind::National, s)),
            Token::DollarQuotedString(d) => Some((Kind::Dollar(d.tag.clone()), &d.value)),
            _ => None,
        }
    }

    /// The literal with inner value `value` as the AST printer prints it.
    fn printed(&self, value: &str) -> String {
        let value = value.to_owned();
        match self {
            Kind::Integer | Kind::Decimal => Value::Number(value, false),
            Kind::Quoted => Value::SingleQuotedString(value),
            Kind::Escaped => Value::EscapedStringLiteral(value),
            Kind::National => Value::NationalStringLiteral(value),
            Kind::Dollar(tag) => Value::DollarQuotedString(DollarQuotedString { value, tag: tag.clone() }),
        }
        .to_string()
    }

    fn sentinel_value(&self, index: usize) -> String {
        match self {
            Kind::Integer => format!("{MARK}1{index:06}"),
            Kind::Decimal => format!("{MARK}3{index:06}.5"),
            _ => format!("dw{MARK}2{index:06}"),
        }
    }

    fn probe_value(&self) -> &'static str {
        match self {
            Kind::Integer => "07",
            Kind::Decimal => "0.250",
            _ => PROBE_STRING,
        }
    }

    /// Source text of a literal of this kind with inner value `value` (numbers are their own source).
    fn source(&self, value: &str) -> String {
        match self {
            Kind::Integer | Kind::Decimal => value.to_owned(),
            Kind::Quoted => format!("'{}'", value.replace('\'', "''")),
            Kind::National => format!("N'{}'", value.replace('\'', "''")),
            Kind::Escaped => format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")),
            Kind::Dollar(tag) => {
                let tag = tag.as_deref().unwrap_or("");
                format!("${tag}${value}${tag}$")
            }
        }
    }
}

/// The literals of one statement.
#[derive(Debug)]
pub(crate) struct Masked {
    /// The statement with every literal replaced by its sentinel: the cache key.
    pub shape: String,
    /// Each literal as the AST printer prints it, in text order.
    pub printed: Vec<String>,
    kinds: Vec<Kind>,
    /// Byte ranges of the literals in the statement, and the text between them.
    ranges: Vec<Range<usize>>,
}

/// Masks the literals of `sql`; `None` when it has none (or cannot be masked: it does not tokenize, or
/// contains the sentinel digits).
pub(crate) fn mask(sql: &str) -> Option<Masked> {
    if sql.contains(MARK) {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let mut offsets = Offsets::new(sql);
    let mut kinds = Vec::new();
    let mut printed = Vec::new();
    let mut ranges = Vec::new();
    for token in &tokens {
        let Some((kind, value)) = Kind::of(&token.token) else { continue };
        let start = offsets.byte(token.span.start)?;
        let end = offsets.byte(token.span.end)?;
        printed.push(kind.printed(value));
        kinds.push(kind);
        ranges.push(start..end);
    }
    if kinds.is_empty() || kinds.len() > MAX_LITERALS {
        return None;
    }
    let mut masked = Masked { shape: String::new(), printed, kinds, ranges };
    masked.shape = masked.with_literals(sql, |i, kind| kind.source(&kind.sentinel_value(i)));
    Some(masked)
}

impl Masked {
    /// `sql` (the masked statement) with literal `i` written as `literal(i, kind)`.
    fn with_literals(&self, sql: &str, literal: impl Fn(usize, &Kind) -> String) -> String {
        let mut out = String::with_capacity(sql.len() + 16 * self.kinds.len());
        let mut at = 0;
        for (i, (range, kind)) in self.ranges.iter().zip(&self.kinds).enumerate() {
            out.push_str(&sql[at..range.start]);
            out.push_str(&literal(i, kind));
            at = range.end;
        }
        out.push_str(&sql[at..]);
        out
    }

    /// The statement of this shape with awkward literal values, to check a template against.
    pub fn probe(&self, sql: &str) -> (String, Vec<String>) {
        let text = self.with_literals(sql, |_, kind| kind.source(kind.probe_value()));
        let printed = self.kinds.iter().map(|k| k.printed(k.probe_value())).collect();
        (text, printed)
    }

    /// Splits the SQL the shape was rewritten to at its sentinels; `None` if a sentinel digit run is not one
    /// of this shape's sentinels printed whole.
    pub fn template(&self, rewritten: &str) -> Option<Template> {
        let sentinels: Vec<String> =
            self.kinds.iter().enumerate().map(|(i, k)| k.printed(&k.sentinel_value(i))).collect();
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = rewritten;
        while let Some(at) = rest.find(MARK) {
            let digits = rest.get(at + MARK.len() + 1..at + MARK.len() + 7)?;
            let index: usize = digits.parse().ok()?;
            let sentinel = sentinels.get(index)?;
            let lead = sentinel.find(MARK)?;
            let start = at.checked_sub(lead)?;
            if rest.get(start..start + sentinel.len())? != sentinel {
                return None;
            }
            text.push_str(&rest[..start]);
            pieces.push(Piece { text: std::mem::take(&mut text), literal: index });
            rest = &rest[start + sentinel.len()..];
        }
        Some(Template { pieces, tail: rest.to_owned() })
    }
}

/// Rewritten SQL with holes for a shape's literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
    tail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    text: String,
    literal: usize,
}

impl Template {
    /// The rewritten SQL for a statement whose literals print as `printed`.
    pub fn fill(&self, printed: &[String]) -> String {
        let len = self.tail.len() + self.pieces.iter().map(|p| p.text.len() + printed[p.literal].len()).sum::<usize>();
        let mut out = String::with_capacity(len);
        for piece in &self.pieces {
            out.push_str(&piece.text);
            out.push_str(&printed[piece.literal]);
        }
        out.push_str(&self.tail);
        out
    }
}

/// Turns the tokenizer's (line, column) locations, visited in increasing order, into byte offsets.
struct Offsets<'a> {
    sql: &'a str,
    byte: usize,
    at: Location,
}

impl<'a> Offsets<'a> {
    fn new(sql: &'a str) -> Self {
        Offsets { sql, byte: 0, at: Location { line: 1, column: 1 } }
    }

    fn byte(&mut self, target: Location) -> Option<usize> {
        if (target.line, target.column) < (self.at.line, self.at.column) {
            return None;
        }
        let mut chars = self.sql[self.byte..].chars();
        while (self.at.line, self.at.column) < (target.line, target.column) {
            let c = chars.next()?;
            self.byte += c.len_utf8();
            if c == '\n' {
                self.at.line += 1;
                self.at.column = 1;
            } else {
                self.at.column += 1;
            }
        }
        Some(self.byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literals(sql: &str) -> Vec<String> {
        mask(sql).map(|m| m.printed).unwrap_or_default()
    }

    #[test]
    fn masks_numbers_and_strings_of_every_kind() {
        let sql = "SELECT -5, 1.25, 'it''s', E'a\\nb\\'c', $$x'y$$, $q$z$q$, N'n', '1'::int, 1e5, 10::varchar(3)";
        let m = mask(sql).unwrap();
        assert_eq!(
            m.printed,
            vec!["5", "1.25", "'it''s'", "E'a\\nb\\'c'", "$$x'y$$", "$q$z$q$", "N'n'", "'1'", "10", "3"]
        );
        // The exponent form stays in the shape; every other literal is a sentinel of its own kind.
        assert!(m.shape.starts_with("SELECT -481516234201000000, 481516234203000001.5, 'dw481516234202000002', E'dw"));
        assert!(m.shape.contains("$$dw481516234202000004$$, $q$dw481516234202000005$q$, N'dw"));
        assert!(m.shape.contains(", 1e5, 481516234201000008::varchar(481516234201000009)"), "{}", m.shape);
    }

    #[test]
    fn same_shape_for_different_values_and_multibyte_text() {
        let a = mask("UPDATE t SET name = 'zoë', n = 1 WHERE id = 42").unwrap();
        let b = mask("UPDATE t SET name = 'x', n = 99999 WHERE id = 7").unwrap();
        assert_eq!(a.shape, b.shape);
        assert_eq!(literals("SELECT 'é' ,\n  'ü''s'"), vec!["'é'", "'ü''s'"]);
    }

    #[test]
    fn statements_without_literals_or_with_the_sentinel_digits_are_not_masked() {
        assert!(mask("SELECT * FROM t WHERE id = $1").is_none());
        assert!(mask("SELECT 481516234201000000, 1").is_none());
        assert!(mask("SELECT 'unterminated").is_none());
    }

    #[test]
    fn templates_split_at_sentinels_and_refill() {
        let m = mask("SELECT 'a''b', 3").unwrap();
        let rewritten = "WITH x AS (SELECT 'dw481516234202000000' AS s, 481516234201000001) SELECT 481516234201000001";
        let t = m.template(rewritten).unwrap();
        assert_eq!(t.fill(&m.printed), "WITH x AS (SELECT 'a''b' AS s, 3) SELECT 3");
        // A sentinel printed differently (here: inside a longer string) is not a template.
        assert!(m.template("SELECT 'xdw481516234202000000'").is_none());
        assert!(m.template("SELECT 'dw481516234202000000x'").is_none());
        assert!(m.template("SELECT 481516234201000009").is_none());
    }

    #[test]
    fn probes_use_awkward_values_of_each_kind() {
        let sql = "SELECT 1, 'x', E'y', $t$z$t$";
        let m = mask(sql).unwrap();
        let (text, printed) = m.probe(sql);
        assert_eq!(text, "SELECT 07, 'a''b\\c', E'a\\'b\\\\c', $t$a'b\\c$t$");
        assert_eq!(literals(&text), printed);
    }
}
