//! Topic-level settings: Kafka's topic config names (`retention.ms`, `cleanup.policy`, ...), their
//! descriptions and defaults (`TOPIC_CONFIGS`), and the effective settings of one topic (broker
//! defaults overridden by the topic's own configs).

use std::time::Duration;

use super::BrokerConfig;

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
