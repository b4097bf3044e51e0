//! Sluice: a thread-per-core, Kafka-compatible streaming broker on glommio.
//!
//! `server` starts one executor per core; `shard` is one core's partitions and its messaging with
//! the other cores; `kafka` is the protocol front end (one module per API); `partition` wraps the
//! storage engine (`sluice-io`) with Kafka's batch validation and offsets; `compaction` keeps the
//! latest record per key of compacted topics; `topics` is the catalog; `replication` is the
//! broker-to-broker protocol (messages, framing, leader-side follower progress) and `replica` its
//! connections (the leader's replication listener, the followers' fetchers); `cluster` is the
//! Raft-replicated cluster metadata and `controller` what each broker does with it.

pub mod admin_client;
pub mod clock;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod config_reference;
pub mod controller;
pub mod groups;
pub mod kafka;
pub mod log_limit;
pub mod metrics;
pub mod partition;
pub mod producer_state;
pub mod record;
pub mod replica;
pub mod replication;
pub mod server;
pub mod shard;
pub mod socket_write;
pub mod startup_log;
pub mod topic_limits;
pub mod topics;
pub mod tune;
