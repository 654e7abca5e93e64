//! The SQL that drops prepared statements, as transaction pooling must follow it. Under transaction
//! pooling a client's named statements are the proxy's bookkeeping ([`super::statements`]) over statements
//! the server connections hold under the proxy's names, shared by every client of a connection. So:
//!
//! - `DEALLOCATE [PREPARE] ALL` and `DISCARD ALL` run on the server connection (pinned or not) and drop
//!   everything it holds, other clients' statements included. The pooler sees them by their
//!   CommandComplete tag ([`is_reset_tag`], as pgbouncer 1.22 does), which the server sends only when the
//!   statement ran; it then forgets what the connection held and drops the client's own statements that
//!   were prepared before the statement was sent ([`resets_in`] counts them at that moment, so that a
//!   statement prepared behind it in the same pipeline survives, as in Postgres).
//! - `DEALLOCATE [PREPARE] name` of a statement the client prepared with a Parse would reach the server under
//!   the client's name, which the server does not know. It is answered by the proxy instead, as a Close of
//!   that statement is ([`deallocated_name`]): the client's name is freed, the server keeps the statement
//!   for its other clients.
//!
//! Pure: SQL text and frames in, answers out.

use std::sync::LazyLock;

use sqlparser::tokenizer::Token;

use super::pin_words::WordSet;
use crate::lexer::{self, Lexeme};

/// The words every statement this module looks for holds: text after a `;` is tokenized only when it holds
/// one.
static WORDS: LazyLock<WordSet> = LazyLock::new(|| WordSet::new(&["deallocate", "discard"]));

/// How many statements of `sql` (one Query string, or one Parse) drop every prepared statement of the
/// connection: `DEALLOCATE [PREPARE] ALL` and `DISCARD ALL`.
pub fn resets_in(sql: &[u8]) -> usize {
    statements(sql).iter().filter(|statement| is_reset(statement)).count()
}

/// The statement name of `sql` when it is one `DEALLOCATE [PREPARE] name` and nothing else, as the server
/// would read the name: an unquoted name folded to lower case, a quoted one as written.
pub fn deallocated_name(sql: &[u8]) -> Option<Vec<u8>> {
    if !starts_with_one_of(sql, &["deallocate"]) {
        return None;
    }
    let statements = tokenized(sql);
    let [statement] = statements.as_slice() else { return None };
    let rest = deallocate_target(statement)?;
    let [name] = rest else { return None };
    match &name.token {
        Token::Word(word) if word.quote_style.is_none() && !name.is_keyword("all") => {
            Some(word.value.to_ascii_lowercase().into_bytes())
        }
        Token::Word(word) if word.quote_style == Some('"') => Some(word.value.clone().into_bytes()),
        _ => None,
    }
}

/// Whether `frame` is the CommandComplete of a statement that dropped every prepared statement of the
/// connection.
pub fn is_reset_tag(frame: &[u8]) -> bool {
    matches!(frame.get(5..), Some(b"DEALLOCATE ALL\0" | b"DISCARD ALL\0"))
}

/// The statements of `sql` when one of them may be a `DEALLOCATE` or a `DISCARD`: the first one starts with
/// either word, or a `;` is followed by one of them somewhere. This runs on every statement a
/// transaction-pooled client sends, so the common case (a statement starting otherwise, with no `;` inside)
/// costs a look at its first letter and a `memchr`, not even a UTF-8 check of the rest. None when the text
/// cannot be tokenized (the server refuses it, and it runs nothing).
fn statements(sql: &[u8]) -> Vec<Vec<Lexeme>> {
    let later = memchr::memchr(b';', sql).is_some_and(|semicolon| WORDS.found(&sql[semicolon..], u32::MAX) != 0);
    if !later && !starts_with_one_of(sql, &["deallocate", "discard"]) {
        return Vec::new();
    }
    tokenized(sql)
}

/// The first letter of every word this module looks for (`DEALLOCATE`, `DISCARD`).
const FIRST_LETTER: u8 = b'd';

