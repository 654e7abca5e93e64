//! dualwrite proxy library
