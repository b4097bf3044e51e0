//! Broker configuration: a TOML file and command-line flags over embedded defaults. Every limit has
//! a name with its unit. Topic-level settings use Kafka's names (`retention.ms`, `flush.messages`, ...).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default of `shutdown_timeout_ms`: the longest graceful shutdown (a cluster broker's controlled
/// shutdown, 5 s, then the connection drain, 10 s) plus 5 s to flush and checkpoint the partitions.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 20_000;
/// Default of `max_queued_answer_bytes_per_connection`: a few Fetch answers of librdkafka's default
/// size (`fetch.max.bytes` 50 MiB is the most one answer holds; most are far smaller).
pub const DEFAULT_MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION: usize = 64 << 20;
/// Smallest `shutdown_timeout_ms` accepted: below it every shutdown would end by the deadline.
pub const MIN_SHUTDOWN_TIMEOUT_MS: u64 = 100;

/// Descriptors a partition holds open for as long as it is open: its directory lock and its
/// active segment's file. Sealed segments' files are opened through the per-core cache of the
/// storage engine, budgeted once per core (`max_open_segment_files_per_core`), not per partition.
pub const DESCRIPTORS_HELD_PER_PARTITION: u64 = 2;

/// Settings of one broker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where partitions and metadata live (a block-device filesystem: O_DIRECT).
    pub data_dir: PathBuf,
    /// Kafka listener, HOST:PORT.
    pub listen: String,
    /// Host advertised to clients in Metadata (default: the listen host).
    pub advertised_host: Option<String>,
    /// Executors (one pinned per core); default: every core.
    pub cores: Option<usize>,
    /// Bound on shutdown: from the first SIGTERM/SIGINT (or a failed core) the process ends within
    /// this long, exiting non-zero if the graceful path has not finished (see `server::run`).
    pub shutdown_timeout_ms: u64,
    /// This broker's id in Metadata (and in `cluster.peers` when that is not empty).
    pub node_id: i32,
    /// Partitions of an auto-created topic (Kafka `num.partitions`).
    pub default_partitions: u32,
    /// Create unknown topics on Metadata requests that allow it (Kafka `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Largest request frame accepted (Kafka `socket.request.max.bytes`).
    pub max_request_size_bytes: usize,
    /// Largest record batch accepted (Kafka `message.max.bytes`).
    pub max_message_bytes: usize,
    /// Open client connections per core.
    pub max_connections_per_core: usize,
    /// Requests read from one connection and not yet answered.
    pub max_inflight_requests_per_connection: usize,
    /// Bytes of answers computed and not yet written per connection: beyond it the connection reads
    /// no further request, and its Fetches wait (one answer is always allowed).
    pub max_queued_answer_bytes_per_connection: usize,
    /// A connection with no bytes moving and no request being handled for this long is closed
    /// (Kafka `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Bytes of requests being received or handled per core (Kafka `queued.max.request.bytes`): a
    /// request's size is reserved before its body is read; when none is left, connections stop
    /// reading until handlers finish. At least `max_request_size_bytes`.
    pub queued_max_request_bytes: usize,
    /// Upper bound applied to a Fetch's `max_wait_ms`.
    pub max_fetch_wait_ms: u64,
    /// Cross-core channel capacity (messages per peer pair).
    pub cross_core_channel_capacity: usize,
    /// glommio DMA memory per executor.
    pub io_memory_bytes: usize,
    /// Retention, compaction and producer-state snapshots run this often on every core (Kafka
    /// `log.retention.check.interval.ms`, 5 min there).
    pub retention_check_interval_ms: u64,
    /// Partitions of `__consumer_offsets`, fixed when the topic is first created
    /// (Kafka `offsets.topic.num.partitions`, default 50 there).
    pub offsets_topic_partitions: u32,
    /// Topics clients may not delete, reconfigure or give more partitions (Redpanda
    /// `kafka_nodelete_topics`); by default the internal `__consumer_offsets`.
    pub protected_topics: Vec<String>,
    /// Most partitions one CreateTopics or CreatePartitions request may add (all its topics
    /// together); a larger request is refused as a whole with POLICY_VIOLATION.
    pub max_partitions_per_request: u32,
    /// Most partitions (replicas) this broker hosts, per core: creations beyond
    /// `max_partitions_per_core` x cores are refused with INVALID_PARTITIONS.
    pub max_partitions_per_core: u32,
    /// File descriptors budgeted per partition when admitting new ones (a partition holds its lock
    /// and its active segment's file open; sealed segments are opened through the per-core cache).
    pub descriptors_per_partition: u64,
    /// Most files of sealed segments each core keeps open (least recently used closed first);
    /// set aside once per core in the descriptor budget.
    pub max_open_segment_files_per_core: usize,
    /// A sealed segment's file unused for this long is closed.
    pub segment_file_idle_close_ms: u64,
    /// File descriptors partitions may never use: kept for connections, listeners, io_uring rings
    /// and transient files.
    pub reserved_descriptors: u64,
    /// Prometheus metrics endpoint, HOST:PORT (`GET /metrics`); none by default.
    pub metrics_listen: Option<String>,
    /// How often each core copies partition offsets, group commits, storage latencies and busy
    /// time into the metrics a scrape reads.
    pub metrics_publish_interval_ms: u64,
    /// Memory per core for the compaction key map (Kafka `log.cleaner.dedupe.buffer.size`, shared
    /// by all cleaner threads there): about 40 bytes per distinct key; a partition with more keys
    /// than fit is compacted over several passes.
    pub cleaner_dedupe_buffer_bytes: usize,
    /// Default topic settings (overridable per topic).
    pub log: TopicDefaults,
    /// The brokers of a cluster; empty (the default): this broker alone.
    pub cluster: ClusterConfig,
    /// Replication between the brokers of a cluster.
    pub replication: ReplicationConfig,
}

