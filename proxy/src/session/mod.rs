//! One client session: TLS/startup negotiation with the client, then in session mode one upstream
//! connection for the whole session (in transaction mode one per transaction, see [`pooled`]), and the
//! two relay directions running concurrently in one task ([`frontend`]: client -> upstream,
//! [`backend`]: upstream -> client), sharing only the response queue and a few atomics. Lifetimes follow
//! the design's transparency rules: a client that goes away ends the upstream session at once (with a
//! cancel if a query runs), an upstream that goes away closes the client right after its error.

mod backend;
mod frontend;
pub(crate) mod pooled;
mod refusal;
mod replacement;
mod shared;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use self::backend::{Backend, BackendEnd};
use self::frontend::{Frontend, FrontendEnd, Upstream};
use self::pooled::PooledLink;
use crate::cancel::{self, CancelRoute};
use crate::config::{PoolConfig, PoolMode};
use crate::interceptor::SessionInfo;
use crate::metrics::{self, GaugeGuard, SessionMetrics};
use crate::pool::registry::ServerConn;
use crate::protocol::messages::SqlError;
use crate::protocol::startup::{self, CancelKey, InitialPacket, StartupError, StartupPacket};
use crate::server_context::ServerContext;
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::upstream;

pub(crate) use self::shared::{
    prepare_read_buffer, send_error, write_chunks, SessionShared, READ_CHUNK, STREAM_THRESHOLD,
};

/// Serves one accepted client connection to its end.
pub(crate) async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<ServerContext>, shutdown: watch::Receiver<bool>) {
    let _client_gauge = GaugeGuard::client();
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(ctx.config.limits.startup_timeout(), negotiate(tcp, &ctx)).await;
    let (mut client, startup) = match handshake {
        Ok(Ok(Opened::Session(client, startup))) => (client, startup),
        Ok(Ok(Opened::Cancel(client, key))) => {
            // Outside the startup timeout: the upstream's or a peer's connect has timeouts of its own.
            handle_cancel(&ctx, &key).await;
            // Postgres answers a CancelRequest with nothing but the close, whether the key matched or not;
            // the close comes once the request has been passed on.
            drop(client);
            return;
        }
        Ok(Ok(Opened::Done)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client handshake failed");
            return;
        }
        Err(_) => {
            // Like Postgres's authentication_timeout: no message (the client may be mid-TLS), just the close.
            let timeout_secs = ctx.config.limits.startup_timeout_secs;
            tracing::info!(%peer, timeout_secs, "closing a client that did not send its startup packet in time");
            metrics::count_refused("startup_timeout");
            return;
        }
    };

    let pool = ctx.config.pool_settings(startup.database(), startup.user());
    // A replication connection is a session of its own whatever the pool mode.
    if pool.mode == PoolMode::Transaction && !startup.parameters.contains_key("replication") {
        return serve_pooled(client, peer, startup, ctx, shutdown, pool).await;
    }
    let Some((upstream, upstream_host)) = open_upstream(&mut client, peer, &startup, &ctx).await else { return };
    let _upstream_gauge = GaugeGuard::upstream();
    let info = session_info(peer, &startup, client.is_tls(), &ctx);
    let (up_read, mut up_write) = upstream.split();
    let (client_read, mut client_write) = client.split();
    tracing::debug!(%peer, user = startup.user(), database = startup.database(), "session started");

    let shared = SessionShared::new();
    let session_metrics = SessionMetrics::new();
    let mut up_read = Some(up_read);
    let parts =
        Parts { shared: &shared, ctx: &ctx, metrics: &session_metrics, info, shutdown, link: None, upstream_host };
    let ended = parts.drive(client_read, &mut client_write, &mut up_read, Upstream::Fixed(&mut up_write)).await;
    match ended {
        Ended::Frontend(FrontendEnd::Terminated)
        | Ended::Backend(BackendEnd::UpstreamClosed | BackendEnd::ShutdownIdle) => {
            let _ = client_write.shutdown().await;
            let _ = up_write.shutdown().await;
        }
        Ended::Frontend(FrontendEnd::ClientGone | FrontendEnd::UpstreamBroken)
        | Ended::Backend(BackendEnd::ClientGone) => {
            abandon_upstream(&shared, &ctx);
        }
        Ended::Frontend(FrontendEnd::Violation(err) | FrontendEnd::NoServer(err)) => {
            tracing::info!(%peer, error = %err.message, "client broke the protocol; closing its session");
            send_error(&mut client_write, &err).await;
            abandon_upstream(&shared, &ctx);
        }
    }
    tracing::debug!(%peer, "session ended");
}

