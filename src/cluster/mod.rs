//! Cluster metadata (brokers, topics, partition assignments, leaders, leader epochs, ISR) as a
//! replicated state machine on openraft 0.9, one [`ControlPlane`] per broker process.
//!
//! - `types`: the Raft type config, commands and refusals.
//! - `metadata`: [`ClusterState`] and the deterministic rules applying commands (no Raft, no I/O).
//! - `log_store`, `state_machine`, `disk`: the persistent Raft log, vote and snapshots.
//! - `network`: Raft RPCs over TCP (CRC32C frames, bincode).
//! - `node`: the control-plane thread and the handle other threads use.
//!
//! This module may not touch the data path: it owns its thread and its directory. What a broker
//! does with the applied metadata (catalog sync, elections, ISR changes, admin commands) is the
//! controller, `metadata/controller.rs`.

mod disk;
mod log_store;
pub mod metadata;
mod network;
mod node;
mod state_machine;
pub mod types;

pub use metadata::{ClusterState, PartitionState, TopicState};
pub use network::{CONNECT_TIMEOUT_MS, MAX_RPC_CONNECTIONS, MAX_RPC_FRAME_BYTES};
pub use node::{ControlPlane, ControlPlaneConfig, ControlPlaneError, Metrics, Reply, WriteOutcome};
pub use openraft::{BasicNode, ServerState};
pub use types::{BrokerEndpoints, BrokerId, ClusterCommand, CommandResult, NodeId, Rejection};
