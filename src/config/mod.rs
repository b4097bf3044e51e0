//! Broker configuration: a TOML file and command-line flags over embedded defaults. Every limit has
//! a name with its unit. Topic-level settings use Kafka's names (`retention.ms`, `flush.messages`, ...).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cluster;
mod topic;

pub use cluster::*;
pub use topic::*;

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
