//! Log compaction (`cleanup.policy=compact`): keep the latest record per key. Runs in the background
//! on the core owning the partition (from the retention tick), never on the active segment, and with
//! bounded memory: the key map (`cleaner_dedupe_buffer_bytes` per core) and one read/write buffer.
//!
//! One pass, as Kafka's cleaner does it:
//! 1. Choose: sealed segments whose newest record is older than `min.compaction.lag.ms` are
//!    cleanable; the part after the cleaner checkpoint is dirty. Clean when the dirty share of the
//!    cleanable bytes reaches `min.cleanable.dirty.ratio` (or dirty records are older than
//!    `max.compaction.lag.ms`).
//! 2. Map: read the dirty range, recording each key's latest offset, batch by batch until the map is
//!    full; the pass covers up to there.
//! 3. Rewrite every cleanable segment up to that point, keeping a record unless a later record has
//!    its key (map offset above its own), it has no key (Kafka drops those too), or it is a
//!    tombstone whose segment's newest record is older than `delete.retention.ms`. Batches keep their
//!    offsets (gaps appear), headers and codec; a batch with nothing left goes; a batch with
//!    everything left is copied byte for byte. Control batches are kept.
//! 4. Move the cleaner checkpoint to the end of the mapped range.
//!
//! Kafka-specific knowledge lives here and in `records`; the storage engine only swaps segments.

pub mod offset_map;

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use sluice_io::framed_file::{self, FramedReadError};
use sluice_io::{Log, SealedSegment};
use tracing::{debug, info, warn};

use crate::config::TopicSettings;
use crate::record::batch::{self as record_batch, BatchError};
use crate::record::records;
use offset_map::OffsetMap;

/// Cleaner checkpoint file in the partition directory: where the dirty part starts.
const CHECKPOINT_FILE: &str = "cleaner.checkpoint";
const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"SCLN");
const CHECKPOINT_VERSION: u32 = 1;
/// Bytes read from the log per call while mapping or rewriting.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_rewritten: usize,
    pub records_read: u64,
    pub records_kept: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub keys_mapped: usize,
    /// The dirty part now starts here.
    pub cleaned_through: u64,
    /// Wall time of the pass (it yields to the core's other work while it runs).
    pub elapsed_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error(transparent)]
    Storage(#[from] sluice_io::Error),
    #[error("batch at offset {offset}: {source}")]
    Batch { offset: u64, source: BatchError },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Checkpoint {
    first_dirty_offset: u64,
}

async fn load_checkpoint(dir: &Path) -> u64 {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match framed_file::read(&path, CHECKPOINT_MAGIC, CHECKPOINT_VERSION).await {
        Ok(Some(b)) => b,
        Ok(None) => return 0,
        Err(FramedReadError::Invalid(reason)) => {
            warn!(path = %path.display(), %reason, "ignoring damaged cleaner checkpoint: the log is all dirty");
            return 0;
        }
        Err(FramedReadError::Io(e)) => {
            warn!(path = %path.display(), error = %e, "reading cleaner checkpoint");
            return 0;
        }
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    rkyv::from_bytes::<Checkpoint, rkyv::rancor::Error>(&aligned).map(|c| c.first_dirty_offset).unwrap_or(0)
}

async fn save_checkpoint(dir: &Path, first_dirty_offset: u64) -> Result<(), sluice_io::Error> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Checkpoint { first_dirty_offset })
        .map_err(|e| sluice_io::Error::CorruptCheckpoint { path: path.clone(), reason: format!("encoding: {e}") })?;
    framed_file::write_atomic(&path, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, &bytes).await
}

/// The segments a pass may touch and whether it should run.
fn plan(
    sealed: &[SealedSegment],
    first_dirty: u64,
    settings: &TopicSettings,
    now_ms: i64,
) -> Option<(Vec<SealedSegment>, u64)> {
    let lag_horizon = now_ms.saturating_sub(settings.min_compaction_lag_ms);
    let cleanable: Vec<SealedSegment> = sealed.iter().copied().take_while(|s| s.max_timestamp <= lag_horizon).collect();
    let last = cleanable.last()?;
    let first_dirty = first_dirty.max(cleanable[0].base);
    if first_dirty >= last.end_offset {
        return None;
    }
    let total: u64 = cleanable.iter().map(|s| s.size_bytes).sum();
    let dirty: Vec<&SealedSegment> = cleanable.iter().filter(|s| s.end_offset > first_dirty).collect();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.size_bytes).sum();
    let ratio = if total == 0 { 1.0 } else { dirty_bytes as f64 / total as f64 };
    let overdue = dirty.first().is_some_and(|s| {
        s.max_timestamp != i64::MIN && s.max_timestamp < now_ms.saturating_sub(settings.max_compaction_lag_ms)
    });
    (ratio >= settings.min_cleanable_dirty_ratio || overdue).then_some((cleanable, first_dirty))
}

