//! dualwrite proxy library: a transparent PostgreSQL wire relay (session mode) with a hook for rewriting
//! statements of tables under migration.
//!
//! Embedding (what the test harness and `quickstart` use):
//! [`Server::bind`]`(config) -> Server`, [`Server::local_addr`], [`Server::run`]`(shutdown_future)`;
//! [`Server::with_interceptor`] plugs in statement interception (see [`interceptor`]).

// The public API: what the binary, the integration tests, fuzz/ and bench/ use.
pub mod cdc;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod fuzz_checks;
pub mod interceptor;
pub mod jobs;
pub mod latency;
pub mod pg_client;
pub mod pgcluster;
pub mod planner;
pub mod quickstart;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod version;

// Internal modules.
pub(crate) mod cancel;
pub(crate) mod copy_budget;
pub(crate) mod databases;
pub(crate) mod exporter;
pub(crate) mod health;
pub(crate) mod lexer;
pub(crate) mod libpq_tls;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod overload;
pub(crate) mod pool;
pub(crate) mod protocol;
pub(crate) mod result_set;
pub(crate) mod server_context;
pub(crate) mod session;
pub(crate) mod session_attrs;
pub(crate) mod session_threads;
pub(crate) mod shadow;
pub(crate) mod sql_error;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod topology;
pub(crate) mod upstream;

pub use config::Config;
pub use server::Server;
