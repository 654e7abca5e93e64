//! The control-SQL grammar (pure): `DUALWRITE STATUS | ROUTE | PHASE | ROLLBACK | BACKFILL | VERIFY | AUDIT | POOLS`.
//!
//! ```text
//! DUALWRITE STATUS
//! DUALWRITE ROUTE <migration> READS TO <version> [PERCENT <0..100>]
//! DUALWRITE ROUTE <migration> READS TO DEFAULT              -- back to each session's own version
//! DUALWRITE PHASE <migration> <dual_write|cutover|complete|off> [FORCE]
//! DUALWRITE ROLLBACK <migration>
//! DUALWRITE BACKFILL <migration> START|RESUME [BATCH <rows>] [RATE <rows per second>]
//! DUALWRITE BACKFILL <migration> PAUSE
//! DUALWRITE VERIFY <migration> [REPAIR]
//! DUALWRITE AUDIT [<migration>] [LIMIT <n>]
//! DUALWRITE AUDIT VERIFY                                    -- the first broken link of the hash chain
//! DUALWRITE POOLS                                           -- transaction mode's server-connection pools
//! ```
//! Keywords are case-insensitive; one trailing semicolon is allowed. Names are identifiers (unquoted ones
//! fold to lower case as in Postgres), "quoted identifiers" or 'string literals'. After AUDIT, an unquoted
//! VERIFY (or LIMIT) is the keyword: the audit of a migration named `verify` is `AUDIT "verify"`. Tokens come from
//! sqlparser's PostgreSQL tokenizer; a bad command is a 42601 naming what was expected at which token.

use sqlparser::tokenizer::Token;

use crate::lexer::{first_word, lex, Lexeme};
use crate::sql_error::SqlError;
use crate::state::phase::Phase;

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    Status,
    Route { migration: String, target: ReadTarget, percent: u8 },
    Phase { migration: String, phase: Phase, force: bool },
    Rollback { migration: String },
    Backfill { migration: String, action: BackfillAction, batch: Option<u32>, rate: Option<u32> },
    Verify { migration: String, repair: bool },
    Audit { migration: Option<String>, limit: Option<u32> },
    AuditVerify,
    Pools,
}

/// Where `ROUTE ... READS TO` sends reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadTarget {
    /// A version name from the rules ('v1', 'v2').
    Version(String),
    /// Each session reads its own version's table.
    SessionVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillAction {
    Start,
    Pause,
    Resume,
}

impl BackfillAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillAction::Start => "start",
            BackfillAction::Pause => "pause",
            BackfillAction::Resume => "resume",
        }
    }
}

impl ControlCommand {
    /// The command's verb, used in the CommandComplete tag (`DUALWRITE <VERB>`) and the audit log.
    pub fn verb(&self) -> &'static str {
        match self {
            ControlCommand::Status => "STATUS",
            ControlCommand::Route { .. } => "ROUTE",
            ControlCommand::Phase { .. } => "PHASE",
            ControlCommand::Rollback { .. } => "ROLLBACK",
            ControlCommand::Backfill { .. } => "BACKFILL",
            ControlCommand::Verify { .. } => "VERIFY",
            ControlCommand::Audit { .. } => "AUDIT",
            ControlCommand::AuditVerify => "AUDIT VERIFY",
            ControlCommand::Pools => "POOLS",
        }
    }

    /// The migration the command names, if any.
    pub fn migration(&self) -> Option<&str> {
        match self {
            ControlCommand::Status | ControlCommand::AuditVerify | ControlCommand::Pools => None,
            ControlCommand::Audit { migration, .. } => migration.as_deref(),
            ControlCommand::Route { migration, .. }
            | ControlCommand::Phase { migration, .. }
            | ControlCommand::Rollback { migration }
            | ControlCommand::Backfill { migration, .. }
            | ControlCommand::Verify { migration, .. } => Some(migration),
        }
    }
}

/// Cheap check, run on every statement: is the first keyword (after whitespace and comments) DUALWRITE?
pub fn is_control_command(sql: &str) -> bool {
    first_word(sql).is_some_and(|w| w.eq_ignore_ascii_case("dualwrite"))
}

