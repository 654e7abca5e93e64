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
