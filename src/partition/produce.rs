//! The produce path of a partition: Kafka's `acks`, the record check of a produced batch (bounded
//! decompression per core, yielding between steps), offset assignment and stamping, the
//! idempotent append (duplicates answered with the original's offset, sequence gaps refused), and
//! the acks=all wait for the high watermark.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use sluice_io::Admission;

use super::{Partition, PartitionError, Role, LEADER_EPOCH};
use crate::producer_state::Refusal;
use crate::record::batch::{self as record_batch, BatchInfo};
use crate::record::validate::{BatchCheck, Rules};

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

/// Outcome of a produce to this partition.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

impl Partition {
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
}
