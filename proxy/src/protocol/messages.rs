//! The few messages the relay decodes or synthesizes, and in-place views of the fields it reads on the hot
//! path. Whole-message decoding and all encoding go through pgwire's codec; the views below only locate
//! fields inside an already length-checked frame body (no allocation, no lossy UTF-8), so SQL that is
//! passed through is forwarded as the original bytes.

use bytes::{Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{Bind, BindComplete, Close, CloseComplete, Execute, Parse, ParseComplete};
use pgwire::messages::response::{CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

use super::frame::{BodyReader, HEADER_LEN};

/// Frontend message tags the relay acts on.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// Backend message tags the relay acts on.
pub mod btag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
}

/// The body of a whole frame (header stripped).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    frame.get(HEADER_LEN..).unwrap_or(&[])
}

// ---------------------------------------------------------------------------------------------------------
// In-place views of frontend messages.

/// The SQL of a Query body, without its terminator.
pub fn query_sql(body: &[u8]) -> Option<&[u8]> {
    BodyReader::new(body).cstr()
}

/// Statement name and SQL of a Parse body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub statement: &'a [u8],
    pub sql: &'a [u8],
    /// The parameter type OIDs, 4 bytes each, big-endian.
    pub param_types: &'a [u8],
}

impl ParseView<'_> {
    pub fn param_type_oids(&self) -> Vec<u32> {
        self.param_types.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

pub fn parse_view(body: &[u8]) -> Option<ParseView<'_>> {
    let mut r = BodyReader::new(body);
    let statement = r.cstr()?;
    let sql = r.cstr()?;
    let count = r.i16()?;
    let param_types = r.take(usize::try_from(count).ok()? * 4)?;
    Some(ParseView { statement, sql, param_types })
}

/// Portal and statement names of a Bind body.
pub fn bind_names(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = BodyReader::new(body);
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Some((portal, statement))
}

/// Target kind (`b'S'` statement or `b'P'` portal) and name of a Describe or Close body.
pub fn target_of(body: &[u8]) -> Option<(u8, &[u8])> {
    let mut r = BodyReader::new(body);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return None;
    }
    Some((kind, r.cstr()?))
}

/// The portal of an Execute body.
pub fn execute_portal(body: &[u8]) -> Option<&[u8]> {
    BodyReader::new(body).cstr()
}

/// True if an Execute body asks for every row (row limit 0), i.e. runs its portal to completion.
pub fn execute_runs_to_completion(body: &[u8]) -> bool {
    let mut reader = BodyReader::new(body);
    reader.cstr().is_some() && reader.i32() == Some(0) && reader.remaining().is_empty()
}

// ---------------------------------------------------------------------------------------------------------
// In-place views of backend messages.

/// The SQLSTATE ('C' field) of an ErrorResponse or NoticeResponse body.
pub fn sqlstate(body: &[u8]) -> Option<&[u8]> {
    field(body, b'C')
}

