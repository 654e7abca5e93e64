//! Transaction mode (`pool_mode = "transaction"`): a client session holds a server connection of its pool
//! only for a transaction. The client authenticates on a connection of its own (relayed as in session
//! mode), opened in a slot of the pool: it is the session's first lease. From then on, the session's
//! [`PooledLink`] lends it whichever connection is idle when a request arrives (waiting in the pool's fair
//! queue when none is), the client direction writes to it, the upstream direction reads from it, and gives
//! it back at the end of the transaction: a ReadyForQuery with status idle, nothing else expected of it.
//!
//! What the client set at startup holds on every connection it gets: the pool key includes the startup
//! parameters, which are the connection's session defaults. Named prepared statements are translated to
//! the connection's own names ([`crate::pool::statements`]), and the SQL that drops prepared statements is
//! followed ([`crate::pool::deallocate`]); statements that leave state on the
//! connection pin the client to it ([`crate::pool::pinning`]); a pinned connection is reset with
//! `DISCARD ALL` before another client gets it. A connection that broke, or that a client left in the
//! middle of a transaction, is closed, never given back.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::shared::Signal;
use super::{replacement, write_chunks, SessionShared};
use crate::cancel::CancelRegistration;
use crate::pool::deallocate;
use crate::pool::pinning::{self, PinReason};
use crate::pool::registry::{PoolRegistry, ServerConn};
use crate::pool::statements::{ClientStatements, ParseAction, Use};
use crate::pool::{Lease, Pool};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{self, body, btag, tag, SqlError};
use crate::protocol::requests::Renamed;
use crate::protocol::responses::PrepareTicket;
use crate::protocol::startup::{CancelKey, StartupPacket};
use crate::server_context::ServerContext;
use crate::stream::ReadHalf;

/// The Terminate message.
const TERMINATE: &[u8] = &[tag::TERMINATE, 0, 0, 0, 4];

/// How long resetting a pinned connection (`DISCARD ALL`) may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a write to the pooled connection failed.
pub(super) enum WriteError {
    /// No connection came free in time.
    NoServer(SqlError),
    /// The connection broke.
    Broken,
}

struct LinkState {
    lease: Option<Lease<ServerConn>>,
    /// The read half of a connection just attached, for the upstream direction to take.
    read: Option<ReadHalf>,
    registration: Option<CancelRegistration>,
    /// The connection's last message was an idle ReadyForQuery and nothing of it is left unread.
    at_rest: bool,
    pinned: Option<PinReason>,
    statements: ClientStatements,
    /// Per `DEALLOCATE ALL` or `DISCARD ALL` sent and not answered yet, in order: the client's statements'
    /// mark when it was sent ([`ClientStatements::mark`]).
    resets_sent: VecDeque<u64>,
}

/// A transaction-mode session's hold on its pool: the connection it holds now (if any), its cancel key's
/// mapping, its pinning and its named prepared statements.
pub struct PooledLink<'s> {
    shared: &'s SessionShared,
    ctx: &'s ServerContext,
    /// The client's startup packet: a connection opened for it without a login is opened with it.
    startup: &'s StartupPacket,
    registry: &'s PoolRegistry,
    pool: Arc<Pool<ServerConn>>,
    state: Mutex<LinkState>,
    /// Wakes the upstream direction: a connection was attached, or one may go back to the pool.
    event: Signal,
}