const VERBS: &str = "STATUS, ROUTE, PHASE, ROLLBACK, BACKFILL, VERIFY, AUDIT or POOLS";

/// Parse one control command.
pub fn parse_control(sql: &str) -> Result<ControlCommand, SqlError> {
    let mut p = Parser { tokens: lex(sql)?, next: 0 };
    p.expect_keyword("DUALWRITE")?;
    let verb = p.peek().cloned();
    let command = match verb {
        Some(ref l) if l.is_keyword("STATUS") => {
            p.next += 1;
            ControlCommand::Status
        }
        Some(ref l) if l.is_keyword("POOLS") => {
            p.next += 1;
            ControlCommand::Pools
        }
        Some(ref l) if l.is_keyword("ROUTE") => {
            p.next += 1;
            let migration = p.name("a migration name")?;
            p.expect_keyword("READS")?;
            p.expect_keyword("TO")?;
            let target = if p.accept_keyword("DEFAULT") {
                ReadTarget::SessionVersion
            } else {
                ReadTarget::Version(p.name("a version name or DEFAULT")?)
            };
            let percent = if p.accept_keyword("PERCENT") {
                let (n, at) = p.number("a percentage from 0 to 100")?;
                if n > 100 {
                    return Err(SqlError::syntax(format!("PERCENT must be from 0 to 100, got {n}")).at(at));
                }
                n as u8
            } else {
                100
            };
            if target == ReadTarget::SessionVersion && percent != 100 {
                return Err(SqlError::syntax("READS TO DEFAULT takes no PERCENT"));
            }
            ControlCommand::Route { migration, target, percent }
        }
        Some(ref l) if l.is_keyword("PHASE") => {
            p.next += 1;
            let migration = p.name("a migration name")?;
            let expected = "a phase: dual_write, cutover, complete or off";
            let (word, at) = p.word_or_string(expected)?;
            let phase = word.parse::<Phase>().map_err(|_| p.error_at(at, expected))?;
            let force = p.accept_keyword("FORCE");
            ControlCommand::Phase { migration, phase, force }
        }
        Some(ref l) if l.is_keyword("ROLLBACK") => {
            p.next += 1;
            ControlCommand::Rollback { migration: p.name("a migration name")? }
        }
        Some(ref l) if l.is_keyword("BACKFILL") => {
            p.next += 1;
            let migration = p.name("a migration name")?;
            let action = if p.accept_keyword("START") {
                BackfillAction::Start
            } else if p.accept_keyword("PAUSE") {
                BackfillAction::Pause
            } else if p.accept_keyword("RESUME") {
                BackfillAction::Resume
            } else {
                return Err(p.error_here("START, PAUSE or RESUME"));
            };
            let (mut batch, mut rate) = (None, None);
            if action != BackfillAction::Pause {
                loop {
                    if batch.is_none() && p.accept_keyword("BATCH") {
                        batch = Some(p.positive("a batch size in rows")?);
                    } else if rate.is_none() && p.accept_keyword("RATE") {
                        rate = Some(p.positive("a rate in rows per second")?);
                    } else {
                        break;
                    }
                }
            }
            ControlCommand::Backfill { migration, action, batch, rate }
        }
        Some(ref l) if l.is_keyword("VERIFY") => {
            p.next += 1;
            let migration = p.name("a migration name")?;
            let repair = p.accept_keyword("REPAIR");
            ControlCommand::Verify { migration, repair }
        }
        Some(ref l) if l.is_keyword("AUDIT") => {
            p.next += 1;
            if p.accept_keyword("VERIFY") {
                p.expect_end(&ControlCommand::AuditVerify)?;
                return Ok(ControlCommand::AuditVerify);
            }
            let migration = if p.at_end() || p.peek().is_some_and(|l| l.is_keyword("LIMIT")) {
                None
            } else {
                Some(p.name("a migration name, LIMIT or the end of the command")?)
            };
            let limit = if p.accept_keyword("LIMIT") { Some(p.positive("a row count")?) } else { None };
            ControlCommand::Audit { migration, limit }
        }
        _ => return Err(p.error_here(VERBS)),
    };
    p.expect_end(&command)?;
    Ok(command)
}

