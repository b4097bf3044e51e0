//! One partition on the core that owns it: an `io::Log` plus what Kafka needs around it — batch
//! validation and offset assignment on produce, the high watermark, fetch reads and long-poll
//! wake-ups. Only the owning core touches it (it is `!Send`).
//!
//! Single node: the in-sync replica set is this broker alone, so the high watermark is the log end
//! offset once a write completed (and, under `flush.messages=1`, was fsync'ed).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use sluice_io::{Admission, Log, StoredBatch};
use tracing::{info, warn};

use crate::config::TopicSettings;
use crate::kafka::record_batch::{self, BatchError, BatchInfo};
use crate::producer_state::{ProducerStates, Refusal};

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
    settings: RefCell<TopicSettings>,
    /// Notified after every successful append (long-poll fetches wait on it).
    data_arrived: Event,
    /// Idempotent producers writing to this partition.
    producers: RefCell<ProducerStates>,
    /// Records and bytes of produced batches appended since open (metrics).
    appended: std::cell::Cell<(u64, u64)>,
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
        let producers = rebuild_producers(&log, dir).await?;
        Ok(Rc::new(Partition {
            topic: topic.to_string(),
            index,
            log,
            settings: RefCell::new(settings),
            data_arrived: Event::new(),
            producers: RefCell::new(producers),
            appended: std::cell::Cell::new((0, 0)),
        }))
    }

    pub fn high_watermark(&self) -> i64 {
        self.log.next_offset() as i64
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset() as i64
    }

    /// Offset the next appended record gets (single node: equal to the high watermark).
    pub fn log_end_offset(&self) -> i64 {
        self.log.next_offset() as i64
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// Records and bytes of produced batches appended since open.
    pub fn appended(&self) -> (u64, u64) {
        self.appended.get()
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.borrow().clone()
    }

    /// Applies changed topic configs to the open partition (retention, roll, flush policy, limits).
    pub fn update_settings(&self, settings: TopicSettings) -> Result<(), sluice_io::Error> {
        let mut config = settings.log_config();
        // Keep what is not a topic setting as the log was opened with.
        let current = self.log.config();
        config.tail_cache_bytes = current.tail_cache_bytes;
        config.checkpoint_interval_ms = current.checkpoint_interval_ms;
        self.log.set_config(config)?;
        *self.settings.borrow_mut() = settings;
        Ok(())
    }

    /// Validates and appends every batch of a Produce request's records. Returns once written
    /// (and synced per the topic's flush policy): that is acks=1 and, on a single node, acks=all.
    pub async fn produce(&self, records: &Bytes) -> Result<Produced, PartitionError> {
        let batches = record_batch::split_and_validate(records, self.settings.borrow().max_message_bytes)?;
        if self.settings.borrow().compacts() {
            for (info, bytes) in &batches {
                crate::compaction::records::check_keys(bytes, info)
                    .map_err(|m| PartitionError::new(ResponseError::InvalidRecord, m))?;
            }
        }
        let mut first = None;
        for (info, bytes) in batches {
            let base = if info.producer_id >= 0 && info.base_sequence >= 0 {
                self.append_idempotent(&info, &bytes).await?
            } else {
                let appended = self
                    .log
                    .append_with(info.offset_count(), info.max_timestamp, |base| {
                        let (stamped, crc) = record_batch::stamp(&bytes, &info, base, LEADER_EPOCH);
                        (stamped, Some(crc))
                    })
                    .await?;
                appended.base_offset as i64
            };
            first.get_or_insert(base);
            let (records, bytes) = self.appended.get();
            self.appended.set((records + info.records_count.max(0) as u64, bytes + info.size as u64));
        }
        self.data_arrived.notify(usize::MAX);
        Ok(Produced { base_offset: first.expect("at least one batch"), log_start_offset: self.log_start_offset() })
    }

    /// Appends a batch of an idempotent producer, unless it is a duplicate (then the original's
    /// offset is returned once the original is written) or out of sequence.
    async fn append_idempotent(&self, info: &BatchInfo, bytes: &Bytes) -> Result<i64, PartitionError> {
        let now = crate::groups::now_ms();
        let mut reserved = None;
        let outcome = self
            .log
            .append_or_reject(info.offset_count(), info.max_timestamp, |base| {
                let check = self.producers.borrow_mut().check_and_reserve(
                    info.producer_id,
                    info.producer_epoch,
                    info.base_sequence,
                    info.offset_count(),
                    base as i64,
                    now,
                );
                match check {
                    Ok(completion) => {
                        reserved = Some(completion);
                        let (stamped, crc) = record_batch::stamp(bytes, info, base, LEADER_EPOCH);
                        Admission::Append(stamped, Some(crc))
                    }
                    Err(refusal) => Admission::Reject(refusal),
                }
            })
            .await;
        match outcome {
            Ok(Ok(appended)) => {
                if let Some(c) = &reserved {
                    c.complete(true);
                }
                Ok(appended.base_offset as i64)
            }
            Ok(Err(Refusal::Duplicate { base_offset, completion })) => {
                if completion.wait().await {
                    Ok(base_offset)
                } else {
                    // The original failed: the client retries, and the retry is a new append.
                    Err(PartitionError::new(
                        ResponseError::KafkaStorageError,
                        "the original of this retried batch failed",
                    ))
                }
            }
            Ok(Err(Refusal::OutOfOrder(m))) => Err(PartitionError::new(ResponseError::OutOfOrderSequenceNumber, m)),
            Ok(Err(Refusal::Fenced(m))) => Err(PartitionError::new(ResponseError::InvalidProducerEpoch, m)),
            Err(e) => {
                if let Some(c) = &reserved {
                    self.producers.borrow_mut().fail(info.producer_id, c);
                }
                Err(e.into())
            }
        }
    }

    /// Snapshots producer state (bounding the rebuild on the next open) and expires idle ids.
    pub async fn snapshot_producers(&self) -> Result<(), sluice_io::Error> {
        let expired = self.producers.borrow_mut().expire(crate::groups::now_ms());
        if expired > 0 {
            info!(topic = %self.topic, partition = self.index, expired, "producer ids expired");
        }
        let snap = self.producers.borrow().snapshot(self.high_watermark());
        ProducerStates::save(&snap, self.dir()).await
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
        // The engine answers per batch; look inside the batch for the exact record.
        let Some(b) = self.log.batch_for_timestamp(ts).await? else { return Ok(None) };
        let start = self.log_start_offset();
        if let Some(found) = exact_or_batch(&b, ts, start) {
            return Ok(Some(found));
        }
        // Every qualifying record of that batch lies below the log start (DeleteRecords cut into
        // it): the answer is in a later batch.
        let mut at = b.header.next_offset();
        let end = self.log.next_offset();
        while at < end {
            let batches = self.log.read(at, 64 << 10).await?;
            if batches.is_empty() {
                break;
            }
            for nb in &batches {
                if nb.header.max_timestamp >= ts {
                    return Ok(exact_or_batch(nb, ts, start));
                }
                at = nb.header.next_offset();
            }
        }
        Ok(None)
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

    /// Kafka DeleteRecords: `offset` -1 means the high watermark. Returns the new low watermark.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, PartitionError> {
        let hw = self.high_watermark();
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            return Err(PartitionError::new(
                ResponseError::OffsetOutOfRange,
                format!("offset {offset} is outside [{}, {hw}]", self.log_start_offset()),
            ));
        }
        Ok(self.log.delete_records_before(target as u64).await? as i64)
    }

    pub async fn apply_retention(&self, now_ms: i64) -> Result<u64, PartitionError> {
        Ok(self.log.apply_retention(now_ms).await?)
    }

    /// One compaction pass if the topic is compacted and dirty enough (see `compaction`).
    pub async fn compact(
        &self,
        map_budget_bytes: usize,
        now_ms: i64,
    ) -> Result<Option<crate::compaction::CleanStats>, crate::compaction::CleanError> {
        let settings = self.settings();
        crate::compaction::clean(&self.log, &settings, map_budget_bytes, now_ms).await
    }

    pub async fn close(&self) -> Result<(), sluice_io::Error> {
        if let Err(e) = self.snapshot_producers().await {
            warn!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot failed");
        }
        self.log.close().await
    }

    pub fn dir(&self) -> &Path {
        self.log.dir()
    }
}

