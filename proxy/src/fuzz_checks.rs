//! The invariants the proxy's fuzz targets check (fuzz/fuzz_targets/{frame,startup,control}.rs), kept
//! in the library so the regression test (proxy/tests/fuzz_regressions.rs) replays the fuzzers' corpus
//! and findings through the very same code on stable Rust. A violated invariant panics: that is how
//! libFuzzer and the test notice. Everything checked here is pure (no I/O).

use bytes::Bytes;

use crate::control::{self, ControlCommand, ReadTarget, SqlError};
use crate::protocol::frame::{peek_header, FrameError, HEADER_LEN};
use crate::protocol::messages::{self, body};
use crate::protocol::startup::{self, InitialPacket, MAX_STARTUP_PACKET_LEN, MIN_STARTUP_PACKET_LEN};
use crate::version;

/// Input: byte 0 picks the frame size limit, the rest is a byte stream as a client or server sends it.
///
/// The stream is split into frames the way the relay does; every header accepted is within the limit and
/// has a length of at least 4, every refusal is the typed error matching the length word. Each whole
/// frame goes through every in-place view and pgwire decoder the relay uses: none panics, views return
/// fields without terminators and consistent counts, and what is decoded re-encodes to the same bytes.
pub fn check_frame(data: &[u8]) {
    let Some((&limit_byte, mut stream)) = data.split_first() else { return };
    // From the smallest limit the server accepts (1024) up to well above any fuzz input.
    let limit = 1024usize << (limit_byte % 16);
    while !stream.is_empty() {
        let claimed = stream.get(1..HEADER_LEN).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match peek_header(stream, limit) {
            Ok(None) => {
                assert!(stream.len() < HEADER_LEN, "a whole header was not read");
                break;
            }
            Ok(Some(h)) => {
                assert!(h.len >= 4 && h.total_len() <= limit, "accepted header {h:?} breaks the limit {limit}");
                assert_eq!(Some(h.len as i32), claimed);
                assert_eq!(h.total_len(), h.body_len() + HEADER_LEN);
                let Some(frame) = stream.get(..h.total_len()) else { break };
                check_whole_frame(frame);
                stream = &stream[h.total_len()..];
            }
            Err(FrameError::InvalidLength { tag, len }) => {
                assert!(len < 4 && Some(len) == claimed && tag == stream[0]);
                break;
            }
            Err(FrameError::TooLarge { tag, len, limit: l }) => {
                assert!(len > limit && l == limit && tag == stream[0]);
                assert_eq!(Some(len - 1), claimed.and_then(|c| usize::try_from(c).ok()));
                break;
            }
        }
    }
    // The decoders also see frames whose length word disagrees with their size: they must refuse them.
    check_whole_frame(data);
}

fn check_whole_frame(frame: &[u8]) {
    let b = body(frame);
    let no_nul = |s: &[u8]| !s.contains(&0);
    if let Some(sql) = messages::query_sql(b) {
        assert!(no_nul(sql));
    }
    if let Some(view) = messages::parse_view(b) {
        assert!(no_nul(view.statement) && no_nul(view.sql));
        assert_eq!(view.param_types.len() % 4, 0);
        assert_eq!(view.param_type_oids().len() * 4, view.param_types.len());
    }
    if let Some((portal, statement)) = messages::bind_names(b) {
        assert!(no_nul(portal) && no_nul(statement));
    }
    if let Some((kind, name)) = messages::target_of(b) {
        assert!((kind == b'S' || kind == b'P') && no_nul(name));
    }
    if let Some(portal) = messages::execute_portal(b) {
        assert!(no_nul(portal));
    }
    if let Some(code) = messages::sqlstate(b) {
        assert!(no_nul(code));
    }
    if let Some(parse) = messages::decode_parse(frame) {
        let view = messages::parse_view(b).expect("decoded Parse has a valid layout");
        assert_eq!(parse.query.as_bytes(), view.sql);
        assert_eq!(parse.name.as_deref().unwrap_or("").as_bytes(), view.statement);
        assert_eq!(parse.type_oids, view.param_type_oids());
    }
    if let Some((pid, secret)) = messages::decode_backend_key(frame) {
        assert!((4..=256).contains(&secret.len()), "key of {} bytes", secret.len());
        assert_eq!(&messages::encode_backend_key(pid, secret)[..], frame, "BackendKeyData round trip");
    }
    if let Some(auth) = messages::decode_authentication(frame) {
        let _ = messages::encode_authentication(&auth);
    }
    if let Some(tag) = messages::decode_command_tag(frame) {
        assert_eq!(&messages::command_complete(&tag)[..], frame, "CommandComplete round trip");
    }
}

