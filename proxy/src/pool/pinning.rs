//! Which statements tie a client to its server connection under transaction pooling. A transaction-pooled
//! client's transactions run on whichever pooled connection is idle, so anything that outlives the
//! transaction on the server connection (a LISTEN, a session advisory lock, a cursor WITH HOLD, a temporary
//! object, a session setting, a statement prepared with SQL `PREPARE`) would leak to the next client of that
//! connection or be missing at the client's next transaction. Such a statement pins the client to its
//! connection for the rest of its session instead. Pure: judged on the sqlparser AST (a COPY the parser
//! cannot read on its tokens).
//!
//! `SET LOCAL` and `set_config(.., true)` end with the transaction and pin nothing; the proxy's own setting
//! (`dualwrite.version`) never reaches the server and pins nothing either. SQL the parser cannot read pins
//! (the safe answer: the proxy cannot know what it leaves behind), except a COPY: told by its first token,
//! it leaves nothing behind unless it names a function that can ([`copy_pin`]).
//!
//! Parsing every statement a transaction-pooled client sends was most of the proxy's user-space time per
//! statement (bench/REPORT.md, "Transaction pooling"), so a statement is parsed only when it could pin:
//! when its text holds one of the words that every pinning statement holds ([`may_pin`]). A statement
//! without them leaves nothing on the server connection whether or not the parser could read it.

use std::ops::ControlFlow;
use std::sync::LazyLock;

use super::pin_words::WordSet;
use sqlparser::ast::{
    visit_expressions, ContextModifier, Declare, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName,
    Query, Set, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::lexer::Lexeme;

/// Why a client was pinned (a label for logs and the pool's figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    Listen,
    AdvisoryLock,
    HoldCursor,
    TemporaryObject,
    SessionSetting,
    SqlPrepare,
    Load,
    /// The statement could not be parsed.
    Unreadable,
}

impl PinReason {
    pub fn label(self) -> &'static str {
        match self {
            PinReason::Listen => "listen",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::TemporaryObject => "temporary_object",
            PinReason::SessionSetting => "session_setting",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::Load => "load",
            PinReason::Unreadable => "unreadable",
        }
    }
}

/// Session-level advisory lock functions (the `_xact_` ones end with the transaction).
const SESSION_ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// The first reason any statement of `sql` (one Query string, or one Parse) pins its client, if any.
pub fn pin_reason(sql: impl AsRef<[u8]>) -> Option<PinReason> {
    let sql = sql.as_ref();
    if !may_pin(sql) {
        return None;
    }
    parsed_pin_reason(&String::from_utf8_lossy(sql))
}

/// [`pin_reason`] judged by the parser, and by the tokens of a COPY it cannot read.
fn parsed_pin_reason(sql: &str) -> Option<PinReason> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => statements.iter().find_map(statement_pin),
        Err(_) => unreadable_pin_reason(sql),
    }
}

/// SQL the parser cannot read as a whole, judged statement by statement (split at top-level semicolons by
/// the tokenizer): a COPY by its tokens ([`copy_pin`]); any other statement by the parser, pinning as
/// `Unreadable` when the parser cannot read it either (or the tokenizer cannot read the text).
fn unreadable_pin_reason(sql: &str) -> Option<PinReason> {
    let Ok(lexemes) = crate::lexer::lex(sql) else { return Some(PinReason::Unreadable) };
    // Character positions (1-based) -> byte offsets, to cut each statement's own text out of `sql`.
    let offsets: Vec<usize> = sql.char_indices().map(|(byte, _)| byte).chain([sql.len()]).collect();
    let byte = |position: usize| offsets.get(position.saturating_sub(1)).copied().unwrap_or(sql.len());
    let mut statement: Vec<Lexeme> = Vec::new();
    let mut found = None;
    let mut judge = |statement: &mut Vec<Lexeme>, end: usize| {
        let Some(first) = statement.first() else { return };
        let reason = if first.is_keyword("copy") {
            copy_pin(statement)
        } else {
            match Parser::parse_sql(&PostgreSqlDialect {}, &sql[byte(first.position)..end]) {
                Ok(parsed) => parsed.iter().find_map(statement_pin),
                Err(_) => Some(PinReason::Unreadable),
            }
        };
        found = found.or(reason);
        statement.clear();
    };
    for lexeme in lexemes {
        if lexeme.token == Token::SemiColon {
            judge(&mut statement, byte(lexeme.position));
        } else {
            statement.push(lexeme);
        }
    }
    judge(&mut statement, sql.len());
    found
}

