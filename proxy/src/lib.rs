//! dualwrite proxy library
pub mod control;
pub mod state;
pub mod version;