/// How partitions are replicated in a cluster (Kafka's names in the docs of each field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Replicas of a topic created without one (Kafka `default.replication.factor`).
    pub default_replication_factor: u16,
    /// Default of the topic config `min.insync.replicas`.
    pub min_insync_replicas: u16,
    /// A follower that has not caught up with the leader's log end for this long leaves the ISR
    /// (Kafka `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// A broker the controller has not heard from for this long is dead: the partitions it led get
    /// new leaders from their ISR (Kafka `broker.session.timeout.ms`, 9 s there).
    pub broker_session_timeout_ms: u64,
    /// How long the leader holds a follower's fetch that finds no new data (Kafka
    /// `replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u64,
    /// Batch bytes per partition in one replica fetch (Kafka `replica.fetch.max.bytes`).
    pub replica_fetch_max_bytes: u32,
    /// Pause after a failed replica fetch before the next attempt (Kafka `replica.fetch.backoff.ms`).
    pub replica_fetch_backoff_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            default_replication_factor: 1,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            broker_session_timeout_ms: 1_500,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
            replica_fetch_backoff_ms: 100,
        }
    }
}

/// Longest `connections_max_idle_ms` (a year): timers further out would overflow `Instant`.
pub const MAX_CONNECTIONS_MAX_IDLE_MS: u64 = 365 * 24 * 3600 * 1000;

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

