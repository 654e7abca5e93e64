//! Named prepared statements under transaction pooling, as pgbouncer 1.21+ keeps them: a client's
//! statements are the client's (tracked here by the name the client gave them), while each server
//! connection holds statements under names the proxy owns (`dualwrite_s<n>`, one per distinct SQL text and
//! parameter types, shared by every client), prepared on a connection the first time one of its clients
//! uses them there. A client's Parse of a statement the connection already holds is answered locally;
//! its Bind or Describe of a statement the connection lacks is preceded by the Parse that prepares it; its
//! Close forgets the name on the client's side only, as the server's statement may serve others. A
//! connection keeps at most `capacity` statements, closing the least recently used one to make room.
//! Unnamed statements live inside one batch and are not translated. Pure: frames in, frames out.
//!
//! A `DEALLOCATE ALL` or `DISCARD ALL` that ran on a connection ([`super::deallocate`]) dropped what it
//! held, but a statement prepared behind it in the same pipeline may be there still: the connection's
//! statements become uncertain ([`ServerPrepared::server_reset`]), and the next prepare of one of them is
//! preceded by a Close of its name, which Postgres accepts whether or not the statement exists.
//!
//! A pool remembers the statements its server accepted (a connection prepared them and went back to the
//! pool holding them). A client's Parse of such a statement while it holds no connection is answered
//! locally, without waiting for one (`ClientStatements::parse_detached`): libpq's synchronous `PQprepare`
//! on a thread whose other clients hold every connection (pgbench `-M prepared` with fewer connections
//! than clients) would otherwise wait for itself. The statement is prepared on a connection at its first
//! use there, as any other. What that gives up: a statement that has stopped being valid since the server
//! accepted it (its table dropped) fails at that use instead of at the Parse, as a statement prepared
//! before the drop fails in Postgres.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::PoolKey;
use crate::protocol::frame::BodyReader;
use crate::protocol::messages::{self, tag, SqlError};

/// The server-side names, one per distinct (SQL, parameter types): shared by every client of a server;
/// and, per pool, the names its server accepted.
#[derive(Debug, Default)]
pub struct StatementNames {
    ids: HashMap<(String, Vec<u32>), u64>,
    next: u64,
    accepted: HashMap<PoolKey, HashSet<Arc<str>>>,
}

impl StatementNames {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection of `pool` went back to it holding `names`, which its server therefore prepared.
    pub fn accept(&mut self, pool: &PoolKey, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        match self.accepted.get_mut(pool) {
            Some(set) => set.extend(names),
            None => {
                self.accepted.insert(pool.clone(), names.into_iter().collect());
            }
        }
    }

    /// The server's name of the statement of `sql` and `param_types` when `pool`'s server accepted it.
    fn accepted_name(&self, pool: &PoolKey, sql: &str, param_types: &[u32]) -> Option<&Arc<str>> {
        let accepted = self.accepted.get(pool)?;
        let id = self.ids.get(&(sql.to_owned(), param_types.to_vec()))?;
        accepted.get(statement_name(*id).as_str())
    }

    fn server_statement(&mut self, sql: &str, param_types: Vec<u32>) -> ServerStatement {
        let next = &mut self.next;
        let id = *self.ids.entry((sql.to_owned(), param_types.clone())).or_insert_with(|| {
            *next += 1;
            *next
        });
        let name = statement_name(id);
        let parse = messages::parse(Some(name.clone()), sql, param_types);
        ServerStatement { name: name.into(), parse }
    }
}

/// The name the server connections hold statement `id` under.
fn statement_name(id: u64) -> String {
    format!("dualwrite_s{id}")
}

/// A statement as the server connections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatement {
    pub name: Arc<str>,
    /// The Parse frame that prepares it under `name`.
    pub parse: Bytes,
}

/// The statements one server connection holds, with their last use.
#[derive(Debug)]
pub struct ServerPrepared {
    last_use: HashMap<String, u64>,
    clock: u64,
    capacity: usize,
    /// Statements added since the connection last went back to its pool.
    fresh: Vec<Arc<str>>,
    /// Statements the connection may or may not hold since a reset it ran (see the module docs).
    uncertain: HashSet<String>,
}

impl ServerPrepared {
    pub fn new(capacity: usize) -> Self {
        ServerPrepared {
            last_use: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
            fresh: Vec::new(),
            uncertain: HashSet::new(),
        }
    }