/// A COPY the parser cannot read (an option it does not know, such as `HEADER MATCH` or `FORCE_QUOTE *`,
/// or a `WHERE` clause): copying rows between a table or query and the client leaves nothing on the server
/// connection, so it pins only where a function that can (a session advisory lock, `set_config`) is named
/// among its tokens, in its query or its `WHERE` clause; then as `Unreadable`, the call not being read.
/// A COPY of a temporary table pins nothing of its own: creating the table pinned the client.
fn copy_pin(statement: &[Lexeme]) -> Option<PinReason> {
    let names_pinning_function = statement.iter().any(|lexeme| match &lexeme.token {
        Token::Word(word) => {
            let name = word.value.to_ascii_lowercase();
            name == "set_config" || SESSION_ADVISORY_LOCKS.contains(&name.as_str())
        }
        _ => false,
    });
    names_pinning_function.then_some(PinReason::Unreadable)
}

/// Words one of which is in the text of every statement that pins (matched anywhere, ignoring ASCII case:
/// inside a string, a comment or a longer name they only cost a parse). `LISTEN`, `PREPARE`, `LOAD`,
/// `WITH HOLD`, `TEMP`/`TEMPORARY` (and a `pg_temp.` name), the advisory lock functions, `set_config`,
/// `RESET`; and `SET`, which alone is also in every `UPDATE`, so it counts only where it can start a
/// statement (see [`may_pin`]).
const PIN_WORDS: &[&str] = &["listen", "prepare", "load", "hold", "temp", "advisory", "set_config", "reset", "set"];

/// The index of `set` in [`PIN_WORDS`].
const SET: usize = PIN_WORDS.len() - 1;

/// First words of a statement that cannot be a `SET` (nor run one, as a `DO` block could).
const PLAIN_FIRST_WORDS: &[&str] = &["select", "insert", "update", "delete", "with", "values"];

static PIN_WORD_SET: LazyLock<WordSet> = LazyLock::new(|| WordSet::new(PIN_WORDS));

/// Whether `sql` could pin, judged on its text alone without a false "no": it holds one of [`PIN_WORDS`],
/// other than a `set` of one statement whose first word is a plain query or write (`UPDATE ... SET`,
/// `ON CONFLICT DO UPDATE SET`, `OFFSET`). Several statements with a `set` are parsed (telling their first
/// words apart needs the tokenizer, which is most of a parse).
pub fn may_pin(sql: impl AsRef<[u8]>) -> bool {
    let sql = sql.as_ref();
    let other_words = !(1 << SET);
    let found = PIN_WORD_SET.found(sql, other_words);
    if found & other_words != 0 {
        return true;
    }
    if found == 0 {
        return false;
    }
    let Ok(sql) = std::str::from_utf8(sql) else { return true };
    let single = !sql.trim_end().trim_end_matches(';').contains(';');
    let plain =
        crate::lexer::first_word(sql).is_some_and(|w| PLAIN_FIRST_WORDS.iter().any(|p| w.eq_ignore_ascii_case(p)));
    !(single && plain)
}

fn statement_pin(statement: &Statement) -> Option<PinReason> {
    let own = match statement {
        Statement::LISTEN { .. } => Some(PinReason::Listen),
        Statement::Prepare { .. } => Some(PinReason::SqlPrepare),
        Statement::Load { .. } => Some(PinReason::Load),
        Statement::Declare { stmts, .. } if stmts.iter().any(declares_hold_cursor) => Some(PinReason::HoldCursor),
        Statement::CreateTable(create) if create.temporary || in_temp_schema(&create.name) => {
            Some(PinReason::TemporaryObject)
        }
        Statement::CreateView(create) if create.temporary || in_temp_schema(&create.name) => {
            Some(PinReason::TemporaryObject)
        }
        Statement::CreateSequence { temporary, name, .. } if *temporary || in_temp_schema(name) => {
            Some(PinReason::TemporaryObject)
        }
        Statement::Query(query) if selects_into_temp(query) => Some(PinReason::TemporaryObject),
        Statement::Set(set) if sets_session_state(set) => Some(PinReason::SessionSetting),
        Statement::Reset(_) => Some(PinReason::SessionSetting),
        _ => None,
    };
    own.or_else(|| function_pin(statement))
}

/// A name in the session's temporary schema (`pg_temp.t`, `pg_temp_3.t`) is a temporary object however
/// it is created.
fn in_temp_schema(name: &ObjectName) -> bool {
    name.0.len() > 1 && name.0[0].to_string().to_ascii_lowercase().starts_with("pg_temp")
}

/// `SELECT ... INTO TEMP t` (or into a `pg_temp.` name).
fn selects_into_temp(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else { return false };
    select.into.as_ref().is_some_and(|into| {
        into.temporary
            || into.targets.iter().any(|target| {
                matches!(target, Expr::CompoundIdentifier(parts)
                    if parts.len() > 1 && parts[0].value.to_ascii_lowercase().starts_with("pg_temp"))
            })
    })
}

