//! Transaction mode: a server connection opened for a waiting client without a login of its own, when
//! the pool hands the client room (a connection was closed and the pool is below its size). The proxy
//! stores no password, so this works only where the server lets the client's user in without one (e.g.
//! `trust`); a server that asks for a password (or any other exchange) is left at once
//! ([`OpenFailure::NeedsCredentials`]) and the pool stops trying. The connection is opened as the
//! waiting client's own was, with its startup packet (the pool key's user, database and parameters).

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pool::registry::ServerConn;
use crate::pool::OpenFailure;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{self, body, btag, SqlError};
use crate::protocol::startup::{CancelKey, StartupPacket};
use crate::server_context::ServerContext;
use crate::stream::Stream;
use crate::upstream;

/// Startup messages are small; a larger frame means something else is talking.
const MAX_STARTUP_FRAME: usize = 1 << 20;

/// Opens and authenticates a server connection for the pool of `startup`, within the startup timeout.
pub(super) async fn open(ctx: &ServerContext, startup: &StartupPacket) -> Result<ServerConn, OpenFailure> {
    let limit = ctx.config.limits.startup_timeout();
    match tokio::time::timeout(limit, login(ctx, startup)).await {
        Ok(opened) => opened,
        Err(_) => Err(failed(format!("timed out after {}s opening a server connection for the pool", limit.as_secs()))),
    }
}

fn failed(message: String) -> OpenFailure {
    OpenFailure::Failed(SqlError::fatal("08001", message))
}

async fn login(ctx: &ServerContext, startup: &StartupPacket) -> Result<ServerConn, OpenFailure> {
    let (mut stream, host) = upstream::connect_session(&ctx.upstream).await.map_err(|e| failed(e.to_string()))?;
    let lost = |e: std::io::Error| failed(format!("opening a server connection for the pool: {e}"));
    stream.write_all(&startup.raw).await.map_err(lost)?;
    stream.flush().await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut key = None;
    loop {
        if stream.read_buf(&mut buf).await.map_err(lost)? == 0 {
            return Err(failed("the server closed a connection opened for the pool during its startup".into()));
        }
        while let Some(header) = peek_header(&buf, MAX_STARTUP_FRAME).map_err(|e| failed(e.to_string()))? {
            if buf.len() < header.total_len() {
                break;
            }
            let frame = buf.split_to(header.total_len());
            match frame[0] {
                btag::AUTHENTICATION if messages::auth_wants_answer(&frame) => {
                    // Dropped without an answer: the server ends the attempt without logging an error.
                    return Err(OpenFailure::NeedsCredentials);
                }
                btag::BACKEND_KEY_DATA => {
                    key = messages::decode_backend_key(&frame).map(|(pid, secret)| CancelKey { pid, secret });
                }
                btag::PARAMETER_STATUS => refuse_standby(ctx, host, &frame)?,
                btag::ERROR_RESPONSE => {
                    let text = |code| messages::field(body(&frame), code).map(String::from_utf8_lossy);
                    let code = text(b'C').unwrap_or_default().into_owned();
                    let message = text(b'M').unwrap_or_default().into_owned();
                    return Err(OpenFailure::Failed(SqlError::fatal(code, message)));
                }
                btag::READY_FOR_QUERY => {
                    tracing::debug!(pid = key.as_ref().map(|k| k.pid), "server connection opened for a waiting client");
                    return Ok(server_conn(stream, key));
                }
                // AuthenticationOk, notices, NegotiateProtocolVersion: nothing to do.
                _ => {}
            }
        }
    }
}

fn server_conn(stream: Stream, key: Option<CancelKey>) -> ServerConn {
    let mut conn = ServerConn::new(stream);
    conn.key = key;
    conn
}

/// A server that reports `in_hot_standby = on` where the URL asks for the primary is refused, as a
/// client's own login there would be (see `session::backend`).
fn refuse_standby(ctx: &ServerContext, host: usize, frame: &[u8]) -> Result<(), OpenFailure> {
    let mut fields = crate::protocol::frame::BodyReader::new(body(frame));
    let (Some(name), Some(value)) = (fields.cstr(), fields.cstr()) else { return Ok(()) };
    let topology = &ctx.upstream.topology;
    let Some(reason) =
        topology.attrs().refuses_parameter(&String::from_utf8_lossy(name), &String::from_utf8_lossy(value))
    else {
        return Ok(());
    };
    topology.lost(host);
    let message =
        format!("{} (target_session_attrs={})", ctx.upstream.host(host).failed(reason), topology.attrs().as_str());
    Err(failed(message))
}
