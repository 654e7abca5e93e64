//! dualwrite proxy library

pub mod control;
pub mod jobs;
pub mod pgcluster;
pub mod state;
