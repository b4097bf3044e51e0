//! One partition on the core that owns it: an `io::Log` plus what Kafka needs around it — batch
//! validation and offset assignment on produce, the high watermark, fetch reads and long-poll
//! wake-ups. Only the owning core touches it (it is `!Send`).
//!
//! Single node ([`Role::Standalone`]): the in-sync replica set is this broker alone, so the high
//! watermark is the log end offset once a write completed (and, under `flush.messages=1`, was
//! fsync'ed). In a cluster the partition is a [`Role::Leader`] (tracks its followers' progress; the
//! high watermark is the ISR's smallest log end; acks=all waits for it) or a [`Role::Follower`]
//! (appends its leader's batches at the leader's offsets; clients are told to go to the leader).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use sluice_io::{Admission, Log};
use tracing::{info, warn};

use crate::cluster::BrokerId;
use crate::config::TopicSettings;
use crate::metrics::ReplicationSample;
use crate::producer_state::{ProducerStates, Refusal};
use crate::record::batch::{self as record_batch, BatchError, BatchInfo};
use crate::record::validate::{BatchCheck, Rules};
use crate::replication::progress::LeaderState;
use crate::replication::{EpochEndOffset, UNDEFINED_EPOCH};
/// What a read returns: stored batches as they lie in the engine's buffers (`BatchBytes`), so a
/// fetch splices them to the socket without a copy. Re-exported so the handlers see the
/// partition's read result, not the storage engine.
pub use sluice_io::{BatchBytes, StoredBatch};

/// Leader epoch stamped into stored batches on a single node.
pub const LEADER_EPOCH: i32 = 0;
/// Bytes of a produced batch's records checked between yields to the executor.
const RECORD_CHECK_STEP_BYTES: usize = 256 << 10;
/// Compressed batches checked at once on one core. Each holds a decoder (a zstd window of at most
/// 16 MiB, a snappy block of at most 22 × its compressed size, 64 KiB of read buffer) while it
/// yields, so this bounds the decompression memory of a core; others wait their turn.
const MAX_CONCURRENT_DECOMPRESSIONS_PER_CORE: u64 = 2;

thread_local! {
    /// This core's decompression slots (one executor per thread: per core).
    static DECOMPRESSION_SLOTS: Rc<glommio::sync::Semaphore> =
        Rc::new(glommio::sync::Semaphore::new(MAX_CONCURRENT_DECOMPRESSIONS_PER_CORE));
}

/// How much a producer waits for (Kafka's `acks`): nothing, the leader's write, or every
/// in-sync replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: no answer at all.
    None,
    /// acks=1: answered once the leader has written.
    Leader,
    /// acks=all (-1): answered once the high watermark passes the batch.
    All,
}

impl Acks {
    /// The wire value's meaning; `None` for anything but -1, 0 and 1 (INVALID_REQUIRED_ACKS).
    pub fn from_wire(acks: i16) -> Option<Acks> {
        match acks {
            -1 => Some(Acks::All),
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            _ => None,
        }
    }
}

/// This partition's part in replication.
#[derive(Debug, Clone)]
pub enum Role {
    /// A single node: this broker is the whole replica set.
    Standalone,
    /// Leads the partition in a cluster.
    Leader(LeaderState),
    /// Copies the partition from `leader`.
    Follower { leader: BrokerId, leader_epoch: i32 },
}

/// What a leader answers one follower's fetch of this partition.
pub struct ReplicaRead {
    pub batches: Vec<StoredBatch>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub diverging_epoch: Option<EpochEndOffset>,
}

