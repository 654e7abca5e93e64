//! The bookkeeping of one pool, pure (no I/O, no clock, no metrics; the caller holds the pool's lock):
//! its idle connections, how many are lent or being opened, the clients waiting in line, and what each
//! waiter is handed. Every change ends with [`PoolState::dispatch`], which keeps one invariant: no client
//! waits while something can serve it. A waiter is handed, in line order, a connection given back, else
//! room to open one itself while the pool is below its size (a connection closed leaves such room: only
//! waiters and logins fill it), else, when the pool holds no connection at all that could come back and
//! none can be opened, a refusal — never an endless wait.
//!
//! Connections keep to their thread where fairness allows: a connection's socket reports readiness to the
//! session thread that opened it ([`Homed`]), so a client on another thread pays a cross-thread wake-up
//! per message. An idle connection of the client's own thread is lent first; a connection given back
//! goes to the oldest waiter of its thread, passing over older waiters of other threads, each at most
//! [`MAX_PASSED_OVER`] times, so no client waits more than that many hand-outs longer than strict order.
//!
//! Handing happens under the lock (a oneshot send never blocks), so a waiter that gives up and finds
//! itself no longer in line knows its hand-out is already in its receiver, and returns it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::sql_error::SqlError;

/// The session thread whose reactor a connection's socket is registered with.
pub trait Homed {
    fn home(&self) -> usize;
}

/// How many times a waiter may be passed over for a younger waiter of a connection's own thread. With 2,
/// a returned connection went to the other thread's waiter about once in four hand-outs at 64 clients on
/// 16 connections (0.60 eventfd writes and 0.35 futex calls per transaction, strace); with 16, 0.05 and
/// 0.02. Sixteen hand-outs are about a millisecond at pgbench's rates, far below any wait timeout.
pub(super) const MAX_PASSED_OVER: u8 = 16;

/// A pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Server connections kept (idle and lent).
    pub size: usize,
    /// Connections beyond `size` opened for clients authenticating on a full pool.
    pub reserve: usize,
    /// How long a client waits for a connection before it is refused.
    pub wait_timeout: Duration,
}

/// What a waiting client is handed.
pub(super) enum Handed<C> {
    /// A connection given back by another client (counted active already).
    Conn(C),
    /// Room for one more connection, counted active from here: the waiter opens it.
    Room,
    /// Nothing can serve the waiter.
    Refused(SqlError),
}

/// Whether the pool can open a connection without a client's authentication (the server lets the proxy in
/// without a password, e.g. `trust` in pg_hba.conf), learned from the first try. The pool stores no
/// password, so where the server asks for one only logins add connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replacement {
    Untried,
    Opens,
    NeedsCredentials,
}

/// A waiter's place: its ticket (to leave the line) and where it is handed something.
pub(super) type Place<C> = (u64, oneshot::Receiver<Handed<C>>);

struct Waiter<C> {
    ticket: u64,
    since: Instant,
    /// The waiter's session thread.
    home: usize,
    /// Connections handed to younger waiters of their own thread while this one waited.
    passed_over: u8,
    sender: oneshot::Sender<Handed<C>>,
}

/// The pool's figures as gauges and `DUALWRITE POOLS` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Figures {
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    pub pinned: usize,
}

pub(super) struct PoolState<C> {
    pub(super) settings: PoolSettings,
    idle: Vec<C>,
    /// Connections lent to clients, or being opened in a slot.
    active: usize,
    /// Clients waiting, oldest first.
    waiting: VecDeque<Waiter<C>>,
    next_ticket: u64,
    pub(super) pinned: usize,
    replacement: Replacement,
    /// The figures last published to the gauges.
    pub(super) published: Figures,
}

impl<C: Homed> PoolState<C> {
    pub(super) fn new(settings: PoolSettings) -> Self {
        PoolState {
            settings,
            idle: Vec::new(),
            active: 0,
            waiting: VecDeque::new(),
            next_ticket: 0,
            pinned: 0,
            replacement: Replacement::Untried,
            published: Figures::default(),
        }
    }

    fn total(&self) -> usize {
        self.idle.len() + self.active
    }

    pub(super) fn figures(&self) -> Figures {
        Figures { active: self.active, idle: self.idle.len(), waiting: self.waiting.len(), pinned: self.pinned }
    }

    /// When the longest-waiting client started waiting.
    pub(super) fn oldest_wait(&self) -> Option<Instant> {
        self.waiting.front().map(|w| w.since)
    }

