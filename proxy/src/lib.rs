//! dualwrite proxy library
pub mod jobs;
