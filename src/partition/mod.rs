//! One partition on the core that owns it: an `io::Log` plus what Kafka needs around it — batch
//! validation and offset assignment on produce, the high watermark, fetch reads and long-poll
//! wake-ups. Only the owning core touches it (it is `!Send`).
//!
//! Single node ([`Role::Standalone`]): the in-sync replica set is this broker alone, so the high
//! watermark is the log end offset once a write completed (and, under `flush.messages=1`, was
//! fsync'ed). In a cluster the partition is a [`Role::Leader`] (tracks its followers' progress; the
//! high watermark is the ISR's smallest log end; acks=all waits for it) or a [`Role::Follower`]
//! (appends its leader's batches at the leader's offsets; clients are told to go to the leader).
//!
//! The partition's jobs live in its submodules: `produce` (acks, record checks, idempotent append),
//! `read` (fetch reads, timestamp lookups), `roles` (standalone/leader/follower, high watermark,
//! ISR), `replica` (serving and applying replication fetches) and `error` (Kafka error codes).
//! This file keeps the type, its opening and the log's upkeep (settings, retention, compaction,
//! DeleteRecords, producer snapshots).

mod error;
mod produce;
mod read;
mod replica;
mod roles;

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use event_listener::Event;
use kafka_protocol::error::ResponseError;
use sluice_io::Log;
use tracing::{info, warn};

use crate::config::TopicSettings;
use crate::producer_state::ProducerStates;
use crate::record::batch as record_batch;

pub use error::PartitionError;
pub use produce::{Acks, Produced};
pub use replica::{ReplicaRead, ReplicaRefusal};
pub use roles::Role;
/// What a read returns: stored batches as they lie in the engine's buffers (`BatchBytes`), so a
/// fetch splices them to the socket without a copy. Re-exported so the handlers see the
/// partition's read result, not the storage engine.
pub use sluice_io::{BatchBytes, StoredBatch};

/// Leader epoch stamped into stored batches on a single node.
pub const LEADER_EPOCH: i32 = 0;

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
    appended: Cell<(u64, u64)>,
    role: RefCell<Role>,
    /// High watermark in a cluster (a standalone partition's is its log end).
    hw: Cell<u64>,
    /// Notified after every append (followers' fetches wait on it).
    log_grew: Event,
    /// Notified on every role change (acks=all waiters re-check their leadership).
    role_changed: Event,
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
        let log_start = log.log_start_offset();
        Ok(Rc::new(Partition {
            topic: topic.to_string(),
            index,
            log,
            settings: RefCell::new(settings),
            data_arrived: Event::new(),
            producers: RefCell::new(producers),
            appended: Cell::new((0, 0)),
            role: RefCell::new(Role::Standalone),
            hw: Cell::new(log_start),
            log_grew: Event::new(),
            role_changed: Event::new(),
        }))
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

    /// Snapshots producer state (bounding the rebuild on the next open) and expires idle ids.
    pub async fn snapshot_producers(&self) -> Result<(), sluice_io::Error> {
        let expired = self.producers.borrow_mut().expire(crate::clock::now_ms());
        if expired > 0 {
            info!(topic = %self.topic, partition = self.index, expired, "producer ids expired");
        }
        let snap = self.producers.borrow().snapshot(self.high_watermark());
        ProducerStates::save(&snap, self.dir()).await
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
