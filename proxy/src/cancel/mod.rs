//! Cancel keys. Clients get the upstream's real pid and a secret key the proxy generates (same length as
//! the upstream's); a CancelRequest carrying that pair is mapped to the upstream's own (pid, key) and
//! forwarded on a fresh upstream connection. With peering (several instances behind one address,
//! `config::peers`), the secret also names the instance that issued it (`key`), and a CancelRequest that
//! names another instance is forwarded to that instance's address ([`CancelRoute`]).

pub mod key;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::{PeerAddress, Peering};
use crate::protocol::startup::CancelKey;
use crate::upstream::{self, UpstreamTarget};

/// How long connecting to a peer may take: a peer is another proxy on the same network, so a slow connect
/// means it is down, and the client's cancel connection should not wait on it.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded CancelRequest waits for the receiver's close (see [`send_request`]).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Proxy key -> upstream key, for every live session (none while a transaction-pooled session holds no
/// server connection).
#[derive(Debug, Default)]
pub struct CancelRegistry {
    /// Client key -> the upstream key its cancel reaches now. The target has a lock of its own so that a
    /// transaction-pooled session, which points it anew at every lease and return, never hashes its key into
    /// the shared map (that was ~1,000 instructions per statement).
    keys: Mutex<HashMap<CancelKey, CancelTarget>>,
    /// This instance's peer id, written into every key it issues (`None`: peering off). Fixed for the
    /// registry's life: keys already handed out carry it, which is why `peer_id` needs a restart.
    own_peer: Option<u8>,
}

/// The upstream key a client's cancel reaches (none while a transaction-pooled client holds no connection).
/// The session owns it too ([`crate::session`]'s shared state) and writes the key of each connection it
/// holds there, so that pointing the cancel at a new lease is one lock and no copy of the key.
pub type CancelTarget = Arc<Mutex<Option<CancelKey>>>;

/// Where a CancelRequest goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRoute {
    /// Issued here: the cancel goes to the upstream, under the upstream's own key.
    Local(CancelKey),
    /// Issued by peer `id`: `key` (marked forwarded) goes to `address`.
    Peer { id: u8, address: PeerAddress, key: CancelKey },
    /// Nothing to cancel that this instance can reach: dropped without a word, as Postgres drops an
    /// unknown key. The reason is for the log.
    Unknown(&'static str),
}

impl CancelRoute {
    /// The `outcome` label of `dualwrite_cancel_requests_total` when the route is followed successfully.
    pub fn outcome(&self) -> &'static str {
        match self {
            CancelRoute::Local(_) => "local",
            CancelRoute::Peer { .. } => "forwarded",
            CancelRoute::Unknown(_) => "unknown",
        }
    }
}

impl CancelRegistry {
    /// A registry whose keys name `own_peer` (`Peering::own_id`; `None` without peering).
    pub fn new(own_peer: Option<u8>) -> Arc<Self> {
        Arc::new(CancelRegistry { keys: Mutex::default(), own_peer })
    }

    /// Issues the client's key for a session whose upstream key is `upstream` and stays so; the mapping
    /// lives as long as the returned registration.
    #[cfg(test)]
    pub fn register(self: &Arc<Self>, upstream: CancelKey) -> CancelRegistration {
        let template = upstream.clone();
        self.register_target(&template, Arc::new(Mutex::new(Some(upstream))))
    }

    /// Issues a client key shaped like `upstream` (its pid, its secret's length) whose cancel reaches
    /// whatever key `target` holds at the time; the mapping lives as long as the returned registration.
    pub fn register_target(self: &Arc<Self>, upstream: &CancelKey, target: CancelTarget) -> CancelRegistration {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let client = loop {
            let candidate = CancelKey { pid: upstream.pid, secret: self.random_secret(upstream.secret.len()) };
            if !keys.contains_key(&candidate) {
                break candidate;
            }
        };
        keys.insert(client.clone(), Arc::clone(&target));
        CancelRegistration { registry: Arc::clone(self), client }
    }

    /// The upstream key behind a client's key.
    pub fn lookup(&self, client: &CancelKey) -> Option<CancelKey> {
        let target = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(client).cloned()?;
        let upstream = target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        upstream
    }

