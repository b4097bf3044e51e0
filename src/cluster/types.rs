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
    /// Names the cluster (Kafka's cluster id); applied only while it has no id.
    InitCluster { cluster_id: String },
    /// Adds a broker or updates its endpoints.
    RegisterBroker { broker_id: BrokerId, endpoints: BrokerEndpoints },
    /// Creates a topic; `assignment[p]` is partition p's replica list, preferred leader first.
    CreateTopic { name: String, topic_id: [u8; 16], configs: BTreeMap<String, String>, assignment: Vec<Vec<BrokerId>> },
    /// Removes a topic.
    DeleteTopic { name: String },
    /// Adds partitions to a topic; `assignment` lists the new ones' replicas, in partition order.
    AddPartitions { name: String, assignment: Vec<Vec<BrokerId>> },
    /// Replaces a topic's config overrides.
    SetTopicConfigs { name: String, configs: BTreeMap<String, String> },
    /// Makes `leader` the partition's leader at `leader_epoch`, which must exceed the current one,
    /// with ISR `isr` (an election drops the brokers it found dead). `leader` must be in the
    /// current ISR: no unclean election.
    SetLeader { topic: String, partition: i32, leader: BrokerId, leader_epoch: i32, isr: Vec<BrokerId> },
    /// Replaces the partition's ISR; refused unless the partition is still at `leader_epoch` and
    /// `partition_epoch` (every ISR or leader change bumps it, so a change computed from a stale
    /// ISR is refused — Kafka's AlterPartition rule).
    SetIsr { topic: String, partition: i32, isr: Vec<BrokerId>, leader_epoch: i32, partition_epoch: i32 },
    /// Reserves producer ids `[start, start + count)`; refused unless `start` is the next free id.
    ReserveProducerIds { start: i64, count: i64 },
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
    #[error("the partition is at partition epoch {current}, the request expected {expected}")]
    PartitionEpochMismatch { current: i32, expected: i32 },
    #[error("producer ids from {expected} are next, not {proposed}")]
    ProducerIdsTaken { expected: i64, proposed: i64 },
    #[error("invalid producer id block of {0}")]
    InvalidProducerIdBlock(i64),
}

/// What applying one log entry answers to the `client_write` caller.
pub type CommandResult = Result<(), Rejection>;
