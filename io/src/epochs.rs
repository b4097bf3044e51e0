//! The leader-epoch cache of one log (Kafka's `LeaderEpochFileCache`, KIP-101 / KIP-279): which
//! leader epoch started at which offset. A follower that rejoins asks the leader where its latest
//! epoch ended (`end_offset_for`) and truncates what it holds beyond that point.
//!
//! Entries `(epoch, start_offset)` are strictly increasing in both fields. The rules follow Kafka's
//! current source (`storage/.../epoch/LeaderEpochFileCache.java`):
//! - `assign` of the latest epoch again is ignored unless its start offset is lower; otherwise the
//!   new entry wins: every entry at its end whose epoch is >= the new epoch or whose start offset is
//!   >= the new start offset is removed first (a new leader's history overrides conflicting tails).
//! - `end_offset_for(requested, leo)`: requested == latest → `(requested, leo)`; an undefined
//!   (negative) epoch, an empty cache, or an epoch above every entry → `None` (Kafka's
//!   UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET); below the first entry → `(requested, first start)`
//!   (Kafka since 2.1; KIP-101's first version answered UNDEFINED there); otherwise the largest
//!   epoch <= requested and the start offset of the first epoch > requested.
//! - `truncate_from_end(o)` removes entries starting at or after `o` (log truncated to `o`);
//!   `truncate_from_start(o)` drops entries wholly below `o` and moves the one covering `o` to `o`.
//!
//! Persisted as `leader-epoch.checkpoint` (an rkyv archive in a framed, checksummed file replaced
//! atomically, like `log.checkpoint`). The file is the source of truth: the engine stores opaque
//! batches and cannot rebuild epochs from them, so a damaged file is `Error::CorruptEpochCache` and
//! the caller (which can parse its batches) decides whether to delete it and rebuild. This module
//! only touches that one file.

use std::path::Path;

use crate::error::{Error, Result};
use crate::framed_file::{self, FramedReadError};

const MAGIC: u32 = u32::from_le_bytes(*b"SLEP");
const VERSION: u32 = 1;
/// File name of the leader-epoch cache inside a log directory.
pub const EPOCH_CHECKPOINT_FILE: &str = "leader-epoch.checkpoint";

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochEntry {
    /// Leader epoch (>= 0).
    pub epoch: i32,
    /// First offset of the epoch.
    pub start_offset: u64,
}

/// Persisted form.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EpochFile {
    entries: Vec<EpochEntry>,
}

