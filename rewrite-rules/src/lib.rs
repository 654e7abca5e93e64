//! dualwrite-rules: the rules model of a dualwrite migration (TOML, DESIGN section 2) and the pure SQL
//! rewrite engine the proxy calls for every statement that names a table under migration.
//!
//! No I/O and no async: the proxy owns sockets, this crate owns SQL.

pub mod model;
pub mod names;
pub mod plan;
pub mod route;

pub use model::{Migration, Phase, RuleSet, RulesError, Versions};
pub use names::{quote_ident, TableName};
pub use plan::{Plan, RejectReason, Rejection, RowsDisposition, StatementTransform, TagRewrite};
pub use route::{MigrationRoute, Route, Side};
