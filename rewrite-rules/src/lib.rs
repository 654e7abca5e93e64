//! dualwrite-rules: the rules model of a dualwrite migration (TOML, see README: Rules files) and the pure SQL
//! rewrite engine the proxy calls for every statement that names a table under migration.
//!
//! No I/O and no async: the proxy owns sockets, this crate owns SQL.
//!
//! ```
//! use std::sync::Arc;
//! use dualwrite_rules::{MigrationRoute, Phase, Plan, Route, RuleSet, Rewriter, Side};
//!
//! let rules = RuleSet::from_toml(include_str!("../examples/users_split_name.toml"), "users.toml").unwrap();
//! let rewriter = Rewriter::new(Arc::new(rules), 10_000);
//! let v1 = Route::uniform(rewriter.rules(), MigrationRoute::own(Phase::DualWrite, Side::Old));
//! assert_eq!(*rewriter.rewrite("SELECT * FROM accounts", &v1), Plan::PassThrough);
//! assert!(matches!(*rewriter.rewrite("DELETE FROM users WHERE id = $1", &v1), Plan::Rewritten { .. }));
//! ```

mod backfill_gate;
mod cache;
mod compiled;
mod copy;
mod copy_block;
mod copy_tee;
pub mod corpus;
mod direction;
mod dml;
mod fallback;
pub mod fuzz_checks;
mod key_default_ddl;
mod literals;
pub mod merge;
mod merge_truncate;
pub mod migration_plan;
mod mirror;
pub mod model;
pub mod names;
pub mod plan;
mod reads;
mod rewriter;
pub mod route;
mod rules_toml;
mod scopes;
mod shadow;
pub mod split;
mod statement;
mod template;
mod unseen_writers;
mod writes;

pub use cache::CacheStats;
pub use copy_block::parse_rewritten;
pub use copy_tee::CopyTee;
pub use merge::MergeSource;
pub use model::TargetRef;
pub use model::{Migration, OnBypass, Phase, RuleSet, RulesError, SampleRate, Versions};
pub use names::{quote_ident, quote_literal, TableName};
pub use plan::{Plan, RejectReason, Rejection, RowsDisposition, StatementTransform, TagRewrite};
pub use rewriter::Rewriter;
pub use route::{MigrationRoute, Route, Side, UnsafeSchema};
pub use shadow::ShadowRead;
pub use split::SplitTarget;
