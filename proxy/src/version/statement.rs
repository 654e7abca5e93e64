//! Classifying statements that change or read a session's `dualwrite.version` or its transaction state:
//! `SET [SESSION|LOCAL] dualwrite.version {=|TO} {value|DEFAULT}`, `RESET dualwrite.version`, `RESET ALL`,
//! `DISCARD ALL`, `SHOW dualwrite.version`, and BEGIN / COMMIT / ROLLBACK / SAVEPOINT / RELEASE /
//! ROLLBACK TO / PREPARE TRANSACTION. Everything else is `Other`. Tokens come from sqlparser's tokenizer.

use std::borrow::Cow;

use sqlparser::tokenizer::Token;

use crate::lexer::{first_word, lex, split_statements, Lexeme};
use crate::sql_error::SqlError;

/// The value a SET gives the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `TO DEFAULT` / `RESET`: back to the value the session started with.
    Default,
    Value(String),
}

/// A statement as far as the session's version and transaction state are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatement {
    Set {
        local: bool,
        setting: Setting,
    },
    /// `RESET ALL` and `DISCARD ALL` (both return every setting to its session-start value).
    ResetAll,
    Show,
    Begin,
    Commit {
        chain: bool,
    },
    Rollback {
        chain: bool,
    },
    /// `PREPARE TRANSACTION`: ends the transaction; settings behave as at COMMIT.
    PrepareTransaction,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    Other,
}

/// First keywords that can start a statement other than `Other`; anything else is `Other` without
/// tokenizing.
const SESSION_KEYWORDS: &[&str] = &[
    "set",
    "reset",
    "show",
    "discard",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
];

/// Classify every statement of a simple-protocol Query string (one entry per non-empty statement, in order).
/// A single statement whose first keyword cannot matter is classified without tokenizing or allocating
/// (the answer for almost every statement an application sends).
pub fn classify_query(sql: &str) -> Result<Cow<'static, [SessionStatement]>, SqlError> {
    let single = !sql.trim_end().trim_end_matches(';').contains(';');
    if single {
        match first_word(sql) {
            None if sql.trim().is_empty() => return Ok(Cow::Borrowed(&[])),
            Some(w) if !SESSION_KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                return Ok(Cow::Borrowed(&[SessionStatement::Other]))
            }
            _ => {}
        }
        if let Some(word) = lone_word(sql) {
            return Ok(Cow::Owned(vec![classify_word(word)]));
        }
    }
    Ok(Cow::Owned(split_statements(lex(sql)?).iter().map(|s| classify_tokens(s)).collect()))
}

/// Classify one statement (e.g. the text of an extended-protocol Parse).
pub fn classify_statement(sql: &str) -> Result<SessionStatement, SqlError> {
    match first_word(sql) {
        Some(w) if !SESSION_KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => Ok(SessionStatement::Other),
        _ => match lone_word(sql) {
            Some(word) => Ok(classify_word(word)),
            None => {
                Ok(split_statements(lex(sql)?).first().map(|s| classify_tokens(s)).unwrap_or(SessionStatement::Other))
            }
        },
    }
}

/// The word of a statement that is one bare word and nothing else (`BEGIN`, `END;`, `commit`): only ASCII
/// letters, between the whitespace sqlparser's tokenizer skips and one optional `;`. The tokenizer reads
/// such a text as one unquoted word token, so [`classify_word`] gives what the tokens would; it costs
/// about 3,000 instructions even for one word, and clients that send `BEGIN` and `COMMIT` as statements of
/// their own pay it twice per transaction (bench/REPORT.md, the dual-write arm's instructions).
fn lone_word(sql: &str) -> Option<&str> {
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let text = sql.trim_matches(space);
    let word = text.strip_suffix(';').unwrap_or(text).trim_end_matches(space);
    (!word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic())).then_some(word)
}

/// A statement of one unquoted word `word`, classified as its one token.
fn classify_word(word: &str) -> SessionStatement {
    classify_tokens(&[Lexeme { token: Token::make_word(word, None), position: 1 }])
}

