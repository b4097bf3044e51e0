//! One partition on the core that owns it: an `io::Log` plus what Kafka needs around it — batch
//! validation and offset assignment on produce, the high watermark, fetch reads and long-poll
//! wake-ups. Only the owning core touches it (it is `!Send`).
//!
//! Single node: the in-sync replica set is this broker alone, so the high watermark is the log end
//! offset once a write completed (and, under `flush.messages=1`, was fsync'ed).

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use sluice_io::{Log, StoredBatch};
use tracing::warn;

use crate::config::TopicSettings;
use crate::kafka::record_batch::{self, BatchError};

/// Leader epoch stamped into stored batches (single node: always 0 until replication).
pub const LEADER_EPOCH: i32 = 0;

/// A Kafka error code with a message for the client.
#[derive(Debug, Clone)]
pub struct PartitionError {
    pub code: ResponseError,
    pub message: String,
}

impl PartitionError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        PartitionError { code, message: message.into() }
    }
}

impl From<sluice_io::Error> for PartitionError {
    fn from(e: sluice_io::Error) -> Self {
        let code = match &e {
            sluice_io::Error::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            sluice_io::Error::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            sluice_io::Error::InvalidBatch(_) => ResponseError::CorruptMessage,
            sluice_io::Error::Closed { .. } => ResponseError::NotLeaderOrFollower,
            _ => ResponseError::KafkaStorageError,
        };
        PartitionError { code, message: e.to_string() }
    }
}

impl From<BatchError> for PartitionError {
    fn from(e: BatchError) -> Self {
        let code = match e {
            BatchError::Corrupt(_) => ResponseError::CorruptMessage,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        };
        PartitionError { code, message: e.to_string() }
    }
}

/// Outcome of a produce to this partition.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    log: Log,
    settings: TopicSettings,
    /// Notified after every successful append (long-poll fetches wait on it).
    data_arrived: Event,
}

impl Partition {
    pub async fn open(
        dir: &Path,
        topic: &str,
        index: i32,
        settings: TopicSettings,
    ) -> Result<Rc<Partition>, sluice_io::Error> {
        let log = Log::open(dir, settings.log_config()).await?;
        let report = log.recovery_report();
        if report.truncation.is_some() || !report.indexes_rebuilt.is_empty() {
            warn!(topic, partition = index, ?report, "partition recovered with repairs");
        }
        Ok(Rc::new(Partition { topic: topic.to_string(), index, log, settings, data_arrived: Event::new() }))
    }

    pub fn high_watermark(&self) -> i64 {
        self.log.next_offset() as i64
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset() as i64
    }

    pub fn settings(&self) -> &TopicSettings {
        &self.settings
    }

    /// Validates and appends every batch of a Produce request's records. Returns once written
    /// (and synced per the topic's flush policy): that is acks=1 and, on a single node, acks=all.
    pub async fn produce(&self, records: &Bytes) -> Result<Produced, PartitionError> {
        let batches = record_batch::split_and_validate(records, self.settings.max_message_bytes)?;
        let mut first = None;
        for (info, bytes) in batches {
            let appended = self
                .log
                .append_with(info.offset_count(), info.max_timestamp, |base| {
                    let (stamped, crc) = record_batch::stamp(&bytes, &info, base, LEADER_EPOCH);
                    (stamped, Some(crc))
                })
                .await?;
            first.get_or_insert(appended.base_offset as i64);
        }
        self.data_arrived.notify(usize::MAX);
        Ok(Produced { base_offset: first.expect("at least one batch"), log_start_offset: self.log_start_offset() })
    }

    /// Stored batches from the one holding `offset`, up to `max_bytes` (the first batch whole even
    /// if larger), never above the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<StoredBatch>, PartitionError> {
        let offset = u64::try_from(offset)
            .map_err(|_| PartitionError::new(ResponseError::OffsetOutOfRange, "negative fetch offset"))?;
        let hw = self.log.next_offset();
        let mut batches = self.log.read(offset, max_bytes).await?;
        batches.retain(|b| b.header.base_offset < hw);
        Ok(batches)
    }

    /// Resolves once the high watermark is above `offset` (or at once if it already is).
    pub async fn wait_for_data(&self, offset: i64) {
        loop {
            if self.high_watermark() > offset {
                return;
            }
            let listener = self.data_arrived.listen();
            if self.high_watermark() > offset {
                return;
            }
            listener.await;
        }
    }

    /// The first offset whose record timestamp is >= `ts`, with that timestamp (Kafka ListOffsets).
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, PartitionError> {
        let Some((base, _)) = self.log.offset_for_timestamp(ts).await? else { return Ok(None) };
        // The engine answers per batch; look inside the batch for the exact record.
        let batches = self.log.read(base, 1).await?;
        let Some(b) = batches.first() else { return Ok(None) };
        if let Some(exact) = record_batch::first_record_at_or_after(&b.payload, ts) {
            return Ok(Some(exact));
        }
        // Compressed batch: the batch's base offset and max timestamp are the best answer without
        // decompressing (the records before the match are returned too; consumers skip them).
        Ok(Some((b.header.base_offset as i64, b.header.max_timestamp)))
    }

    /// Largest timestamp and its batch's last offset (ListOffsets MAX_TIMESTAMP, -3).
    pub async fn max_timestamp(&self) -> Result<Option<(i64, i64)>, PartitionError> {
        let mut best: Option<(i64, i64)> = None;
        let mut at = self.log.log_start_offset();
        let end = self.log.next_offset();
        while at < end {
            let batches = self.log.read(at, 1 << 20).await?;
            let Some(last) = batches.last() else { break };
            for b in &batches {
                if best.is_none_or(|(_, ts)| b.header.max_timestamp > ts) {
                    best = Some((b.header.last_offset() as i64, b.header.max_timestamp));
                }
            }
            at = last.header.next_offset();
        }
        Ok(best)
    }

    pub async fn apply_retention(&self, now_ms: i64) -> Result<u64, PartitionError> {
        Ok(self.log.apply_retention(now_ms).await?)
    }

    pub async fn close(&self) -> Result<(), sluice_io::Error> {
        self.log.close().await
    }

    pub fn dir(&self) -> &Path {
        self.log.dir()
    }
}
