//! The topic catalog: names, topic ids, partition→core assignment and per-topic configs, plus the
//! producer-id counter. Changed only on core 0 (the catalog owner), persisted as an rkyv archive in a
//! framed, checksummed file (atomic replace), and broadcast to every core as an immutable snapshot.
//!
//! One thing, one name: [`Catalog`] is the snapshot every core holds; [`CatalogFile`] is what a
//! single node persists of it; in a cluster a catalog is built from the Raft state
//! (`cluster::ClusterState`, carried in the catalog as [`ClusterView`] with this broker's id).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_io::framed_file::{self, FramedReadError};

const MAGIC: u32 = u32::from_le_bytes(*b"SCAT");
const VERSION: u32 = 1;
const CATALOG_FILE: &str = "catalog";
/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Upper bound on partitions per topic (a limit, like every other).
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 10_000;
/// The committed-offsets topic (the group coordinator's `offsets_log::OFFSETS_TOPIC`; spelled out
/// here because the catalog sits below the groups and must not import them).
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's internal topics (`org.apache.kafka.common.internals.Topic.INTERNAL_TOPICS`): Metadata
/// marks them `is_internal` and clients never create them. Only `__consumer_offsets` exists here;
/// the others are reserved.
pub const INTERNAL_TOPICS: &[&str] = &[CONSUMER_OFFSETS_TOPIC, "__transaction_state", "__share_group_state"];

/// Whether `topic` is one of Kafka's internal topics (not every name starting with `__`).
pub fn is_internal(topic: &str) -> bool {
    INTERNAL_TOPICS.contains(&topic)
}

/// One topic.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Topic id (UUID bytes) for Metadata v10+ and Fetch v13+.
    pub id: [u8; 16],
    /// Owning core of each partition, by partition index.
    pub partition_cores: Vec<u32>,
    /// Topic-level config overrides (Kafka names).
    pub configs: Vec<(String, String)>,
}

/// Everything persisted in the catalog file.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CatalogFile {
    pub cluster_id: String,
    pub topics: Vec<TopicMeta>,
    /// Next producer id InitProducerId hands out (ids are never reused).
    pub next_producer_id: i64,
}

/// The cluster metadata behind a cluster-mode table, as this broker last applied it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This broker's id.
    pub node_id: i32,
    /// The Raft leader (the controller), when known.
    pub controller: Option<i32>,
    /// Raft log index the state was applied up to.
    pub applied_index: u64,
    pub state: crate::cluster::ClusterState,
}

impl ClusterView {
    /// Replicas, leader, epochs and ISR of one partition.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&crate::cluster::PartitionState> {
        self.state.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?)
    }
}

/// The core hosting a partition on every broker of a cluster with `cores` cores: spread by topic id
/// and partition, the same on every broker with as many cores (so a follower's core fetches from
/// the same core of its leader).
pub fn core_for(topic_id: &[u8; 16], partition: usize, cores: usize) -> u32 {
    assert!(cores >= 1, "at least one core");
    let seed = u32::from_le_bytes([topic_id[0], topic_id[1], topic_id[2], topic_id[3]]) as usize;
    ((seed % cores + partition) % cores) as u32
}

/// The catalog: an immutable snapshot as every core sees it.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Increases with every published change (in this process): a core never goes back to an
    /// older table, whatever order the broadcasts are applied in.
    pub version: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub next_producer_id: i64,
    /// Cluster mode: the Raft-replicated metadata this table was built from (None: single node).
    pub cluster: Option<Arc<ClusterView>>,
}

impl Catalog {
    /// The table of a cluster broker with `cores` cores, from the cluster metadata.
    pub fn from_cluster(view: ClusterView, cores: usize, version: u64) -> Self {
        let topics = view
            .state
            .topics
            .iter()
            .map(|(name, t)| {
                let meta = TopicMeta {
                    name: name.clone(),
                    id: t.id,
                    partition_cores: (0..t.partitions.len()).map(|p| core_for(&t.id, p, cores)).collect(),
                    configs: t.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                };
                (name.clone(), Arc::new(meta))
            })
            .collect();
        Catalog {
            version,
            cluster_id: view.state.cluster_id.clone(),
            topics,
            next_producer_id: view.state.next_producer_id,
            cluster: Some(Arc::new(view)),
        }
    }

    /// Whether this broker holds a replica of the partition (always, on a single node).
    pub fn hosts(&self, topic: &str, partition: i32) -> bool {
        match &self.cluster {
            None => true,
            Some(v) => v.partition(topic, partition).is_some_and(|p| p.replicas.contains(&v.node_id)),
        }
    }