    /// A slot for a login's new connection within `size + reserve`, taking an idle connection's place
    /// (returned, for the caller to close) when the pool is at its limit; `None`: no slot now.
    pub(super) fn open_slot(&mut self) -> Option<Option<C>> {
        let limit = self.settings.size + self.settings.reserve;
        let evicted = if self.total() < limit { None } else { Some(self.idle.pop()?) };
        self.active += 1;
        Some(evicted)
    }

    /// An idle connection, of the thread `home` when there is one (without queueing).
    pub(super) fn lend_idle(&mut self, home: usize) -> Option<C> {
        let own = self.idle.iter().rposition(|c| c.home() == home);
        let conn = match own {
            Some(at) => Some(self.idle.remove(at)),
            None => self.idle.pop(),
        }?;
        self.active += 1;
        Some(conn)
    }

    /// An idle connection (the most recently used of the client's thread `home`, else of another), lent
    /// at once, else a place at the end of the line.
    pub(super) fn lend(&mut self, since: Instant, home: usize) -> Result<C, Place<C>> {
        if let Some(conn) = self.lend_idle(home) {
            return Ok(conn);
        }
        let place = self.queue(since, home, false);
        self.dispatch();
        Err(place)
    }

    fn queue(&mut self, since: Instant, home: usize, front: bool) -> Place<C> {
        let (sender, receiver) = oneshot::channel();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiter = Waiter { ticket, since, home, passed_over: 0, sender };
        if front {
            self.waiting.push_front(waiter);
        } else {
            self.waiting.push_back(waiter);
        }
        (ticket, receiver)
    }

    /// Takes the waiter `ticket` out of the line; `false` when it was no longer there (it was handed
    /// something, which is in its receiver).
    pub(super) fn leave(&mut self, ticket: u64) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.ticket != ticket);
        self.waiting.len() < before
    }

    /// A lent connection comes back: to the longest-waiting client of its thread unless an older one has
    /// been passed over too often (module doc), else idle; beyond `size` (a reserve connection) it is
    /// returned for the caller to close.
    pub(super) fn give_back(&mut self, mut conn: C) -> Option<C> {
        while let Some(waiter) = self.next_waiter(conn.home()) {
            match waiter.sender.send(Handed::Conn(conn)) {
                Ok(()) => return None,
                // A waiter leaves the line before it stops listening, so this is not expected; the
                // connection goes on to the next one.
                Err(Handed::Conn(back)) => conn = back,
                Err(_) => unreachable!("the connection sent is the one returned"),
            }
        }
        self.active -= 1;
        if self.total() >= self.settings.size {
            return Some(conn);
        }
        self.idle.push(conn);
        None
    }

    /// The waiter a connection of thread `home` goes to, out of the line: the oldest of that thread, or
    /// an older one passed over [`MAX_PASSED_OVER`] times already; the waiters it passes over count it.
    fn next_waiter(&mut self, home: usize) -> Option<Waiter<C>> {
        let at = self.waiting.iter().position(|w| w.home == home || w.passed_over >= MAX_PASSED_OVER).unwrap_or(0);
        for older in self.waiting.iter_mut().take(at) {
            older.passed_over += 1;
        }
        self.waiting.remove(at)
    }

    /// A lent connection, or a slot's, is gone: its place may serve a waiter.
    pub(super) fn forget(&mut self) {
        self.active -= 1;
        self.dispatch();
    }

    /// A waiter's room could not be used: the server wants credentials the proxy does not have. The room
    /// is given up and the waiter goes back to the head of the line (where, if nothing can come back to
    /// the pool, it is refused at once).
    /// Also says whether the pool learned this just now.
    pub(super) fn needs_credentials(&mut self, since: Instant, home: usize) -> (Place<C>, bool) {
        let learned = self.replacement != Replacement::NeedsCredentials;
        self.replacement = Replacement::NeedsCredentials;
        self.active -= 1;
        let place = self.queue(since, home, true);
        self.dispatch();
        (place, learned)
    }

    /// A connection was opened without a client's help.
    pub(super) fn replacement_opened(&mut self) {
        self.replacement = Replacement::Opens;
    }

    /// Serves waiters while something can: room below `size` (unless replacements need credentials),
    /// else a refusal when the pool holds no connection at all (none lent, idle or being opened, so none
    /// will come back). Otherwise the waiters wait for connections given back.
    pub(super) fn dispatch(&mut self) {
        while !self.waiting.is_empty() {
            if let Some(conn) = self.idle.pop() {
                // Only after the size grew by a reload: idle connections and waiters never meet otherwise.
                self.active += 1;
                if let Some(conn) = self.give_back(conn) {
                    self.idle.push(conn);
                }
                continue;
            }
            let handed = if self.total() < self.settings.size && self.replacement != Replacement::NeedsCredentials {
                self.active += 1;
                Handed::Room
            } else if self.total() == 0 {
                Handed::Refused(no_replacement_error())
            } else {
                return;
            };
            let waiter = self.waiting.pop_front().expect("the line is not empty");
            if let Err(Handed::Room) = waiter.sender.send(handed) {
                self.active -= 1;
            }
        }
    }
}

