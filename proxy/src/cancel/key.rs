//! Which instance issued a client's cancel key, written into the key itself (peering, see
//! `config::peers`), the way pgbouncer 1.19+ writes its `peer_id` into its keys.
//!
//! The pid of a key is the upstream backend's real one (the design's transparency rule), so only the
//! secret is the proxy's to shape. With peering on, its first byte is
//!
//! ```text
//!   bit 7     forwarded: 0 in every key handed to a client; set by the instance that forwards a
//!             CancelRequest to the peer the key names, so that no request is forwarded twice
//!   bits 6-3  the issuing instance's peer_id (1 to 15)
//!   bits 2-0  random
//! ```
//!
//! and every other byte is random. So 5 bits of the secret are not random: a protocol 3.0 key (4-byte
//! secret, what PostgreSQL 15 and every current client use) keeps 27 random bits of Postgres's 32, and a
//! protocol 3.2 key of n bytes keeps 8n - 5. (pgbouncer, whose keys are wholly its own, spends 19 of 64
//! bits and keeps 45.) With peering off nothing is spent: all 32 bits are random, as before.

use bytes::{Bytes, BytesMut};

use crate::config::MAX_PEER_ID;
use crate::protocol::startup::CancelKey;

const FORWARDED: u8 = 0x80;
const PEER_SHIFT: u32 = 3;
const PEER_MASK: u8 = 0x0f << PEER_SHIFT;

// The configurable range must fit the 4 bits the layout gives the id.
const _: () = assert!(MAX_PEER_ID <= (PEER_MASK >> PEER_SHIFT) as u32);

/// Writes `peer` into a freshly drawn random secret (the forwarded bit cleared).
pub fn stamp(secret: &mut [u8], peer: u8) {
    if let Some(first) = secret.first_mut() {
        *first = (*first & !(FORWARDED | PEER_MASK)) | ((peer << PEER_SHIFT) & PEER_MASK);
    }
}

/// The peer id a secret names (0 for none: no key issued with peering on names 0).
pub fn issuer(secret: &[u8]) -> u8 {
    secret.first().map_or(0, |b| (b & PEER_MASK) >> PEER_SHIFT)
}

/// Whether a peer already forwarded this request.
pub fn is_forwarded(key: &CancelKey) -> bool {
    key.secret.first().is_some_and(|b| b & FORWARDED != 0)
}

/// The key as a peer forwards it.
pub fn forwarded(key: &CancelKey) -> CancelKey {
    with_first_byte(key, |b| b | FORWARDED)
}

/// The key as it was issued (the forwarded bit cleared), to look it up.
pub fn as_issued(key: &CancelKey) -> CancelKey {
    with_first_byte(key, |b| b & !FORWARDED)
}

fn with_first_byte(key: &CancelKey, f: impl Fn(u8) -> u8) -> CancelKey {
    let mut secret = BytesMut::from(&key.secret[..]);
    if let Some(first) = secret.first_mut() {
        *first = f(*first);
    }
    CancelKey { pid: key.pid, secret: Bytes::from(secret) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> CancelKey {
        CancelKey { pid: 7, secret: Bytes::copy_from_slice(secret) }
    }

    #[test]
    fn the_issuer_is_read_back_and_the_random_bits_are_kept() {
        for peer in 1..=MAX_PEER_ID as u8 {
            for first in [0x00, 0xff, 0xa5, 0x5a] {
                let mut secret = [first, 0x12, 0x34, 0x56];
                stamp(&mut secret, peer);
                assert_eq!(issuer(&secret), peer);
                assert_eq!(secret[0] & 0x07, first & 0x07, "the low 3 bits stay random");
                assert_eq!(&secret[1..], &[0x12, 0x34, 0x56], "the other bytes stay random");
                assert!(!is_forwarded(&key(&secret)), "issued keys are not marked forwarded");
            }
        }
    }

    #[test]
    fn forwarding_marks_one_bit_that_lookup_clears() {
        let mut secret = [0xff; 4];
        stamp(&mut secret, 9);
        let issued = key(&secret);
        let sent = forwarded(&issued);
        assert!(is_forwarded(&sent));
        assert_eq!(issuer(&sent.secret), 9, "the issuer survives forwarding");
        assert_ne!(sent, issued);
        assert_eq!(as_issued(&sent), issued);
        assert_eq!(as_issued(&issued), issued);
        assert_eq!(sent.pid, issued.pid);
    }

    #[test]
    fn keys_of_different_peers_never_collide() {
        // Same random draw, same pid: the issuer bits alone keep them apart.
        let (mut a, mut b) = ([0x3c, 1, 2, 3], [0x3c, 1, 2, 3]);
        stamp(&mut a, 1);
        stamp(&mut b, 2);
        assert_ne!(a, b);
        assert_eq!((issuer(&a), issuer(&b)), (1, 2));
        assert_eq!(issuer(&[]), 0, "an empty secret names no peer");
    }
}
