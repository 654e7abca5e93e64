//! The proxy's own SQL errors (a leaf: no imports from the crate): `SqlError`, the one type a session turns
//! into an ErrorResponse (encoded by `protocol::messages::error_response`), its constructors, the SQLSTATEs
//! the proxy reports (`codes`), and `raise_statement` to have Postgres itself raise an error inside the
//! client's transaction.

use std::fmt;

/// An error the proxy reports itself, with the fields Postgres would fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// "ERROR" or "FATAL".
    pub severity: &'static str,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement text (field `P`).
    pub position: Option<u32>,
}

impl SqlError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        SqlError {
            severity: "ERROR",
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        SqlError { severity: "FATAL", ..SqlError::new(code, message) }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
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

    pub fn at(mut self, position: usize) -> Self {
        self.position = u32::try_from(position).ok();
        self
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
    pub const OBJECT_IN_USE: &str = "55006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_reaches_the_error_response() {
        let bytes = crate::protocol::messages::error_response(&SqlError::syntax("bad").at(17));
        let body = &bytes[5..];
        assert!(body.split(|b| *b == 0).any(|f| f == b"P17"), "{bytes:?}");
        assert!(body.split(|b| *b == 0).any(|f| f == b"C42601"), "{bytes:?}");
    }

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