    fn holds(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.last_use.get_mut(name) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; the Closes to send before its Parse: of the statement evicted to make
    /// room, and of `name` itself when the connection may hold it still.
    fn add(&mut self, name: &Arc<str>) -> Vec<Bytes> {
        let mut closes = Vec::new();
        if self.last_use.len() >= self.capacity {
            let oldest = self.last_use.iter().min_by_key(|(_, used)| **used).map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.last_use.remove(&oldest);
                closes.push(messages::close_statement(&oldest));
            }
        }
        if self.uncertain.remove(&**name) {
            closes.push(messages::close_statement(name));
        }
        self.clock += 1;
        self.last_use.insert(name.to_string(), self.clock);
        self.fresh.push(Arc::clone(name));
        closes
    }

    /// The connection ran a `DEALLOCATE ALL` or `DISCARD ALL`: each statement it held is gone, unless it
    /// was prepared behind that statement in the same pipeline; which, is not known here, so each is
    /// uncertain.
    pub fn server_reset(&mut self) {
        self.uncertain.extend(self.last_use.drain().map(|(name, _)| name));
        self.fresh.clear();
    }

    /// The server did not prepare `name` (its Parse failed, or was skipped after an earlier error).
    pub fn forget(&mut self, name: &str) {
        self.last_use.remove(name);
        self.fresh.retain(|f| &**f != name);
    }

    /// The statements added since the last call that the connection still holds: with every answer of
    /// the connection read (it is going back to its pool), the ones its server prepared.
    pub fn take_fresh(&mut self) -> Vec<Arc<str>> {
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.retain(|name| self.last_use.contains_key(&**name));
        fresh
    }

    /// The connection was reset by the pooler (`DISCARD ALL`, nothing behind it): it holds nothing any more.
    pub fn clear(&mut self) {
        self.last_use.clear();
        self.fresh.clear();
        self.uncertain.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_use.len()
    }
}

/// What to do with a client's Parse of a named statement.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseAction {
    /// The connection holds it already: answer ParseComplete locally.
    AnswerLocally,
    /// Send these frames (the Closes of [`ServerPrepared::add`], then the Parse under the server's name
    /// `name`); the ParseComplete is the client's.
    Send { closes: Vec<Bytes>, parse: Bytes, name: Arc<str> },
    /// The client already has a statement of that name: Postgres's error, raised in its place.
    Refuse(SqlError),
}

/// A use (Bind, Describe) of a client's statement on a connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Use {
    /// Frames to send first, their answers hidden from the client, when the connection lacks the
    /// statement: the Closes of [`ServerPrepared::add`] and the Parse preparing it.
    pub prepare: Option<(Vec<Bytes>, Bytes)>,
    /// The client's frame with the server's statement name.
    pub frame: Bytes,
    /// That name.
    pub name: Arc<str>,
}

/// The named statements of one client, each with the order of its Parse.
#[derive(Debug, Default)]
pub struct ClientStatements {
    statements: HashMap<Vec<u8>, (u64, Arc<ServerStatement>)>,
    next: u64,
}

