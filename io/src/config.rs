//! Configuration of one partition log. Every limit has a name with its unit and a default.

use std::time::Duration;

use crate::error::{Error, Result};

/// When appended bytes are made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before an append is acknowledged. Appends that arrive while a sync is in flight
    /// share the next one (group commit).
    Always,
    /// fdatasync when the oldest unsynced write is this old (Kafka's `flush.ms`).
    Interval(Duration),
    /// Never fdatasync on the append path (rely on replication); segments are still synced on roll,
    /// checkpoint and close.
    Never,
}

/// Settings of a [`crate::Log`]. Can be changed while the log is open ([`crate::Log::set_config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one holds this many bytes (Kafka `segment.bytes`).
    pub segment_bytes: u64,
    /// Roll when the active segment's first batch timestamp is this old (Kafka `segment.ms`).
    pub segment_ms: Option<u64>,
    /// Delete the oldest segments while the log is larger than this (Kafka `retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest timestamp is older than this (Kafka `retention.ms`).
    pub retention_ms: Option<u64>,
    /// One offset-index entry per this many bytes of log (Kafka `index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// fdatasync policy.
    pub durability: Durability,
    /// Bytes of the most recent batches kept in memory for tail readers.
    pub tail_cache_bytes: usize,
    /// Largest payload accepted by `append`.
    pub max_batch_bytes: usize,
    /// Appends queued for the writer before `append` waits for room (back-pressure).
    pub max_pending_appends: usize,
    /// Bytes the writer gathers into one DMA write (a single larger batch is written alone).
    pub max_write_bytes: usize,
    /// The writer syncs and moves the recovery point this often while there is new data, so that
    /// recovery after a crash only verifies what came after (Kafka's
    /// `log.flush.offset.checkpoint.interval.ms`). `None`: only on roll, truncation and close.
    pub checkpoint_interval_ms: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            durability: Durability::Never,
            tail_cache_bytes: 8 << 20,
            max_batch_bytes: 100 << 20,
            max_pending_appends: 4096,
            max_write_bytes: 8 << 20,
            checkpoint_interval_ms: Some(60_000),
        }
    }
}

/// Largest segment: file positions in the index are u32.
pub const MAX_SEGMENT_BYTES: u64 = (u32::MAX as u64) - (crate::batch::MAX_PAYLOAD_LEN as u64);

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(format!("segment_bytes {} must be in [4096, {MAX_SEGMENT_BYTES}]", self.segment_bytes));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be > 0".into());
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > crate::batch::MAX_PAYLOAD_LEN {
            return bad(format!(
                "max_batch_bytes {} must be in [1, {}]",
                self.max_batch_bytes,
                crate::batch::MAX_PAYLOAD_LEN
            ));
        }
        if self.max_pending_appends == 0 || self.max_write_bytes < 4096 {
            return bad("max_pending_appends must be > 0 and max_write_bytes >= 4096".into());
        }
        Ok(())
    }
}
