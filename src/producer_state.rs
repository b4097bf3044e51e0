//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence ranges
//! and offsets of its last 5 batches (Kafka's limit on in-flight requests per producer). A retried
//! duplicate is answered with its original offset without being written again; a gap is
//! OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch is INVALID_PRODUCER_EPOCH.
//!
//! A batch is reserved synchronously with its offset assignment (so concurrent in-flight batches of
//! one producer are checked in order) and completed or failed when its write ends. The state is
//! rebuilt on open from a snapshot plus the batches after it (producer id, epoch and sequence are in
//! every RecordBatch v2 header).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use event_listener::Event;
use sluice_io::framed_file::{self, FramedReadError};

/// Batches remembered per producer (Kafka: `max.in.flight.requests.per.connection` <= 5).
pub const MAX_BATCHES_PER_PRODUCER: usize = 5;
/// Producer ids with no append for this long are forgotten (Kafka `transactional.id.expiration.ms`).
pub const PRODUCER_EXPIRATION_MS: i64 = 7 * 24 * 3600 * 1000;
/// File of the snapshot in a partition directory.
pub const SNAPSHOT_FILE: &str = "producers.snapshot";
/// Producer ids reserved per durable write (the catalog file on a single node, a Raft command in a
/// cluster): ids are never reused, and a restart skips at most this many.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"SPRS");
const SNAPSHOT_VERSION: u32 = 1;

/// Completion of a reserved batch, shared with duplicates that arrive while it is in flight.
#[derive(Default)]
pub struct Completion {
    /// `Some(true)`: written; `Some(false)`: failed.
    done: Cell<Option<bool>>,
    event: Event,
}

impl Completion {
    fn finished(ok: bool) -> Rc<Completion> {
        let c = Rc::new(Completion::default());
        c.done.set(Some(ok));
        c
    }

    pub fn complete(&self, ok: bool) {
        self.done.set(Some(ok));
        self.event.notify(usize::MAX);
    }

    /// Waits for the original write; true when it succeeded.
    pub async fn wait(&self) -> bool {
        loop {
            if let Some(ok) = self.done.get() {
                return ok;
            }
            let l = self.event.listen();
            if let Some(ok) = self.done.get() {
                return ok;
            }
            l.await;
        }
    }
}

struct BatchSeq {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    completion: Rc<Completion>,
}

struct Producer {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
    last_append_ms: i64,
}

/// Why a batch is not appended.
pub enum Refusal {
    /// Already appended (or in flight): answer with its base offset once its write succeeded.
    Duplicate { base_offset: i64, completion: Rc<Completion> },
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder(String),
    /// INVALID_PRODUCER_EPOCH.
    Fenced(String),
}

