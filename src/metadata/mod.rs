//! Cluster and topic metadata: topic administration (`admin`, one entry point per Kafka admin API
//! for a single node and a cluster) and what each broker does with the Raft-replicated cluster
//! metadata (`controller`: registration, elections, ISR changes, syncing the catalog to the cores).

pub mod admin;
pub mod controller;
