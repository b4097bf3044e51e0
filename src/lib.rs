//! Sluice: a thread-per-core, Kafka-compatible streaming broker on glommio.
//!
//! `server` starts one executor per core; `core` is the thread-per-core runtime (a core's
//! partitions, cross-core calls as closures, per-core services, periodic jobs); `kafka` is the
//! protocol front end (one module per API); `partition` wraps the storage engine (`sluice-io`)
//! with Kafka's offsets, roles and producer state, `record` is the RecordBatch format and its
//! validation; `compaction` keeps the latest record per key of compacted topics; `topics` is the
//! catalog; `metadata` is topic administration and the cluster controller; `groups` the consumer
//! group coordinator; `replication` is the broker-to-broker protocol and `replica` its
//! connections; `cluster` is the Raft-replicated cluster metadata. docs/architecture.md has the
//! layers and what may import what.

pub mod admin_client;
pub mod clock;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod config_reference;
pub mod core;
pub mod groups;
pub mod kafka;
pub mod log_limit;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producer_state;
pub mod record;
pub mod replica;
pub mod replication;
pub mod server;
pub mod socket_write;
pub mod startup_log;
pub mod topic_limits;
pub mod topics;
pub mod tune;
