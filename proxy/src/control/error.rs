//! `SqlError`: an error the proxy answers itself (SQLSTATE, message, optional position), turned into an
//! ErrorResponse by the session. Shared by the control grammar, control execution and the version machine.

use std::borrow::Cow;
use std::fmt;

/// An error reported to the client as an ErrorResponse with severity ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// Five-character SQLSTATE, e.g. "42601" (owned when relayed from the control-plane database).
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement text (ErrorResponse field `P`), as Postgres reports it.
    pub position: Option<usize>,
}

impl SqlError {
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        SqlError { code: code.into(), message: message.into(), detail: None, hint: None, position: None }
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn at(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }
    /// A statement that makes Postgres raise this same error (SQLSTATE, message, detail, hint). Sending it
    /// upstream in place of a refused statement lets the server abort the client's transaction exactly as it
    /// would have for the original (status `E`, later statements refused, ROLLBACK needed), instead of the
    /// proxy answering while the upstream transaction carries on.
    pub fn raise_statement(&self) -> String {
        let mut options = vec![
            format!("ERRCODE = {}", escaped_literal(&self.code)),
            format!("MESSAGE = {}", escaped_literal(&self.message)),
        ];
        if let Some(detail) = &self.detail {
            options.push(format!("DETAIL = {}", escaped_literal(detail)));
        }
        if let Some(hint) = &self.hint {
            options.push(format!("HINT = {}", escaped_literal(hint)));
        }
        let body = format!("BEGIN RAISE EXCEPTION USING {}; END", options.join(", "));
        let mut tag = "dualwrite".to_string();
        while body.contains(&format!("${tag}$")) {
            tag.push('_');
        }
        format!("DO ${tag}${body}${tag}$")
    }

    /// 42601
    pub fn syntax(message: impl Into<String>) -> Self {
        Self::new(codes::SYNTAX_ERROR, message)
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for SqlError {}

/// An `E'...'` literal: read the same whatever `standard_conforming_strings` says.
fn escaped_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The SQLSTATEs the proxy itself reports.
pub mod codes {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_statement_quotes_everything() {
        let e = SqlError::new(codes::INVALID_PARAMETER_VALUE, "bad 'v\\9' $dualwrite$").with_detail("d").with_hint("h");
        assert_eq!(
            e.raise_statement(),
            "DO $dualwrite_$BEGIN RAISE EXCEPTION USING ERRCODE = E'22023', MESSAGE = E'bad \\'v\\\\9\\' $dualwrite$', \
             DETAIL = E'd', HINT = E'h'; END$dualwrite_$"
        );
    }
}