/// Broker-wide defaults of topic settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Kafka `segment.bytes`.
    pub segment_bytes: u64,
    /// Kafka `segment.ms`.
    pub segment_ms: u64,
    /// Kafka `retention.ms` (-1: forever).
    pub retention_ms: i64,
    /// Kafka `retention.bytes` (-1: unlimited).
    pub retention_bytes: i64,
    /// Kafka `flush.messages`: 1 means fsync every batch (group commit); larger values are treated
    /// as `flush.ms`-driven.
    pub flush_messages: u64,
    /// Kafka `flush.ms`: fsync at least this often while there is unsynced data.
    pub flush_ms: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            flush_messages: i64::MAX as u64,
            flush_ms: i64::MAX as u64,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:9092".into(),
            advertised_host: None,
            cores: None,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            node_id: 0,
            default_partitions: 1,
            auto_create_topics: true,
            max_request_size_bytes: 100 << 20,
            max_message_bytes: 1_048_588,
            max_connections_per_core: 10_000,
            max_inflight_requests_per_connection: 32,
            max_queued_answer_bytes_per_connection: DEFAULT_MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION,
            connections_max_idle_ms: 600_000,
            queued_max_request_bytes: 256 << 20,
            max_fetch_wait_ms: 30_000,
            cross_core_channel_capacity: 1024,
            io_memory_bytes: 8 << 20,
            retention_check_interval_ms: 60_000,
            offsets_topic_partitions: 16,
            protected_topics: vec![crate::topics::CONSUMER_OFFSETS_TOPIC.to_string()],
            max_partitions_per_request: 10_000,
            max_partitions_per_core: 1000,
            descriptors_per_partition: DESCRIPTORS_HELD_PER_PARTITION,
            max_open_segment_files_per_core: sluice_io::DEFAULT_MAX_OPEN_SEGMENT_FILES,
            segment_file_idle_close_ms: sluice_io::DEFAULT_SEGMENT_FILE_IDLE_CLOSE_MS,
            reserved_descriptors: 1024,
            metrics_listen: None,
            metrics_publish_interval_ms: 1000,
            cleaner_dedupe_buffer_bytes: 16 << 20,
            log: TopicDefaults::default(),
            cluster: ClusterConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Host and port clients should connect to: in a cluster, this broker's `kafka` peer address.
    pub fn advertised(&self) -> (String, i32) {
        if let Some((host, port)) = self.own_peer().and_then(PeerConfig::kafka_host_port) {
            return (host.to_string(), i32::from(port));
        }
        let (host, port) = self.listen.rsplit_once(':').unwrap_or((&self.listen, "9092"));
        let host = self.advertised_host.clone().unwrap_or_else(|| host.to_string());
        (host, port.parse().unwrap_or(9092))
    }

    /// This broker's entry in `cluster.peers` (none on a single node).
    pub fn own_peer(&self) -> Option<&PeerConfig> {
        self.cluster.peer(self.node_id)
    }

    /// HOST:PORT this broker's replication listener binds (its own peer entry's `replication`).
    pub fn replication_listen(&self) -> Option<&str> {
        self.own_peer().map(|p| p.replication.as_str())
    }

    /// HOST:PORT this broker's Raft listener binds (its own peer entry's `raft`).
    pub fn raft_listen(&self) -> Option<&str> {
        self.own_peer().map(|p| p.raft.as_str())
    }

    /// Checks values that would make the broker misbehave.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.cluster.validate(self.node_id)?;
        if self.cluster.is_cluster() && self.advertised_host.is_some() {
            return Err(ClusterConfigError::AdvertisedHostWithPeers.into());
        }
        anyhow::ensure!(
            self.shutdown_timeout_ms >= MIN_SHUTDOWN_TIMEOUT_MS,
            "shutdown_timeout_ms must be >= {MIN_SHUTDOWN_TIMEOUT_MS}"
        );
        anyhow::ensure!(self.max_request_size_bytes >= 1024, "max_request_size_bytes must be >= 1024");
        anyhow::ensure!(self.max_inflight_requests_per_connection >= 1, "max_inflight_requests_per_connection >= 1");
        anyhow::ensure!(
            self.max_queued_answer_bytes_per_connection >= 1,
            "max_queued_answer_bytes_per_connection must be >= 1"
        );
        anyhow::ensure!(
            (1..=MAX_CONNECTIONS_MAX_IDLE_MS).contains(&self.connections_max_idle_ms),
            "connections_max_idle_ms must be in 1..={MAX_CONNECTIONS_MAX_IDLE_MS}"
        );
        anyhow::ensure!(
            self.queued_max_request_bytes >= self.max_request_size_bytes,
            "queued_max_request_bytes ({}) must be >= max_request_size_bytes ({}): a request of the largest size must fit",
            self.queued_max_request_bytes,
            self.max_request_size_bytes
        );
        anyhow::ensure!(self.default_partitions >= 1, "default_partitions must be >= 1");
        anyhow::ensure!(self.cross_core_channel_capacity >= 1, "cross_core_channel_capacity >= 1");
        anyhow::ensure!(self.metrics_publish_interval_ms >= 10, "metrics_publish_interval_ms must be >= 10");
        anyhow::ensure!(self.cleaner_dedupe_buffer_bytes >= 64 << 10, "cleaner_dedupe_buffer_bytes must be >= 65536");
        anyhow::ensure!(self.retention_check_interval_ms >= 10, "retention_check_interval_ms must be >= 10");
        anyhow::ensure!(self.max_partitions_per_request >= 1, "max_partitions_per_request must be >= 1");
        anyhow::ensure!(
            u64::from(self.max_partitions_per_core) * self.cores.unwrap_or(1) as u64
                >= u64::from(self.offsets_topic_partitions),
            "max_partitions_per_core x cores must leave room for the {} partitions of __consumer_offsets \
             (offsets_topic_partitions)",
            self.offsets_topic_partitions
        );
        anyhow::ensure!(
            self.descriptors_per_partition >= DESCRIPTORS_HELD_PER_PARTITION,
            "descriptors_per_partition must be >= {} (lock and active segment)",
            DESCRIPTORS_HELD_PER_PARTITION
        );
        anyhow::ensure!(self.max_open_segment_files_per_core >= 1, "max_open_segment_files_per_core must be >= 1");
        anyhow::ensure!(self.segment_file_idle_close_ms >= 1, "segment_file_idle_close_ms must be >= 1");
        let r = &self.replication;
        anyhow::ensure!(r.default_replication_factor >= 1, "replication.default_replication_factor must be >= 1");
        anyhow::ensure!(r.min_insync_replicas >= 1, "replication.min_insync_replicas must be >= 1");
        anyhow::ensure!(r.replica_lag_time_max_ms >= 100, "replication.replica_lag_time_max_ms must be >= 100");
        anyhow::ensure!(r.broker_session_timeout_ms >= 200, "replication.broker_session_timeout_ms must be >= 200");
        anyhow::ensure!(r.replica_fetch_max_bytes >= 1024, "replication.replica_fetch_max_bytes must be >= 1024");
        anyhow::ensure!(
            (1..=crate::topics::MAX_PARTITIONS_PER_TOPIC).contains(&self.offsets_topic_partitions),
            "offsets_topic_partitions must be in [1, {}]",
            crate::topics::MAX_PARTITIONS_PER_TOPIC
        );
        Ok(())
    }
}