fn declares_hold_cursor(declare: &Declare) -> bool {
    declare.hold == Some(true)
}

/// A `SET` that outlives the transaction (not `SET LOCAL`), of a setting the server keeps.
fn sets_session_state(set: &Set) -> bool {
    match set {
        Set::SingleAssignment { scope, variable, .. } => {
            !matches!(scope, Some(ContextModifier::Local)) && !is_proxy_setting(&variable.to_string())
        }
        Set::SetRole { context_modifier, .. } => !matches!(context_modifier, Some(ContextModifier::Local)),
        Set::SetTimeZone { local, .. } => !local,
        // SET TRANSACTION applies to the current transaction only.
        Set::SetTransaction { session, .. } => *session,
        _ => true,
    }
}

/// Settings the proxy keeps for the client itself (they never reach the server).
fn is_proxy_setting(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("dualwrite.")
}

/// Session advisory locks and `set_config(name, value, false)` anywhere in the statement.
fn function_pin(statement: &Statement) -> Option<PinReason> {
    let found = visit_expressions(statement, |expr| {
        let Expr::Function(function) = expr else { return ControlFlow::Continue(()) };
        let name = function.name.to_string().to_ascii_lowercase();
        let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
        if SESSION_ADVISORY_LOCKS.contains(&name) {
            return ControlFlow::Break(PinReason::AdvisoryLock);
        }
        if name == "set_config" && !set_config_is_local(&function.args) {
            return ControlFlow::Break(PinReason::SessionSetting);
        }
        ControlFlow::Continue(())
    });
    match found {
        ControlFlow::Break(reason) => Some(reason),
        ControlFlow::Continue(()) => None,
    }
}

