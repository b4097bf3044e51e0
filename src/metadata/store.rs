//! Where the topic catalog is kept, behind one interface for topic administration: a file
//! written by the catalog core and published to every core (single node, `FileStore`), or the
//! Raft-replicated cluster metadata, changed by proposing commands (`RaftStore`). `admin` holds
//! the Kafka rules once and calls these for what differs: the topics as they are now, the brokers,
//! and how a change is written.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;

use super::controller;
use crate::cluster::{BrokerId, ClusterCommand, ControlPlane};
use crate::core::Shard;
use crate::topics::{self, TopicMeta};

/// One topic as a store holds it.
#[derive(Debug, Clone)]
pub struct StoredTopic {
    pub id: [u8; 16],
    pub partitions: i32,
    pub replication_factor: usize,
    pub configs: BTreeMap<String, String>,
}

/// A change to the catalog (validated by `admin` before it gets here).
#[derive(Debug, Clone)]
pub enum CatalogChange {
    CreateTopic {
        name: String,
        id: [u8; 16],
        configs: BTreeMap<String, String>,
        assignment: Vec<Vec<BrokerId>>,
    },
    DeleteTopic {
        name: String,
    },
    AddPartitions {
        name: String,
        assignment: Vec<Vec<BrokerId>>,
    },
    /// Takes a topic back to `partitions` partitions (undoing an `AddPartitions` whose partitions
    /// did not open; only a single node can).
    RemovePartitions {
        name: String,
        partitions: i32,
    },
    SetConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
}

/// An error for the client: code and message.
pub type StoreError = (ResponseError, String);

/// The catalog as topic administration sees it.
pub(crate) trait CatalogStore {
    fn topic(&self, name: &str) -> Option<StoredTopic>;
    /// Brokers partitions may be placed on.
    fn brokers(&self) -> Vec<BrokerId>;
    /// The replication factor of a topic created with -1.
    fn default_replication_factor(&self) -> usize;
    /// Partition replicas each broker hosts now.
    fn hosted_per_broker(&self) -> BTreeMap<BrokerId, u64>;
    /// Partitions of every topic (where the round-robin placement of new ones starts).
    fn total_partitions(&self) -> usize;
    /// Whether `RemovePartitions` is possible.
    fn can_remove_partitions(&self) -> bool;
    /// Writes `change` and returns once every core of this broker has applied it.
    async fn write(&self, change: CatalogChange) -> Result<(), StoreError>;
    /// Reserves `count` producer ids never reserved before; returns the first.
    async fn reserve_producer_ids(&self, count: i64) -> Result<i64, StoreError>;
}

/// Single node: the catalog file (`topics::save`), published to every core.
pub struct FileStore<'a> {
    pub shard: &'a Rc<Shard>,
}

impl CatalogStore for FileStore<'_> {
    fn topic(&self, name: &str) -> Option<StoredTopic> {
        self.shard.catalog().topics.get(name).map(|t| StoredTopic {
            id: t.id,
            partitions: t.partition_cores.len() as i32,
            replication_factor: 1,
            configs: t.configs.iter().cloned().collect(),
        })
    }

    fn brokers(&self) -> Vec<BrokerId> {
        vec![self.shard.config.node_id]
    }

    fn default_replication_factor(&self) -> usize {
        1
    }

    fn hosted_per_broker(&self) -> BTreeMap<BrokerId, u64> {
        BTreeMap::from([(self.shard.config.node_id, self.total_partitions() as u64)])
    }

    fn total_partitions(&self) -> usize {
        self.shard.catalog().topics.values().map(|t| t.partition_cores.len()).sum()
    }

    fn can_remove_partitions(&self) -> bool {
        true
    }

    async fn write(&self, change: CatalogChange) -> Result<(), StoreError> {
        let shard = self.shard;
        let mut table = (*shard.catalog()).clone();
        match change {
            CatalogChange::CreateTopic { name, id, configs, assignment } => {
                debug_assert!(!table.topics.contains_key(&name), "admin checked that {name} is new");
                let partition_cores = table.assign(assignment.len() as u32, shard.cores);
                let configs = configs.into_iter().collect();
                table.topics.insert(name.clone(), Arc::new(TopicMeta { name, id, partition_cores, configs }));
            }
            CatalogChange::DeleteTopic { name } => {
                table.topics.remove(&name);
            }
            CatalogChange::AddPartitions { name, assignment } => {
                let extra = table.assign(assignment.len() as u32, shard.cores);
                let meta = existing(&table, &name)?;
                let mut grown = (*meta).clone();
                grown.partition_cores.extend(extra);
                table.topics.insert(name, Arc::new(grown));
            }
            CatalogChange::RemovePartitions { name, partitions } => {
                let meta = existing(&table, &name)?;
                let mut shrunk = (*meta).clone();
                assert!(
                    partitions >= 1 && partitions as usize <= shrunk.partition_cores.len(),
                    "partitions only go back"
                );
                shrunk.partition_cores.truncate(partitions as usize);
                table.topics.insert(name, Arc::new(shrunk));
            }
            CatalogChange::SetConfigs { name, configs } => {
                let meta = existing(&table, &name)?;
                let mut changed = (*meta).clone();
                changed.configs = configs.into_iter().collect();
                table.topics.insert(name, Arc::new(changed));
            }
        }
        shard.publish(table).await.map(|_| ()).map_err(|e| (ResponseError::KafkaStorageError, e.message))
    }

    async fn reserve_producer_ids(&self, count: i64) -> Result<i64, StoreError> {
        assert!(count > 0, "a block has ids");
        let mut table = (*self.shard.catalog()).clone();
        let start = table.next_producer_id;
        table.next_producer_id = start + count;
        self.shard.publish(table).await.map_err(|e| (ResponseError::KafkaStorageError, e.message))?;
        Ok(start)
    }
}

