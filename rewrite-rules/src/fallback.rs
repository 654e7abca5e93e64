//! When sqlparser cannot parse a statement (it rejects valid Postgres such as `FOR NO KEY UPDATE`,
//! `ON CONFLICT` on an expression, `WHERE CURRENT OF`, `ROWS FROM`), its tokenizer still tells which
//! migrated tables the text names and whether each statement is a plain read. A read that needs no rewrite
//! (an old-version session reading the old table) passes through untouched; anything else naming an active
//! migrated table is refused rather than risk a write that misses the shadow.

use std::collections::BTreeSet;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::compiled::Compiled;
use crate::model::Phase;
use crate::names::TableName;
use crate::plan::{RejectReason, Rejection};
use crate::route::{Route, Side};

/// Active migrations (phase not `off`) whose table a name among `tokens` denotes in a session on `route`: a
/// word equal to the table's name, qualified by the table's schema, or unqualified where the session's
/// unqualified name reaches the migrated table.
pub(crate) fn mentioned_migrations(compiled: &Compiled, route: &Route, tokens: &[Token]) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    for reference in table_references(tokens) {
        for (index, m) in compiled.migrations.iter().enumerate() {
            let reaches = route.unqualified_reaches(index);
            // A merge's tables are its sources (`table` is the first of them).
            let denotes = reference.denotes(&m.table, reaches) || m.source_of(&reference, reaches).is_some();
            if route.get(index).phase != Phase::Off && denotes {
                found.insert(index);
            }
        }
    }
    found
}

/// The first migration keeping both tables in step one of whose shadows a name among `tokens` denotes.
fn mentioned_kept_shadow(compiled: &Compiled, route: &Route, tokens: &[Token]) -> Option<usize> {
    table_references(tokens).iter().find_map(|reference| compiled.kept_shadow_of(reference, route))
}

/// Every word of `tokens` as the table name it would be, with the schema written before it.
fn table_references(tokens: &[Token]) -> Vec<TableName> {
    let decoded = with_unicode_identifiers_decoded(tokens);
    let code: Vec<&Token> = decoded.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut references = Vec::new();
    for (at, token) in code.iter().enumerate() {
        let Token::Word(word) = token else { continue };
        let name = catalog_spelling(word);
        // `schema . name`: the word before the period is the qualifier.
        let qualifier = match (at.checked_sub(2).map(|i| code[i]), at.checked_sub(1).map(|i| code[i])) {
            (Some(Token::Word(schema)), Some(Token::Period)) => Some(catalog_spelling(schema)),
            _ => None,
        };
        references.push(TableName { schema: qualifier, name });
    }
    references
}

/// `tokens` with each Unicode-escaped identifier (`U&"\0075sers"`, optionally `UESCAPE '!'`), which
/// sqlparser reads as the word `U`, `&` and a quoted word, as the one quoted word Postgres reads (`users`).
/// Only `U&"` written together is one (`u & "x"` is an operator between two columns). One whose escapes
/// Postgres would refuse is left as it is: the server refuses the statement.
fn with_unicode_identifiers_decoded(tokens: &[Token]) -> Vec<Token> {
    let code_after = |from: usize| (from..tokens.len()).find(|&i| !matches!(tokens[i], Token::Whitespace(_)));
    let mut out = Vec::with_capacity(tokens.len());
    let mut at = 0;
    while at < tokens.len() {
        if let (Token::Word(u), Some(Token::Ampersand), Some(Token::Word(quoted))) =
            (&tokens[at], tokens.get(at + 1), tokens.get(at + 2))
        {
            if u.quote_style.is_none() && u.value.eq_ignore_ascii_case("u") && quoted.quote_style == Some('"') {
                let keyword = code_after(at + 3);
                let literal = keyword.and_then(|k| code_after(k + 1));
                let uescape = match (keyword.map(|k| &tokens[k]), literal.map(|l| &tokens[l])) {
                    (Some(Token::Word(w)), Some(Token::SingleQuotedString(c)))
                        if w.quote_style.is_none() && w.keyword == Keyword::UESCAPE =>
                    {
                        Some(c.as_str())
                    }
                    _ => None,
                };
                let escape = match uescape.map(|c| c.chars().collect::<Vec<_>>()) {
                    None => Some('\\'),
                    Some(c) if c.len() == 1 => Some(c[0]),
                    Some(_) => None,
                };
                if let Some(value) = escape.and_then(|e| unescape_identifier(&quoted.value, e)) {
                    out.push(Token::Word(sqlparser::tokenizer::Word { value, ..quoted.clone() }));
                    at = match (uescape, literal) {
                        (Some(_), Some(l)) => l + 1,
                        _ => at + 3,
                    };
                    continue;
                }
            }
        }
        out.push(tokens[at].clone());
        at += 1;
    }
    out
}

/// The identifier a `U&"..."` body spells with `escape`: `<escape>XXXX`, `<escape>+XXXXXX` (hex code
/// points) and `<escape><escape>`; `None` where Postgres reports an invalid escape.
fn unescape_identifier(body: &str, escape: char) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != escape {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&escape) {
            chars.next();
            out.push(escape);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let hex: String = chars.by_ref().take(digits).collect();
        if hex.len() != digits {
            return None;
        }
        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
    }
    Some(out)
}