impl ClientStatements {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, name: &[u8], statement: Arc<ServerStatement>) {
        self.statements.insert(name.to_vec(), (self.next, statement));
        self.next += 1;
    }

    /// Where the client's statements stand now: [`Self::deallocate_before`] this mark drops the ones
    /// parsed so far and no later one.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// A `DEALLOCATE ALL` or `DISCARD ALL` sent at `mark` ran: the client's statements parsed before it
    /// are gone, as in Postgres.
    pub fn deallocate_before(&mut self, mark: u64) {
        self.statements.retain(|_, (order, _)| *order >= mark);
    }

    /// A Parse of `name` (not empty) with `sql` on the connection `server`.
    pub fn parse(
        &mut self,
        names: &mut StatementNames,
        server: &mut ServerPrepared,
        name: &[u8],
        sql: &str,
        param_types: Vec<u32>,
    ) -> ParseAction {
        if self.statements.contains_key(name) {
            let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
            return ParseAction::Refuse(SqlError::new("42P05", message));
        }
        let statement = Arc::new(names.server_statement(sql, param_types));
        self.insert(name, Arc::clone(&statement));
        if server.holds(&statement.name) {
            return ParseAction::AnswerLocally;
        }
        let closes = server.add(&statement.name);
        ParseAction::Send { closes, parse: statement.parse.clone(), name: Arc::clone(&statement.name) }
    }

    /// A Parse of `name` (not empty) while the client holds no connection of `pool`: answered locally (the
    /// statement recorded as the client's) when the client's name is free and `pool`'s server accepted the
    /// statement; `None` when it needs a connection.
    pub fn parse_detached(
        &mut self,
        names: &StatementNames,
        pool: &PoolKey,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
    ) -> Option<ParseAction> {
        if self.statements.contains_key(name) {
            return None;
        }
        let server_name = Arc::clone(names.accepted_name(pool, sql, param_types)?);
        let parse = messages::parse(Some(server_name.to_string()), sql, param_types.to_vec());
        self.insert(name, Arc::new(ServerStatement { name: server_name, parse }));
        Some(ParseAction::AnswerLocally)
    }

    /// Whether [`Self::parse_detached`] would answer this Parse locally.
    pub fn answers_detached(
        &self,
        names: &StatementNames,
        pool: &PoolKey,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
    ) -> bool {
        !self.statements.contains_key(name) && names.accepted_name(pool, sql, param_types).is_some()
    }

    /// A Bind or Describe (`frame`) of the client's statement `name` on `server`; `None` when the client has
    /// no statement of that name (the frame goes as it is, and the server says so).
    pub fn use_statement(&self, server: &mut ServerPrepared, name: &[u8], frame: &[u8]) -> Option<Use> {
        let (_, statement) = self.statements.get(name)?;
        let frame = rename_statement(frame, &statement.name)?;
        let prepare = (!server.holds(&statement.name)).then(|| (server.add(&statement.name), statement.parse.clone()));
        Some(Use { prepare, frame, name: Arc::clone(&statement.name) })
    }

    /// The client's Parse of `name` as the server's `server_name` failed (or was skipped after an earlier
    /// error): the name is free again, as in Postgres, unless the client has since named another statement
    /// so.
    pub fn forget_failed(&mut self, name: &[u8], server_name: &str) {
        if self.statements.get(name).is_some_and(|(_, s)| &*s.name == server_name) {
            self.statements.remove(name);
        }
    }

    /// A Close of the client's statement `name`: true when it was the client's (answer CloseComplete
    /// locally; the server keeps the statement for others).
    pub fn close(&mut self, name: &[u8]) -> bool {
        self.statements.remove(name).is_some()
    }
}