fn existing(table: &topics::Catalog, name: &str) -> Result<Arc<TopicMeta>, StoreError> {
    table
        .topics
        .get(name)
        .cloned()
        .ok_or_else(|| (ResponseError::UnknownTopicOrPartition, format!("Topic {name} does not exist")))
}

/// Cluster: the Raft-replicated metadata; a change is a command proposed through the controller.
pub struct RaftStore<'a> {
    pub shard: &'a Rc<Shard>,
    pub cp: &'a ControlPlane,
}

impl CatalogStore for RaftStore<'_> {
    fn topic(&self, name: &str) -> Option<StoredTopic> {
        self.cp.state().topics.get(name).map(|t| StoredTopic {
            id: t.id,
            partitions: t.partitions.len() as i32,
            replication_factor: t.partitions.first().map_or(1, |p| p.replicas.len()),
            configs: t.configs.clone(),
        })
    }

    fn brokers(&self) -> Vec<BrokerId> {
        self.cp.state().brokers.keys().copied().collect()
    }

    fn default_replication_factor(&self) -> usize {
        usize::from(self.shard.config.replication.default_replication_factor)
    }

    fn hosted_per_broker(&self) -> BTreeMap<BrokerId, u64> {
        let state = self.cp.state();
        let mut hosted: BTreeMap<BrokerId, u64> = state.brokers.keys().map(|b| (*b, 0)).collect();
        for t in state.topics.values() {
            for p in &t.partitions {
                for b in &p.replicas {
                    *hosted.entry(*b).or_default() += 1;
                }
            }
        }
        hosted
    }

    fn total_partitions(&self) -> usize {
        self.cp.state().topics.values().map(|t| t.partitions.len()).sum()
    }

    fn can_remove_partitions(&self) -> bool {
        false
    }

    async fn write(&self, change: CatalogChange) -> Result<(), StoreError> {
        let cmd = match change {
            CatalogChange::CreateTopic { name, id, configs, assignment } => {
                ClusterCommand::CreateTopic { name, topic_id: id, configs, assignment }
            }
            CatalogChange::DeleteTopic { name } => ClusterCommand::DeleteTopic { name },
            CatalogChange::AddPartitions { name, assignment } => ClusterCommand::AddPartitions { name, assignment },
            CatalogChange::RemovePartitions { name, .. } => {
                return Err((
                    ResponseError::UnknownServerError,
                    format!("partitions of {name} cannot be removed in a cluster"),
                ))
            }
            CatalogChange::SetConfigs { name, configs } => ClusterCommand::SetTopicConfigs { name, configs },
        };
        controller::write(self.shard, self.cp, cmd).await
    }

    async fn reserve_producer_ids(&self, count: i64) -> Result<i64, StoreError> {
        controller::reserve_producer_ids(self.cp, count).await
    }
}
