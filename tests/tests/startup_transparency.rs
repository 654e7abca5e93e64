//! Before authentication the proxy answers as Postgres does: each kind of bad first packet is sent to the
//! real server and to the proxy in front of it, and what comes back (each message's tag, an error's
//! severity, SQLSTATE and message, protocol 2's plain-text error) and how the connection ends (closed
//! without a word, or a session) must be the same. (GSSENCRequest is left out: Debian's Postgres is built with
//! GSSAPI and answers `G`, then expects a GSSAPI handshake; the proxy has no GSSAPI and answers `N`, as a
//! server built without it does.)

use std::net::SocketAddr;
use std::time::Duration;

use dualwrite_tests::{TestCluster, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one exchange: every case ends (a close or a session) long before this.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(20);

/// An untagged packet: the length word, then `code` (a protocol version or request code), then `body`.
fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut p = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(body);
    p
}

const PROTOCOL_3_0: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const CANCEL_REQUEST: u32 = 80_877_102;

/// How an exchange ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The server closed the connection (a FIN, or a reset when it left bytes unread).
    Closed,
    /// The server said ReadyForQuery: a session started (the test then sends Terminate).
    Session,
}

/// Sends each step (the answer to every step but the last is the one byte answering an encryption
/// request, read before the next step is sent), half-closes if `then_eof`, and returns each message that
/// came back, summarised, and how the exchange ended.
async fn exchange(addr: SocketAddr, steps: &[Vec<u8>], then_eof: bool, case: &str) -> (Vec<String>, Ending) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut received = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        socket.write_all(step).await.unwrap();
        if i + 1 < steps.len() {
            let mut answer = [0u8];
            socket.read_exact(&mut answer).await.unwrap();
            received.push(answer[0]);
        }
    }
    if then_eof {
        socket.shutdown().await.unwrap();
    }
    let ending = tokio::time::timeout(EXCHANGE_LIMIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ending::Closed,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
            if summarise(&received).last().is_some_and(|m| m.starts_with("ReadyForQuery")) {
                let _ = socket.write_all(b"X\0\0\0\x04").await;
                return Ending::Session;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("{case}, {addr}: neither a close nor a session within {EXCHANGE_LIMIT:?}: {received:?}")
    });
    (summarise(&received), ending)
}

/// The messages in `bytes`, with what must match between server and proxy: an error's or notice's
/// fields but its source location (F, L, R), NegotiateProtocolVersion whole, parameter names; a
/// protocol 2 error (`E` and a C string, no length word) as its text.
fn summarise(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&tag, after)) = rest.split_first() {
        let len = after.get(..4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize);
        let Some(body) = len.filter(|&l| l >= 4 && l <= after.len()).map(|l| &after[4..l]) else {
            if tag == b'N' {
                // Not a NoticeResponse: the one-byte answer to an SSLRequest.
                out.push("SSLRequest refused (N)".to_string());
                rest = after;
                continue;
            }
            out.push(format!("{:?}, not a protocol 3 message", String::from_utf8_lossy(rest)));
            break;
        };
        out.push(match tag {
            b'E' | b'N' => {
                let fields = body.split(|&b| b == 0).filter(|f| !f.is_empty() && !b"FLR".contains(&f[0]));
                let fields: Vec<String> =
                    fields.map(|f| format!("{}={}", f[0] as char, String::from_utf8_lossy(&f[1..]))).collect();
                format!("{} {}", tag as char, fields.join(" "))
            }
            b'v' => format!("NegotiateProtocolVersion {body:?}"),
            b'R' => format!("Authentication {:?}", &body[..4.min(body.len())]),
            b'S' => format!("ParameterStatus {}", String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap())),
            b'K' => "BackendKeyData".to_string(),
            b'Z' => format!("ReadyForQuery {}", body[0] as char),
            other => format!("message {}", other as char),
        });
        rest = &after[len.unwrap()..];
    }
    out
}