/// Runs one compaction pass over `log` if its policy and dirty ratio call for one. `None` when
/// there was nothing to do.
pub async fn clean(
    log: &Log,
    settings: &TopicSettings,
    map_budget_bytes: usize,
    now_ms: i64,
) -> Result<Option<CleanStats>, CleanError> {
    if !settings.compacts() {
        return Ok(None);
    }
    let dir = log.dir().to_path_buf();
    let checkpoint = load_checkpoint(&dir).await;
    let Some((cleanable, first_dirty)) = plan(&log.sealed_segments(), checkpoint, settings, now_ms) else {
        return Ok(None);
    };
    let began = std::time::Instant::now();
    let end = cleanable.last().expect("plan returns segments").end_offset;
    let first_dirty = first_dirty.max(log.log_start_offset());

    // Map the dirty range.
    let mut map = OffsetMap::with_budget(map_budget_bytes);
    let mut mapped_to = first_dirty;
    let mut at = first_dirty;
    'map: while at < end {
        let batches = log.read(at, READ_CHUNK_BYTES).await?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            let h = b.header;
            if h.base_offset >= end {
                break 'map;
            }
            let payload = Bytes::copy_from_slice(&b.payload);
            let keys = batch_keys(&payload).map_err(|source| CleanError::Batch { offset: h.base_offset, source })?;
            if !map.has_room_for(keys.len()) {
                break 'map;
            }
            for (offset_delta, hash) in keys {
                map.put(hash, h.base_offset + offset_delta as u64);
            }
            at = h.next_offset();
            mapped_to = at;
            glommio::yield_if_needed().await;
        }
    }
    if mapped_to == first_dirty {
        warn!(dir = %dir.display(), first_dirty, map_budget_bytes, "compaction: one batch has more keys than the map holds");
        return Ok(None);
    }

    // Rewrite every cleanable segment that holds offsets below `mapped_to`.
    let tombstone_horizon = now_ms.saturating_sub(settings.delete_retention_ms);
    let mut stats = CleanStats { keys_mapped: map.len(), cleaned_through: mapped_to, ..CleanStats::default() };
    for seg in cleanable.iter().filter(|s| s.base < mapped_to) {
        let drop_tombstones = seg.max_timestamp < tombstone_horizon;
        if let Some((before, after, read, kept)) = rewrite_segment(log, seg, &map, drop_tombstones).await? {
            stats.segments_rewritten += 1;
            stats.bytes_before += before;
            stats.bytes_after += after;
            stats.records_read += read;
            stats.records_kept += kept;
        }
    }
    save_checkpoint(&dir, mapped_to).await?;
    stats.elapsed_ms = began.elapsed().as_millis() as u64;
    Ok(Some(stats))
}

/// (offset delta, key hash) of each keyed record of a stored batch; none for a control batch.
fn batch_keys(payload: &Bytes) -> Result<Vec<(i32, u128)>, BatchError> {
    let info = record_batch::parse_header(payload)?;
    let Some((section, views)) = records::user_records(payload, &info)? else { return Ok(Vec::new()) };
    Ok(views.into_iter().filter_map(|v| v.key.map(|k| (v.offset_delta, OffsetMap::hash(&section[k])))).collect())
}

