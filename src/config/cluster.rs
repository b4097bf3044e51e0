//! The cluster section of the broker config: the peers of a replicated cluster (`[[cluster.peers]]`),
//! each broker's Kafka, replication and Raft listeners, and their validation.

use serde::{Deserialize, Serialize};

/// Largest cluster `cluster.peers` may describe (a bound for every per-peer table built from it).
pub const MAX_CLUSTER_PEERS: usize = 64;

/// The brokers of a replicated cluster (issue 7). Every broker is given the same list, its own
/// entry included; the own entry supplies this broker's replication and Raft listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every broker of the cluster (`[[cluster.peers]]` tables); empty: single node.
    pub peers: Vec<PeerConfig>,
}

/// One broker of the cluster and where the others reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `node_id`.
    pub id: i32,
    /// HOST:PORT of its Kafka listener as clients reach it (advertised in Metadata).
    pub kafka: String,
    /// HOST:PORT of its replication listener (followers fetch from leaders there).
    pub replication: String,
    /// HOST:PORT of its Raft listener (cluster metadata).
    pub raft: String,
}

/// Why a cluster configuration or a `--peer` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("--peer {0}: expected ID=KAFKA,REPLICATION,RAFT (each HOST:PORT)")]
    PeerSyntax(String),
    #[error("peer {id}: {what} address {addr:?} is not HOST:PORT with a port in 1..=65535")]
    BadAddress { id: i32, what: &'static str, addr: String },
    #[error("peer id {0} is listed twice")]
    DuplicateId(i32),
    #[error("address {0} is used twice (every listener of every peer needs its own)")]
    DuplicateAddress(String),
    #[error("node_id {0} is not among the cluster peers (every broker lists itself too)")]
    OwnIdMissing(i32),
    #[error("{0} peers: at most {MAX_CLUSTER_PEERS}")]
    TooManyPeers(usize),
    #[error("advertised_host does not apply to a cluster: the own peer's `kafka` address is advertised")]
    AdvertisedHostWithPeers,
}

impl std::str::FromStr for PeerConfig {
    type Err = ClusterConfigError;

    /// `ID=KAFKA,REPLICATION,RAFT`, e.g. `1=10.0.0.2:9092,10.0.0.2:9192,10.0.0.2:9292`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ClusterConfigError::PeerSyntax(s.to_string());
        let (id, addrs) = s.split_once('=').ok_or_else(syntax)?;
        let id = id.trim().parse::<i32>().map_err(|_| syntax())?;
        let mut parts = addrs.split(',').map(str::trim);
        let (Some(kafka), Some(replication), Some(raft), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        let peer = PeerConfig { id, kafka: kafka.into(), replication: replication.into(), raft: raft.into() };
        peer.check_addresses()?;
        Ok(peer)
    }
}

impl PeerConfig {
    /// Its three listeners, named.
    fn addresses(&self) -> [(&'static str, &str); 3] {
        [("kafka", &self.kafka), ("replication", &self.replication), ("raft", &self.raft)]
    }

    fn check_addresses(&self) -> Result<(), ClusterConfigError> {
        for (what, addr) in self.addresses() {
            if split_host_port(addr).is_none() {
                return Err(ClusterConfigError::BadAddress { id: self.id, what, addr: addr.to_string() });
            }
        }
        Ok(())
    }

    /// Host and port of its Kafka listener, as Metadata advertises them.
    pub fn kafka_host_port(&self) -> Option<(&str, u16)> {
        split_host_port(&self.kafka)
    }
}

/// `HOST:PORT` (`[v6]:PORT` too) with a non-empty host and a port in 1..=65535; no name lookup.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}

impl ClusterConfig {
    /// More than one broker is configured (an empty list is today's single node).
    pub fn is_cluster(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The entry of broker `id`.
    pub fn peer(&self, id: i32) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// Ids unique, every address well-formed and used once, `node_id` among the peers, bounded size.
    pub fn validate(&self, node_id: i32) -> Result<(), ClusterConfigError> {
        if self.peers.is_empty() {
            return Ok(());
        }
        if self.peers.len() > MAX_CLUSTER_PEERS {
            return Err(ClusterConfigError::TooManyPeers(self.peers.len()));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for p in &self.peers {
            p.check_addresses()?;
            if !ids.insert(p.id) {
                return Err(ClusterConfigError::DuplicateId(p.id));
            }
            for (_, addr) in p.addresses() {
                if !addrs.insert(addr) {
                    return Err(ClusterConfigError::DuplicateAddress(addr.to_string()));
                }
            }
        }
        if !ids.contains(&node_id) {
            return Err(ClusterConfigError::OwnIdMissing(node_id));
        }
        Ok(())
    }
}