/// Transaction mode: the client authenticates on a connection opened in a slot of its pool, which then
/// lends it a connection per transaction.
async fn serve_pooled(
    mut client: Stream,
    peer: SocketAddr,
    startup: StartupPacket,
    ctx: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
    config: PoolConfig,
) {
    let pool = ctx.pools.pool(&startup, &config);
    let slot = match pool.open().await {
        Ok((slot, evicted)) => {
            if let Some(idle) = evicted {
                pooled::close_server(idle);
            }
            slot
        }
        Err(err) => {
            tracing::info!(%peer, "no server connection free for a client to authenticate on");
            send_error(&mut client, &err).await;
            return;
        }
    };
    let Some((upstream, upstream_host)) = open_upstream(&mut client, peer, &startup, &ctx).await else { return };
    let lease = slot.fill(ServerConn::new(upstream));
    let info = session_info(peer, &startup, client.is_tls(), &ctx);
    let (client_read, mut client_write) = client.split();
    tracing::debug!(%peer, user = startup.user(), database = startup.database(), "pooled session started");

    let shared = SessionShared::new();
    let session_metrics = SessionMetrics::new();
    let link = PooledLink::new(&shared, &ctx, &startup, lease);
    let mut up_read = None;
    // The startup's ParameterStatus (judged against target_session_attrs) comes from the connection the
    // client authenticated on; the pool's later connections were each judged by their own client's.
    let parts = Parts {
        shared: &shared,
        ctx: &ctx,
        metrics: &session_metrics,
        info,
        shutdown,
        link: Some(&link),
        upstream_host,
    };
    let ended = parts.drive(client_read, &mut client_write, &mut up_read, Upstream::Pooled(&link)).await;
    let clean = match ended {
        Ended::Frontend(FrontendEnd::Terminated) | Ended::Backend(BackendEnd::ShutdownIdle) => {
            let _ = client_write.shutdown().await;
            true
        }
        Ended::Backend(BackendEnd::UpstreamClosed) => {
            let _ = client_write.shutdown().await;
            false
        }
        Ended::Frontend(FrontendEnd::ClientGone | FrontendEnd::UpstreamBroken)
        | Ended::Backend(BackendEnd::ClientGone) => {
            abandon_upstream(&shared, &ctx);
            false
        }
        Ended::Frontend(FrontendEnd::NoServer(err)) => {
            tracing::info!(%peer, error = %err.message, "no server connection came free in time; closing the client");
            send_error(&mut client_write, &err).await;
            true
        }
        Ended::Frontend(FrontendEnd::Violation(err)) => {
            tracing::info!(%peer, error = %err.message, "client broke the protocol; closing its session");
            send_error(&mut client_write, &err).await;
            abandon_upstream(&shared, &ctx);
            false
        }
    };
    link.finish(clean, up_read);
    tracing::debug!(%peer, "pooled session ended");
}

fn session_info(peer: SocketAddr, startup: &StartupPacket, tls: bool, ctx: &ServerContext) -> SessionInfo {
    let parameters = startup.parameters.clone();
    SessionInfo { client_addr: peer, parameters, backend_pid: 0, tls, pools: Some(ctx.pools.view()) }
}

/// Opens the session's upstream connection (on the host `topology` chooses; its index is returned with it)
/// and relays the startup packet; `None` when that failed (the client was told).
async fn open_upstream(
    client: &mut Stream,
    peer: SocketAddr,
    startup: &StartupPacket,
    ctx: &ServerContext,
) -> Option<(Stream, usize)> {
    let (mut upstream, upstream_host) = match upstream::connect_session(&ctx.upstream).await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "upstream connection failed");
            send_error(client, &SqlError::fatal("08001", e.to_string())).await;
            return None;
        }
    };
    if upstream.write_all(&startup.raw).await.is_err() || upstream.flush().await.is_err() {
        let err = SqlError::fatal(
            "08006",
            format!("connection to upstream server at {} lost", ctx.upstream.host(upstream_host).describe()),
        );
        send_error(client, &err).await;
        return None;
    }
    if let Err(e) = upstream::await_startup_answer(&upstream, &ctx.upstream, upstream_host).await {
        tracing::warn!(%peer, error = %e, "upstream did not answer the startup");
        send_error(client, &SqlError::fatal("08001", e.to_string())).await;
        return None;
    }
    Some((upstream, upstream_host))
}