struct Parser {
    tokens: Vec<Lexeme>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Lexeme> {
        self.tokens.get(self.next)
    }

    fn at_end(&self) -> bool {
        match self.tokens.get(self.next) {
            None => true,
            Some(l) => l.token == Token::SemiColon && self.next + 1 == self.tokens.len(),
        }
    }

    fn error_at(&self, position: usize, expected: &str) -> SqlError {
        let near = self.tokens.iter().find(|l| l.position == position).map(|l| l.describe()).unwrap_or_default();
        SqlError::syntax(format!("syntax error at or near {near}: expected {expected}")).at(position)
    }

    /// A 42601 naming the current token (or the end of input) and what was expected there.
    fn error_here(&self, expected: &str) -> SqlError {
        match self.peek() {
            Some(l) if !self.at_end() => self.error_at(l.position, expected),
            _ => SqlError::syntax(format!("syntax error at end of input: expected {expected}")),
        }
    }

    fn accept_keyword(&mut self, keyword: &str) -> bool {
        if self.peek().is_some_and(|l| l.is_keyword(keyword)) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SqlError> {
        if self.accept_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error_here(keyword))
        }
    }

    /// An identifier (unquoted folds to lower case), a "quoted identifier" or a 'string'.
    fn name(&mut self, expected: &str) -> Result<String, SqlError> {
        let name = match self.peek().map(|l| &l.token) {
            Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_lowercase(),
            Some(Token::Word(w)) => w.value.clone(),
            Some(Token::SingleQuotedString(s)) => s.clone(),
            _ => return Err(self.error_here(expected)),
        };
        if name.is_empty() {
            return Err(self.error_here(expected));
        }
        self.next += 1;
        Ok(name)
    }

    /// Like `name` but returns the token position too, for a check of the value afterwards.
    fn word_or_string(&mut self, expected: &str) -> Result<(String, usize), SqlError> {
        let at = self.peek().map(|l| l.position).unwrap_or(0);
        Ok((self.name(expected)?, at))
    }

    fn number(&mut self, expected: &str) -> Result<(u64, usize), SqlError> {
        match self.peek() {
            Some(Lexeme { token: Token::Number(n, false), position }) => {
                let at = *position;
                let value = n.parse::<u64>().map_err(|_| self.error_at(at, expected))?;
                self.next += 1;
                Ok((value, at))
            }
            _ => Err(self.error_here(expected)),
        }
    }

    fn positive(&mut self, expected: &str) -> Result<u32, SqlError> {
        let (n, at) = self.number(expected)?;
        match u32::try_from(n) {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(SqlError::syntax(format!("expected {expected} from 1 to {}, got {n}", u32::MAX)).at(at)),
        }
    }

    fn expect_end(&mut self, command: &ControlCommand) -> Result<(), SqlError> {
        if self.at_end() {
            return Ok(());
        }
        let expected = match command {
            ControlCommand::Route { .. } => "PERCENT or the end of the command",
            ControlCommand::Phase { force: false, .. } => "FORCE or the end of the command",
            ControlCommand::Backfill { action: BackfillAction::Pause, .. } => "the end of the command",
            ControlCommand::Backfill { batch, rate, .. } => match (batch, rate) {
                (None, None) => "BATCH, RATE or the end of the command",
                (None, Some(_)) => "BATCH or the end of the command",
                (Some(_), None) => "RATE or the end of the command",
                (Some(_), Some(_)) => "the end of the command",
            },
            ControlCommand::Verify { repair: false, .. } => "REPAIR or the end of the command",
            ControlCommand::Audit { limit: None, .. } => "LIMIT or the end of the command",
            ControlCommand::AuditVerify => {
                "the end of the command (for the audit of a migration named verify: AUDIT \"verify\")"
            }
            _ => "the end of the command",
        };
        Err(self.error_here(expected))
    }
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