fn classify_tokens(tokens: &[Lexeme]) -> SessionStatement {
    let mut c = Cursor { tokens, next: 0 };
    c.statement().unwrap_or(SessionStatement::Other)
}

struct Cursor<'a> {
    tokens: &'a [Lexeme],
    next: usize,
}

impl Cursor<'_> {
    fn keyword(&mut self, kw: &str) -> bool {
        if self.tokens.get(self.next).is_some_and(|l| l.is_keyword(kw)) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn end(&self) -> bool {
        self.next >= self.tokens.len()
    }

    fn token(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.next).map(|l| &l.token);
        self.next += 1;
        t
    }

    /// An identifier as Postgres resolves it: unquoted folds to lower case.
    fn identifier(&mut self) -> Option<String> {
        match self.token()? {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
            Token::Word(w) => Some(w.value.clone()),
            _ => None,
        }
    }

    /// `dualwrite.version`, case-insensitive (GUC names are), either as two words or one quoted word.
    fn version_guc(&mut self) -> bool {
        let start = self.next;
        let matched = match self.identifier() {
            Some(first) if first.eq_ignore_ascii_case("dualwrite.version") => true,
            Some(first) if first.eq_ignore_ascii_case("dualwrite") => {
                self.token() == Some(&Token::Period)
                    && self.identifier().is_some_and(|s| s.eq_ignore_ascii_case("version"))
            }
            _ => false,
        };
        if !matched {
            self.next = start;
        }
        matched
    }

    fn optional_work(&mut self) {
        let _ = self.keyword("WORK") || self.keyword("TRANSACTION");
    }

    /// `AND [NO] CHAIN` at the end of COMMIT/ROLLBACK.
    fn chain(&mut self) -> Option<bool> {
        if self.end() {
            return Some(false);
        }
        if !self.keyword("AND") {
            return None;
        }
        let no = self.keyword("NO");
        (self.keyword("CHAIN") && self.end()).then_some(!no)
    }

    fn statement(&mut self) -> Option<SessionStatement> {
        use SessionStatement::*;
        let first = self.tokens.first()?;
        let kw = |k: &str| first.is_keyword(k);
        self.next = 1;
        if kw("SET") {
            let local = self.keyword("LOCAL");
            if !local {
                let _ = self.keyword("SESSION");
            }
            if !self.version_guc() {
                return Some(Other);
            }
            if !(self.keyword("TO") || self.token() == Some(&Token::Eq)) {
                return Some(Other);
            }
            let setting = self.set_value()?;
            return Some(Set { local, setting });
        }
        if kw("RESET") {
            if self.keyword("ALL") && self.end() {
                return Some(ResetAll);
            }
            return Some(if self.version_guc() && self.end() {
                Set { local: false, setting: Setting::Default }
            } else {
                Other
            });
        }
        if kw("DISCARD") {
            return Some(if self.keyword("ALL") && self.end() { ResetAll } else { Other });
        }
        if kw("SHOW") {
            return Some(if self.version_guc() && self.end() { Show } else { Other });
        }
        if kw("BEGIN") || (kw("START") && self.keyword("TRANSACTION")) {
            return Some(Begin);
        }
        if kw("COMMIT") || kw("END") {
            if kw("COMMIT") && self.keyword("PREPARED") {
                return Some(Other);
            }
            self.optional_work();
            return Some(self.chain().map(|chain| Commit { chain }).unwrap_or(Other));
        }
        if kw("ROLLBACK") || kw("ABORT") {
            if kw("ROLLBACK") && self.keyword("PREPARED") {
                return Some(Other);
            }
            self.optional_work();
            if self.keyword("TO") {
                let _ = self.keyword("SAVEPOINT");
                let name = self.identifier()?;
                return Some(if self.end() { RollbackTo(name) } else { Other });
            }
            return Some(self.chain().map(|chain| Rollback { chain }).unwrap_or(Other));
        }
        if kw("SAVEPOINT") {
            let name = self.identifier()?;
            return Some(if self.end() { Savepoint(name) } else { Other });
        }
        if kw("RELEASE") {
            let _ = self.keyword("SAVEPOINT");
            let name = self.identifier()?;
            return Some(if self.end() { Release(name) } else { Other });
        }
        if kw("PREPARE") && self.keyword("TRANSACTION") {
            return Some(PrepareTransaction);
        }
        Some(Other)
    }

    /// The value of a SET: DEFAULT, a string, an identifier (folded) or a number, as Postgres's var_value.
    /// A list (`a, b`) is kept as Postgres would store it for a placeholder: the items joined by ", ".
    fn set_value(&mut self) -> Option<Setting> {
        if self.keyword("DEFAULT") && self.end() {
            return Some(Setting::Default);
        }
        let mut items = Vec::new();
        loop {
            let item = match self.token()? {
                Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => s.clone(),
                Token::Word(w) if w.quote_style.is_none() => w.value.to_lowercase(),
                Token::Word(w) => w.value.clone(),
                Token::Number(n, _) => n.clone(),
                _ => return None,
            };
            items.push(item);
            if self.end() {
                break;
            }
            if self.token() != Some(&Token::Comma) {
                return None;
            }
        }
        Some(Setting::Value(items.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::SessionStatement::*;
    use super::*;

    fn one(sql: &str) -> SessionStatement {
        classify_statement(sql).unwrap()
    }
    fn v(s: &str) -> SessionStatement {
        Set { local: false, setting: Setting::Value(s.into()) }
    }

    #[test]
    fn set_forms() {
        assert_eq!(one("SET dualwrite.version = 'v2'"), v("v2"));
        assert_eq!(one("set DualWrite.Version to V2"), v("v2"));
        assert_eq!(one("SET SESSION dualwrite.version TO \"V2\";"), v("V2"));
        assert_eq!(one("SET \"dualwrite.version\" = 'v2'"), v("v2"));
        assert_eq!(one("SET dualwrite.version = E'v2'"), v("v2"));
        assert_eq!(one("SET dualwrite.version = 2"), v("2"));
        assert_eq!(one("SET dualwrite.version = 'a', b"), v("a, b"));
        assert_eq!(
            one("SET LOCAL dualwrite.version = 'v2'"),
            Set { local: true, setting: Setting::Value("v2".into()) }
        );
        assert_eq!(one("SET dualwrite.version TO DEFAULT"), Set { local: false, setting: Setting::Default });
        assert_eq!(one("SET LOCAL dualwrite.version = DEFAULT"), Set { local: true, setting: Setting::Default });
        assert_eq!(one("/* x */ SET dualwrite.version='v1'"), v("v1"));
    }

    #[test]
    fn other_sets_are_other() {
        for sql in [
            "SET search_path = public",
            "SET dualwrite.other = 'v2'",
            "SET dualwrite = 'v2'",
            "SET dualwrite.version FROM CURRENT",
            "SET dualwrite.version = 'v2' extra junk",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "RESET search_path",
            "SHOW search_path",
            "SHOW ALL",
            "DISCARD PLANS",
            "SELECT set_config('dualwrite.version', 'v2', false)",
        ] {
            assert_eq!(one(sql), Other, "{sql}");
        }
    }

    #[test]
    fn reset_show_discard() {
        assert_eq!(one("RESET dualwrite.version"), Set { local: false, setting: Setting::Default });
        assert_eq!(one("reset all;"), ResetAll);
        assert_eq!(one("DISCARD ALL"), ResetAll);
        assert_eq!(one("SHOW dualwrite.version"), Show);
        assert_eq!(one("show \"dualwrite.version\""), Show);
    }

    #[test]
    fn transaction_control() {
        assert_eq!(one("BEGIN"), Begin);
        assert_eq!(one("begin isolation level serializable"), Begin);
        assert_eq!(one("START TRANSACTION READ ONLY"), Begin);
        assert_eq!(one("START foo"), Other);
        assert_eq!(one("COMMIT"), Commit { chain: false });
        assert_eq!(one("END WORK"), Commit { chain: false });
        assert_eq!(one("COMMIT AND CHAIN"), Commit { chain: true });
        assert_eq!(one("COMMIT TRANSACTION AND NO CHAIN"), Commit { chain: false });
        assert_eq!(one("COMMIT PREPARED 'x'"), Other);
        assert_eq!(one("ROLLBACK"), Rollback { chain: false });
        assert_eq!(one("ABORT AND CHAIN"), Rollback { chain: true });
        assert_eq!(one("ROLLBACK PREPARED 'x'"), Other);
        assert_eq!(one("ROLLBACK TO SAVEPOINT s1"), RollbackTo("s1".into()));
        assert_eq!(one("ROLLBACK WORK TO \"S1\""), RollbackTo("S1".into()));
        assert_eq!(one("SAVEPOINT Sp"), Savepoint("sp".into()));
        assert_eq!(one("RELEASE SAVEPOINT sp"), Release("sp".into()));
        assert_eq!(one("RELEASE sp"), Release("sp".into()));
        assert_eq!(one("PREPARE TRANSACTION 'gid'"), PrepareTransaction);
        assert_eq!(one("PREPARE q AS SELECT 1"), Other);
    }

    #[test]
    fn a_statement_of_one_bare_word_is_classified_as_its_tokens_are() {
        let texts = [
            "BEGIN",
            "begin;",
            "  End ; ",
            "\tCOMMIT\r\n",
            "ROLLBACK",
            "abort;",
            "START",
            "SAVEPOINT",
            "release",
            "SET",
            "reset",
            "DISCARD",
            "show",
            "PREPARE",
            "WORK",
        ];
        for text in texts {
            assert!(lone_word(text).is_some(), "{text:?} is one word");
            let tokens = split_statements(lex(text).unwrap());
            let expected: Vec<SessionStatement> = tokens.iter().map(|s| classify_tokens(s)).collect();
            assert_eq!(*classify_query(text).unwrap(), expected[..], "{text:?}");
            assert_eq!(classify_statement(text).unwrap(), expected[0], "{text:?}");
        }
        for text in ["BEGIN;;", "BEGIN WORK", "\"BEGIN\"", "BEGIN -- c", "BEGIN/**/", "BEGIN1", "x_y", ";", ""] {
            assert_eq!(lone_word(text), None, "{text:?} is not one bare word");
        }
        assert_eq!(*classify_query("begin;").unwrap(), [Begin]);
        assert_eq!(*classify_query("END").unwrap(), [Commit { chain: false }]);
    }

    proptest::proptest! {
        /// Whatever passes for one bare word classifies as the tokenizer's reading does.
        #[test]
        fn one_bare_word_agrees_with_the_tokenizer(text in "[ \t\r\n]{0,2}[a-zA-Z]{1,9}[ \t\r\n]{0,2};?[ \t\r\n]{0,2}") {
            proptest::prop_assume!(lone_word(&text).is_some());
            let expected = split_statements(lex(&text).unwrap()).iter().map(|s| classify_tokens(s)).collect::<Vec<_>>();
            proptest::prop_assert_eq!(&*classify_query(&text).unwrap(), &expected[..]);
        }
    }

    #[test]
    fn query_strings_split_into_statements() {
        assert_eq!(*classify_query("SELECT 1").unwrap(), [Other]);
        assert!(classify_query("  ").unwrap().is_empty());
        assert_eq!(
            *classify_query("BEGIN; SET LOCAL dualwrite.version = 'v2'; select ';'; COMMIT;").unwrap(),
            [Begin, Set { local: true, setting: Setting::Value("v2".into()) }, Other, Commit { chain: false }]
        );
        assert_eq!(*classify_query("select 'a;b'").unwrap(), [Other]);
    }
}
