//! Control SQL: the `DUALWRITE ...` commands an admin sends over any client connection. `grammar` parses
//! (pure), `exec` runs a parsed command against the shared state and answers with a result set.

pub mod exec;
pub mod grammar;
pub mod jobs_bridge;

pub use crate::result_set::{result_set, ControlResponse};
pub use crate::sql_error::SqlError;
pub use exec::{execute, ControlContext, JobDispatch};
pub use grammar::{is_control_command, parse_control, BackfillAction, ControlCommand, ReadTarget};