/// The error of a client that waits for a connection when the pool has none left (closed: broken, or
/// left by their clients mid-transaction) and cannot open one, since the server asks for a password the
/// proxy does not keep. Reconnecting opens one: the login is the client's own.
fn no_replacement_error() -> SqlError {
    SqlError::fatal(
        "08006",
        "no server connection for this client: the pool's connections were closed, and the server asks the \
         proxy for a password to open another",
    )
    .with_hint("Reconnect: a new login opens a server connection with the client's own authentication.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(size: usize) -> PoolState<u32> {
        PoolState::new(PoolSettings { size, reserve: 0, wait_timeout: Duration::from_secs(60) })
    }

    fn figures(s: &PoolState<u32>) -> (usize, usize, usize) {
        let f = s.figures();
        (f.active, f.idle, f.waiting)
    }

    /// `n` connections opened by logins, lent.
    fn lent(s: &mut PoolState<u32>, n: usize) {
        for _ in 0..n {
            assert!(matches!(s.open_slot(), Some(None)));
        }
    }

    fn handed(receiver: &mut oneshot::Receiver<Handed<u32>>) -> &'static str {
        match receiver.try_recv() {
            Ok(Handed::Conn(_)) => "conn",
            Ok(Handed::Room) => "room",
            Ok(Handed::Refused(_)) => "refused",
            Err(_) => "nothing",
        }
    }

    #[test]
    fn a_waiter_that_leaves_is_out_of_the_line_and_the_next_connection_goes_to_the_one_behind_it() {
        let mut s = state(1);
        lent(&mut s, 1);
        let (gone, _) = s.lend(Instant::now(), 0).unwrap_err();
        let (_, mut stays) = s.lend(Instant::now(), 0).unwrap_err();
        assert_eq!(figures(&s), (1, 0, 2));
        assert!(s.leave(gone));
        assert!(!s.leave(gone), "once");
        assert_eq!(figures(&s), (1, 0, 1));
        assert_eq!(s.give_back(7), None);
        assert_eq!(handed(&mut stays), "conn");
        assert_eq!(figures(&s), (1, 0, 0), "still lent, to the other client");
    }

    #[test]
    fn a_waiter_handed_a_connection_is_no_longer_in_line_and_finds_it_in_its_receiver() {
        let mut s = state(1);
        lent(&mut s, 1);
        let (ticket, mut receiver) = s.lend(Instant::now(), 0).unwrap_err();
        assert_eq!(s.give_back(3), None);
        assert!(!s.leave(ticket));
        assert!(matches!(receiver.try_recv(), Ok(Handed::Conn(3))));
    }

    #[test]
    fn a_connection_sent_to_a_receiver_no_longer_listening_goes_to_the_next_waiter_or_idle() {
        let mut s = state(2);
        lent(&mut s, 2);
        let (_, deaf) = s.lend(Instant::now(), 0).unwrap_err();
        drop(deaf);
        assert_eq!(s.give_back(1), None);
        assert_eq!(figures(&s), (1, 1, 0), "kept idle");
    }

    #[test]
    fn a_connection_closed_while_clients_wait_gives_the_oldest_room_to_open_one() {
        let mut s = state(2);
        lent(&mut s, 2);
        let (_, mut first) = s.lend(Instant::now(), 0).unwrap_err();
        let (_, mut second) = s.lend(Instant::now(), 0).unwrap_err();
        s.forget();
        assert_eq!(handed(&mut first), "room");
        assert_eq!(handed(&mut second), "nothing");
        assert_eq!(figures(&s), (2, 0, 1), "the room counts as active");
        s.replacement_opened();
        s.forget();
        assert_eq!(handed(&mut second), "room");
    }

    #[test]
    fn without_credentials_waiters_wait_for_connections_still_lent_and_are_refused_when_none_is_left() {
        let mut s = state(3);
        lent(&mut s, 2);
        let since = Instant::now();
        let (_, mut first) = s.lend(since, 0).unwrap_err();
        let (_, mut second) = s.lend(since, 0).unwrap_err();
        assert_eq!(handed(&mut first), "room", "the pool is below its size");
        let ((_, mut first), learned) = s.needs_credentials(since, 0);
        assert!(learned);
        assert_eq!(figures(&s), (2, 0, 2), "back in line, first");
        assert_eq!(handed(&mut first), "nothing", "two connections are lent: they will come back");
        s.forget();
        assert_eq!(handed(&mut first), "nothing", "one still lent");
        assert_eq!(s.give_back(5), None);
        assert_eq!(handed(&mut first), "conn", "the oldest waiter is served first");
        s.forget();
        assert_eq!(handed(&mut second), "refused", "nothing lent, idle or being opened is left");
        assert_eq!(figures(&s), (0, 0, 0));
        let (_, mut late) = s.lend(Instant::now(), 0).unwrap_err();
        assert_eq!(handed(&mut late), "refused", "nor for a client that comes later");
        lent(&mut s, 1);
        let (_, mut after_login) = s.lend(Instant::now(), 0).unwrap_err();
        assert_eq!(handed(&mut after_login), "nothing", "a login's connection comes back to the line");
        assert_eq!(s.give_back(9), None);
        assert_eq!(handed(&mut after_login), "conn");
    }

    #[test]
    fn logins_take_an_idle_connections_place_at_the_limit_and_wait_when_all_are_lent() {
        let mut s = state(1);
        lent(&mut s, 1);
        assert!(s.open_slot().is_none(), "lent: no slot");
        assert_eq!(s.give_back(4), None);
        assert_eq!(s.open_slot(), Some(Some(4)), "the idle one makes room");
        assert_eq!(figures(&s), (1, 0, 0));
    }

    /// A connection numbered by its thread: `At(id, home)`.
    #[derive(Debug, PartialEq)]
    struct At(u32, usize);

    impl Homed for At {
        fn home(&self) -> usize {
            self.1
        }
    }

    fn threads_state(size: usize) -> PoolState<At> {
        PoolState::new(PoolSettings { size, reserve: 0, wait_timeout: Duration::from_secs(60) })
    }

    #[test]
    fn an_idle_connection_of_the_clients_own_thread_is_lent_first_and_another_threads_when_none_is() {
        let mut s = threads_state(3);
        for _ in 0..3 {
            assert!(matches!(s.open_slot(), Some(None)));
        }
        for conn in [At(1, 0), At(2, 1), At(3, 0)] {
            assert_eq!(s.give_back(conn), None);
        }
        assert_eq!(s.lend(Instant::now(), 1).ok(), Some(At(2, 1)));
        assert_eq!(s.lend(Instant::now(), 1).ok(), Some(At(3, 0)), "none of thread 1 is left: another's");
        assert_eq!(s.lend(Instant::now(), 0).ok(), Some(At(1, 0)));
    }

    #[test]
    fn a_connection_goes_to_the_oldest_waiter_of_its_thread_and_no_waiter_is_passed_over_more_than_the_limit() {
        let mut s = threads_state(1);
        assert!(matches!(s.open_slot(), Some(None)));
        let (_, mut other_thread) = s.lend(Instant::now(), 1).unwrap_err();
        let mut own_thread: Vec<_> = (0..=MAX_PASSED_OVER).map(|_| s.lend(Instant::now(), 0).unwrap_err().1).collect();
        for (n, waiter) in own_thread.iter_mut().enumerate().take(MAX_PASSED_OVER as usize) {
            assert_eq!(s.give_back(At(n as u32, 0)), None);
            assert!(matches!(waiter.try_recv(), Ok(Handed::Conn(At(_, 0)))), "the oldest of thread 0");
            assert_eq!(handed_at(&mut other_thread), "nothing", "passed over {} time(s)", n + 1);
        }
        assert_eq!(s.give_back(At(9, 0)), None);
        assert_eq!(handed_at(&mut other_thread), "conn", "passed over the limit: served before younger waiters");
        assert_eq!(handed_at(own_thread.last_mut().unwrap()), "nothing");
    }

    fn handed_at(receiver: &mut oneshot::Receiver<Handed<At>>) -> &'static str {
        match receiver.try_recv() {
            Ok(Handed::Conn(_)) => "conn",
            Ok(Handed::Room) => "room",
            Ok(Handed::Refused(_)) => "refused",
            Err(_) => "nothing",
        }
    }
}