#[tokio::test]
async fn bad_first_packets_get_the_answer_postgres_gives() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::relay(&db).await.unwrap();
    let user = cluster.superuser().to_string();
    let login = format!("user\0{user}\0database\0{}\0\0", db.name);

    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        ("Terminate before the startup packet", vec![b"X\0\0\0\x04".to_vec()], false),
        ("Query before the startup packet", vec![b"Q\0\0\0\x0dSELECT 1\0".to_vec()], false),
        ("a length word below 8", vec![[0, 0, 0, 7, 0, 3, 0].to_vec()], false),
        ("a negative length word", vec![[0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0].to_vec()], false),
        (
            "a length word above 10004",
            vec![[&10_005u32.to_be_bytes()[..], &PROTOCOL_3_0.to_be_bytes()].concat()],
            false,
        ),
        ("protocol 2.0", vec![packet(2 << 16, login.as_bytes())], false),
        ("protocol 1.0", vec![packet(1 << 16, login.as_bytes())], false),
        ("protocol 4.0", vec![packet(4 << 16, login.as_bytes())], false),
        ("protocol 3.99", vec![packet(PROTOCOL_3_0 + 99, login.as_bytes())], false),
        (
            "a startup packet without user",
            vec![packet(PROTOCOL_3_0, format!("database\0{}\0\0", db.name).as_bytes())],
            false,
        ),
        (
            "a startup packet without its terminator",
            vec![packet(PROTOCOL_3_0, &login.as_bytes()[..login.len() - 1])],
            false,
        ),
        ("a startup packet without parameters or terminator", vec![packet(PROTOCOL_3_0, b"")], false),
        ("random bytes", vec![b"\x9b\x1f\x42\x07\xe3\x88\x10\x5a\xc4\x61\x0d\x3e\x97\x22\xfa\x04".to_vec()], false),
        ("random bytes after a valid length", vec![packet(0x1234_5678, b"\xc4\x61\x0d\x3e\x97\x22\xfa\x04")], false),
        ("an HTTP request", vec![b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()], false),
        (
            "a TLS ClientHello without SSLRequest",
            vec![[&b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03"[..], &[7; 32]].concat()],
            false,
        ),
        ("EOF in the length word", vec![[0, 0].to_vec()], true),
        ("EOF in the startup packet", vec![packet(PROTOCOL_3_0, login.as_bytes())[..12].to_vec()], true),
        ("a CancelRequest without its key", vec![packet(CANCEL_REQUEST, b"")], false),
        ("SSLRequest, then Terminate", vec![[packet(SSL_REQUEST, b""), b"X\0\0\0\x04".to_vec()].concat()], false),
        ("SSLRequest twice", vec![packet(SSL_REQUEST, b""), packet(SSL_REQUEST, b"")], false),
        ("a good startup packet", vec![packet(PROTOCOL_3_0, login.as_bytes())], false),
    ];
    let mut mismatches = Vec::new();
    for (case, steps, then_eof) in &cases {
        let server = exchange(cluster.addr(), steps, *then_eof, case).await;
        let via_proxy = exchange(proxy.addr(), steps, *then_eof, case).await;
        if server != via_proxy {
            mismatches.push(format!("{case}:\n  server: {server:?}\n  proxy:  {via_proxy:?}"));
        }
    }
    assert!(mismatches.is_empty(), "the proxy answered differently:\n{}", mismatches.join("\n"));
}

/// The comparison above can tell the answers apart: Postgres answers a protocol 2 client in protocol 2's
/// format, closes silently on a bad length, and starts a session for a good packet.
#[tokio::test]
async fn the_kinds_of_answer_differ() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let login = format!("user\0{}\0database\0{}\0\0", cluster.superuser(), db.name);
    let (v2, ending) = exchange(cluster.addr(), &[packet(2 << 16, login.as_bytes())], false, "").await;
    assert_eq!(ending, Ending::Closed);
    assert_eq!(v2.len(), 1, "{v2:?}");
    assert!(v2[0].starts_with("\"EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to"), "{v2:?}");
    assert_eq!(exchange(cluster.addr(), &[b"X\0\0\0\x04".to_vec()], false, "").await, (vec![], Ending::Closed));
    let (no_user, _) = exchange(cluster.addr(), &[packet(PROTOCOL_3_0, b"database\0postgres\0\0")], false, "").await;
    assert_eq!(
        no_user,
        vec!["E S=FATAL V=FATAL C=28000 M=no PostgreSQL user name specified in startup packet".to_string()]
    );
    let (session, ending) = exchange(cluster.addr(), &[packet(PROTOCOL_3_0, login.as_bytes())], false, "").await;
    assert_eq!(ending, Ending::Session);
    assert!(session.contains(&"BackendKeyData".to_string()), "{session:?}");
}