/// Rewrites one segment. `None` when every record stays (the segment is left as it is); otherwise
/// (bytes before, bytes after, records read, records kept).
async fn rewrite_segment(
    log: &Log,
    seg: &SealedSegment,
    map: &OffsetMap,
    drop_tombstones: bool,
) -> Result<Option<(u64, u64, u64, u64)>, CleanError> {
    let mut rw = log.rewrite_segment(seg.base).await?;
    let (mut read, mut kept_records, mut changed) = (0u64, 0u64, false);
    let mut at = seg.base.max(log.log_start_offset());
    'segment: while at < seg.end_offset {
        let batches = log.read(at, READ_CHUNK_BYTES).await?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            let h = b.header;
            if h.base_offset >= seg.end_offset {
                break 'segment;
            }
            at = h.next_offset();
            let payload = Bytes::copy_from_slice(&b.payload);
            let bad = |source| CleanError::Batch { offset: h.base_offset, source };
            let info = record_batch::parse_header(&payload).map_err(bad)?;
            let Some((section, views)) = records::user_records(&payload, &info).map_err(bad)? else {
                rw.push(h.base_offset, h.record_count, h.max_timestamp, &payload).await?;
                continue;
            };
            let keep: Vec<Range<usize>> = views
                .iter()
                .filter(|v| {
                    let Some(k) = &v.key else { return false };
                    let offset = h.base_offset + v.offset_delta as u64;
                    let superseded = map.latest(OffsetMap::hash(&section[k.clone()])).is_some_and(|l| l > offset);
                    let expired_tombstone = v.tombstone && drop_tombstones;
                    !superseded && !expired_tombstone
                })
                .map(|v| v.span.clone())
                .collect();
            read += views.len() as u64;
            kept_records += keep.len() as u64;
            if keep.len() == views.len() {
                rw.push(h.base_offset, h.record_count, h.max_timestamp, &payload).await?;
            } else {
                changed = true;
                if !keep.is_empty() {
                    let rebuilt = records::rebuild(&payload, &info, &section, &keep).map_err(bad)?;
                    rw.push(h.base_offset, h.record_count, h.max_timestamp, &rebuilt).await?;
                }
            }
            glommio::yield_if_needed().await;
        }
    }
    if !changed {
        return Ok(None);
    }
    let after = rw.size_bytes();
    if !log.commit_rewrite(rw).await? {
        debug!(dir = %log.dir().display(), base = seg.base, "segment changed during compaction: skipped");
        return Ok(None);
    }
    Ok(Some((seg.size_bytes, after, read, kept_records)))
}

/// Logs a pass's outcome.
pub fn report(topic: &str, partition: i32, stats: &CleanStats) {
    info!(
        topic,
        partition,
        segments = stats.segments_rewritten,
        records_read = stats.records_read,
        records_kept = stats.records_kept,
        bytes_before = stats.bytes_before,
        bytes_after = stats.bytes_after,
        keys = stats.keys_mapped,
        cleaned_through = stats.cleaned_through,
        elapsed_ms = stats.elapsed_ms,
        "compacted"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    fn seg(base: u64, end: u64, size: u64, ts: i64) -> SealedSegment {
        SealedSegment { base, end_offset: end, size_bytes: size, max_timestamp: ts }
    }

    fn settings(configs: &[(&str, &str)]) -> TopicSettings {
        let o: Vec<(String, String)> = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TopicSettings::resolve(&BrokerConfig::default(), &o).unwrap()
    }

    #[test]
    fn plan_follows_the_dirty_ratio_and_the_lags() {
        let s = settings(&[("cleanup.policy", "compact")]);
        let sealed = [seg(0, 10, 100, 1_000), seg(10, 20, 100, 2_000), seg(20, 30, 100, 3_000)];
        // All dirty at first.
        assert_eq!(plan(&sealed, 0, &s, 10_000).map(|(c, d)| (c.len(), d)), Some((3, 0)));
        // One of three dirty: below 0.5.
        assert_eq!(plan(&sealed, 20, &s, 10_000), None);
        // Nothing dirty.
        assert_eq!(plan(&sealed, 30, &s, 10_000), None);
        // Two of three dirty.
        assert!(plan(&sealed, 10, &s, 10_000).is_some());
        // min.compaction.lag.ms keeps young segments out.
        let lag = settings(&[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "8500")]);
        assert_eq!(plan(&sealed, 0, &lag, 10_000).map(|(c, _)| c.len()), Some(1));
        // max.compaction.lag.ms forces a pass below the ratio.
        let overdue = settings(&[("cleanup.policy", "compact"), ("max.compaction.lag.ms", "5000")]);
        assert!(plan(&sealed, 20, &overdue, 10_000).is_some());
        assert_eq!(plan(&[], 0, &s, 10_000), None);
    }
}