/// Effective settings of one topic: broker defaults overridden by the topic's own configs.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub flush_messages: u64,
    pub flush_ms: u64,
    pub max_message_bytes: usize,
    /// Kafka `cleanup.policy`: "delete", "compact" or both ("compact,delete").
    pub cleanup_policy: String,
    /// Kafka `delete.retention.ms`: how long a tombstone stays once its segment's newest record is
    /// this old (consumers reading from the start within it see the delete).
    pub delete_retention_ms: i64,
    /// Kafka `min.cleanable.dirty.ratio`: compact once uncompacted bytes are this share of the
    /// compactable ones.
    pub min_cleanable_dirty_ratio: f64,
    /// Kafka `min.compaction.lag.ms`: records younger than this are never compacted.
    pub min_compaction_lag_ms: i64,
    /// Kafka `max.compaction.lag.ms`: compact regardless of the dirty ratio once uncompacted
    /// records are this old.
    pub max_compaction_lag_ms: i64,
    /// Kafka `min.insync.replicas`: acks=all produce is refused (NOT_ENOUGH_REPLICAS) while the ISR
    /// is smaller.
    pub min_insync_replicas: usize,
}

/// Kafka's `delete.retention.ms` default (one day).
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;

/// Topic configs this broker knows, with their documentation for DescribeConfigs.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    (
        "cleanup.policy",
        "delete: old segments are deleted by retention.ms/retention.bytes; compact: only the latest record per key \
         is kept (tombstones go after delete.retention.ms); compact,delete: both.",
    ),
    (
        "delete.retention.ms",
        "How long tombstones are kept in a compacted topic (ms, from their segment's newest record).",
    ),
    (
        "min.cleanable.dirty.ratio",
        "Compact a partition once its uncompacted share of sealed segments reaches this ratio.",
    ),
    ("min.compaction.lag.ms", "Records younger than this (ms) are never compacted."),
    ("max.compaction.lag.ms", "Compact regardless of the dirty ratio once uncompacted records are this old (ms)."),
    ("retention.ms", "Delete a segment once its newest record is older than this (ms); -1: keep forever."),
    ("retention.bytes", "Delete the oldest segments while the partition is larger than this (bytes); -1: no limit."),
    ("segment.bytes", "Roll to a new segment file once the active one holds this many bytes."),
    ("segment.ms", "Roll to a new segment once the active segment's first batch is this old (ms)."),
    ("flush.messages", "1: fsync every batch before acknowledging it (group commit); otherwise rely on flush.ms."),
    ("flush.ms", "fsync at least this often (ms) while there is unsynced data."),
    ("max.message.bytes", "Largest record batch accepted (bytes)."),
    ("message.timestamp.type", "CreateTime: timestamps are the producer's (LogAppendTime is not supported yet)."),
    (
        "min.insync.replicas",
        "acks=all produce is refused with NOT_ENOUGH_REPLICAS while fewer replicas than this are in sync.",
    ),
    ("compression.type", "producer: batches are stored as the producer compressed them."),
];

