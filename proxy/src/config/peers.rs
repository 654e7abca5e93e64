//! Peering of several proxy instances behind one address (`peer_id` and `[[peers]]` of the proxy
//! config): the settings as written, and their validation into [`Peering`], the form the cancel path
//! reads. As in pgbouncer 1.19+, each instance has a `peer_id` that its cancel keys carry (see
//! `cancel::key`), and lists the other instances' addresses, so that a CancelRequest the load balancer
//! hands to the wrong instance reaches the one that issued the key.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest `peer_id`: the id takes 4 bits of the client's cancel secret (`cancel::key`), and every bit
/// spent on it is one less random bit, so the range is kept to what "several instances" needs.
pub const MAX_PEER_ID: u32 = 15;

/// One other instance, as written in the config (`[[peers]]` with `id` and `address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// That instance's own `peer_id`.
    pub id: u32,
    /// Where that instance's client listener is reached from this one: `host:port` (a name, an IPv4
    /// address, or an IPv6 address in brackets). Not the load balancer's address.
    pub address: String,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `ID=HOST:PORT`, the form of `--peer` and of `DUALWRITE_PEERS` items.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, address) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid peer {s:?}: expected ID=HOST:PORT, e.g. 2=10.0.0.12:6432"))?;
        let id = id.trim().parse().map_err(|_| format!("invalid peer {s:?}: the id {id:?} is not a number"))?;
        Ok(PeerConfig { id, address: address.trim().to_owned() })
    }
}

/// A peer's address, checked for form (`host:port`); resolved when a cancel is forwarded, so a name
/// follows its DNS record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerAddress {
    pub host: String,
    pub port: u16,
}

impl PeerAddress {
    pub fn parse(text: &str) -> Result<PeerAddress, String> {
        if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
            return Self::checked_port(addr.ip().to_string(), addr.port(), text);
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} is not HOST:PORT (e.g. 10.0.0.12:6432 or dualwrite-2.internal:6432)"));
        };
        if host.is_empty() || host.contains(':') || host.contains(|c: char| c.is_whitespace() || "/[]@?#".contains(c)) {
            return Err(format!(
                "{text:?} is not HOST:PORT (a host name, an IPv4 address, or an IPv6 address in brackets)"
            ));
        }
        let port =
            port.parse::<u16>().map_err(|_| format!("{text:?}: the port {port:?} is not a number up to 65535"))?;
        Self::checked_port(host.to_owned(), port, text)
    }

    fn checked_port(host: String, port: u16, text: &str) -> Result<PeerAddress, String> {
        if port == 0 {
            return Err(format!("{text:?}: port 0 cannot be connected to"));
        }
        Ok(PeerAddress { host, port })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Validated peering: this instance's id (`None`: peering off, cancel keys fully random as without
/// peering) and the other instances by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peering {
    own: Option<u8>,
    peers: BTreeMap<u8, PeerAddress>,
}

impl Peering {
    /// Checks `peer_id` and `peers` together; the error names the setting and what is wrong.
    pub fn from_settings(peer_id: u32, peers: &[PeerConfig]) -> anyhow::Result<Peering> {
        anyhow::ensure!(
            peer_id <= MAX_PEER_ID,
            "peer_id = {peer_id}: peer ids are 1 to {MAX_PEER_ID} (0 or absent turns peering off)"
        );
        if peer_id == 0 {
            anyhow::ensure!(
                peers.is_empty(),
                "peers are listed but peer_id is not set: give this instance its own peer_id (1 to {MAX_PEER_ID})"
            );
            return Ok(Peering::default());
        }
        let mut by_id = BTreeMap::new();
        let mut by_address: BTreeMap<PeerAddress, u8> = BTreeMap::new();
        for peer in peers {
            let id = peer.id;
            anyhow::ensure!((1..=MAX_PEER_ID).contains(&id), "peer {id}: peer ids are 1 to {MAX_PEER_ID}");
            anyhow::ensure!(
                id != peer_id,
                "peer {id} is this instance's own peer_id: list only the other instances in peers"
            );
            anyhow::ensure!(!by_id.contains_key(&(id as u8)), "peer {id} is listed twice");
            let address = PeerAddress::parse(&peer.address).map_err(|e| anyhow::anyhow!("peer {id}: address {e}"))?;
            if let Some(other) = by_address.insert(address.clone(), id as u8) {
                anyhow::bail!(
                    "peers {other} and {id} have the same address {address}: each peer's address must reach that \
                     instance itself, not the load balancer in front of them"
                );
            }
            by_id.insert(id as u8, address);
        }
        Ok(Peering { own: Some(peer_id as u8), peers: by_id })
    }