/// Whether the first word of `sql` is one of `words` (lower case, each starting with [`FIRST_LETTER`]).
#[inline]
fn starts_with_one_of(sql: &[u8], words: &[&str]) -> bool {
    debug_assert!(words.iter().all(|w| w.as_bytes()[0] == FIRST_LETTER));
    // Nearly every statement starts right away with its first word, whose first letter settles it: one
    // comparison, where looking through `words` was about 45 instructions, twice per statement.
    if sql.first().is_some_and(|b| b.is_ascii_alphabetic() && b.to_ascii_lowercase() != FIRST_LETTER) {
        return false;
    }
    lexer::first_word_bytes(sql).is_some_and(|first| words.iter().any(|w| first.eq_ignore_ascii_case(w.as_bytes())))
}

fn tokenized(sql: &[u8]) -> Vec<Vec<Lexeme>> {
    let Ok(text) = std::str::from_utf8(sql) else { return Vec::new() };
    match lexer::lex(text) {
        Ok(lexemes) => lexer::split_statements(lexemes),
        Err(_) => Vec::new(),
    }
}

/// What follows `DEALLOCATE [PREPARE]` in `statement`, if it is a DEALLOCATE.
fn deallocate_target(statement: &[Lexeme]) -> Option<&[Lexeme]> {
    let (first, rest) = statement.split_first()?;
    if !first.is_keyword("deallocate") {
        return None;
    }
    Some(match rest.split_first() {
        Some((prepare, after)) if prepare.is_keyword("prepare") => after,
        _ => rest,
    })
}

fn is_reset(statement: &[Lexeme]) -> bool {
    match statement {
        [discard, all] if discard.is_keyword("discard") => all.is_keyword("all"),
        _ => matches!(deallocate_target(statement), Some([all]) if all.is_keyword("all")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    #[test]
    fn every_statement_that_drops_all_prepared_statements_is_counted() {
        assert_eq!(resets_in(b"DEALLOCATE ALL"), 1);
        assert_eq!(resets_in(b"deallocate prepare all;"), 1);
        assert_eq!(resets_in(b"/* reset */ Discard All"), 1);
        assert_eq!(resets_in(b"DEALLOCATE ALL; SELECT 1; DISCARD ALL"), 2);
        assert_eq!(resets_in(b"SELECT ';'; DISCARD ALL"), 1, "after a semicolon in a string too");
        assert_eq!(resets_in(b"-- first\n/* a /* nested */ comment */ DEALLOCATE ALL"), 1);
        assert_eq!(resets_in(b"SELECT 1"), 0);
        for other in [
            "DISCARD PLANS",
            "DISCARD TEMP",
            "DEALLOCATE s1",
            "DEALLOCATE \"all\"",
            "SELECT 'DEALLOCATE ALL'",
            "-- DISCARD ALL\nSELECT 1",
            "SELECT discard, deallocate FROM t",
            "DEALLOCATE ALL 'unterminated",
        ] {
            assert_eq!(resets_in(other.as_bytes()), 0, "{other}");
        }
    }

    #[test]
    fn a_single_deallocate_names_its_statement_as_the_server_reads_the_name() {
        assert_eq!(deallocated_name(b"DEALLOCATE s1"), Some(b"s1".to_vec()));
        assert_eq!(deallocated_name(b"deallocate prepare PDO_STMT_01;"), Some(b"pdo_stmt_01".to_vec()));
        assert_eq!(deallocated_name(b"DEALLOCATE \"Mixed Case\""), Some(b"Mixed Case".to_vec()));
        assert_eq!(deallocated_name(b"DEALLOCATE \"all\""), Some(b"all".to_vec()), "a quoted name, not ALL");
        for other in ["DEALLOCATE ALL", "DEALLOCATE s1; SELECT 1", "DEALLOCATE s1 s2", "DEALLOCATE 'x'", "SELECT 1"] {
            assert_eq!(deallocated_name(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn the_tags_of_a_reset_are_recognised_and_no_other() {
        assert!(is_reset_tag(&messages::command_complete("DEALLOCATE ALL")));
        assert!(is_reset_tag(&messages::command_complete("DISCARD ALL")));
        assert!(!is_reset_tag(&messages::command_complete("DEALLOCATE")));
        assert!(!is_reset_tag(&messages::command_complete("DISCARD PLANS")));
        assert!(!is_reset_tag(&messages::command_complete("SELECT 1")));
        assert!(!is_reset_tag(b"C"));
    }
}