/// The first record at or above `start` with a timestamp >= `ts` in an uncompressed batch; for a
/// compressed batch its base offset (clamped to `start`) and max timestamp, the best answer without
/// decompressing (records before the match are returned too; consumers skip them).
fn exact_or_batch(b: &StoredBatch, ts: i64, start: i64) -> Option<(i64, i64)> {
    let compressed = record_batch::parse_header(&b.payload).map_or(true, |h| h.compression() != 0);
    if compressed {
        return Some(((b.header.base_offset as i64).max(start), b.header.max_timestamp));
    }
    record_batch::first_record_at_or_after(&b.payload, ts, start)
}

/// Producer state from the snapshot (if any) plus every batch after it in the log.
async fn rebuild_producers(log: &Log, dir: &Path) -> Result<ProducerStates, sluice_io::Error> {
    let start = log.log_start_offset();
    let end = log.next_offset();
    let (mut states, mut at) = match ProducerStates::load(dir).await {
        Some((s, from)) if (start as i64..=end as i64).contains(&from) => (s, from as u64),
        _ => (ProducerStates::default(), start),
    };
    let mut replayed = 0u64;
    while at < end {
        let batches = log.read(at, 1 << 20).await?;
        let Some(last) = batches.last() else { break };
        at = last.header.next_offset();
        for b in &batches {
            let Ok(info) = record_batch::parse_header(&b.payload) else { continue };
            if info.producer_id >= 0 && info.base_sequence >= 0 {
                states.replay(
                    info.producer_id,
                    info.producer_epoch,
                    info.base_sequence,
                    info.offset_count(),
                    b.header.base_offset as i64,
                    info.max_timestamp,
                );
                replayed += 1;
            }
        }
    }
    if replayed > 0 || !states.is_empty() {
        info!(dir = %dir.display(), producers = states.len(), replayed, "producer state rebuilt");
    }
    Ok(states)
}
