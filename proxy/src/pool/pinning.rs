//! Which statements tie a client to its server connection under transaction pooling. A transaction-pooled
//! client's transactions run on whichever pooled connection is idle, so anything that outlives the
//! transaction on the server connection (a LISTEN, a session advisory lock, a cursor WITH HOLD, a temporary
//! object, a session setting, a statement prepared with SQL `PREPARE`) would leak to the next client of that
//! connection or be missing at the client's next transaction. Such a statement pins the client to its
//! connection for the rest of its session instead. Pure: judged on the sqlparser AST, never on text.
//!
//! `SET LOCAL` and `set_config(.., true)` end with the transaction and pin nothing; the proxy's own setting
//! (`dualwrite.version`) never reaches the server and pins nothing either. SQL the parser cannot read pins
//! (the safe answer: the proxy cannot know what it leaves behind).

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, ContextModifier, Declare, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Set, Statement,
    Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

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
pub fn pin_reason(sql: &str) -> Option<PinReason> {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => statements,
        Err(_) => return Some(PinReason::Unreadable),
    };
    statements.iter().find_map(statement_pin)
}

fn statement_pin(statement: &Statement) -> Option<PinReason> {
    let own = match statement {
        Statement::LISTEN { .. } => Some(PinReason::Listen),
        Statement::Prepare { .. } => Some(PinReason::SqlPrepare),
        Statement::Load { .. } => Some(PinReason::Load),
        Statement::Declare { stmts, .. } if stmts.iter().any(declares_hold_cursor) => Some(PinReason::HoldCursor),
        Statement::CreateTable(create) if create.temporary => Some(PinReason::TemporaryObject),
        Statement::CreateView(create) if create.temporary => Some(PinReason::TemporaryObject),
        Statement::CreateSequence { temporary: true, .. } => Some(PinReason::TemporaryObject),
        Statement::Set(set) if sets_session_state(set) => Some(PinReason::SessionSetting),
        Statement::Reset(_) => Some(PinReason::SessionSetting),
        _ => None,
    };
    own.or_else(|| function_pin(statement))
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
            ("THIS IS NOT SQL", PinReason::Unreadable),
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
            "SET dualwrite.version = 'new'",
            "UNLISTEN *",
            "COMMIT",
        ] {
            assert_eq!(pin_reason(sql), None, "{sql}");
        }
    }
}