impl TopicSettings {
    /// Settings from broker defaults and topic overrides; an invalid override is an error message.
    pub fn resolve(defaults: &BrokerConfig, overrides: &[(String, String)]) -> Result<Self, String> {
        let d = &defaults.log;
        let mut s = TopicSettings {
            segment_bytes: d.segment_bytes,
            segment_ms: d.segment_ms,
            retention_ms: d.retention_ms,
            retention_bytes: d.retention_bytes,
            flush_messages: d.flush_messages,
            flush_ms: d.flush_ms,
            max_message_bytes: defaults.max_message_bytes,
            cleanup_policy: "delete".into(),
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_insync_replicas: usize::from(defaults.replication.min_insync_replicas),
        };
        for (k, v) in overrides {
            let num = |v: &str| v.parse::<i64>().map_err(|_| format!("{k}: '{v}' is not a number"));
            let pos = |v: &str| num(v).and_then(|n| u64::try_from(n).map_err(|_| format!("{k}: must not be negative")));
            match k.as_str() {
                "segment.bytes" => s.segment_bytes = pos(v)?,
                "segment.ms" => s.segment_ms = pos(v)?,
                "retention.ms" => s.retention_ms = num(v)?,
                "retention.bytes" => s.retention_bytes = num(v)?,
                "flush.messages" => s.flush_messages = pos(v)?,
                "flush.ms" => s.flush_ms = pos(v)?,
                "max.message.bytes" => s.max_message_bytes = pos(v)? as usize,
                "cleanup.policy" => s.cleanup_policy = parse_cleanup_policy(v)?,
                "delete.retention.ms" => s.delete_retention_ms = pos(v)? as i64,
                "min.compaction.lag.ms" => s.min_compaction_lag_ms = pos(v)? as i64,
                "max.compaction.lag.ms" => s.max_compaction_lag_ms = pos(v)?.max(1) as i64,
                "min.cleanable.dirty.ratio" => {
                    s.min_cleanable_dirty_ratio = v
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| format!("{k}: '{v}' is not a number in [0, 1]"))?
                }
                "message.timestamp.type" if v == "CreateTime" => {}
                "min.insync.replicas" => {
                    s.min_insync_replicas = usize::try_from(pos(v)?)
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("{k}: must be at least 1"))?
                }
                "compression.type" if v == "producer" => {}
                "message.timestamp.type" | "compression.type" => return Err(format!("{k}={v} is not supported")),
                _ => return Err(format!("unknown topic config {k}")),
            }
        }
        if s.segment_bytes < 4096 || s.segment_bytes > sluice_io::MAX_SEGMENT_BYTES {
            return Err(format!("segment.bytes must be in [4096, {}]", sluice_io::MAX_SEGMENT_BYTES));
        }
        Ok(s)
    }

    /// The value of a config by its Kafka name, as DescribeConfigs shows it.
    pub fn value_of(&self, name: &str) -> Option<String> {
        Some(match name {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.type" => "CreateTime".into(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "compression.type" => "producer".into(),
            _ => return None,
        })
    }

    /// Old segments are deleted by retention (`cleanup.policy` holds `delete`).
    pub fn deletes(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "delete")
    }

    /// Only the latest record per key is kept (`cleanup.policy` holds `compact`).
    pub fn compacts(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "compact")
    }

    /// The storage engine configuration for a partition of this topic.
    pub fn log_config(&self) -> sluice_io::LogConfig {
        let durability = if self.flush_messages <= 1 {
            sluice_io::Durability::Always
        } else if self.flush_ms < i64::MAX as u64 {
            sluice_io::Durability::Interval(Duration::from_millis(self.flush_ms))
        } else {
            sluice_io::Durability::Never
        };
        sluice_io::LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: Some(self.segment_ms),
            // A compact-only topic keeps its segments (the cleaner shrinks them instead).
            retention_bytes: u64::try_from(self.retention_bytes).ok().filter(|_| self.deletes()),
            retention_ms: u64::try_from(self.retention_ms).ok().filter(|_| self.deletes()),
            durability,
            max_batch_bytes: self.max_message_bytes.max(1),
            ..sluice_io::LogConfig::default()
        }
    }
}

