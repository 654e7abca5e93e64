//! Startup packets Postgres refuses with an ErrorResponse before authentication (a protocol version it
//! does not speak, a packet with no room for its terminator): the packet goes to the upstream and the
//! client gets the upstream's refusal byte for byte, in whatever format and words the server's version
//! uses (Postgres answers a protocol 2 client in protocol 2's format), then the close.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{send_error, READ_CHUNK};
use crate::metrics;
use crate::protocol::messages::SqlError;
use crate::server_context::ServerContext;
use crate::stream::Stream;
use crate::upstream;

/// A refusal is one ErrorResponse, a few hundred bytes; more than this is not a refusal.
const MAX_REFUSAL_LEN: usize = 16 * 1024;

/// Shows `packet` to the upstream and relays its refusal to `client`. Only a refusal is relayed: an
/// upstream that answers anything but an error first (an old server that still speaks protocol 2) would
/// start a session the proxy cannot follow, so the client gets the proxy's own error instead.
pub(super) async fn relay(mut client: Stream, packet: &[u8], ctx: &ServerContext) {
    metrics::count_refused("bad_startup_packet");
    let answer = match upstream_answer(packet, ctx).await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            send_error(&mut client, &own_refusal(code)).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream connection failed");
            send_error(&mut client, &SqlError::fatal("08001", e.to_string())).await;
            return;
        }
    };
    let _ = client.write_all(&answer).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// Postgres's words (those of versions 15 to 17) for a startup packet with protocol `code` that no session
/// can start with, for when the upstream cannot be asked: a second SSLRequest or GSSENCRequest (codes
/// 1234.5679 and 1234.5680 once the first was answered), or a packet the upstream did not refuse.
pub(super) fn own_refusal(code: u32) -> SqlError {
    match code >> 16 {
        3 => SqlError::fatal("08P01", "invalid startup packet layout: expected terminator as last byte"),
        major => SqlError::fatal(
            "0A000",
            format!("unsupported frontend protocol {major}.{}: server supports 3.0 to 3.0", code & 0xffff),
        ),
    }
}

/// The upstream's answer to `packet` up to its close, when that answer is an error (`E` opens an
/// ErrorResponse in every protocol version); `None` when it answered something else or not in time.
async fn upstream_answer(packet: &[u8], ctx: &ServerContext) -> Result<Option<Vec<u8>>, upstream::ConnectError> {
    let mut upstream = upstream::connect(&ctx.upstream).await?;
    let exchange = async {
        upstream.write_all(packet).await?;
        upstream.flush().await?;
        let mut answer = Vec::with_capacity(READ_CHUNK);
        loop {
            let mut chunk = [0u8; 1024];
            let n = upstream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Some(answer));
            }
            answer.extend_from_slice(&chunk[..n]);
            if answer[0] != b'E' || answer.len() > MAX_REFUSAL_LEN {
                return Ok(None);
            }
        }
    };
    match tokio::time::timeout(ctx.upstream.connect_timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer.filter(|a| !a.is_empty())),
        Ok(Err(_)) | Err(_) => Ok(None),
    }
}
