//! The interceptor seam of a session: an [`Interceptor`] is shared by the whole server and per session
//! makes a [`SessionInterceptor`] (or `None` when it has nothing to do for that session: the relay then
//! never looks at SQL, the fast path). The session interceptor's API (its verdicts on each SQL string, the
//! session events it follows) belongs to the pure request machine and is re-exported here; see
//! [`crate::protocol::requests`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::protocol::requests::{
    LocalReply, LocalResult, Raise, Reprepare, Rewrite, SessionInterceptor, SqlOrigin, SqlRequest, StatementUse,
    TeeRewrite, Verdict,
};
pub use crate::protocol::responses::{CommandTag, ResponseTransform, SessionEvent};
pub use crate::sql_error::SqlError;

/// Creates per-session interceptors. Shared by all sessions of a server.
pub trait Interceptor: Send + Sync + 'static {
    /// Called once the client is authenticated (the upstream said ReadyForQuery the first time).
    /// `None` means "pass every statement of this session through without looking at it".
    fn start_session(&self, session: &SessionInfo) -> Option<Box<dyn SessionInterceptor>>;
}

/// Who the session is.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub client_addr: SocketAddr,
    /// Startup parameters as the client sent them (`user`, `database`, `options`, `application_name`...).
    pub parameters: BTreeMap<String, String>,
    /// The upstream backend's process id.
    pub backend_pid: i32,
    /// TLS between the client and the proxy.
    pub tls: bool,
    /// The pools of the session's server (`DUALWRITE POOLS`).
    pub pools: Option<crate::pool::PoolView>,
}

impl SessionInfo {
    pub fn user(&self) -> &str {
        self.parameters.get("user").map(String::as_str).unwrap_or("")
    }

    /// The database the session opened: the startup packet's `database`, else the user name (as Postgres
    /// defaults it).
    pub fn database(&self) -> &str {
        self.parameters.get("database").map(String::as_str).unwrap_or(self.user())
    }
}

/// The default: every statement passes through untouched, and the relay never inspects SQL.
#[derive(Debug, Default, Clone, Copy)]
pub struct Passthrough;

impl Interceptor for Passthrough {
    fn start_session(&self, _session: &SessionInfo) -> Option<Box<dyn SessionInterceptor>> {
        None
    }
}

pub type SharedInterceptor = Arc<dyn Interceptor>;
