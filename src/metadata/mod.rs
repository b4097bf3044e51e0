//! Cluster and topic metadata: topic administration (`admin`: Kafka's admin rules, written once),
//! where the catalog is kept (`store`: a file on a single node, Raft in a cluster) and what each
//! broker does with the Raft-replicated cluster metadata (`controller`: registration, elections,
//! ISR changes, syncing the catalog to the cores).

pub mod admin;
pub mod controller;
pub mod store;