/// Input: one untagged packet as a client sends it first (the length word is set to the input's size,
/// as the relay does after reading exactly that many bytes).
///
/// A length word outside 8..=10004 is refused before anything is read. A packet parses into one of the
/// five kinds or an error (closed without a word): a startup packet keeps its bytes and is protocol 3.x
/// with non-empty parameter names, a refused one is kept whole for the upstream, a cancel key re-encodes to
/// the same packet, and reading `dualwrite.version` from the parameters never panics.
pub fn check_startup(data: &[u8]) {
    if data.len() >= 4 {
        let word = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        match startup::check_packet_len(word) {
            Ok(len) => assert!((MIN_STARTUP_PACKET_LEN..=MAX_STARTUP_PACKET_LEN).contains(&len)),
            Err(_) => {
                assert!(!(MIN_STARTUP_PACKET_LEN as i32..=MAX_STARTUP_PACKET_LEN as i32).contains(&word));
            }
        }
    }
    let mut packet = data[..data.len().min(MAX_STARTUP_PACKET_LEN)].to_vec();
    if packet.len() >= 4 {
        let len = packet.len() as i32;
        packet[..4].copy_from_slice(&len.to_be_bytes());
    }
    let packet = Bytes::from(packet);
    match startup::parse_initial_packet(packet.clone()) {
        Ok(InitialPacket::SslRequest | InitialPacket::GssEncRequest) => {}
        Ok(InitialPacket::Cancel(key)) => {
            assert!((4..=256).contains(&key.secret.len()), "key of {} bytes", key.secret.len());
            assert_eq!(key.encode_request(), packet, "CancelRequest round trip");
        }
        Ok(InitialPacket::Startup(s)) => {
            assert_eq!(s.raw, packet);
            assert_eq!(s.protocol_major, 3);
            assert!(s.parameters.keys().all(|k| !k.is_empty() && !k.contains('\0')));
            let _ = (s.user(), s.database());
            let _ = version::startup::startup_version(s.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        Ok(InitialPacket::Refused(refused)) => assert_eq!(refused, packet),
        Err(e) => assert!(!e.message.is_empty()),
    }
    // The `options` parameter is free text from the client.
    let options = String::from_utf8_lossy(data);
    let words = version::startup::split_options(&options);
    assert!(words.iter().all(|w| !w.is_empty()));
    let _ = version::startup::version_in_options(&options);
}

/// Input: a statement text (invalid UTF-8 replaced, as the relay does).
///
/// The control grammar either parses it (then the cheap first-word check agrees it is a control command
/// and the values are in range) or answers a 42601 whose position lies within the text; the
/// `dualwrite.version` / transaction classifier either classifies it or answers a 42601 too. Every error
/// encodes as an ErrorResponse whose SQLSTATE the relay reads back.
pub fn check_control(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let chars = sql.chars().count();
    let cheap = control::is_control_command(&sql);
    match control::parse_control(&sql) {
        Ok(command) => {
            assert!(cheap, "parsed a control command the cheap check would not route: {sql:?}");
            match command {
                ControlCommand::Route { migration, target, percent } => {
                    assert!(!migration.is_empty() && percent <= 100);
                    if let ReadTarget::Version(v) = target {
                        assert!(!v.is_empty());
                    } else {
                        assert_eq!(percent, 100);
                    }
                }
                ControlCommand::Backfill { migration, batch, rate, .. } => {
                    assert!(!migration.is_empty() && batch != Some(0) && rate != Some(0));
                }
                ControlCommand::Audit { migration, limit } => {
                    assert!(migration.is_none_or(|m| !m.is_empty()) && limit != Some(0));
                }
                ControlCommand::Phase { migration, .. }
                | ControlCommand::Rollback { migration }
                | ControlCommand::Verify { migration, .. } => assert!(!migration.is_empty()),
                ControlCommand::Status | ControlCommand::AuditVerify | ControlCommand::Pools => {}
            }
        }
        Err(e) => check_syntax_error(&e, chars),
    }
    match version::statement::classify_query(&sql) {
        Ok(statements) => assert!(statements.len() <= sql.matches(';').count() + 1),
        Err(e) => check_syntax_error(&e, chars),
    }
}

fn check_syntax_error(e: &SqlError, chars: usize) {
    assert_eq!(e.code, "42601", "{e:?}");
    assert!(!e.message.is_empty());
    if let Some(p) = e.position {
        assert!(p >= 1 && p as usize <= chars + 1, "position {p} outside a text of {chars} characters");
    }
    let frame = messages::error_response(e);
    assert_eq!(messages::sqlstate(body(&frame)), Some(e.code.as_bytes()));
}