    /// Where a CancelRequest for `key` goes, given the peers in force. A key that names this instance is
    /// looked up here only; one that names a listed peer is forwarded there, unless a peer already
    /// forwarded it (then the peers' configs disagree, e.g. a peer address that reaches the load balancer,
    /// and forwarding again could loop).
    pub fn route(&self, peering: &Peering, key: &CancelKey) -> CancelRoute {
        let Some(own) = self.own_peer else {
            return self.lookup(key).map_or(CancelRoute::Unknown("no session has this key"), CancelRoute::Local);
        };
        let issuer = key::issuer(&key.secret);
        if issuer == own {
            return self
                .lookup(&key::as_issued(key))
                .map_or(CancelRoute::Unknown("no session of this instance has this key"), CancelRoute::Local);
        }
        if key::is_forwarded(key) {
            return CancelRoute::Unknown("forwarded by a peer but naming another instance; not forwarded again");
        }
        match peering.address(issuer) {
            Some(address) => CancelRoute::Peer { id: issuer, address: address.clone(), key: key::forwarded(key) },
            None => CancelRoute::Unknown("the key names no configured peer"),
        }
    }

    /// A random secret of `len` bytes (4 to 256), naming this instance when peering is on.
    fn random_secret(&self, len: usize) -> Bytes {
        let mut secret = vec![0u8; len.clamp(4, 256)];
        // The OS RNG failing leaves nothing safe to fall back on.
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut secret)
            .expect("the system random number generator failed");
        if let Some(own) = self.own_peer {
            key::stamp(&mut secret, own);
        }
        Bytes::from(secret)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Keeps one mapping alive; dropping it (session end) forgets the key.
#[derive(Debug)]
pub struct CancelRegistration {
    registry: Arc<CancelRegistry>,
    client: CancelKey,
}

impl CancelRegistration {
    /// The key handed to the client in BackendKeyData.
    pub fn client_key(&self) -> &CancelKey {
        &self.client
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.registry.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.client);
    }
}

/// Sends a CancelRequest for `upstream_key` to the upstream, as libpq does: new connection, one packet,
/// the server's close awaited.
pub async fn forward_cancel(target: &UpstreamTarget, upstream_key: &CancelKey) -> anyhow::Result<()> {
    let stream = upstream::connect(target).await?;
    send_request(stream, upstream_key).await
}

