//! dualwrite proxy library

pub mod control;
pub mod pgcluster;
pub mod state;
pub mod version;