/// The leader epochs of one log, oldest first. Invariant: epochs and start offsets both strictly
/// increase from one entry to the next, and every epoch is >= 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    /// A cache holding `entries`, which must keep the invariant (`None` when they do not).
    pub fn from_entries(entries: Vec<EpochEntry>) -> Option<EpochCache> {
        let ordered = entries.windows(2).all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
        let non_negative = entries.iter().all(|e| e.epoch >= 0);
        (ordered && non_negative).then_some(EpochCache { entries })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// True when no epoch is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest entry.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// The newest epoch.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|e| e.epoch)
    }

    /// The entry of exactly `epoch`.
    pub fn entry(&self, epoch: i32) -> Option<EpochEntry> {
        self.entries.iter().find(|e| e.epoch == epoch).copied()
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the cache changed (and so must
    /// be persisted). See the module doc for the rules; an epoch < 0 is refused.
    pub fn assign(&mut self, epoch: i32, start_offset: u64) -> Result<bool> {
        if epoch < 0 {
            return Err(Error::InvalidEpoch { epoch });
        }
        if !self.assign_changes(epoch, start_offset) {
            return Ok(false);
        }
        while self.entries.last().is_some_and(|l| l.epoch >= epoch || l.start_offset >= start_offset) {
            self.entries.pop();
        }
        self.entries.push(EpochEntry { epoch, start_offset });
        debug_assert!(EpochCache::from_entries(self.entries.clone()).is_some());
        Ok(true)
    }

    /// Whether `assign(epoch, start_offset)` would change the cache: only the latest epoch again,
    /// at or after its start, does not.
    pub fn assign_changes(&self, epoch: i32, start_offset: u64) -> bool {
        self.latest().is_none_or(|l| l.epoch != epoch || start_offset < l.start_offset)
    }

    /// The epoch holding `offset`: that of the last entry starting at or before it.
    pub fn epoch_for_offset(&self, offset: u64) -> Option<i32> {
        self.entries.iter().take_while(|e| e.start_offset <= offset).last().map(|e| e.epoch)
    }

    /// Where `requested` ended in this log: `(epoch, end_offset)` with `epoch` the largest known epoch
    /// <= `requested` and `end_offset` the start of the first epoch after it, or `log_end_offset` when
    /// `requested` is the latest epoch. `None` is Kafka's UNDEFINED_EPOCH_OFFSET. Exactly Kafka's
    /// `endOffsetFor`, including `(requested, first start)` for an epoch below the first entry.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: u64) -> Option<(i32, u64)> {
        if requested < 0 {
            return None;
        }
        if self.latest_epoch() == Some(requested) {
            return Some((requested, log_end_offset));
        }
        let higher = self.entries.iter().find(|e| e.epoch > requested)?;
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            None => Some((requested, higher.start_offset)),
            Some(floor) => Some((floor.epoch, higher.start_offset)),
        }
    }

    /// The log was truncated to `end_offset` (everything at or after it removed): drops the entries
    /// starting at or after it. Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: u64) -> bool {
        let keep = self.entries.iter().take_while(|e| e.start_offset < end_offset).count();
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start_offset`: drops the entries wholly below it and moves the start of
    /// the epoch covering it to it. An entry starting exactly there is kept as is. Returns whether the
    /// cache changed.
    pub fn truncate_from_start(&mut self, start_offset: u64) -> bool {
        let at_or_below = self.entries.iter().take_while(|e| e.start_offset <= start_offset).count();
        if at_or_below == 0 {
            return false;
        }
        let changed = at_or_below > 1 || self.entries[0].start_offset != start_offset;
        self.entries.drain(..at_or_below - 1);
        self.entries[0].start_offset = start_offset;
        changed
    }

    /// Forgets every entry (the log was emptied). Returns whether the cache changed.
    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    /// Writes the cache to `dir/leader-epoch.checkpoint`, atomically and durably.
    pub async fn persist(&self, dir: &Path) -> Result<()> {
        let path = dir.join(EPOCH_CHECKPOINT_FILE);
        let file = EpochFile { entries: self.entries.clone() };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&file)
            .map_err(|e| Error::CorruptEpochCache { path: path.clone(), reason: format!("encoding: {e}") })?;
        framed_file::write_atomic(&path, MAGIC, VERSION, &bytes).await
    }

    /// Reads the cache of `dir`: empty when there is no file, `Error::CorruptEpochCache` when the
    /// file is damaged (bad frame, checksum, archive, or entries out of order).
    pub async fn load(dir: &Path) -> Result<EpochCache> {
        let path = dir.join(EPOCH_CHECKPOINT_FILE);
        let payload = match framed_file::read(&path, MAGIC, VERSION).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(EpochCache::default()),
            Err(FramedReadError::Io(e)) => return Err(e),
            Err(FramedReadError::Invalid(reason)) => return Err(Error::CorruptEpochCache { path, reason }),
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(&payload);
        let file = rkyv::from_bytes::<EpochFile, rkyv::rancor::Error>(&aligned)
            .map_err(|e| Error::CorruptEpochCache { path: path.clone(), reason: format!("decoding: {e}") })?;
        EpochCache::from_entries(file.entries)
            .ok_or_else(|| Error::CorruptEpochCache { path, reason: "entries not strictly increasing".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: i32, start_offset: u64) -> EpochEntry {
        EpochEntry { epoch, start_offset }
    }

    fn cache(entries: &[(i32, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(epoch, start) in entries {
            c.assign(epoch, start).unwrap();
        }
        c
    }

    // The cases below mirror Kafka's LeaderEpochFileCacheTest.

    #[test]
    fn assign_adds_and_latest_epoch_answers_log_end() {
        let c = cache(&[(2, 10)]);
        assert_eq!(c.latest_epoch(), Some(2));
        assert_eq!(c.entries(), &[e(2, 10)]);
        assert_eq!(c.end_offset_for(2, 11), Some((2, 11)));
        let c = cache(&[(2, 11), (2, 12)]);
        assert_eq!(c.end_offset_for(2, 14), Some((2, 14)));
        assert_eq!(EpochCache::default().latest_epoch(), None);
    }

    #[test]
    fn same_epoch_is_not_reassigned_to_a_later_offset() {
        let mut c = cache(&[(2, 9)]);
        assert!(!c.assign(2, 10).unwrap());
        assert_eq!(c.entries(), &[e(2, 9)]);
        let c = cache(&[(2, 6), (2, 7)]);
        assert_eq!(c.entries(), &[e(2, 6)]);
    }

    #[test]
    fn start_offsets_and_epochs_stay_strictly_increasing() {
        // A later epoch at the same offset replaces the earlier one (no data was written in it).
        assert_eq!(cache(&[(2, 9), (3, 9)]).entries(), &[e(3, 9)]);
        // A later epoch at a lower offset removes the entries it overlaps.
        assert_eq!(cache(&[(2, 6), (3, 5)]).entries(), &[e(3, 5)]);
        // A lower epoch removes every entry with an epoch >= it.
        let c = cache(&[(1, 5), (2, 6), (1, 7)]);
        assert_eq!(c.latest_epoch(), Some(1));
        assert_eq!(c.entries(), &[e(1, 7)]);
        assert_eq!(c.end_offset_for(1, 8), Some((1, 8)));
        assert_eq!(c.end_offset_for(2, 8), None);
        // The latest epoch at an earlier offset truncates the overlapping tail.
        let c = cache(&[(5, 11), (6, 12), (7, 13), (7, 12)]);
        assert_eq!(c.entries(), &[e(5, 11), e(7, 12)]);
        assert_eq!(c.end_offset_for(5, 0), Some((5, 12)));
        assert_eq!(c.end_offset_for(6, 0), Some((5, 12)));
        // Negative epochs are refused and change nothing.
        let mut c = cache(&[(1, 5)]);
        assert!(matches!(c.assign(-1, 9), Err(Error::InvalidEpoch { epoch: -1 })));
        assert_eq!(c.entries(), &[e(1, 5)]);
    }

    #[test]
    fn end_offset_for_undefined_and_unknown_epochs() {
        let c = cache(&[(2, 11), (3, 12)]);
        assert_eq!(c.end_offset_for(-1, 0), None);
        assert_eq!(EpochCache::default().end_offset_for(0, 0), None);
        assert_eq!(EpochCache::default().end_offset_for(-1, 73), None);
        assert_eq!(EpochCache::default().end_offset_for(7, 0), None);
        // Above every known epoch.
        assert_eq!(cache(&[(2, 100)]).end_offset_for(3, 100), None);
        // Below the first epoch: the requested epoch ends where the first known one starts.
        assert_eq!(cache(&[(5, 11), (6, 12), (7, 13)]).end_offset_for(4, 0), Some((4, 11)));
    }

    #[test]
    fn end_offset_for_earlier_and_missing_epochs() {
        let c = cache(&[(1, 11), (1, 12), (2, 13), (2, 14), (3, 15), (3, 16)]);
        assert_eq!(c.end_offset_for(2, 17), Some((2, 15)));
        let c = cache(&[(0, 10), (2, 13), (4, 17)]);
        assert_eq!(c.end_offset_for(1, 0), Some((0, 13)));
        assert_eq!(c.end_offset_for(2, 0), Some((2, 17)));
        assert_eq!(c.end_offset_for(3, 0), Some((2, 17)));
        assert_eq!(cache(&[(2, 6)]).end_offset_for(2, 7), Some((2, 7)));
    }

    #[test]
    fn tracks_many_leader_changes() {
        let mut c = cache(&[(0, 0), (1, 0)]);
        assert_eq!(c.latest_epoch(), Some(1));
        assert_eq!(c.end_offset_for(1, 0), Some((1, 0)));
        assert_eq!(c.end_offset_for(0, 0), Some((0, 0)));
        assert_eq!(c.end_offset_for(1, 5), Some((1, 5)));
        assert_eq!(c.end_offset_for(0, 5), Some((0, 0)));
        c.assign(2, 5).unwrap();
        assert_eq!(c.end_offset_for(2, 10), Some((2, 10)));
        assert_eq!(c.end_offset_for(1, 10), Some((1, 5)));
        assert_eq!(c.end_offset_for(0, 10), Some((0, 0)));

        let c = cache(&[(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7), (2, 8)]);
        assert_eq!(c.end_offset_for(2, 9), Some((2, 9)));
        assert_eq!(c.end_offset_for(0, 9), Some((0, 3)));
        assert_eq!(c.end_offset_for(1, 9), Some((1, 6)));
    }

    #[test]
    fn epoch_for_offset() {
        let c = cache(&[(0, 10), (1, 20), (5, 30)]);
        assert_eq!(c.epoch_for_offset(25), Some(1));
        assert_eq!(c.epoch_for_offset(20), Some(1));
        assert_eq!(c.epoch_for_offset(30), Some(5));
        assert_eq!(c.epoch_for_offset(50), Some(5));
        assert_eq!(c.epoch_for_offset(5), None);
        assert_eq!(c.entry(1), Some(e(1, 20)));
        assert_eq!(c.entry(2), None);
    }

    #[test]
    fn truncate_from_end() {
        let base = cache(&[(2, 6), (3, 8), (4, 11)]);
        let mut c = base.clone();
        assert!(c.truncate_from_end(8));
        assert_eq!(c.entries(), &[e(2, 6)]);
        let mut c = base.clone();
        assert!(c.truncate_from_end(9));
        assert_eq!(c.latest_epoch(), Some(3));
        assert_eq!(c.entries(), &[e(2, 6), e(3, 8)]);
        let mut c = base.clone();
        assert!(!c.truncate_from_end(12));
        assert_eq!(c, base);
        let mut c = cache(&[(2, 10), (4, 15), (10, 20)]);
        c.truncate_from_end(18);
        assert_eq!(c.entries(), &[e(2, 10), e(4, 15)]);
        assert!(!EpochCache::default().truncate_from_end(7));
        let mut c = base.clone();
        assert!(c.truncate_from_end(0));
        assert!(c.is_empty());
    }

    #[test]
    fn truncate_from_start() {
        let base = cache(&[(2, 6), (3, 8), (4, 11)]);
        let after = |o: u64| {
            let mut c = base.clone();
            let changed = c.truncate_from_start(o);
            (changed, c.entries().to_vec())
        };
        assert_eq!(after(8), (true, vec![e(3, 8), e(4, 11)]));
        assert_eq!(after(1), (false, base.entries().to_vec()));
        assert_eq!(after(6), (false, base.entries().to_vec()));
        assert_eq!(after(11), (true, vec![e(4, 11)]));
        assert_eq!(after(9), (true, vec![e(3, 9), e(4, 11)]));
        assert_eq!(after(15), (true, vec![e(4, 15)]));
        let mut c = cache(&[(0, 0), (1, 7), (2, 10)]);
        assert!(c.truncate_from_start(5));
        assert_eq!(c.entries(), &[e(0, 5), e(1, 7), e(2, 10)]);
        assert!(!EpochCache::default().truncate_from_start(7));
        // Both truncations together (Kafka's shouldWriteCheckpointOnTruncation).
        let mut c = base.clone();
        c.truncate_from_end(11);
        c.truncate_from_start(8);
        assert_eq!(c.entries(), &[e(3, 8)]);
        let mut c = base.clone();
        assert!(c.clear());
        assert!(!c.clear());
    }

    #[test]
    fn from_entries_checks_the_invariant() {
        assert!(EpochCache::from_entries(vec![e(1, 1), e(2, 2)]).is_some());
        assert!(EpochCache::from_entries(vec![e(1, 1), e(1, 2)]).is_none());
        assert!(EpochCache::from_entries(vec![e(1, 2), e(2, 2)]).is_none());
        assert!(EpochCache::from_entries(vec![e(2, 1), e(1, 2)]).is_none());
        assert!(EpochCache::from_entries(vec![e(-1, 1)]).is_none());
        assert!(EpochCache::from_entries(Vec::new()).is_some());
    }

    fn run<Fut: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> Fut + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move { f().await })
            .expect("spawn executor")
            .join()
            .expect("executor thread");
    }

    #[test]
    fn persist_load_round_trip_and_damage() {
        let dir = tempfile::Builder::new().prefix("sluice-epochs-").tempdir().unwrap();
        let p = dir.path().to_path_buf();
        run(move || async move {
            assert_eq!(EpochCache::load(&p).await.unwrap(), EpochCache::default());
            let c = cache(&[(0, 0), (3, 100), (7, 1 << 40)]);
            c.persist(&p).await.unwrap();
            assert_eq!(EpochCache::load(&p).await.unwrap(), c);
            EpochCache::default().persist(&p).await.unwrap();
            assert!(EpochCache::load(&p).await.unwrap().is_empty());
            c.persist(&p).await.unwrap();

            let path = p.join(EPOCH_CHECKPOINT_FILE);
            let good = std::fs::read(&path).unwrap();
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0x04;
                std::fs::write(&path, &bad).unwrap();
                match EpochCache::load(&p).await {
                    Err(Error::CorruptEpochCache { .. }) => {}
                    other => panic!("flip at byte {i} not caught: {other:?}"),
                }
            }
            std::fs::write(&path, &good[..good.len() - 3]).unwrap();
            assert!(matches!(EpochCache::load(&p).await, Err(Error::CorruptEpochCache { .. })));

            // A well-framed archive whose entries break the invariant is damage too.
            let file = EpochFile { entries: vec![e(3, 10), e(2, 20)] };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&file).unwrap();
            framed_file::write_atomic(&path, MAGIC, VERSION, &bytes).await.unwrap();
            assert!(matches!(EpochCache::load(&p).await, Err(Error::CorruptEpochCache { .. })));
        });
    }
}
