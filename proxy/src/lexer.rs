//! Tokens for the proxy's own small grammars (control SQL, `dualwrite.version` statements, transaction
//! control): sqlparser's PostgreSQL tokenizer with whitespace and comments dropped, statements split at
//! top-level semicolons, and token positions turned into the 1-based character offsets Postgres reports.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::sql_error::SqlError;

/// One significant token and its 1-based character position in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Lexeme {
    pub token: Token,
    pub position: usize,
}

impl Lexeme {
    /// True for an unquoted word equal to `keyword` ignoring ASCII case (quoted identifiers are never keywords).
    pub fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
    }

    /// How the token is quoted in an error message, like Postgres's `at or near "x"`.
    pub fn describe(&self) -> String {
        format!("\"{}\"", self.token)
    }
}

/// Tokenize `sql` into its significant tokens (no whitespace, no comments). A lexical error (e.g. an
/// unterminated quoted string) is a 42601.
pub fn lex(sql: &str) -> Result<Vec<Lexeme>, SqlError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().map_err(|e| {
        let err = SqlError::syntax(e.message);
        match char_position(sql, e.location) {
            Some(p) => err.at(p),
            None => err,
        }
    })?;
    let positions = LinePositions::new(sql);
    Ok(tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .map(|TokenWithSpan { token, span }| Lexeme { position: positions.of(span.start), token })
        .collect())
}

/// Split significant tokens into statements at top-level `;` (the tokenizer already keeps semicolons inside
/// strings, quoted identifiers, dollar quotes and comments out of the way). Empty statements are dropped.
pub fn split_statements(lexemes: Vec<Lexeme>) -> Vec<Vec<Lexeme>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    for lexeme in lexemes {
        if lexeme.token == Token::SemiColon {
            if !current.is_empty() {
                statements.push(std::mem::take(&mut current));
            }
        } else {
            current.push(lexeme);
        }
    }
    if !current.is_empty() {
        statements.push(current);
    }
    statements
}

/// The first keyword of `sql` after whitespace and comments (`--` lines and nested `/* */` blocks), without
/// tokenizing the rest: the cheap check the session runs on every statement.
pub fn first_word(sql: &str) -> Option<&str> {
    // The word is ASCII letters, digits and underscores: its bytes are the string's own.
    first_word_bytes(sql.as_bytes()).and_then(|word| std::str::from_utf8(word).ok())
}

/// [`first_word`] of text not known to be UTF-8 (a statement as the client sent it), without checking the
/// rest of it.
pub fn first_word_bytes(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes[i..].starts_with(b"--") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            if depth != 0 {
                return None;
            }
        } else {
            break;
        }
    }
    let start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    (i > start).then(|| &bytes[start..i])
}

/// Byte offsets of each line start, to turn the tokenizer's (line, column) into a character position.
struct LinePositions {
    /// Character offset (0-based) at which each line starts.
    line_starts: Vec<usize>,
}

impl LinePositions {
    fn new(sql: &str) -> Self {
        let mut line_starts = vec![0];
        for (chars, c) in sql.chars().enumerate() {
            if c == '\n' {
                line_starts.push(chars + 1);
            }
        }
        LinePositions { line_starts }
    }

    fn of(&self, location: Location) -> usize {
        let line = (location.line.max(1) - 1) as usize;
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        start + location.column.max(1) as usize
    }
}

fn char_position(sql: &str, location: Location) -> Option<usize> {
    (location.line > 0).then(|| LinePositions::new(sql).of(location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_characters_across_lines() {
        let lx = lex("a\n  bé c").unwrap();
        let positions: Vec<usize> = lx.iter().map(|l| l.position).collect();
        assert_eq!(positions, vec![1, 5, 8]);
    }

    #[test]
    fn comments_and_whitespace_are_dropped() {
        let lx = lex("/* x */ dualwrite -- y\n status").unwrap();
        assert_eq!(lx.len(), 2);
        assert!(lx[0].is_keyword("DUALWRITE"));
        assert!(lx[1].is_keyword("status"));
    }

    #[test]
    fn quoted_words_are_not_keywords() {
        let lx = lex("\"status\"").unwrap();
        assert!(!lx[0].is_keyword("status"));
    }

    #[test]
    fn split_keeps_semicolons_inside_strings() {
        let stmts = split_statements(lex("set a = 'x;y'; ; select $$;$$;").unwrap());
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].len(), 4);
    }

    #[test]
    fn unterminated_string_is_a_syntax_error() {
        let err = lex("select 'abc").unwrap_err();
        assert_eq!(err.code, "42601");
    }

    #[test]
    fn first_word_skips_comments() {
        assert_eq!(first_word("  -- c\n /* a /* nested */ b */ DualWrite status"), Some("DualWrite"));
        assert_eq!(first_word("/* unterminated"), None);
        assert_eq!(first_word("  ;"), None);
        assert_eq!(first_word(""), None);
        assert_eq!(first_word("select_1 x"), Some("select_1"));
    }
}
