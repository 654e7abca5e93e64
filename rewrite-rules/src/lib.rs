//! dualwrite-rules
