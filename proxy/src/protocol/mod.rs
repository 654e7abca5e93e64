//! Pure protocol pieces (no I/O): framing, the untagged startup packets, the few decoded or synthesized
//! messages, and the response queue with its transforms.

pub mod frame;
pub mod messages;
pub mod responses;
pub mod startup;