/// The Bind or Describe `frame` naming `statement` instead of the client's name; `None` for any other
/// frame or one that does not decode.
fn rename_statement(frame: &[u8], statement: &str) -> Option<Bytes> {
    let mut body = BodyReader::new(messages::body(frame));
    let mut out = BytesMut::with_capacity(frame.len() + statement.len());
    out.put_u8(frame[0]);
    out.put_i32(0);
    match frame[0] {
        tag::BIND => {
            let portal = body.cstr()?;
            body.cstr()?;
            out.put_slice(portal);
            out.put_u8(0);
        }
        tag::DESCRIBE if body.u8()? == b'S' => {
            body.cstr()?;
            out.put_u8(b'S');
        }
        _ => return None,
    }
    out.put_slice(statement.as_bytes());
    out.put_u8(0);
    out.put_slice(body.remaining());
    let len = i32::try_from(out.len() - 1).ok()?;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe_statement(name: &str) -> Bytes {
        let mut f = BytesMut::new();
        f.put_u8(b'D');
        f.put_i32(4 + 1 + name.len() as i32 + 1);
        f.put_u8(b'S');
        f.put_slice(name.as_bytes());
        f.put_u8(0);
        f.freeze()
    }

    fn sent(action: ParseAction) -> Bytes {
        match action {
            ParseAction::Send { closes, parse, .. } if closes.is_empty() => parse,
            other => panic!("expected a Parse to send, got {other:?}"),
        }
    }

    #[test]
    fn clients_share_a_statement_on_a_connection_under_the_proxys_name() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(10);
        let (mut alice, mut bob) = (ClientStatements::new(), ClientStatements::new());
        let parse = sent(alice.parse(&mut names, &mut server, b"s0", "SELECT $1", vec![23]));
        assert_eq!(parse, messages::parse(Some("dualwrite_s1".into()), "SELECT $1", vec![23]));
        // Bob's driver names the same statement differently: the connection already holds it.
        assert_eq!(bob.parse(&mut names, &mut server, b"q1", "SELECT $1", vec![23]), ParseAction::AnswerLocally);
        // Other parameter types are another statement.
        let other = sent(bob.parse(&mut names, &mut server, b"q2", "SELECT $1", vec![25]));
        assert_eq!(other, messages::parse(Some("dualwrite_s2".into()), "SELECT $1", vec![25]));
        let used = bob.use_statement(&mut server, b"q1", &messages::bind("p", "q1")).unwrap();
        assert_eq!(
            used,
            Use { prepare: None, frame: messages::bind("p", "dualwrite_s1"), name: "dualwrite_s1".into() }
        );
    }

    #[test]
    fn a_statement_is_prepared_on_another_connection_at_its_first_use_there() {
        let mut names = StatementNames::new();
        let (mut first, mut second) = (ServerPrepared::new(10), ServerPrepared::new(10));
        let mut client = ClientStatements::new();
        sent(client.parse(&mut names, &mut first, b"s", "SELECT 1", Vec::new()));
        let used = client.use_statement(&mut second, b"s", &describe_statement("s")).unwrap();
        let parse = messages::parse(Some("dualwrite_s1".into()), "SELECT 1", Vec::new());
        let name = "dualwrite_s1".into();
        assert_eq!(used, Use { prepare: Some((vec![], parse)), frame: describe_statement("dualwrite_s1"), name });
        let again = client.use_statement(&mut second, b"s", &messages::bind("", "s")).unwrap();
        assert_eq!(again.prepare, None, "prepared once per connection");
        assert_eq!(again.frame, messages::bind("", "dualwrite_s1"));
    }

    #[test]
    fn names_are_the_clients_own_a_duplicate_is_refused_and_a_close_frees_only_the_clients_name() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(10);
        let mut client = ClientStatements::new();
        sent(client.parse(&mut names, &mut server, b"s", "SELECT 1", Vec::new()));
        let ParseAction::Refuse(err) = client.parse(&mut names, &mut server, b"s", "SELECT 2", Vec::new()) else {
            panic!("a second Parse of the same name must fail as in Postgres")
        };
        assert_eq!((err.code.as_str(), err.message.as_str()), ("42P05", "prepared statement \"s\" already exists"));
        assert!(client.use_statement(&mut server, b"unknown", &messages::bind("", "unknown")).is_none());
        assert!(client.close(b"s"));
        assert!(!client.close(b"s"), "closed once");
        assert!(client.use_statement(&mut server, b"s", &messages::bind("", "s")).is_none());
        assert_eq!(server.len(), 1, "the server's statement stays for other clients");
        assert_eq!(client.parse(&mut names, &mut server, b"s", "SELECT 1", Vec::new()), ParseAction::AnswerLocally);
    }

    #[test]
    fn a_failed_parse_frees_the_clients_name_and_leaves_the_connection_without_the_statement() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(10);
        let (mut alice, mut bob) = (ClientStatements::new(), ClientStatements::new());
        let ParseAction::Send { name, .. } = alice.parse(&mut names, &mut server, b"s", "SELEC 1", Vec::new()) else {
            panic!("expected a Parse to send")
        };
        // The server answered with a syntax error: the pooler forgets both sides.
        server.forget(&name);
        alice.forget_failed(b"s", &name);
        assert_eq!(server.len(), 0);
        // Bob's Parse of the same text goes to the server again (and fails there, as it should), rather
        // than being answered ParseComplete for a statement the connection does not hold.
        assert!(matches!(bob.parse(&mut names, &mut server, b"q", "SELEC 1", Vec::new()), ParseAction::Send { .. }));
        // Alice may use her name again, as in Postgres.
        assert!(matches!(alice.parse(&mut names, &mut server, b"s", "SELECT 1", Vec::new()), ParseAction::Send { .. }));
        // A failure of an older statement under a name since reused does not free the new one.
        alice.forget_failed(b"s", &name);
        assert!(alice.use_statement(&mut server, b"s", &messages::bind("", "s")).is_some());
    }

    fn pool(database: &str) -> PoolKey {
        PoolKey { database: database.into(), user: "app".into(), parameters: Vec::new() }
    }

    #[test]
    fn a_parse_without_a_connection_is_answered_only_for_statements_the_pools_server_accepted() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(10);
        let (mut alice, mut bob) = (ClientStatements::new(), ClientStatements::new());
        let (shop, other) = (pool("shop"), pool("other"));
        // Nothing accepted yet: Bob needs a connection.
        assert!(!bob.answers_detached(&names, &shop, b"q", "SELECT $1", &[23]));
        assert_eq!(bob.parse_detached(&names, &shop, b"q", "SELECT $1", &[23]), None);
        sent(alice.parse(&mut names, &mut server, b"s", "SELECT $1", vec![23]));
        sent(alice.parse(&mut names, &mut server, b"bad", "SELEC 1", vec![]));
        // The server refused the second; the connection goes back holding the first only.
        server.forget("dualwrite_s2");
        let fresh = server.take_fresh();
        assert_eq!(fresh, vec![Arc::<str>::from("dualwrite_s1")]);
        assert!(server.take_fresh().is_empty(), "reported once");
        names.accept(&shop, fresh);
        assert!(bob.answers_detached(&names, &shop, b"q", "SELECT $1", &[23]));
        assert!(!bob.answers_detached(&names, &shop, b"q", "SELECT $1", &[25]), "other parameter types");
        assert!(!bob.answers_detached(&names, &other, b"q", "SELECT $1", &[23]), "another pool's server");
        assert!(!bob.answers_detached(&names, &shop, b"r", "SELEC 1", &[]), "refused by the server");
        assert_eq!(bob.parse_detached(&names, &shop, b"q", "SELECT $1", &[23]), Some(ParseAction::AnswerLocally));
        // The name is now Bob's: a second Parse of it is not answered locally (it fails on the server).
        assert!(!bob.answers_detached(&names, &shop, b"q", "SELECT $1", &[23]));
        // At its first use on a connection that lacks it, the statement is prepared there.
        let mut elsewhere = ServerPrepared::new(10);
        let used = bob.use_statement(&mut elsewhere, b"q", &messages::bind("", "q")).unwrap();
        assert_eq!(used.prepare, Some((vec![], messages::parse(Some("dualwrite_s1".into()), "SELECT $1", vec![23]))));
        assert_eq!(used.frame, messages::bind("", "dualwrite_s1"));
    }

    #[test]
    fn a_full_connection_closes_its_least_recently_used_statement() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(2);
        let mut client = ClientStatements::new();
        sent(client.parse(&mut names, &mut server, b"a", "SELECT 'a'", Vec::new()));
        sent(client.parse(&mut names, &mut server, b"b", "SELECT 'b'", Vec::new()));
        client.use_statement(&mut server, b"a", &messages::bind("", "a")).unwrap();
        let ParseAction::Send { closes, .. } = client.parse(&mut names, &mut server, b"c", "SELECT 'c'", Vec::new())
        else {
            panic!("expected a Parse")
        };
        assert_eq!(closes, [messages::close_statement("dualwrite_s2")], "b was used least recently");
        let used = client.use_statement(&mut server, b"b", &messages::bind("", "b")).unwrap();
        let (closes, parse) = used.prepare.unwrap();
        assert_eq!(closes, [messages::close_statement("dualwrite_s1")]);
        assert_eq!(parse, messages::parse(Some("dualwrite_s2".into()), "SELECT 'b'", Vec::new()));
        server.clear();
        assert!(server.len() == 0, "a reset connection holds nothing");
    }

    #[test]
    fn after_a_reset_statements_are_prepared_again_behind_a_close_and_the_clients_older_names_are_gone() {
        let mut names = StatementNames::new();
        let mut server = ServerPrepared::new(10);
        let (mut alice, mut bob) = (ClientStatements::new(), ClientStatements::new());
        sent(alice.parse(&mut names, &mut server, b"s", "SELECT 1", Vec::new()));
        assert_eq!(bob.parse(&mut names, &mut server, b"q", "SELECT 1", Vec::new()), ParseAction::AnswerLocally);
        // Alice sends DEALLOCATE ALL, then (pipelined behind it) prepares another statement.
        let mark = alice.mark();
        sent(alice.parse(&mut names, &mut server, b"t", "SELECT 2", Vec::new()));
        // The server ran the DEALLOCATE ALL.
        server.server_reset();
        alice.deallocate_before(mark);
        assert!(server.len() == 0);
        assert!(alice.use_statement(&mut server, b"s", &messages::bind("", "s")).is_none(), "Alice's s is gone");
        // Bob's statement is prepared on the connection again; a Close first, since which of the
        // connection's statements survived is not known.
        let used = bob.use_statement(&mut server, b"q", &messages::bind("", "q")).unwrap();
        let (closes, parse) = used.prepare.unwrap();
        assert_eq!(closes, [messages::close_statement("dualwrite_s1")]);
        assert_eq!(parse, messages::parse(Some("dualwrite_s1".into()), "SELECT 1", Vec::new()));
        // Alice's t, prepared behind the reset, is still hers.
        let used = alice.use_statement(&mut server, b"t", &messages::bind("", "t")).unwrap();
        assert_eq!(used.prepare.unwrap().0, [messages::close_statement("dualwrite_s2")]);
        let again = alice.use_statement(&mut server, b"t", &messages::bind("", "t")).unwrap();
        assert_eq!(again.prepare, None, "prepared again once");
        // A reset of the pooler's own (nothing behind it) leaves nothing uncertain.
        server.server_reset();
        server.clear();
        let used = bob.use_statement(&mut server, b"q", &messages::bind("", "q")).unwrap();
        assert_eq!(used.prepare.unwrap().0, Vec::<Bytes>::new());
    }
}