fn catalog_spelling(word: &sqlparser::tokenizer::Word) -> String {
    match word.quote_style {
        Some(_) => word.value.clone(),
        None => word.value.to_lowercase(),
    }
}

/// Decides a SQL string the parser rejected: `Ok(())` to pass it through, or the rejection.
pub(crate) fn decide_unparsed(
    compiled: &Compiled,
    route: &Route,
    sql: &str,
    parse_error: &str,
) -> Result<(), Rejection> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize();
    let tokens = match tokens {
        Ok(t) => t,
        Err(_) => {
            // Not even tokenizable (e.g. an unterminated string): Postgres will reject it too, unless a
            // migrated table is named, in which case we cannot tell what it would do.
            return match first_active_mentioned_by_text(compiled, route, sql) {
                Some(index) => Err(unparseable(compiled, index, parse_error)),
                None => Ok(()),
            };
        }
    };
    for statement in tokens.split(|t| *t == Token::SemiColon) {
        let code: Vec<&Token> = statement.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
        let mentioned = mentioned_migrations(compiled, route, statement);
        if !is_plain_read(&code) {
            // A write the parser cannot read may write a shadow itself (`refuse_shadow_write`).
            if let Some(index) = mentioned_kept_shadow(compiled, route, statement) {
                return Err(unparseable(compiled, index, parse_error));
            }
        }
        let Some(&first) = mentioned.iter().next() else { continue };
        let needs_rewrite = |i: &usize| {
            let r = route.get(*i);
            !(r.version == Side::Old && r.read_source == Side::Old)
        };
        if !is_plain_read(&code) {
            return Err(unparseable(compiled, first, parse_error));
        }
        if let Some(&index) = mentioned.iter().find(|i| needs_rewrite(i)) {
            return Err(unparseable(compiled, index, parse_error));
        }
    }
    Ok(())
}

fn unparseable(compiled: &Compiled, index: usize, parse_error: &str) -> Rejection {
    Rejection::new(&compiled.migrations[index].name, index, RejectReason::Unparseable, parse_error)
}

fn first_active_mentioned_by_text(compiled: &Compiled, route: &Route, sql: &str) -> Option<usize> {
    let lower = sql.to_lowercase();
    compiled
        .migrations
        .iter()
        .enumerate()
        .find(|(i, m)| {
            let named = |t: &TableName| lower.contains(&t.name.to_lowercase());
            let tables = std::iter::once(&m.table).chain(m.sources.iter().map(|s| &s.table)).chain(&m.shadows);
            route.get(*i).phase != Phase::Off && tables.into_iter().any(named)
        })
        .map(|(i, _)| i)
}

/// A statement that starts like a query and contains no keyword that writes or changes a table. `UPDATE`
/// is allowed only as a row-lock strength (`FOR UPDATE`, `FOR NO KEY UPDATE`).
fn is_plain_read(code: &[&Token]) -> bool {
    let keyword = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    };
    let first = code.iter().find(|t| !matches!(t, Token::LParen)).and_then(|t| keyword(t));
    if !matches!(first, Some(Keyword::SELECT | Keyword::VALUES | Keyword::TABLE | Keyword::WITH)) {
        return false;
    }
    for (i, token) in code.iter().enumerate() {
        match keyword(token) {
            Some(
                Keyword::INSERT
                | Keyword::DELETE
                | Keyword::MERGE
                | Keyword::TRUNCATE
                | Keyword::COPY
                | Keyword::CREATE
                | Keyword::ALTER
                | Keyword::DROP
                | Keyword::GRANT
                | Keyword::REVOKE
                | Keyword::INTO,
            ) => return false,
            Some(Keyword::UPDATE) => {
                let previous = i.checked_sub(1).and_then(|p| keyword(code[p]));
                if !matches!(previous, Some(Keyword::FOR | Keyword::KEY)) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// The comments before the first and after the last code token of `sql`, as written (sqlcommenter tags and
/// the like), so a rewritten statement can carry them.
pub(crate) fn edge_comments(sql: &str) -> (String, String) {
    if !sql.contains("--") && !sql.contains("/*") {
        return (String::new(), String::new());
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return (String::new(), String::new());
    };
    let is_comment = |t: &Token| {
        matches!(t, Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)))
    };
    let is_code = |t: &Token| !matches!(t, Token::Whitespace(_) | Token::SemiColon | Token::EOF);
    let Some(first_code) = tokens.iter().position(is_code) else { return (String::new(), String::new()) };
    let last_code = tokens.iter().rposition(is_code).unwrap_or(first_code);
    let collect = |slice: &[Token]| slice.iter().filter(|t| is_comment(t)).map(comment_text).collect::<String>();
    (collect(&tokens[..first_code]), collect(&tokens[last_code + 1..]))
}

fn comment_text(token: &Token) -> String {
    match token {
        Token::Whitespace(Whitespace::SingleLineComment { comment, prefix }) => {
            // A line comment must stay terminated by its newline.
            let mut text = format!("{prefix}{comment}");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
        Token::Whitespace(Whitespace::MultiLineComment(body)) => format!("/*{body}*/ "),
        _ => String::new(),
    }
}