    /// This instance's id, when peering is on.
    pub fn own_id(&self) -> Option<u8> {
        self.own
    }

    /// The address of peer `id`, if listed.
    pub fn address(&self, id: u8) -> Option<&PeerAddress> {
        self.peers.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u32, address: &str) -> PeerConfig {
        PeerConfig { id, address: address.into() }
    }

    fn error(peer_id: u32, peers: &[PeerConfig]) -> String {
        format!("{:#}", Peering::from_settings(peer_id, peers).unwrap_err())
    }

    #[test]
    fn valid_peering_maps_ids_to_addresses() {
        let peers = [peer(2, "10.0.0.12:6432"), peer(3, "dualwrite-3.internal:6432"), peer(15, "[::1]:7000")];
        let peering = Peering::from_settings(1, &peers).unwrap();
        assert_eq!(peering.own_id(), Some(1));
        assert_eq!(peering.address(2), Some(&PeerAddress { host: "10.0.0.12".into(), port: 6432 }));
        assert_eq!(peering.address(3).unwrap().to_string(), "dualwrite-3.internal:6432");
        assert_eq!(peering.address(15).unwrap().to_string(), "[::1]:7000");
        assert_eq!(peering.address(4), None);
        assert_eq!(Peering::from_settings(0, &[]).unwrap(), Peering::default(), "0 = peering off");
        assert_eq!(Peering::from_settings(0, &[]).unwrap().own_id(), None);
        assert_eq!(Peering::from_settings(4, &[]).unwrap().own_id(), Some(4), "an id without peers is allowed");
    }

    #[test]
    fn invalid_peering_is_refused_naming_the_problem() {
        assert!(error(16, &[]).contains("peer_id = 16: peer ids are 1 to 15"), "{}", error(16, &[]));
        let e = error(0, &[peer(2, "h:1")]);
        assert!(e.contains("peer_id is not set"), "{e}");
        let e = error(1, &[peer(2, "a:1"), peer(2, "b:1")]);
        assert!(e.contains("peer 2 is listed twice"), "{e}");
        let e = error(1, &[peer(1, "a:1")]);
        assert!(e.contains("peer 1 is this instance's own peer_id"), "{e}");
        let e = error(1, &[peer(0, "a:1")]);
        assert!(e.contains("peer 0: peer ids are 1 to 15"), "{e}");
        let e = error(1, &[peer(2, "lb:6432"), peer(3, "lb:6432")]);
        assert!(e.contains("peers 2 and 3 have the same address lb:6432"), "{e}");
        for bad in ["nohostport", ":6432", "host:", "host:70000", "host:0", "::1:6432", "a b:1", "postgres://h:1"] {
            let e = error(1, &[peer(2, bad)]);
            assert!(e.starts_with("peer 2: address"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cli_form_is_id_equals_address() {
        assert_eq!("2=10.0.0.12:6432".parse::<PeerConfig>(), Ok(peer(2, "10.0.0.12:6432")));
        assert!("x=h:1".parse::<PeerConfig>().unwrap_err().contains("not a number"));
        assert!("h:1".parse::<PeerConfig>().unwrap_err().contains("expected ID=HOST:PORT"));
    }
}