/// The sequence after `seq` (sequences wrap from i32::MAX to 0).
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Last sequence of a batch of `count` records starting at `first`.
pub fn last_seq(first: i32, count: u32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

impl ProducerStates {
    /// Checks a batch and, when it may be appended at `base_offset`, reserves it.
    pub fn check_and_reserve(
        &mut self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        count: u32,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<Rc<Completion>, Refusal> {
        let last = last_seq(first_seq, count);
        let p =
            self.producers.entry(pid).or_insert(Producer { epoch, batches: VecDeque::new(), last_append_ms: now_ms });
        if epoch < p.epoch {
            return Err(Refusal::Fenced(format!("producer {pid}: epoch {epoch} is older than {}", p.epoch)));
        }
        // A producer this partition has no batches of (new here, expired, its batches removed by
        // retention, or its last write failed) may continue at any sequence, as in Kafka (KIP-360).
        let unknown = p.batches.is_empty() && epoch == p.epoch;
        if epoch > p.epoch {
            if first_seq != 0 {
                return Err(Refusal::OutOfOrder(format!(
                    "producer {pid}: a new epoch must start at sequence 0, got {first_seq}"
                )));
            }
            p.epoch = epoch;
            p.batches.clear();
        }
        if let Some(b) = p.batches.iter().find(|b| b.first_seq == first_seq && b.last_seq == last) {
            return Err(Refusal::Duplicate { base_offset: b.base_offset, completion: b.completion.clone() });
        }
        let expected = p.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if first_seq != expected && !unknown {
            return Err(Refusal::OutOfOrder(format!(
                "producer {pid} epoch {epoch}: expected sequence {expected}, got {first_seq}"
            )));
        }
        let completion = Rc::new(Completion::default());
        p.batches.push_back(BatchSeq { first_seq, last_seq: last, base_offset, completion: completion.clone() });
        while p.batches.len() > MAX_BATCHES_PER_PRODUCER {
            p.batches.pop_front();
        }
        p.last_append_ms = now_ms;
        Ok(completion)
    }

    /// A reserved batch's write failed: it and every later batch of the producer are forgotten
    /// (the log fails every append queued after a failed one).
    pub fn fail(&mut self, pid: i64, completion: &Rc<Completion>) {
        completion.complete(false);
        if let Some(p) = self.producers.get_mut(&pid) {
            if let Some(i) = p.batches.iter().position(|b| Rc::ptr_eq(&b.completion, completion)) {
                for b in p.batches.drain(i..) {
                    b.completion.complete(false);
                }
            }
        }
    }

    /// Replays a stored batch (rebuild on open): no checks, last writer wins.
    pub fn replay(&mut self, pid: i64, epoch: i16, first_seq: i32, count: u32, base_offset: i64, ts_ms: i64) {
        let p =
            self.producers.entry(pid).or_insert(Producer { epoch, batches: VecDeque::new(), last_append_ms: ts_ms });
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.batches.push_back(BatchSeq {
            first_seq,
            last_seq: last_seq(first_seq, count),
            base_offset,
            completion: Completion::finished(true),
        });
        while p.batches.len() > MAX_BATCHES_PER_PRODUCER {
            p.batches.pop_front();
        }
        p.last_append_ms = p.last_append_ms.max(ts_ms);
    }

    /// Forgets producers idle for longer than the expiration.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, p| now_ms - p.last_append_ms <= PRODUCER_EXPIRATION_MS);
        before - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The state as of `next_offset`: batches written below it (batches at or above it are replayed
    /// from the log on rebuild). Synchronous, so it is a consistent cut.
    pub fn snapshot(&self, next_offset: i64) -> Snapshot {
        Snapshot {
            next_offset,
            producers: self
                .producers
                .iter()
                .map(|(pid, p)| SnapshotProducer {
                    pid: *pid,
                    epoch: p.epoch,
                    last_append_ms: p.last_append_ms,
                    batches: p
                        .batches
                        .iter()
                        .filter(|b| b.completion.done.get() != Some(false) && b.base_offset < next_offset)
                        .map(|b| (b.first_seq, b.last_seq, b.base_offset))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Writes a snapshot atomically into `dir`.
    pub async fn save(snap: &Snapshot, dir: &Path) -> Result<(), sluice_io::Error> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(snap).map_err(|e| sluice_io::Error::CorruptCheckpoint {
            path: path.clone(),
            reason: format!("encoding: {e}"),
        })?;
        framed_file::write_atomic(&path, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, &bytes).await
    }

    /// Loads a snapshot; returns the state and the offset from which the log must be replayed.
    pub async fn load(dir: &Path) -> Option<(ProducerStates, i64)> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = match framed_file::read(&path, SNAPSHOT_MAGIC, SNAPSHOT_VERSION).await {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(FramedReadError::Invalid(reason)) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring corrupt producer snapshot");
                return None;
            }
            Err(FramedReadError::Io(e)) => {
                tracing::warn!(error = %e, "cannot read producer snapshot");
                return None;
            }
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(&bytes);
        let snap = rkyv::from_bytes::<Snapshot, rkyv::rancor::Error>(&aligned).ok()?;
        let mut states = ProducerStates::default();
        for p in snap.producers {
            states.producers.insert(
                p.pid,
                Producer {
                    epoch: p.epoch,
                    last_append_ms: p.last_append_ms,
                    batches: p
                        .batches
                        .into_iter()
                        .map(|(first_seq, last_seq, base_offset)| BatchSeq {
                            first_seq,
                            last_seq,
                            base_offset,
                            completion: Completion::finished(true),
                        })
                        .collect(),
                },
            );
        }
        Some((states, snap.next_offset))
    }
}

/// Persisted producer state (rkyv).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshot {
    next_offset: i64,
    producers: Vec<SnapshotProducer>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotProducer {
    pid: i64,
    epoch: i16,
    last_append_ms: i64,
    batches: Vec<(i32, i32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(s: &mut ProducerStates, epoch: i16, seq: i32, count: u32, off: i64) -> Result<Rc<Completion>, Refusal> {
        s.check_and_reserve(7, epoch, seq, count, off, 0)
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        let a = reserve(&mut s, 0, 0, 5, 100).ok().unwrap();
        a.complete(true);
        assert!(reserve(&mut s, 0, 5, 5, 105).is_ok());
        match reserve(&mut s, 0, 0, 5, 110) {
            Err(Refusal::Duplicate { base_offset, .. }) => assert_eq!(base_offset, 100),
            _ => panic!("duplicate expected"),
        }
        assert!(matches!(reserve(&mut s, 0, 11, 1, 110), Err(Refusal::OutOfOrder(_))));
        // A producer with no batches here may start anywhere.
        assert!(s.check_and_reserve(8, 0, 500, 1, 0, 0).is_ok());
        assert!(matches!(s.check_and_reserve(8, 0, 502, 1, 0, 0), Err(Refusal::OutOfOrder(_))));
        assert!(matches!(reserve(&mut s, 1, 3, 1, 110), Err(Refusal::OutOfOrder(_))));
        assert!(reserve(&mut s, 1, 0, 1, 110).is_ok());
        assert!(matches!(reserve(&mut s, 0, 10, 1, 111), Err(Refusal::Fenced(_))));
        // Sequences wrap.
        assert_eq!(last_seq(i32::MAX, 1), i32::MAX);
        assert_eq!(last_seq(i32::MAX, 2), 0);
        assert_eq!(next_seq(i32::MAX), 0);
    }

    #[test]
    fn a_failed_write_forgets_it_and_what_followed() {
        let mut s = ProducerStates::default();
        let a = reserve(&mut s, 0, 0, 1, 0).ok().unwrap();
        let b = reserve(&mut s, 0, 1, 1, 1).ok().unwrap();
        s.fail(7, &a);
        assert_eq!(b.done.get(), Some(false));
        assert!(reserve(&mut s, 0, 0, 1, 0).is_ok(), "the retry of the failed batch is accepted");
    }
}
