//! Sparse per-segment indexes, kept in memory and persisted next to the segment:
//! - offset index: (offset − segment base, file position of the batch starting there), one entry per
//!   `index_interval_bytes` of log;
//! - time index: (largest timestamp so far in the segment, offset − base of the batch that raised it).
//!
//! Persisted files (`<base>.index`, `<base>.timeindex`) are framed and checksummed and say how much of
//! the segment they cover; on recovery an index that fails any check is rebuilt from the segment.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::framed_file::{self, FramedReadError};

const OFFSET_MAGIC: u32 = u32::from_le_bytes(*b"SIDX");
const TIME_MAGIC: u32 = u32::from_le_bytes(*b"STIX");
const VERSION: u32 = 1;
const COVER_LEN: usize = 24;

/// Which part of the segment an index file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Coverage {
    /// Segment bytes covered (a frame boundary).
    pub size: u64,
    /// Offset following the last covered batch.
    pub next_offset: u64,
    /// Largest timestamp among covered batches (i64::MIN when none).
    pub max_timestamp: i64,
}

/// In-memory indexes of one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIndex {
    /// (relative offset, position), both strictly increasing.
    pub offsets: Vec<(u32, u32)>,
    /// (timestamp, relative offset), both strictly increasing.
    pub times: Vec<(i64, u32)>,
    /// Bytes appended since the last offset-index entry.
    bytes_since_entry: u64,
}