/// A follower fetch the leader refuses: a Kafka error code and why.
pub type ReplicaRefusal = PartitionError;

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
            BatchError::InvalidRecord(_) => ResponseError::InvalidRecord,
            BatchError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
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

    pub fn high_watermark(&self) -> i64 {
        match &*self.role.borrow() {
            Role::Standalone => self.log.next_offset() as i64,
            _ => self.hw.get() as i64,
        }
    }

    /// Replication state for metrics.
    pub fn replication_sample(&self) -> ReplicationSample {
        let leo = self.log.next_offset();
        match &*self.role.borrow() {
            Role::Standalone => ReplicationSample {
                leader: true,
                leader_epoch: LEADER_EPOCH,
                replicas: 1,
                in_sync_replicas: 1,
                max_follower_lag: 0,
            },
            Role::Leader(l) => ReplicationSample {
                leader: true,
                leader_epoch: l.leader_epoch,
                replicas: l.replicas.len(),
                in_sync_replicas: l.isr.len(),
                max_follower_lag: l
                    .followers
                    .values()
                    .map(|f| leo.saturating_sub(f.log_end_offset.unwrap_or(0)))
                    .max()
                    .unwrap_or(0),
            },
            Role::Follower { leader_epoch, .. } => {
                ReplicationSample { leader_epoch: (*leader_epoch).max(0), ..ReplicationSample::default() }
            }
        }
    }

    /// The leader and leader epoch this replica follows, when it follows (without copying a
    /// leader's follower table, as `role` would).
    pub fn following(&self) -> Option<(BrokerId, i32)> {
        match &*self.role.borrow() {
            Role::Follower { leader, leader_epoch } => Some((*leader, *leader_epoch)),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Leader epoch of this broker's leadership (0 standalone), or `None` when it follows.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Standalone => Some(LEADER_EPOCH),
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { .. } => None,
        }
    }

    /// The leader epoch the cluster metadata last gave this replica (leader or follower). Metadata is
    /// applied in Raft order, so it only grows: role changes assert it.
    fn cluster_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { leader_epoch, .. } => Some(*leader_epoch),
            Role::Standalone => None,
        }
    }

    /// Clients' produce, fetch and offset lookups go to the leader only.
    pub fn check_leader(&self) -> Result<(), PartitionError> {
        match &*self.role.borrow() {
            Role::Follower { leader, .. } => Err(PartitionError::new(
                ResponseError::NotLeaderOrFollower,
                format!("broker {leader} leads {}-{}", self.topic, self.index),
            )),
            _ => Ok(()),
        }
    }

    /// Makes this broker the partition's leader per the cluster metadata. A new epoch is recorded
    /// in the leader-epoch cache at the current log end (Kafka's `makeLeader`); the same epoch again
    /// only takes the newer ISR.
    pub async fn become_leader(
        &self,
        me: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
    ) -> Result<(), sluice_io::Error> {
        let known = self.cluster_epoch();
        assert!(
            known.is_none_or(|e| e <= leader_epoch),
            "{}-{}: leader epoch moved back from {known:?} to {leader_epoch}",
            self.topic,
            self.index
        );
        let same = matches!(&*self.role.borrow(), Role::Leader(l) if l.leader_epoch == leader_epoch);
        if same {
            if let Role::Leader(l) = &mut *self.role.borrow_mut() {
                l.update_isr(partition_epoch, isr);
            }
        } else {
            let leo = self.log.next_offset();
            self.log.assign_epoch(leader_epoch, leo).await?;
            let start = self.log.epochs().entries().last().map_or(leo, |e| e.start_offset);
            let state =
                LeaderState::new(me, leader_epoch, partition_epoch, replicas, isr, start, crate::clock::now_ms());
            info!(topic = %self.topic, partition = self.index, leader_epoch, start_offset = start, "leading");
            *self.role.borrow_mut() = Role::Leader(state);
            self.role_changed.notify(usize::MAX);
        }
        self.advance_high_watermark();
        Ok(())
    }

    /// Makes this broker a follower of `leader` at `leader_epoch`.
    pub fn become_follower(&self, leader: BrokerId, leader_epoch: i32) {
        if let Some(known) = self.cluster_epoch() {
            assert!(
                known <= leader_epoch,
                "{}-{}: leader epoch moved back from {known} to {leader_epoch}",
                self.topic,
                self.index
            );
        }
        let changed = !matches!(&*self.role.borrow(),
            Role::Follower { leader: l, leader_epoch: e } if *l == leader && *e == leader_epoch);
        if changed {
            info!(topic = %self.topic, partition = self.index, leader, leader_epoch, "following");
            *self.role.borrow_mut() = Role::Follower { leader, leader_epoch };
            self.role_changed.notify(usize::MAX);
        }
    }

    /// Recomputes a leader's high watermark from its ISR; wakes fetches and acks=all waiters when it
    /// moved.
    fn advance_high_watermark(&self) {
        let leo = self.log.next_offset();
        let hw = match &*self.role.borrow() {
            Role::Leader(l) => l.high_watermark(leo, self.hw.get()),
            _ => return,
        };
        self.raise_high_watermark(hw);
    }

    /// Moves the high watermark up to `hw` (never down: a lower value is ignored) and wakes fetches
    /// and acks=all waiters when it moved.
    fn raise_high_watermark(&self, hw: u64) {
        let (before, leo) = (self.hw.get(), self.log.next_offset());
        assert!(hw <= leo, "{}-{}: high watermark {hw} above the log end {leo}", self.topic, self.index);
        if hw > before {
            self.hw.set(hw);
            self.data_arrived.notify(usize::MAX);
        }
        debug_assert!(self.hw.get() >= before, "high watermark moved back");
    }

    /// The leader's ISR change to propose now, if any: followers lagging over `lag_max_ms` out, or
    /// caught-up ones in. `(isr, leader_epoch, partition_epoch)`.
    pub fn isr_change(&self, now_ms: i64, lag_max_ms: i64) -> Option<(Vec<BrokerId>, i32, i32)> {
        let role = self.role.borrow();
        let Role::Leader(l) = &*role else { return None };
        let isr = l.shrunk_isr(now_ms, lag_max_ms).or_else(|| l.expanded_isr(self.hw.get()))?;
        Some((isr, l.leader_epoch, l.partition_epoch))
    }

    /// Serves one follower's fetch (leader side): fences stale epochs, detects a diverging log
    /// (KIP-320), records the follower's progress, and reads from `fetch_offset` up to the log end.
    pub async fn replica_fetch(
        &self,
        follower: BrokerId,
        fetch_offset: u64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        max_bytes: usize,
    ) -> Result<ReplicaRead, ReplicaRefusal> {
        let epoch = match &*self.role.borrow() {
            Role::Leader(l) => l.leader_epoch,
            _ => {
                return Err(PartitionError::new(ResponseError::NotLeaderOrFollower, "not the leader"));
            }
        };
        if current_leader_epoch < epoch {
            return Err(PartitionError::new(ResponseError::FencedLeaderEpoch, format!("leader epoch is {epoch}")));
        }
        if current_leader_epoch > epoch {
            return Err(PartitionError::new(ResponseError::UnknownLeaderEpoch, format!("leader epoch is {epoch}")));
        }
        let leo = self.log.next_offset();
        let start = self.log.log_start_offset();
        let answer = |batches, diverging_epoch| ReplicaRead {
            batches,
            high_watermark: self.hw.get(),
            log_start_offset: start,
            log_end_offset: leo,
            diverging_epoch,
        };
        if last_fetched_epoch != UNDEFINED_EPOCH {
            match self.log.epoch_end_offset(last_fetched_epoch) {
                Some((e, end)) if e < last_fetched_epoch || end < fetch_offset => {
                    return Ok(answer(Vec::new(), Some(EpochEndOffset { epoch: e, end_offset: end })));
                }
                _ => {}
            }
        }
        if fetch_offset > leo || fetch_offset < start {
            return Err(PartitionError::new(
                ResponseError::OffsetOutOfRange,
                format!("fetch offset {fetch_offset} outside [{start}, {leo}]"),
            ));
        }
        let known = match &mut *self.role.borrow_mut() {
            Role::Leader(l) => l.on_fetch(follower, fetch_offset, leo, crate::clock::now_ms()),
            _ => false,
        };
        if !known {
            return Err(PartitionError::new(
                ResponseError::NotLeaderOrFollower,
                format!("broker {follower} is not a replica of {}-{}", self.topic, self.index),
            ));
        }
        self.advance_high_watermark();
        let batches = if fetch_offset < leo { self.log.read(fetch_offset, max_bytes).await? } else { Vec::new() };
        Ok(ReplicaRead { high_watermark: self.hw.get(), ..answer(batches, None) })
    }

    /// Resolves once the log grows past `offset` (a follower's fetch waits on it).
    pub async fn wait_for_append(&self, offset: u64) {
        loop {
            if self.log.next_offset() > offset {
                return;
            }
            let listener = self.log_grew.listen();
            if self.log.next_offset() > offset {
                return;
            }
            listener.await;
        }
    }

    /// Follower side: appends batches copied from the leader at the leader's offsets (recording
    /// each batch's leader epoch first), then takes the leader's high watermark (bounded by what
    /// this log holds). Returns the new log end offset.
    pub async fn append_replicated(&self, records: &Bytes, leader_hw: u64) -> Result<u64, PartitionError> {
        let batches = record_batch::split_replicated(records)?;
        for (info, bytes) in batches {
            let base = info.base_offset as u64;
            if base < self.log.next_offset() {
                // Already here (a resent range after a reconnect).
                continue;
            }
            let epoch = record_batch::partition_leader_epoch(&bytes).unwrap_or(0).max(0);
            self.log.assign_epoch(epoch, base).await?;
            let batch = sluice_io::AppendBatch {
                record_count: info.offset_count(),
                max_timestamp: info.max_timestamp,
                payload: bytes,
            };
            self.log.append_at(base, batch).await?;
            if info.producer_id >= 0 && info.base_sequence >= 0 {
                self.producers.borrow_mut().replay(
                    info.producer_id,
                    info.producer_epoch,
                    info.base_sequence,
                    info.offset_count(),
                    base as i64,
                    info.max_timestamp,
                );
            }
            self.log_grew.notify(usize::MAX);
        }
        let leo = self.log.next_offset();
        self.raise_high_watermark(leader_hw.min(leo));
        Ok(leo)
    }

    /// Follower side: removes every record at or above `offset` (a diverging tail), and rebuilds
    /// the producer state from what stays.
    pub async fn truncate_to(&self, offset: u64) -> Result<(), PartitionError> {
        if offset >= self.log.next_offset() && offset >= self.log.log_start_offset() {
            // Only an epoch this broker started as leader at its log end, if any, goes.
            self.log.truncate_to(offset).await?;
            return Ok(());
        }
        warn!(topic = %self.topic, partition = self.index, from = self.log.next_offset(), to = offset, "truncating");
        self.log.truncate_to(offset).await?;
        self.hw.set(self.hw.get().min(self.log.next_offset()));
        let rebuilt = rebuild_producers(&self.log, self.dir()).await?;
        *self.producers.borrow_mut() = rebuilt;
        Ok(())
    }

    /// Follower side: follows the leader's log start (DeleteRecords, retention there): records below
    /// it go here too, as far as this log reaches.
    pub async fn follow_log_start(&self, leader_log_start: u64) -> Result<(), PartitionError> {
        let target = leader_log_start.min(self.log.next_offset());
        if target > self.log.log_start_offset() {
            self.log.delete_records_before(target).await?;
        }
        Ok(())
    }

    /// Follower side: the whole log lies below the leader's log start; start over there.
    pub async fn restart_at(&self, offset: u64) -> Result<(), PartitionError> {
        warn!(topic = %self.topic, partition = self.index, from = self.log.next_offset(), offset,
            "log below the leader's log start: starting over");
        self.log.restart_at(offset).await?;
        self.hw.set(offset);
        *self.producers.borrow_mut() = ProducerStates::default();
        Ok(())
    }

    /// Follower side: this log's last fetched epoch and end for `epoch` (Kafka's
    /// `endOffsetForEpoch`), for divergence handling.
    pub fn epoch_end_offset(&self, epoch: i32) -> Option<(i32, u64)> {
        self.log.epoch_end_offset(epoch)
    }

    /// The epoch of this log's last batch (KIP-320's last fetched epoch).
    pub fn last_fetched_epoch(&self) -> i32 {
        self.log.latest_epoch().unwrap_or(UNDEFINED_EPOCH)
    }

    /// Waits until a leader's high watermark reaches `end` (acks=all), the leadership ends, or
    /// `timeout`.
    async fn wait_replicated(&self, end: u64, timeout: Duration) -> Result<(), PartitionError> {
        let waited = glommio::timer::timeout(timeout, async {
            loop {
                let listener = self.data_arrived.listen();
                let role_listener = self.role_changed.listen();
                if !matches!(&*self.role.borrow(), Role::Leader(_)) {
                    return Ok(Err(PartitionError::new(
                        ResponseError::NotLeaderOrFollower,
                        "leadership moved before the batch was replicated",
                    )));
                }
                if self.hw.get() >= end {
                    return Ok(Ok(()));
                }
                futures_lite::future::or(listener, role_listener).await;
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => Err(PartitionError::new(
                ResponseError::RequestTimedOut,
                format!("not replicated to the in-sync replicas within {} ms", timeout.as_millis()),
            )),
        }
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
    /// (and synced per the topic's flush policy) for acks=0/1; acks=all (-1) also waits until the
    /// high watermark passes the batches (every ISR member has them), within `timeout`. A
    /// follower refuses (NOT_LEADER_OR_FOLLOWER); acks=all with an ISR below
    /// `min.insync.replicas` is refused before anything is written (NOT_ENOUGH_REPLICAS).
    pub async fn produce(&self, records: &Bytes, acks: Acks, timeout: Duration) -> Result<Produced, PartitionError> {
        self.check_leader()?;
        let min_isr = self.settings.borrow().min_insync_replicas;
        let isr_size = || match &*self.role.borrow() {
            Role::Leader(l) => l.isr.len(),
            _ => 1,
        };
        if acks == Acks::All && isr_size() < min_isr {
            return Err(PartitionError::new(
                ResponseError::NotEnoughReplicas,
                format!("{} in-sync replicas, min.insync.replicas is {min_isr}", isr_size()),
            ));
        }
        let (info, bytes) = record_batch::produced_batch(records, self.settings.borrow().max_message_bytes)?;
        self.check_records(&bytes, &info).await?;
        // The check may have yielded: leadership may have moved meanwhile.
        self.check_leader()?;
        let epoch = self.leader_epoch().unwrap_or(LEADER_EPOCH);
        let base = if info.producer_id >= 0 && info.base_sequence >= 0 {
            self.append_idempotent(&info, &bytes, epoch).await?
        } else {
            let appended = self
                .log
                .append_with(info.offset_count(), info.max_timestamp, |base| {
                    let (stamped, crc) = record_batch::stamp(&bytes, &info, base, epoch);
                    (stamped, Some(crc))
                })
                .await?;
            appended.base_offset as i64
        };
        let end = base as u64 + u64::from(info.offset_count());
        debug_assert!(end <= self.log.next_offset(), "appended batch ends at {end}, past the log end");
        let (count, size) = self.appended.get();
        self.appended.set((count + info.records_count.max(0) as u64, size + info.size as u64));
        self.log_grew.notify(usize::MAX);
        let standalone = matches!(&*self.role.borrow(), Role::Standalone);
        if standalone {
            self.data_arrived.notify(usize::MAX);
        } else {
            self.advance_high_watermark();
            if acks == Acks::All {
                self.wait_replicated(end, timeout).await?;
                if isr_size() < min_isr {
                    return Err(PartitionError::new(
                        ResponseError::NotEnoughReplicasAfterAppend,
                        format!("written, but the ISR shrank to {} (min.insync.replicas {min_isr})", isr_size()),
                    ));
                }
            }
        }
        Ok(Produced { base_offset: base, log_start_offset: self.log_start_offset() })
    }

    /// Walks every record of a produced batch (`record::validate`) before anything is written,
    /// yielding between steps so a large or highly compressed batch does not hold the core.
    async fn check_records(&self, bytes: &Bytes, info: &BatchInfo) -> Result<(), PartitionError> {
        let rules = Rules { keys_required: self.settings.borrow().compacts(), ..Rules::default() };
        let slots = DECOMPRESSION_SLOTS.with(Rc::clone);
        let _slot = match info.compression() {
            0 => None,
            _ => Some(slots.acquire_permit(1).await.map_err(|e| {
                PartitionError::new(ResponseError::UnknownServerError, format!("decompression slot: {e}"))
            })?),
        };
        let mut check = BatchCheck::new(bytes, info, rules)?;
        while !check.advance(RECORD_CHECK_STEP_BYTES)? {
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    /// Appends a batch of an idempotent producer, unless it is a duplicate (then the original's
    /// offset is returned once the original is written) or out of sequence.
    async fn append_idempotent(&self, info: &BatchInfo, bytes: &Bytes, epoch: i32) -> Result<i64, PartitionError> {
        let now = crate::clock::now_ms();
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
                        let (stamped, crc) = record_batch::stamp(bytes, info, base, epoch);
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
                // A duplicate of a batch replicated from an earlier leader has no completion to
                // wait for; the high watermark wait of acks=all covers it.
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
        let expired = self.producers.borrow_mut().expire(crate::clock::now_ms());
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
        let hw = self.high_watermark() as u64;
        let mut batches = self.log.read(offset, max_bytes).await?;
        batches.retain(|b| b.header.base_offset < hw);
        Ok(batches)
    }

    /// Stored batches from the one holding `offset` up to the log end (above the high watermark
    /// too): for the broker's own replay of a log it now leads.
    pub async fn read_to_end(&self, offset: i64, max_bytes: usize) -> Result<Vec<StoredBatch>, PartitionError> {
        let offset = u64::try_from(offset)
            .map_err(|_| PartitionError::new(ResponseError::OffsetOutOfRange, "negative offset"))?;
        Ok(self.log.read(offset, max_bytes).await?)
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