    pub fn from_file(c: CatalogFile) -> Self {
        Catalog {
            version: 0,
            cluster_id: c.cluster_id,
            next_producer_id: c.next_producer_id,
            topics: c.topics.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect(),
            cluster: None,
        }
    }

    pub fn to_file(&self) -> CatalogFile {
        CatalogFile {
            cluster_id: self.cluster_id.clone(),
            next_producer_id: self.next_producer_id,
            topics: self.topics.values().map(|t| (**t).clone()).collect(),
        }
    }

    pub fn by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicMeta>> {
        self.topics.values().find(|t| &t.id == id)
    }

    /// Partitions owned by each core.
    fn load_per_core(&self, cores: usize) -> Vec<usize> {
        let mut load = vec![0usize; cores];
        for t in self.topics.values() {
            for &s in &t.partition_cores {
                if let Some(l) = load.get_mut(s as usize) {
                    *l += 1;
                }
            }
        }
        load
    }

    /// Picks owners for `count` new partitions: each to the least-loaded core.
    pub fn assign(&self, count: u32, cores: usize) -> Vec<u32> {
        let mut load = self.load_per_core(cores);
        (0..count)
            .map(|_| {
                let (i, _) = load.iter().enumerate().min_by_key(|(i, l)| (**l, *i)).expect("at least one core");
                load[i] += 1;
                i as u32
            })
            .collect()
    }

    /// Reassigns partitions whose core no longer exists (the broker restarted with fewer cores).
    /// Returns true when anything moved.
    pub fn rebalance_missing_cores(&mut self, cores: usize) -> bool {
        let mut moved = false;
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let orphans: Vec<usize> = self.topics[&name]
                .partition_cores
                .iter()
                .enumerate()
                .filter(|(_, s)| **s as usize >= cores)
                .map(|(i, _)| i)
                .collect();
            for p in orphans {
                let owner = self.assign(1, cores)[0];
                let t = Arc::make_mut(self.topics.get_mut(&name).expect("topic"));
                t.partition_cores[p] = owner;
                moved = true;
            }
        }
        moved
    }
}

/// Why a topic name is invalid, as Kafka words it.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!("Topic name is longer than {MAX_TOPIC_NAME_LEN} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err(format!("Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"));
    }
    Ok(())
}

pub fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("__meta")
}

/// Directory of one partition's log: `<data>/<topic>-<partition>` as in Kafka.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// Loads the catalog, or a fresh one with a new cluster id.
pub async fn load(data_dir: &Path) -> anyhow::Result<Catalog> {
    let dir = meta_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let path = dir.join(CATALOG_FILE);
    match framed_file::read(&path, MAGIC, VERSION).await {
        Ok(Some(bytes)) => {
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
            aligned.extend_from_slice(&bytes);
            let c = rkyv::from_bytes::<CatalogFile, rkyv::rancor::Error>(&aligned)
                .map_err(|e| anyhow::anyhow!("{}: undecodable catalog: {e}", path.display()))?;
            Ok(Catalog::from_file(c))
        }
        Ok(None) => {
            let id = uuid::Uuid::new_v4();
            Ok(Catalog { cluster_id: base64_url(id.as_bytes()), next_producer_id: 1000, ..Catalog::default() })
        }
        Err(FramedReadError::Io(e)) => Err(e.into()),
        Err(FramedReadError::Invalid(reason)) => Err(anyhow::anyhow!("{}: corrupt catalog: {reason}", path.display())),
    }
}

/// Persists the catalog atomically.
pub async fn save(data_dir: &Path, table: &Catalog) -> Result<(), sluice_io::Error> {
    let path = meta_dir(data_dir).join(CATALOG_FILE);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&table.to_file()).map_err(|e| {
        sluice_io::Error::CorruptCheckpoint { path: path.clone(), reason: format!("encoding catalog: {e}") }
    })?;
    framed_file::write_atomic(&path, MAGIC, VERSION, &bytes).await
}

/// Kafka cluster ids are 22-character URL-safe base64 of 16 bytes.
pub fn base64_url(bytes: &[u8; 16]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(A[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_balances_and_rebalances() {
        let mut t = Catalog::default();
        let cores = t.assign(5, 2);
        assert_eq!(cores, vec![0, 1, 0, 1, 0]);
        t.topics.insert(
            "a".into(),
            Arc::new(TopicMeta { name: "a".into(), id: [1; 16], partition_cores: cores, configs: vec![] }),
        );
        assert_eq!(t.assign(1, 2), vec![1]);
        assert!(t.rebalance_missing_cores(1));
        assert!(t.topics["a"].partition_cores.iter().all(|s| *s == 0));
    }

    #[test]
    fn names_and_ids() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("bad name").is_err());
        assert!(validate_topic_name("..").is_err());
        assert_eq!(base64_url(&[0xff; 16]).len(), 22);
    }
}