impl SegmentIndex {
    /// Records a batch that starts at `position` with relative offset `rel`.
    /// `max_ts_so_far` includes this batch.
    pub fn on_batch(&mut self, rel: u32, position: u32, frame_len: u64, max_ts_so_far: i64, interval: u64) {
        if position > 0 && self.bytes_since_entry >= interval {
            debug_assert!(self.offsets.last().is_none_or(|&(r, p)| r < rel && p < position));
            self.offsets.push((rel, position));
            if self.times.last().is_none_or(|&(t, _)| max_ts_so_far > t) {
                self.times.push((max_ts_so_far, rel));
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += frame_len;
    }

    /// Floor lookup: (relative offset, position) of an indexed batch at or before `rel`.
    pub fn lookup_offset(&self, rel: u32) -> (u32, u32) {
        match self.offsets.partition_point(|&(r, _)| r <= rel) {
            0 => (0, 0),
            i => self.offsets[i - 1],
        }
    }

    /// Relative offset from which to scan for the first batch with max timestamp >= `ts`:
    /// every batch up to an entry with a smaller timestamp cannot match.
    pub fn lookup_time(&self, ts: i64) -> u32 {
        match self.times.partition_point(|&(t, _)| t < ts) {
            0 => 0,
            i => self.times[i - 1].1,
        }
    }

    /// Drops entries at or after relative offset `rel` (truncation to `new_size` bytes).
    pub fn truncate(&mut self, rel: u32, new_size: u64) {
        self.offsets.retain(|&(r, _)| r < rel);
        self.times.retain(|&(_, r)| r < rel);
        self.resume_spacing(new_size);
    }

    /// Keeps entries one interval apart after the index was cut or loaded: counts the bytes since
    /// the last entry up to the segment's `size`.
    fn resume_spacing(&mut self, size: u64) {
        let last = self.offsets.last().map(|&(_, p)| u64::from(p)).unwrap_or(0);
        self.bytes_since_entry = size.saturating_sub(last);
    }

    /// Checks the invariants against the segment's extent.
    fn validate(&self, cover: &Coverage, base: u64) -> std::result::Result<(), String> {
        let rel_end = cover.next_offset.checked_sub(base).ok_or("coverage ends before the segment base")?;
        let mut prev: Option<(u32, u32)> = None;
        for &(r, p) in &self.offsets {
            if u64::from(r) >= rel_end || u64::from(p) >= cover.size {
                return Err(format!("offset entry ({r}, {p}) beyond the covered segment"));
            }
            if prev.is_some_and(|(pr, pp)| pr >= r || pp >= p) {
                return Err("offset entries not strictly increasing".into());
            }
            prev = Some((r, p));
        }
        let mut prev_t: Option<(i64, u32)> = None;
        for &(t, r) in &self.times {
            if u64::from(r) >= rel_end || t > cover.max_timestamp {
                return Err(format!("time entry ({t}, {r}) beyond the covered segment"));
            }
            if prev_t.is_some_and(|(pt, pr)| pt >= t || pr >= r) {
                return Err("time entries not strictly increasing".into());
            }
            prev_t = Some((t, r));
        }
        Ok(())
    }

    /// Writes both index files for a segment covering `cover`.
    pub async fn persist(&self, dir: &Path, base: u64, cover: &Coverage) -> Result<()> {
        let mut off = encode_cover(cover);
        for &(r, p) in &self.offsets {
            off.extend_from_slice(&r.to_le_bytes());
            off.extend_from_slice(&p.to_le_bytes());
        }
        let mut tim = encode_cover(cover);
        for &(t, r) in &self.times {
            tim.extend_from_slice(&t.to_le_bytes());
            tim.extend_from_slice(&r.to_le_bytes());
        }
        framed_file::write_atomic(&offset_index_path(dir, base), OFFSET_MAGIC, VERSION, &off).await?;
        framed_file::write_atomic(&time_index_path(dir, base), TIME_MAGIC, VERSION, &tim).await
    }

    /// Loads both index files. `Ok(None)` when either is missing; `CorruptIndex` when either fails
    /// validation or they disagree.
    pub async fn load(dir: &Path, base: u64) -> Result<Option<(SegmentIndex, Coverage)>> {
        let opath = offset_index_path(dir, base);
        let tpath = time_index_path(dir, base);
        let Some(off) = read_index(&opath, OFFSET_MAGIC).await? else { return Ok(None) };
        let Some(tim) = read_index(&tpath, TIME_MAGIC).await? else { return Ok(None) };
        let corrupt = |path: &PathBuf, reason: String| Error::CorruptIndex { path: path.clone(), reason };
        let (cover, oentries) = split_cover(&off).map_err(|r| corrupt(&opath, r))?;
        let (tcover, tentries) = split_cover(&tim).map_err(|r| corrupt(&tpath, r))?;
        if cover != tcover {
            return Err(corrupt(&tpath, "coverage differs from the offset index".into()));
        }
        if oentries.len() % 8 != 0 || tentries.len() % 12 != 0 {
            return Err(corrupt(&opath, "entry area is not a whole number of entries".into()));
        }
        let offsets = oentries.chunks_exact(8).map(|c| (le_u32(&c[0..4]), le_u32(&c[4..8]))).collect();
        let times = tentries.chunks_exact(12).map(|c| (le_u64(&c[0..8]) as i64, le_u32(&c[8..12]))).collect();
        let mut idx = SegmentIndex { offsets, times, bytes_since_entry: 0 };
        idx.validate(&cover, base).map_err(|r| corrupt(&opath, r))?;
        idx.resume_spacing(cover.size);
        Ok(Some((idx, cover)))
    }
}

async fn read_index(path: &Path, magic: u32) -> Result<Option<Vec<u8>>> {
    match framed_file::read(path, magic, VERSION).await {
        Ok(v) => Ok(v),
        Err(FramedReadError::Io(e)) => Err(e),
        Err(FramedReadError::Invalid(reason)) => Err(Error::CorruptIndex { path: path.to_path_buf(), reason }),
    }
}

fn encode_cover(c: &Coverage) -> Vec<u8> {
    let mut v = Vec::with_capacity(COVER_LEN);
    v.extend_from_slice(&c.size.to_le_bytes());
    v.extend_from_slice(&c.next_offset.to_le_bytes());
    v.extend_from_slice(&c.max_timestamp.to_le_bytes());
    v
}

fn split_cover(b: &[u8]) -> std::result::Result<(Coverage, &[u8]), String> {
    if b.len() < COVER_LEN {
        return Err("missing coverage header".into());
    }
    let cover =
        Coverage { size: le_u64(&b[0..8]), next_offset: le_u64(&b[8..16]), max_timestamp: le_u64(&b[16..24]) as i64 };
    Ok((cover, &b[COVER_LEN..]))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// `<dir>/<base:020>.log`
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// `<dir>/<base:020>.index`
pub(crate) fn offset_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// `<dir>/<base:020>.timeindex`
pub(crate) fn time_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_entries_and_lookups() {
        let mut idx = SegmentIndex::default();
        let mut pos = 0u32;
        for rel in 0..100u32 {
            idx.on_batch(rel, pos, 1000, i64::from(rel) * 10, 4096);
            pos += 1000;
        }
        assert!(idx.offsets.len() > 10 && idx.offsets.len() < 30, "{}", idx.offsets.len());
        let (r, p) = idx.lookup_offset(50);
        assert!(r <= 50 && u64::from(p) == u64::from(r) * 1000);
        assert_eq!(idx.lookup_offset(0), (0, 0));
        let start = idx.lookup_time(505);
        assert!(start <= 50);
        idx.truncate(40, 40_000);
        assert!(idx.offsets.iter().all(|&(r, _)| r < 40));
    }
}
