//! dualwrite proxy library

pub mod pgcluster;
