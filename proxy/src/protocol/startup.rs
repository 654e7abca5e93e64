//! The untagged packets a client may open a connection with: SSLRequest, GSSENCRequest, CancelRequest and
//! the StartupMessage (pure parsing, decoded with pgwire's types). The startup packet is kept as the
//! original bytes too, because it is relayed to the upstream exactly as the client sent it.
//!
//! Before authentication the proxy answers as Postgres does (`ProcessStartupPacket` in postmaster.c): a
//! packet whose length is out of bounds, or a cancel request it cannot read, is closed without a word
//! ([`StartupError`]; Postgres only logs it); a startup packet it refuses with an ErrorResponse is left to
//! the upstream to refuse ([`InitialPacket::Refused`]), since the wording depends on the server's version.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

/// Postgres's own bound on any untagged packet: MAX_STARTUP_PACKET_LENGTH (pqcomm.h) bounds what follows
/// the length word, so the word itself may say up to 10 004.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000 + 4;
/// The smallest untagged packet: length and code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;

pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// What a connection opened with.
#[derive(Debug)]
pub enum InitialPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupPacket),
    /// A startup packet no session can start with: a protocol major version other than 3 (Postgres
    /// answers FATAL 0A000, to a protocol 2 client in protocol 2's format), or one with no room for the
    /// terminator (FATAL 08P01). Kept whole, to be shown to the upstream for its own answer.
    Refused(Bytes),
}

/// A CancelRequest: the backend pid and the secret key as raw bytes (4 bytes in protocol 3.0, up to 256
/// in 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Bytes,
}

impl CancelKey {
    /// Encodes a CancelRequest packet for this key.
    pub fn encode_request(&self) -> Bytes {
        let msg = CancelRequest::new(self.pid, pgwire::messages::startup::SecretKey::Bytes(self.secret.clone()));
        let mut buf = BytesMut::with_capacity(12 + self.secret.len());
        // The key length was validated (4..=256) when it was decoded or generated.
        msg.encode(&mut buf).expect("cancel key length is valid");
        buf.freeze()
    }
}

/// A StartupMessage: the original bytes (relayed as given) and the decoded parameters.
#[derive(Debug, Clone)]
pub struct StartupPacket {
    pub raw: Bytes,
    pub protocol_major: u16,
    pub parameters: BTreeMap<String, String>,
}

impl StartupPacket {
    pub fn user(&self) -> &str {
        self.parameters.get("user").map(String::as_str).unwrap_or("")
    }

    /// The database, which Postgres defaults to the user name.
    pub fn database(&self) -> &str {
        self.parameters.get("database").map(String::as_str).unwrap_or_else(|| self.user())
    }
}

/// Why an initial packet is closed without an answer: Postgres logs these (in the words kept here) and
/// closes, and clients rely on that silence (a client that sends Terminate before its startup packet, a
/// port scanner, an HTTP or TLS client at the wrong port).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StartupError {
    pub message: &'static str,
}

impl StartupError {
    fn violation(message: &'static str) -> Self {
        StartupError { message }
    }
}

/// Validates the length word of an untagged packet before the rest is read.
pub fn check_packet_len(len: i32) -> Result<usize, StartupError> {
    let len = usize::try_from(len).unwrap_or(0);
    if !(MIN_STARTUP_PACKET_LEN..=MAX_STARTUP_PACKET_LEN).contains(&len) {
        return Err(StartupError::violation("invalid length of startup packet"));
    }
    Ok(len)
}

fn decode_context() -> DecodeContext {
    // pgwire defaults to protocol 3.2, which reads the cancel key as variable-length bytes: that is what
    // we want for CancelRequest (any key length the server handed out).
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_2);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = true;
    ctx
}

