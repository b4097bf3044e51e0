//! Replication of a partition's log: the leader serving a follower's fetch (epoch fencing,
//! KIP-320 divergence, follower progress), and the follower appending its leader's batches at the
//! leader's offsets, truncating a diverging tail and following the leader's log start.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tracing::warn;

use super::{rebuild_producers, Partition, PartitionError, Role, StoredBatch};
use crate::cluster::BrokerId;
use crate::producer_state::ProducerStates;
use crate::record::batch as record_batch;
use crate::replication::{EpochEndOffset, UNDEFINED_EPOCH};

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

impl Partition {
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
}