/// Kafka's `cleanup.policy` list, normalised ("compact,delete" in either order).
fn parse_cleanup_policy(v: &str) -> Result<String, String> {
    let mut compact = false;
    let mut delete = false;
    for p in v.split(',').map(str::trim) {
        match p {
            "compact" => compact = true,
            "delete" => delete = true,
            _ => return Err(format!("cleanup.policy: '{p}' is not one of delete, compact")),
        }
    }
    Ok(match (compact, delete) {
        (true, true) => "compact,delete".into(),
        (true, false) => "compact".into(),
        _ => "delete".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: i32, base: u16) -> PeerConfig {
        PeerConfig {
            id,
            kafka: format!("127.0.0.1:{base}"),
            replication: format!("127.0.0.1:{}", base + 100),
            raft: format!("127.0.0.1:{}", base + 200),
        }
    }

    #[test]
    fn peer_flag_parses_and_rejects_malformed_values() {
        let p: PeerConfig = "2=h:9092,h:9192,[::1]:9292".parse().expect("valid --peer");
        assert_eq!(
            p,
            PeerConfig { id: 2, kafka: "h:9092".into(), replication: "h:9192".into(), raft: "[::1]:9292".into() }
        );
        for bad in
            ["", "2", "x=a:1,b:2,c:3", "2=a:1,b:2", "2=a:1,b:2,c:3,d:4", "2=a:0,b:2,c:3", "2=:1,b:2,c:3", "2=a,b:2,c:3"]
        {
            assert!(bad.parse::<PeerConfig>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cluster_validation() {
        let mut cfg = BrokerConfig::default();
        assert!(cfg.validate().is_ok(), "single node");
        assert_eq!(cfg.replication_listen(), None);
        cfg.cluster.peers = vec![peer(0, 9000), peer(1, 9001), peer(2, 9002)];
        cfg.node_id = 1;
        cfg.validate().expect("three peers");
        assert_eq!(cfg.advertised(), ("127.0.0.1".to_string(), 9001));
        assert_eq!(cfg.replication_listen(), Some("127.0.0.1:9101"));
        assert_eq!(cfg.raft_listen(), Some("127.0.0.1:9201"));

        let refused = |cfg: &BrokerConfig| cfg.cluster.validate(cfg.node_id).expect_err("invalid cluster accepted");
        let mut c = cfg.clone();
        c.node_id = 7;
        assert_eq!(refused(&c), ClusterConfigError::OwnIdMissing(7));
        let mut c = cfg.clone();
        c.cluster.peers[2].id = 0;
        assert_eq!(refused(&c), ClusterConfigError::DuplicateId(0));
        let mut c = cfg.clone();
        c.cluster.peers[2].raft = "127.0.0.1:9100".into();
        assert_eq!(refused(&c), ClusterConfigError::DuplicateAddress("127.0.0.1:9100".into()));
        let mut c = cfg.clone();
        c.cluster.peers[0].kafka = "nohost".into();
        assert!(matches!(refused(&c), ClusterConfigError::BadAddress { id: 0, what: "kafka", .. }));
        let mut c = cfg.clone();
        c.advertised_host = Some("elsewhere".into());
        assert!(c.validate().is_err(), "advertised_host with peers");
    }

    #[test]
    fn cluster_table_from_toml() {
        let text = r#"
            node_id = 1
            [[cluster.peers]]
            id = 0
            kafka = "127.0.0.1:9000"
            replication = "127.0.0.1:9100"
            raft = "127.0.0.1:9200"
            [[cluster.peers]]
            id = 1
            kafka = "127.0.0.1:9001"
            replication = "127.0.0.1:9101"
            raft = "127.0.0.1:9201"
        "#;
        let cfg: BrokerConfig = toml::from_str(text).expect("cluster TOML");
        assert_eq!(cfg.cluster.peers, vec![peer(0, 9000), peer(1, 9001)]);
        cfg.validate().expect("valid");
    }
}