/// One field of an ErrorResponse or NoticeResponse body.
pub fn field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut r = BodyReader::new(body);
    loop {
        let c = r.u8()?;
        if c == 0 {
            return None;
        }
        let value = r.cstr()?;
        if c == code {
            return Some(value);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Decoding with pgwire: only on the paths that change a message.

fn backend_context() -> DecodeContext {
    // 3.2 so that BackendKeyData keys of any length are read as bytes (3.0 servers send 4 of them).
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_2);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

fn decode_whole<M: Message>(frame: &[u8]) -> Option<M> {
    // The length word must match the frame exactly: pgwire's decoders trust it.
    let len = i32::from_be_bytes(frame.get(1..HEADER_LEN)?.try_into().ok()?);
    if usize::try_from(len).ok()? + 1 != frame.len() {
        return None;
    }
    let mut buf = BytesMut::from(frame);
    let msg = M::decode(&mut buf, &backend_context()).ok()??;
    // Anything left over means the frame did not have the layout we decoded.
    buf.is_empty().then_some(msg)
}

/// The (pid, secret key) of a BackendKeyData frame.
pub fn decode_backend_key(frame: &[u8]) -> Option<(i32, Bytes)> {
    // pid (4 bytes) and a key of 4..=256 bytes; pgwire would underflow on less.
    if !(HEADER_LEN + 8..=HEADER_LEN + 4 + 256).contains(&frame.len()) {
        return None;
    }
    let msg: BackendKeyData = decode_whole(frame)?;
    Some((msg.pid, msg.secret_key.to_bytes()))
}

/// An Authentication frame; `None` for the kinds pgwire does not model (GSS, SSPI), which are relayed.
pub fn decode_authentication(frame: &[u8]) -> Option<Authentication> {
    // The code word, and for MD5 its 4-byte salt, must be there: pgwire reads them unchecked.
    let mut r = BodyReader::new(frame.get(HEADER_LEN..)?);
    let code = r.i32()?;
    if code == 5 && r.remaining().len() != 4 {
        return None;
    }
    decode_whole(frame)
}

/// The tag of a CommandComplete frame.
pub fn decode_command_tag(frame: &[u8]) -> Option<String> {
    let msg: CommandComplete = decode_whole(frame)?;
    Some(msg.tag)
}

/// Decodes a Parse frame (statement name, SQL, parameter types), for the paths that re-encode it.
pub fn decode_parse(frame: &[u8]) -> Option<Parse> {
    // Parse bodies are checked by `parse_view` first: pgwire's decoder assumes a well-formed body.
    parse_view(body(frame))?;
    let mut buf = BytesMut::from(frame);
    let mut ctx = backend_context();
    ctx.protocol_version = ProtocolVersion::PROTOCOL3_0;
    Parse::decode(&mut buf, &ctx).ok()?
}

// ---------------------------------------------------------------------------------------------------------
// Encoding with pgwire.

fn encode<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(msg.message_length() + 1);
    match msg.encode(&mut buf) {
        Ok(()) => buf.freeze(),
        // Only size limits can fail; a synthesized message over them is a bug we must not send half of.
        Err(e) => {
            tracing::error!(error = %e, "could not encode a synthesized message");
            error_response(&SqlError::new("XX000", "dualwrite could not encode a response"))
        }
    }
}

pub fn encode_backend_key(pid: i32, secret: Bytes) -> Bytes {
    encode(&BackendKeyData::new(pid, SecretKey::Bytes(secret)))
}

pub fn encode_authentication(auth: &Authentication) -> Bytes {
    encode(auth)
}

pub fn command_complete(tag: &str) -> Bytes {
    encode(&CommandComplete::new(tag.to_owned()))
}

pub fn ready_for_query(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

pub fn parse_complete() -> Bytes {
    encode(&ParseComplete::new())
}

pub fn bind_complete() -> Bytes {
    encode(&BindComplete::new())
}

pub fn close_complete() -> Bytes {
    encode(&CloseComplete::new())
}

pub fn no_data() -> Bytes {
    encode(&NoData::new())
}

pub fn parameter_description(types: Vec<u32>) -> Bytes {
    encode(&ParameterDescription::new(types))
}

/// Encodes a Query frame carrying `sql`.
pub fn query(sql: &str) -> Bytes {
    encode(&Query::new(sql.to_owned()))
}

/// Encodes a Parse frame.
pub fn parse(statement: Option<String>, sql: &str, type_oids: Vec<u32>) -> Bytes {
    encode(&Parse::new(statement, sql.to_owned(), type_oids))
}

/// Encodes a Bind of `statement` into `portal` without parameters, results in text.
pub fn bind(portal: &str, statement: &str) -> Bytes {
    encode(&Bind::new(non_empty(portal), non_empty(statement), Vec::new(), Vec::new(), Vec::new()))
}

/// Encodes an Execute of `portal`, all rows.
pub fn execute(portal: &str) -> Bytes {
    encode(&Execute::new(non_empty(portal), 0))
}

/// Encodes a Close of a prepared statement.
pub fn close_statement(statement: &str) -> Bytes {
    encode(&Close::new(b'S', non_empty(statement)))
}

fn non_empty(name: &str) -> Option<String> {
    (!name.is_empty()).then(|| name.to_owned())
}

/// OID of `text`: synthesized result columns are text, whose binary and text forms are the same bytes.
pub const TEXT_OID: u32 = 25;

/// A RowDescription of text columns.
pub fn row_description(columns: &[String]) -> Bytes {
    let fields = columns
        .iter()
        .map(|name| FieldDescription::new(name.clone(), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    encode(&RowDescription::new(fields))
}

/// A DataRow of text values.
pub fn data_row(values: &[Option<String>]) -> Bytes {
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(s) => {
                data.extend_from_slice(&(s.len() as i32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    encode(&DataRow::new(data, values.len() as i16))
}

/// An error the proxy reports itself, with the fields Postgres would fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// "ERROR" or "FATAL".
    pub severity: &'static str,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement text (field `P`).
    pub position: Option<u32>,
}

impl SqlError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        SqlError {
            severity: "ERROR",
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        SqlError { severity: "FATAL", ..SqlError::new(code, message) }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

pub fn error_response(err: &SqlError) -> Bytes {
    let mut fields = vec![
        (b'S', err.severity.to_owned()),
        (b'V', err.severity.to_owned()),
        (b'C', err.code.clone()),
        (b'M', err.message.clone()),
    ];
    if let Some(d) = &err.detail {
        fields.push((b'D', d.clone()));
    }
    if let Some(h) = &err.hint {
        fields.push((b'H', h.clone()));
    }
    if let Some(p) = err.position {
        fields.push((b'P', p.to_string()));
    }
    let mut buf = BytesMut::new();
    // ErrorResponse has no practical size limit in pgwire; encoding cannot fail.
    let _ = ErrorResponse::new(fields).encode(&mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_find_fields_in_place() {
        let frame = parse(Some("s1".into()), "select $1", vec![23]);
        assert_eq!(frame[0], tag::PARSE);
        let v = parse_view(body(&frame)).unwrap();
        assert_eq!(v.statement, b"s1");
        assert_eq!(v.sql, b"select $1");
        let p = decode_parse(&frame).unwrap();
        assert_eq!(p.type_oids, vec![23]);
        assert!(parse_view(b"s1\0select\0\0\x05").is_none(), "lying parameter count");
        assert_eq!(bind_names(b"p\0s\0\0\0"), Some((&b"p"[..], &b"s"[..])));
        assert_eq!(target_of(b"S\0"), Some((b'S', &b""[..])));
        assert!(execute_runs_to_completion(body(&execute("p1"))));
        assert!(!execute_runs_to_completion(b"p1\0\0\0\0\x01"), "a row limit of 1");
        assert!(!execute_runs_to_completion(b"p1\0\0\0"), "truncated");
        assert_eq!(target_of(b"X\0"), None);
        assert_eq!(query_sql(body(&query("select 1"))), Some(&b"select 1"[..]));
    }

    #[test]
    fn sqlstate_is_read_from_errors() {
        let frame = error_response(&SqlError::fatal("57P01", "bye").with_hint("h"));
        assert_eq!(sqlstate(body(&frame)), Some(&b"57P01"[..]));
        assert_eq!(field(body(&frame), b'S'), Some(&b"FATAL"[..]));
        assert_eq!(field(body(&frame), b'H'), Some(&b"h"[..]));
        assert_eq!(sqlstate(b"Mno code\0"), None, "truncated body");
    }

    #[test]
    fn backend_key_round_trip() {
        let frame = encode_backend_key(42, Bytes::from_static(b"wxyz"));
        assert_eq!(&frame[..], b"K\0\0\0\x0c\0\0\0\x2awxyz");
        assert_eq!(decode_backend_key(&frame), Some((42, Bytes::from_static(b"wxyz"))));
        assert_eq!(decode_command_tag(&command_complete("UPDATE 3")).as_deref(), Some("UPDATE 3"));
    }

    /// Every reader and decoder here sees bytes from the network: none may panic on any input.
    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let tags = b"QPBDECSHFXdRKZETtnI123sVGHWvA";
        for round in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 5 {
                frame[0] = tags[(next() as usize) % tags.len()];
                // Half of the time a length word that matches the frame.
                if round % 2 == 0 {
                    frame[1..5].copy_from_slice(&((len - 1) as i32).to_be_bytes());
                }
            }
            let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
            let _ = query_sql(body);
            let _ = parse_view(body);
            let _ = bind_names(body);
            let _ = target_of(body);
            let _ = execute_portal(body);
            let _ = sqlstate(body);
            let _ = decode_parse(&frame);
            let _ = decode_backend_key(&frame);
            let _ = decode_authentication(&frame);
            let _ = decode_command_tag(&frame);
            let _ = super::super::frame::peek_header(&frame, 1 << 20);
            let _ = super::super::startup::parse_initial_packet(Bytes::from(frame));
        }
    }

    #[test]
    fn data_rows_encode_nulls() {
        let row = data_row(&[Some("a".into()), None]);
        assert_eq!(&row[..], b"D\0\0\0\x0f\0\x02\0\0\0\x01a\xff\xff\xff\xff");
    }
}