/// Parses one whole untagged packet (length word included).
pub fn parse_initial_packet(packet: Bytes) -> Result<InitialPacket, StartupError> {
    if packet.len() < MIN_STARTUP_PACKET_LEN {
        return Err(StartupError::violation("invalid length of startup packet"));
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST_CODE => Ok(InitialPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(InitialPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let mut buf = BytesMut::from(&packet[..]);
            match CancelRequest::decode(&mut buf, &decode_context()) {
                Ok(Some(req)) => {
                    Ok(InitialPacket::Cancel(CancelKey { pid: req.pid, secret: req.secret_key.to_bytes() }))
                }
                _ => Err(StartupError::violation("invalid length of cancel request packet")),
            }
        }
        _ => {
            if (code >> 16) != 3 {
                return Ok(InitialPacket::Refused(packet));
            }
            // pgwire reads parameters leniently (a missing terminator, a missing user): such a packet goes
            // to the upstream like any other, which refuses it in its own words.
            let mut buf = BytesMut::from(&packet[..]);
            match Startup::decode(&mut buf, &decode_context()) {
                Ok(Some(startup)) => Ok(InitialPacket::Startup(StartupPacket {
                    raw: packet,
                    protocol_major: startup.protocol_number_major,
                    parameters: startup.parameters,
                })),
                _ => Ok(InitialPacket::Refused(packet)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: i32, rest: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32((8 + rest.len()) as i32);
        b.put_i32(code);
        b.put_slice(rest);
        b.freeze()
    }

    #[test]
    fn recognises_negotiation_requests() {
        assert!(matches!(parse_initial_packet(packet(SSL_REQUEST_CODE, b"")), Ok(InitialPacket::SslRequest)));
        assert!(matches!(parse_initial_packet(packet(GSSENC_REQUEST_CODE, b"")), Ok(InitialPacket::GssEncRequest)));
    }

    #[test]
    fn cancel_keys_of_any_protocol_length() {
        let short = parse_initial_packet(packet(CANCEL_REQUEST_CODE, b"\0\0\x30\x39abcd")).unwrap();
        let InitialPacket::Cancel(key) = short else { panic!("not a cancel") };
        assert_eq!(key.pid, 12345);
        assert_eq!(&key.secret[..], b"abcd");
        assert_eq!(&key.encode_request()[..], &packet(CANCEL_REQUEST_CODE, b"\0\0\x30\x39abcd")[..]);
        let long =
            parse_initial_packet(packet(CANCEL_REQUEST_CODE, &[[0, 0, 0, 7].as_slice(), &[9u8; 32]].concat())).unwrap();
        let InitialPacket::Cancel(key) = long else { panic!("not a cancel") };
        assert_eq!(key.secret.len(), 32);
    }

    #[test]
    fn startup_keeps_raw_bytes_and_parameters() {
        let p = packet(196608, b"user\0alice\0options\0-c dualwrite.version=v2\0\0");
        let InitialPacket::Startup(s) = parse_initial_packet(p.clone()).unwrap() else { panic!() };
        assert_eq!(s.raw, p);
        assert_eq!(s.user(), "alice");
        assert_eq!(s.database(), "alice");
        assert_eq!(s.parameters["options"], "-c dualwrite.version=v2");
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        let v2 = packet(0x0002_0000, b"user\0alice\0\0");
        assert!(matches!(parse_initial_packet(v2.clone()), Ok(InitialPacket::Refused(p)) if p == v2));
        let bare = packet(196608, b"");
        assert!(matches!(parse_initial_packet(bare.clone()), Ok(InitialPacket::Refused(p)) if p == bare));
        assert!(parse_initial_packet(Bytes::from_static(b"\0\0")).is_err());
        assert!(parse_initial_packet(packet(CANCEL_REQUEST_CODE, b"\0\0")).is_err());
        assert!(check_packet_len(4).is_err());
        assert!(check_packet_len(100_000).is_err());
        assert!(check_packet_len(10_005).is_err());
        assert_eq!(check_packet_len(10_004), Ok(10_004));
        assert_eq!(check_packet_len(8), Ok(8));
    }
}