impl<'s> PooledLink<'s> {
    /// The link of a session whose authentication runs on `lease`.
    pub(super) fn new(
        shared: &'s SessionShared,
        ctx: &'s ServerContext,
        startup: &'s StartupPacket,
        mut lease: Lease<ServerConn>,
    ) -> Self {
        let read = lease.conn().read.take();
        let state = LinkState {
            lease: Some(lease),
            read,
            registration: None,
            at_rest: false,
            pinned: None,
            statements: ClientStatements::new(),
            resets_sent: VecDeque::new(),
        };
        let pool = Arc::clone(lease_pool(&state));
        let registry = &ctx.pools;
        PooledLink { shared, ctx, startup, registry, pool, state: Mutex::new(state), event: Signal::default() }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The authentication connection's cancel key and the client's registration (kept for the session).
    pub(super) fn authenticated(&self, key: CancelKey, registration: CancelRegistration) {
        let mut state = self.state();
        if let Some(lease) = state.lease.as_mut() {
            lease.conn().key = Some(key);
        }
        state.registration = Some(registration);
    }

    /// Makes sure the session holds a connection, waiting for one in the pool's queue (or opening one
    /// when the pool hands it room). Cancel-safe: dropped, the session leaves the line.
    pub(super) async fn attach(&self) -> Result<(), SqlError> {
        if self.state().lease.is_some() {
            return Ok(());
        }
        let mut lease = self.pool.acquire(|| replacement::open(self.ctx, self.startup)).await?;
        let conn = lease.conn();
        let (read, key) = (conn.read.take(), conn.key.clone());
        tracing::trace!(pid = key.as_ref().map(|k| k.pid), "server connection attached");
        let mut state = self.state();
        state.read = read;
        state.at_rest = false;
        state.lease = Some(lease);
        self.point_cancel_at(key);
        drop(state);
        self.event.signal();
        Ok(())
    }

    /// The client's cancel reaches `key` from now on (the registration shares the session's slot).
    fn point_cancel_at(&self, key: Option<CancelKey>) {
        *self.shared.upstream_key.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// Writes `out` to the connection held (the client direction attached one before producing it; one
    /// is attached here otherwise).
    pub(super) async fn write(&self, out: &mut Vec<Bytes>) -> Result<(), WriteError> {
        if out.is_empty() {
            return Ok(());
        }
        self.attach().await.map_err(WriteError::NoServer)?;
        let taken = self.state().lease.as_mut().and_then(|lease| lease.conn().write.take());
        let Some(mut write) = taken else { return Err(WriteError::Broken) };
        let written = write_chunks(&mut write, out).await;
        if let Some(lease) = self.state().lease.as_mut() {
            lease.conn().write = Some(write);
        }
        written.map_err(|_| WriteError::Broken)
    }

    /// The client direction handled everything it read: the connection may go back to the pool.
    pub(super) fn check_release(&self) {
        if self.state().lease.is_some() {
            self.event.signal();
        }
    }

    /// Waits for a pool event for the upstream direction (`detached`: it holds no connection).
    pub(super) fn poll_event(&self, detached: bool, cx: &mut Context<'_>) -> Poll<()> {
        if detached && self.state().read.is_some() {
            return Poll::Ready(());
        }
        self.event.poll_take(cx)
    }

    /// The read half of a connection just attached.
    pub(super) fn take_read(&self) -> Option<ReadHalf> {
        self.state().read.take()
    }

    /// Called by the upstream direction after each step: `at_rest` says the connection's last message was
    /// an idle ReadyForQuery with nothing left unread. The connection goes back to the pool when, besides,
    /// the client is not pinned, nothing is expected of it, and the client direction is not writing to it.
    pub(super) fn rest(&self, at_rest: bool, read: &mut Option<ReadHalf>) {
        let mut state = self.state();
        state.at_rest = at_rest;
        if at_rest && !state.resets_sent.is_empty() && !self.shared.is_busy() {
            // Every answer is in: the ones whose tag never came failed, and dropped nothing.
            state.resets_sent.clear();
        }
        if !at_rest || state.pinned.is_some() || self.shared.tx_status.load(Ordering::Relaxed) != b'I' {
            return;
        }
        let writable = state.lease.as_mut().is_some_and(|lease| lease.conn().write.is_some());
        if !writable || self.shared.is_busy() {
            return;
        }
        let Some(mut lease) = state.lease.take() else { return };
        lease.conn().read = read.take().or_else(|| state.read.take());
        self.point_cancel_at(None);
        drop(state);
        // Every answer of the connection is read: the statements it took on are the ones its server
        // accepted.
        let accepted = lease.conn().prepared.take_fresh();
        if !accepted.is_empty() {
            self.registry.names.lock().unwrap_or_else(|e| e.into_inner()).accept(self.pool.key(), accepted);
        }
        tracing::trace!(pid = lease.conn().key.as_ref().map(|k| k.pid), "server connection given back");
        if let Some(surplus) = lease.release() {
            tracing::trace!("a connection beyond the pool's size closed");
            close_server(surplus);
        }
    }

    /// Pins the client to the connection it holds if `sql` leaves state there.
    pub(super) fn judge_pinning(&self, sql: &[u8]) {
        if self.state().pinned.is_some() {
            return;
        }
        let Some(reason) = pinning::pin_reason(sql) else { return };
        let mut state = self.state();
        if let Some(lease) = state.lease.as_mut() {
            lease.pin();
            state.pinned = Some(reason);
            tracing::debug!(reason = reason.label(), "client pinned to its server connection");
        }
    }

    /// Client SQL about to run on the server connection: notes each `DEALLOCATE ALL` and `DISCARD ALL`
    /// in it with the client's statements' mark at this point, for [`Self::server_reset`].
    pub(super) fn expect_resets(&self, sql: &[u8]) {
        let resets = deallocate::resets_in(sql);
        if resets == 0 {
            return;
        }
        let mut state = self.state();
        let mark = state.statements.mark();
        state.resets_sent.extend(std::iter::repeat_n(mark, resets));
    }

    /// The server connection answered `count` `DEALLOCATE ALL` or `DISCARD ALL` tags: it dropped every
    /// statement it held (other clients' too), and the client's own statements parsed before each are
    /// gone. One answered without a mark (a statement prepared once and executed again) drops all the
    /// client's statements so far.
    pub(super) fn server_reset(&self, count: usize) {
        let mut state = self.state();
        let LinkState { lease, statements, resets_sent, .. } = &mut *state;
        if let Some(lease) = lease.as_mut() {
            lease.conn().prepared.server_reset();
        }
        for _ in 0..count {
            let mark = resets_sent.pop_front().unwrap_or_else(|| statements.mark());
            statements.deallocate_before(mark);
        }
        tracing::debug!(count, "server connection dropped its prepared statements");
    }

    /// `DEALLOCATE [PREPARE] name` of a statement the client prepared with a Parse: the client's name is
    /// freed and the command answered by the proxy (the server knows the statement by another name, and
    /// keeps it for its other clients). False for anything else, which goes to the server; so does any
    /// statement of a failed transaction, which the server refuses.
    pub(super) fn deallocates_locally(&self, sql: &[u8]) -> bool {
        if self.shared.tx_status.load(Ordering::Relaxed) == b'E' {
            return false;
        }
        let Some(name) = deallocate::deallocated_name(sql) else { return false };
        self.state().statements.close(&name)
    }

    /// A Parse, Bind, Describe or Close naming one of the client's statements, for the connection held.
    pub(super) fn rename_statement(&self, frame: &[u8]) -> Option<Renamed> {
        let mut state = self.state();
        let LinkState { lease, statements, .. } = &mut *state;
        let Some(lease) = lease.as_mut() else { return self.rename_detached(statements, frame) };
        let server = &mut lease.conn().prepared;
        match frame[0] {
            tag::PARSE => {
                let view = messages::parse_view(body(frame))?;
                if view.statement.is_empty() {
                    return None;
                }
                let sql = std::str::from_utf8(view.sql).ok()?;
                let mut names = self.registry.names.lock().unwrap_or_else(|e| e.into_inner());
                Some(match statements.parse(&mut names, server, view.statement, sql, view.param_type_oids()) {
                    ParseAction::AnswerLocally => Renamed::Local(messages::parse_complete()),
                    ParseAction::Send { closes, parse, name } => {
                        let client_name = Some(Bytes::copy_from_slice(view.statement));
                        let own = PrepareTicket { server_name: name, client_name, hidden: false };
                        sent(closes, None, parse, Some(own))
                    }
                    ParseAction::Refuse(err) => Renamed::Refuse { raise_sql: err.raise_statement() },
                })
            }
            tag::BIND => {
                let (_, statement) = messages::bind_names(body(frame))?;
                used(statements.use_statement(server, nonempty(statement)?, frame)?)
            }
            tag::DESCRIBE => match messages::target_of(body(frame))? {
                (b'S', name) => used(statements.use_statement(server, nonempty(name)?, frame)?),
                _ => None,
            },
            tag::CLOSE => match messages::target_of(body(frame))? {
                (b'S', name) if statements.close(nonempty(name)?) => Some(Renamed::Local(messages::close_complete())),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the session holds no connection now.
    pub(super) fn detached(&self) -> bool {
        self.state().lease.is_none()
    }

    /// Whether a Parse of `name` (not empty) could be answered without a connection now (see
    /// [`crate::pool::statements`]): the session holds none, the name is free, and the pool's server
    /// accepted the statement.
    pub(super) fn answers_parse_detached(&self, name: &[u8], sql: &str, param_types: &[u32]) -> bool {
        let state = self.state();
        if state.lease.is_some() {
            return false;
        }
        let names = self.registry.names.lock().unwrap_or_else(|e| e.into_inner());
        state.statements.answers_detached(&names, self.pool.key(), name, sql, param_types)
    }

    /// A frame handled while the session holds no connection: only the Parses the client direction found
    /// answerable so ([`Self::answers_parse_detached`]) are, and they are answered locally. Anything else
    /// would need a connection's names, so it is refused rather than sent under the client's name.
    fn rename_detached(&self, statements: &mut ClientStatements, frame: &[u8]) -> Option<Renamed> {
        if frame[0] != tag::PARSE {
            return None;
        }
        let view = messages::parse_view(body(frame))?;
        if view.statement.is_empty() {
            return None;
        }
        let sql = std::str::from_utf8(view.sql).ok()?;
        let names = self.registry.names.lock().unwrap_or_else(|e| e.into_inner());
        let types = view.param_type_oids();
        match statements.parse_detached(&names, self.pool.key(), view.statement, sql, &types) {
            Some(_) => Some(Renamed::Local(messages::parse_complete())),
            None => {
                debug_assert!(false, "a Parse reached the pooler without a connection it could answer");
                let err = SqlError::new("XX000", "dualwrite: a prepare arrived without a server connection");
                Some(Renamed::Refuse { raise_sql: err.raise_statement() })
            }
        }
    }

    /// The server failed or skipped these Parses on the connection held (the response queue saw them go
    /// unanswered): the connection does not hold their statements, and a client's own Parse that failed
    /// leaves its name free, as in Postgres. Left recorded, the statement would be answered ParseComplete
    /// locally for every client of the connection and fail at each of their Binds.
    pub(super) fn forget_failed_prepares(&self, failed: Vec<PrepareTicket>) {
        let mut state = self.state();
        let LinkState { lease, statements, .. } = &mut *state;
        for ticket in failed {
            if let Some(lease) = lease.as_mut() {
                lease.conn().prepared.forget(&ticket.server_name);
            }
            if let Some(client_name) = &ticket.client_name {
                statements.forget_failed(client_name, &ticket.server_name);
            }
        }
    }

    /// The session ended: the connection it holds goes back to the pool if `clean` (the client left
    /// properly) and it is at rest, after a `DISCARD ALL` if the client was pinned; otherwise it is closed.
    /// `read` is the upstream direction's read half.
    pub(super) fn finish(&self, clean: bool, read: Option<ReadHalf>) {
        let mut state = self.state();
        let Some(mut lease) = state.lease.take() else { return };
        self.point_cancel_at(None);
        let idle = self.shared.tx_status.load(Ordering::Relaxed) == b'I' && !self.shared.is_busy();
        let conn = lease.conn();
        conn.read = read.or_else(|| state.read.take());
        let whole = conn.read.is_some() && conn.write.is_some();
        if !(clean && state.at_rest && idle && whole) {
            // Dropped: the socket closes, the server rolls back whatever was open.
            tracing::debug!("closing a server connection its client left in use");
            return;
        }
        drop(state);
        if lease.is_pinned() {
            tokio::spawn(reset_and_release(lease));
        } else if let Some(surplus) = lease.release() {
            close_server(surplus);
        }
    }
}

fn lease_pool(state: &LinkState) -> &Arc<Pool<ServerConn>> {
    state.lease.as_ref().expect("a link starts with its authentication lease").pool()
}

fn nonempty(name: &[u8]) -> Option<&[u8]> {
    (!name.is_empty()).then_some(name)
}

/// The frames of a translated request, all but the last with answers hidden from the client: Closes (of
/// an evicted statement, of one the connection may hold still), a Parse preparing the statement (with its
/// ticket), then the client's own frame (with its ticket when it is a Parse).
fn sent(
    closes: Vec<Bytes>,
    prepare: Option<(Bytes, PrepareTicket)>,
    frame: Bytes,
    own: Option<PrepareTicket>,
) -> Renamed {
    let mut frames = BytesMut::new();
    let mut hidden = Vec::with_capacity(closes.len() + 1);
    for close in closes {
        frames.extend_from_slice(&close);
        hidden.push(None);
    }
    if let Some((parse, ticket)) = prepare {
        frames.extend_from_slice(&parse);
        hidden.push(Some(ticket));
    }
    frames.extend_from_slice(&frame);
    Renamed::Send { frames: frames.freeze(), hidden, own }
}

fn used(used: Use) -> Option<Renamed> {
    let Use { prepare, frame, name } = used;
    let Some((closes, parse)) = prepare else { return Some(sent(Vec::new(), None, frame, None)) };
    let ticket = PrepareTicket { server_name: name, client_name: None, hidden: true };
    Some(sent(closes, Some((parse, ticket)), frame, None))
}

/// A pinned connection is reset before another client gets it; closed if that fails.
async fn reset_and_release(mut lease: Lease<ServerConn>) {
    let conn = lease.conn();
    let reset = tokio::time::timeout(RESET_TIMEOUT, discard_all(conn)).await;
    if !matches!(reset, Ok(Ok(()))) {
        tracing::debug!("could not reset a pinned server connection; closing it");
        return;
    }
    conn.prepared.clear();
    tracing::trace!(pid = conn.key.as_ref().map(|k| k.pid), "pinned server connection reset");
    if let Some(surplus) = lease.release() {
        close_server(surplus);
    }
}

/// Runs `DISCARD ALL` on `conn` and reads its answer up to an idle ReadyForQuery.
async fn discard_all(conn: &mut ServerConn) -> std::io::Result<()> {
    let failed = || std::io::Error::other("DISCARD ALL failed");
    let parts = &mut **conn;
    let (Some(read), Some(write)) = (parts.read.as_mut(), parts.write.as_mut()) else { return Err(failed()) };
    write.write_all(&messages::query("DISCARD ALL")).await?;
    write.flush().await?;
    let mut buf = BytesMut::with_capacity(256);
    let mut error = false;
    loop {
        if read.read_buf(&mut buf).await? == 0 {
            return Err(failed());
        }
        while let Ok(Some(header)) = peek_header(&buf, 1 << 30) {
            if buf.len() < header.total_len() {
                break;
            }
            let frame = buf.split_to(header.total_len());
            error |= frame[0] == btag::ERROR_RESPONSE;
            if frame[0] == btag::READY_FOR_QUERY {
                return if error || !buf.is_empty() || frame.get(5) != Some(&b'I') { Err(failed()) } else { Ok(()) };
            }
        }
    }
}

/// Ends a connection the pool does not keep: Terminate, then the close.
pub(super) fn close_server(mut conn: ServerConn) {
    tokio::spawn(async move {
        if let Some(write) = conn.write.as_mut() {
            let _ = write.write_all(TERMINATE).await;
            let _ = write.shutdown().await;
        }
    });
}
