//! Cancel keys. Clients get the upstream's real pid and a secret key the proxy generates (same length as
//! the upstream's); a CancelRequest carrying that pair is mapped to the upstream's own (pid, key) and
//! forwarded on a fresh upstream connection. The key space leaves room to encode which proxy instance
//! issued a key (protocol 3.2's longer keys) so another instance could forward it later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::io::AsyncWriteExt;

use crate::protocol::startup::CancelKey;
use crate::upstream::{self, UpstreamTarget};

/// Proxy key -> upstream key, for every live session (none while a transaction-pooled session holds no
/// server connection).
#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<CancelKey, Option<CancelKey>>>,
}

impl CancelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Issues the client's key for a session whose upstream key is `upstream`; the mapping lives as long
    /// as the returned registration.
    pub fn register(self: &Arc<Self>, upstream: CancelKey) -> CancelRegistration {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let client = loop {
            let candidate = CancelKey { pid: upstream.pid, secret: random_secret(upstream.secret.len()) };
            if !keys.contains_key(&candidate) {
                break candidate;
            }
        };
        keys.insert(client.clone(), Some(upstream));
        CancelRegistration { registry: Arc::clone(self), client }
    }

    /// The upstream key behind a client's key.
    pub fn lookup(&self, client: &CancelKey) -> Option<CancelKey> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(client).cloned().flatten()
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

    /// The server connection the client's cancel now reaches (transaction pooling: the one it holds, if
    /// any).
    pub fn retarget(&self, upstream: Option<CancelKey>) {
        if let Some(slot) = self.registry.keys.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.client) {
            *slot = upstream;
        }
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.registry.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.client);
    }
}

fn random_secret(len: usize) -> Bytes {
    let mut secret = vec![0u8; len.clamp(4, 256)];
    // The OS RNG failing leaves nothing safe to fall back on.
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut secret)
        .expect("the system random number generator failed");
    Bytes::from(secret)
}

/// Sends a CancelRequest for `upstream_key` to the upstream, as libpq does: new connection, one packet,
/// close.
pub async fn forward_cancel(target: &UpstreamTarget, upstream_key: &CancelKey) -> anyhow::Result<()> {
    let mut stream = upstream::connect(target).await?;
    stream.write_all(&upstream_key.encode_request()).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_while_registered() {
        let registry = CancelRegistry::new();
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
}
