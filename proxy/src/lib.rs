//! dualwrite proxy library: a transparent PostgreSQL wire relay (session mode) with a hook for rewriting
//! statements of tables under migration.
//!
//! Embedding (what the test harness and `quickstart` use):
//! [`Server::bind`]`(config) -> Server`, [`Server::local_addr`], [`Server::run`]`(shutdown_future)`;
//! [`Server::with_interceptor`] plugs in statement interception (see [`session::interceptor`]).

pub mod cancel;
pub mod cdc;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod databases;
pub mod fuzz_checks;
pub mod health;
pub mod jobs;
pub mod latency;
pub mod libpq_tls;
pub mod live;
pub mod metrics;
pub mod overload;
pub mod pg_client;
pub mod pgcluster;
pub mod planner;
pub mod pool;
pub mod protocol;
pub mod quickstart;
pub mod reload;
pub mod server;
pub mod session;
pub mod session_attrs;
pub mod session_threads;
pub mod shadow;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod topology;
pub mod upstream;
pub mod version;

pub use config::Config;
pub use server::Server;