/// `set_config`'s third argument is the literal `true` (the setting ends with the transaction).
fn set_config_is_local(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else { return false };
    matches!(
        list.args.get(2),
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) if v.value == Value::Boolean(true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_leave_session_state_on_the_server_pin() {
        let cases = [
            ("LISTEN orders", PinReason::Listen),
            ("SELECT pg_advisory_lock(42)", PinReason::AdvisoryLock),
            ("SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)", PinReason::AdvisoryLock),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", PinReason::HoldCursor),
            ("CREATE TEMP TABLE t (a int)", PinReason::TemporaryObject),
            ("CREATE TEMPORARY SEQUENCE s", PinReason::TemporaryObject),
            ("SET search_path = app, public", PinReason::SessionSetting),
            ("SET SESSION statement_timeout = 0", PinReason::SessionSetting),
            ("SET TIME ZONE 'UTC'", PinReason::SessionSetting),
            ("RESET search_path", PinReason::SessionSetting),
            ("SELECT set_config('search_path', 'app', false)", PinReason::SessionSetting),
            ("PREPARE q (int) AS SELECT $1", PinReason::SqlPrepare),
            ("SELECT 1; LISTEN late", PinReason::Listen),
            ("LISTEN THIS IS NOT SQL", PinReason::Unreadable),
            ("SET = = =", PinReason::Unreadable),
            ("/* a comment */ set search_path = app", PinReason::SessionSetting),
            ("-- a comment\nSET search_path = app", PinReason::SessionSetting),
            ("UPDATE t SET a = 1; SET search_path = app", PinReason::SessionSetting),
            ("CREATE TEMPORARY VIEW v AS SELECT 1", PinReason::TemporaryObject),
            ("SeLeCt PG_ADVISORY_LOCK(1)", PinReason::AdvisoryLock),
            ("CREATE TABLE pg_temp.t (a int)", PinReason::TemporaryObject),
            ("SELECT 1 AS a INTO TEMP t", PinReason::TemporaryObject),
            ("SELECT 1 AS a INTO pg_temp.t", PinReason::TemporaryObject),
        ];
        for (sql, reason) in cases {
            assert_eq!(pin_reason(sql), Some(reason), "{sql}");
        }
    }

    #[test]
    fn statements_scoped_to_their_transaction_pin_nothing() {
        for sql in [
            "SELECT 1",
            "BEGIN",
            "UPDATE t SET a = 1 WHERE id = 2",
            "SET LOCAL search_path = app",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT pg_advisory_xact_lock(42)",
            "SELECT set_config('search_path', 'app', true)",
            "DECLARE c CURSOR FOR SELECT 1",
            "CREATE TABLE t (a int)",
            "SELECT 1 AS a INTO t",
            "SET dualwrite.version = 'new'",
            "UNLISTEN *",
            "COMMIT",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
            "SELECT * FROM t ORDER BY a OFFSET 10",
            "UPDATE t SET a = 'SET search_path = x' WHERE id = 1;",
        ] {
            assert_eq!(pin_reason(sql), None, "{sql}");
        }
    }

    /// COPYs sqlparser cannot read (options it does not know, a WHERE clause), each holding a pin word so
    /// that it reaches the parser: they leave nothing on the server connection.
    #[test]
    fn a_copy_the_parser_cannot_read_pins_nothing() {
        for sql in [
            "COPY holdings TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
            "COPY assets (a, b) FROM STDIN WITH (FORMAT csv, HEADER match)",
            "copy payloads from stdin where a > 1",
            "/* load */ COPY (SELECT * FROM templates) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
            "COPY pg_temp.notes TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
            "COPY holdings TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *); SELECT 1;",
        ] {
            assert!(may_pin(sql), "{sql} reaches the parser");
            assert!(Parser::parse_sql(&PostgreSqlDialect {}, sql).is_err(), "{sql} is unreadable to sqlparser");
            assert_eq!(pin_reason(sql), None, "{sql}");
        }
    }

    #[test]
    fn an_unreadable_copy_naming_a_pinning_function_and_its_pinning_neighbours_pin() {
        for (sql, reason) in [
            ("COPY (SELECT pg_advisory_lock(1)) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)", PinReason::Unreadable),
            ("COPY t FROM STDIN WHERE pg_catalog.pg_try_advisory_lock(a)", PinReason::Unreadable),
            ("COPY (SELECT set_config('a.b', 'c', false)) TO STDOUT (FORCE_QUOTE *)", PinReason::Unreadable),
            ("COPY holdings TO STDOUT WITH (FORCE_QUOTE *); SET search_path = app", PinReason::SessionSetting),
            ("COPY holdings TO STDOUT WITH (FORCE_QUOTE *); LISTEN THIS IS NOT SQL", PinReason::Unreadable),
            ("CREATE TEMP TABLE t (a int); COPY t FROM STDIN WHERE a > 1", PinReason::TemporaryObject),
            ("COPY holdings TO STDOUT WITH (FORCE_QUOTE *); SELECT 'unterminated", PinReason::Unreadable),
        ] {
            assert_eq!(pin_reason(sql), Some(reason), "{sql}");
        }
        // A COPY the parser reads is judged on its AST as before.
        assert_eq!(pin_reason("COPY (SELECT pg_advisory_lock(1)) TO STDOUT"), Some(PinReason::AdvisoryLock));
    }

    /// The text check never says "cannot pin" of a statement the parser judges pinning.
    #[test]
    fn the_word_check_lets_every_pinning_statement_through_to_the_parser() {
        let pinning = [
            "LISTEN orders",
            "select pg_try_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TABLE pg_temp.t (a int)",
            "SELECT 1 INTO TEMP t",
            "SET ROLE app",
            "set time zone 'UTC'",
            "RESET ALL",
            "SELECT set_config('a.b', 'c', false)",
            "PREPARE q AS SELECT 1",
            "LOAD 'auto_explain'",
            "DO $$ BEGIN SET search_path = app; END $$",
            "UPDATE t SET a = 1; SET search_path = app",
            "/* x */ SET search_path = app",
        ];
        for sql in pinning {
            assert!(may_pin(sql), "{sql}");
        }
        for sql in
            ["SELECT abalance FROM pgbench_accounts WHERE aid = 1", "UPDATE t SET a = 1", "BEGIN", "END", "COMMIT"]
        {
            assert!(!may_pin(sql), "{sql}");
        }
    }

    /// Over the rewrite engine's corpus (the shapes ORMs and people send) and the cases above: wherever the
    /// parser alone finds a reason to pin (unreadable SQL aside), the word check lets the statement through.
    #[test]
    fn the_word_check_hides_no_pin_the_parser_finds_in_the_statement_corpus() {
        let corpus = include_str!("../../../rewrite-rules/tests/corpus/statements.sql");
        let statements: Vec<&str> = corpus
            .lines()
            .filter_map(|line| line.split_once('|').map(|(_, sql)| sql.trim()))
            .filter(|sql| !sql.is_empty())
            .collect();
        assert!(statements.len() > 300, "the corpus was read: {} statements", statements.len());
        let mut judged = 0;
        for sql in statements {
            if let Some(reason) = parsed_pin_reason(sql).filter(|r| *r != PinReason::Unreadable) {
                assert!(may_pin(sql), "{sql} pins ({reason:?}) but the word check says it cannot");
                judged += 1;
            }
            if !may_pin(sql) {
                assert_eq!(pin_reason(sql), None);
            }
        }
        assert!(judged > 0, "the corpus holds pinning statements");
    }
}