/// What both relay directions of a session share.
struct Parts<'s> {
    shared: &'s SessionShared,
    ctx: &'s ServerContext,
    metrics: &'s SessionMetrics,
    info: SessionInfo,
    shutdown: watch::Receiver<bool>,
    link: Option<&'s PooledLink<'s>>,
    /// Index of the upstream host of the session's (first) server connection.
    upstream_host: usize,
}

impl<'s> Parts<'s> {
    /// Runs both directions until one of them ends the session.
    async fn drive(
        self,
        client_read: ReadHalf,
        client_write: &mut WriteHalf,
        up_read: &mut Option<ReadHalf>,
        upstream: Upstream<'_, 's>,
    ) -> Ended {
        let Parts { shared, ctx, metrics, info, shutdown, link, upstream_host } = self;
        let mut front = Frontend::new(shared, ctx, metrics, info);
        let mut back = Backend::new(shared, ctx, metrics, shutdown).with_upstream_host(upstream_host);
        if let Some(link) = link {
            front = front.pooled(link);
            back = back.pooled(link);
        }
        let front = front.run(client_read, upstream);
        let back = back.run(up_read, client_write);
        tokio::pin!(front, back);
        tokio::select! {
            end = &mut front => match end {
                // The upstream direction sees why writing failed and tells the client.
                FrontendEnd::UpstreamBroken => Ended::Backend(back.await),
                other => Ended::Frontend(other),
            },
            end = &mut back => Ended::Backend(end),
        }
    }
}

enum Ended {
    Frontend(FrontendEnd),
    Backend(BackendEnd),
}

/// The client is gone: if the upstream is still working for it, cancel that work; dropping the upstream
/// socket (when the session returns) makes Postgres roll back and end the backend.
fn abandon_upstream(shared: &SessionShared, ctx: &Arc<ServerContext>) {
    if !shared.is_busy() {
        return;
    }
    let Some(key) = shared.upstream_key.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        if let Err(e) = cancel::forward_cancel(&ctx.upstream, &key).await {
            tracing::debug!(error = %e, "could not cancel the abandoned query");
        }
    });
}

/// What a connection opened with, once negotiated.
enum Opened {
    /// A startup packet: a session.
    Session(Stream, StartupPacket),
    /// A CancelRequest, to be passed on before the connection is closed.
    Cancel(Stream, CancelKey),
    /// Refused (answered and closed already).
    Done,
}

/// SSL/GSS negotiation and the startup packet. `Done` when the connection was refused: with the upstream's
/// own error for a startup packet Postgres refuses, with the close alone (and a log line) where Postgres
/// says nothing.
async fn negotiate(tcp: TcpStream, ctx: &ServerContext) -> std::io::Result<Opened> {
    let mut stream = Stream::Tcp(tcp);
    // As in Postgres, each encryption request may be made once; GSSENCRequest may precede SSLRequest.
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let packet = match read_initial_packet(&mut stream).await? {
            Ok(p) => p,
            Err(e) => {
                close_without_a_word(stream, &e).await;
                return Ok(Opened::Done);
            }
        };
        match startup::parse_initial_packet(packet) {
            Ok(InitialPacket::SslRequest) if ssl_done => {
                send_error(&mut stream, &refusal::own_refusal(startup::SSL_REQUEST_CODE as u32)).await;
                return Ok(Opened::Done);
            }
            Ok(InitialPacket::GssEncRequest) if gss_done => {
                send_error(&mut stream, &refusal::own_refusal(startup::GSSENC_REQUEST_CODE as u32)).await;
                return Ok(Opened::Done);
            }
            Ok(InitialPacket::SslRequest) => {
                let pending = unencrypted_data_pending(&stream);
                match (&ctx.client_tls, stream) {
                    (Some(acceptor), Stream::Tcp(mut tcp)) if !pending => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await?;
                        stream = Stream::ClientTls(Box::new(tls));
                        gss_done = true;
                    }
                    (_, mut other) => {
                        other.write_all(b"N").await?;
                        stream = other;
                    }
                }
                if pending {
                    refuse_unencrypted_data(stream, "SSL request").await;
                    return Ok(Opened::Done);
                }
                ssl_done = true;
            }
            Ok(InitialPacket::GssEncRequest) => {
                let pending = unencrypted_data_pending(&stream);
                stream.write_all(b"N").await?;
                if pending {
                    refuse_unencrypted_data(stream, "GSSAPI encryption request").await;
                    return Ok(Opened::Done);
                }
                gss_done = true;
            }
            Ok(InitialPacket::Cancel(key)) => return Ok(Opened::Cancel(stream, key)),
            Ok(InitialPacket::Startup(startup)) => return Ok(Opened::Session(stream, startup)),
            Ok(InitialPacket::Refused(packet)) => {
                refusal::relay(stream, &packet, ctx).await;
                return Ok(Opened::Done);
            }
            Err(e) => {
                close_without_a_word(stream, &e).await;
                return Ok(Opened::Done);
            }
        }
    }
}

