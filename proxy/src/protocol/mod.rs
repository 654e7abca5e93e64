//! Pure protocol pieces (no I/O): framing, the untagged startup packets, the few decoded or synthesized
//! messages, the request machine (what the proxy does with each client message) and the response queue
//! with its transforms.

pub mod frame;
pub mod messages;
pub mod requests;
pub mod responses;
pub mod startup;
