//! The Raft type configuration of the cluster-metadata group and the commands it replicates.
//! Commands are the only way the cluster state changes; each names everything its outcome depends
//! on (e.g. the replica assignment is computed by the caller), so applying one is deterministic.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A broker's id in Kafka's terms; the Raft node id of the broker is the same number.
pub type BrokerId = i32;
/// Raft node id (a broker id, widened as openraft wants it).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft types of the cluster-metadata group: tokio runtime, snapshots as in-memory bytes.
    pub TypeConfig:
        D = ClusterCommand,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Where a broker listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEndpoints {
    /// Kafka listener (`host:port`) advertised to clients.
    pub kafka_addr: String,
    /// Replication listener (`host:port`) followers fetch from.
    pub replication_addr: String,
}

/// A change to the cluster metadata, replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Adds a broker or updates its endpoints.
    RegisterBroker { broker_id: BrokerId, endpoints: BrokerEndpoints },
    /// Creates a topic; `assignment[p]` is partition p's replica list, preferred leader first.
    CreateTopic { name: String, topic_id: [u8; 16], configs: BTreeMap<String, String>, assignment: Vec<Vec<BrokerId>> },
    /// Removes a topic.
    DeleteTopic { name: String },
    /// Makes `leader` the partition's leader at `leader_epoch`, which must exceed the current one.
    SetLeader { topic: String, partition: i32, leader: BrokerId, leader_epoch: i32 },
    /// Replaces the partition's ISR; refused unless the partition is still at `leader_epoch`.
    SetIsr { topic: String, partition: i32, isr: Vec<BrokerId>, leader_epoch: i32 },
}

/// Why the state machine refused a command. A refusal is a committed, deterministic outcome (every
/// replica refuses it alike), not an error of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("broker {0} is not registered")]
    UnknownBroker(BrokerId),
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    #[error("leader epoch {proposed} is not above the current epoch {current}")]
    StaleLeaderEpoch { current: i32, proposed: i32 },
    #[error("the partition is at leader epoch {current}, the request expected {expected}")]
    LeaderEpochMismatch { current: i32, expected: i32 },
    #[error("broker {0} is not in the partition's ISR")]
    NotInIsr(BrokerId),
    #[error("invalid ISR: {0}")]
    InvalidIsr(String),
}

/// What applying one log entry answers to the `client_write` caller.
pub type CommandResult = Result<(), Rejection>;