/// Whether the client sent more right behind its SSLRequest or GSSENCRequest, before the answer: Postgres
/// refuses such bytes, which travelled unencrypted and may have been injected by a man in the middle.
fn unencrypted_data_pending(stream: &Stream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // The socket is non-blocking: nothing there yet is WouldBlock.
    matches!(socket2::SockRef::from(stream.tcp()).peek(&mut byte), Ok(n) if n > 0)
}

/// Postgres's FATAL for bytes behind an encryption request (after its answer, in plain text).
async fn refuse_unencrypted_data(mut stream: Stream, request: &str) {
    tracing::info!(request, "closing a client that sent unencrypted data right after its encryption request");
    metrics::count_refused("bad_startup_packet");
    let err = SqlError::fatal("08P01", format!("received unencrypted data after {request}")).with_detail(
        "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
    );
    send_error(&mut stream, &err).await;
}

/// What Postgres does with an initial packet it cannot read: log it and close. What the client already
/// sent is read first (as much as Postgres's first read takes), so that the close is a FIN, not a reset.
async fn close_without_a_word(mut stream: Stream, why: &StartupError) {
    tracing::info!(error = %why, "closing a client whose first packet is not a startup packet");
    metrics::count_refused("bad_startup_packet");
    let mut unread = [0u8; READ_CHUNK];
    if let Stream::Tcp(tcp) = &stream {
        let _ = tcp.try_read(&mut unread);
    }
    let _ = stream.shutdown().await;
}

/// Reads one untagged packet exactly (nothing beyond it, so a TLS handshake can follow).
async fn read_initial_packet(stream: &mut Stream) -> std::io::Result<Result<Bytes, StartupError>> {
    let len = stream.read_i32().await?;
    let len = match startup::check_packet_len(len) {
        Ok(len) => len,
        Err(e) => return Ok(Err(e)),
    };
    let mut packet = BytesMut::zeroed(len);
    packet[..4].copy_from_slice(&(len as i32).to_be_bytes());
    stream.read_exact(&mut packet[4..]).await?;
    Ok(Ok(packet.freeze()))
}

/// Passes a CancelRequest on: to the upstream when this instance issued the key, to the peer that did
/// otherwise (peering), or nowhere (an unknown key is dropped without a word, as Postgres does).
async fn handle_cancel(ctx: &ServerContext, key: &CancelKey) {
    let route = ctx.cancel.route(&ctx.peering, key);
    let sent = match &route {
        CancelRoute::Local(upstream_key) => cancel::forward_cancel(&ctx.upstream, upstream_key).await,
        CancelRoute::Peer { id, address, key } => {
            tracing::debug!(pid = key.pid, peer = id, %address, "cancel request forwarded to the peer that issued its key");
            cancel::forward_to_peer(address, key).await
        }
        CancelRoute::Unknown(why) => {
            tracing::debug!(pid = key.pid, why, "cancel request with an unknown key ignored");
            Ok(())
        }
    };
    match sent {
        Ok(()) => metrics::count_cancel(route.outcome()),
        Err(e) => {
            tracing::warn!(error = %e, "could not forward a cancel request");
            metrics::count_cancel("failed");
        }
    }
}