/// Forwards a CancelRequest to a peer over plain TCP, as a client would send it to Postgres (the peer's
/// listener takes a CancelRequest without TLS; it holds no secret beyond what any cancel carries).
pub async fn forward_to_peer(address: &PeerAddress, key: &CancelKey) -> anyhow::Result<()> {
    let connect = tokio::net::TcpStream::connect((address.host.as_str(), address.port));
    let stream = tokio::time::timeout(PEER_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow::anyhow!("connecting to peer {address} took longer than {PEER_CONNECT_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to peer {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    send_request(stream, key).await
}

/// Writes one CancelRequest and waits (up to [`CLOSE_WAIT`]) for the receiver to close, as libpq's
/// PQcancel does: Postgres closes once it has signalled the backend, and a proxy closes once it has passed
/// the request on the same way, so the client whose cancel connection the proxy then closes knows the
/// request has reached the server, along a chain of any length.
async fn send_request<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    key: &CancelKey,
) -> anyhow::Result<()> {
    stream.write_all(&key.encode_request()).await?;
    stream.flush().await?;
    let mut sink = [0u8; 64];
    let closed = async {
        // Nothing is expected back; anything the receiver sends is read and ignored until its close.
        while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_while_registered() {
        let registry = CancelRegistry::new(None);
        let upstream = CancelKey { pid: 77, secret: Bytes::from_static(b"abcd") };
        let reg = registry.register(upstream.clone());
        let client = reg.client_key().clone();
        assert_eq!(client.pid, 77, "the client sees the upstream's real pid");
        assert_eq!(client.secret.len(), 4);
        assert_ne!(client.secret, upstream.secret);
        assert_eq!(registry.lookup(&client), Some(upstream.clone()));
        assert_eq!(registry.lookup(&upstream), None, "the upstream's own key is not accepted");
        drop(reg);
        assert!(registry.is_empty());
        let long = registry.register(CancelKey { pid: 1, secret: Bytes::from(vec![1u8; 32]) });
        assert_eq!(long.client_key().secret.len(), 32);
    }

    fn peering(own: u32, peers: &[(u32, &str)]) -> Peering {
        let peers: Vec<_> =
            peers.iter().map(|(id, a)| crate::config::PeerConfig { id: *id, address: (*a).into() }).collect();
        Peering::from_settings(own, &peers).unwrap()
    }

    #[test]
    fn keys_name_their_instance_and_route_to_it() {
        let peers = peering(1, &[(2, "10.0.0.12:6432")]);
        let a = CancelRegistry::new(Some(1));
        let b = CancelRegistry::new(Some(2));
        let upstream = CancelKey { pid: 42, secret: Bytes::from_static(b"wxyz") };
        let reg = a.register(upstream.clone());
        let issued = reg.client_key().clone();
        assert_eq!(key::issuer(&issued.secret), 1);
        assert_eq!(a.route(&peers, &issued), CancelRoute::Local(upstream.clone()));
        // A forwarded request for a key of this instance is looked up as issued.
        assert_eq!(a.route(&peers, &key::forwarded(&issued)), CancelRoute::Local(upstream.clone()));
        // B's keys are forwarded there, marked.
        let b_reg = b.register(CancelKey { pid: 43, secret: Bytes::from_static(b"abcd") });
        let b_key = b_reg.client_key().clone();
        let CancelRoute::Peer { id, address, key: sent } = a.route(&peers, &b_key) else { panic!("not forwarded") };
        assert_eq!((id, address.to_string()), (2, "10.0.0.12:6432".to_owned()));
        assert!(key::is_forwarded(&sent));
        assert_eq!(key::as_issued(&sent), b_key);
        assert_eq!(a.route(&peers, &b_key).outcome(), "forwarded");
    }

    #[test]
    fn unknown_keys_are_dropped_and_nothing_is_forwarded_twice() {
        let peers = peering(1, &[(2, "10.0.0.12:6432")]);
        let a = CancelRegistry::new(Some(1));
        let mut own_unknown = *b"\0abc";
        key::stamp(&mut own_unknown, 1);
        let own_unknown = CancelKey { pid: 1, secret: Bytes::copy_from_slice(&own_unknown) };
        assert!(matches!(a.route(&peers, &own_unknown), CancelRoute::Unknown(_)), "own id, no session");
        let mut other = *b"\0abc";
        key::stamp(&mut other, 3);
        let other = CancelKey { pid: 1, secret: Bytes::copy_from_slice(&other) };
        assert!(matches!(a.route(&peers, &other), CancelRoute::Unknown(_)), "id 3 is no configured peer");
        let mut of_b = *b"\0abc";
        key::stamp(&mut of_b, 2);
        let of_b = CancelKey { pid: 1, secret: Bytes::copy_from_slice(&of_b) };
        assert!(matches!(a.route(&peers, &of_b), CancelRoute::Peer { id: 2, .. }));
        let again = key::forwarded(&of_b);
        assert_eq!(
            a.route(&peers, &again),
            CancelRoute::Unknown("forwarded by a peer but naming another instance; not forwarded again")
        );
        assert_eq!(a.route(&peers, &again).outcome(), "unknown");
    }

    #[test]
    fn without_peering_keys_are_wholly_random_and_only_looked_up() {
        let off = CancelRegistry::new(None);
        let upstream = CancelKey { pid: 5, secret: Bytes::from_static(b"abcd") };
        let reg = off.register(upstream.clone());
        assert_eq!(off.route(&Peering::default(), reg.client_key()), CancelRoute::Local(upstream));
        // Whatever its first byte says, an unknown key is dropped, never forwarded.
        let stranger = CancelKey { pid: 5, secret: Bytes::from_static(b"\x10bcd") };
        assert!(matches!(off.route(&peering(0, &[]), &stranger), CancelRoute::Unknown(_)));
    }
}
