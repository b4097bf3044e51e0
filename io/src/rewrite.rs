//! Rewriting a sealed segment with a subset of its batches (log compaction). The caller streams the
//! batches to keep, in offset order, each with its original offsets (gaps are allowed: that is the
//! point); they go to `<base>.log.cleaned` through O_DIRECT writes from a bounded buffer, the file is
//! synced, and `Log` swaps it in through the writer queue with a rename over the original. A crash
//! before the rename leaves the original untouched (the leftover is removed at open); after it, the
//! new file, whose index is rebuilt at open if it was not persisted yet. Readers of the old file keep
//! their open handle and finish normally.
//!
//! Knows nothing of what the payloads mean: choosing what to keep is the caller's job.

use std::path::{Path, PathBuf};

use glommio::io::DmaFile;

use crate::batch::BatchHeader;
use crate::error::{Error, GlommioResultExt, Result};
use crate::index::segment_path;
use crate::segment::{align_down, align_up, Segment};

/// Suffix of a segment being rewritten (`<base:020>.log.cleaned`).
pub const REWRITE_SUFFIX: &str = ".cleaned";
/// Bytes buffered before an O_DIRECT write is issued (a batch larger than this is written whole).
pub const REWRITE_BUFFER_BYTES: usize = 1 << 20;

/// A sealed segment as a cleaner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegment {
    /// First offset of the segment's range.
    pub base: u64,
    /// Offset after the segment's range (the next segment's base).
    pub end_offset: u64,
    /// Bytes of frames in the file.
    pub size_bytes: u64,
    /// Largest batch timestamp (ms), `i64::MIN` when the segment holds no batch.
    pub max_timestamp: i64,
}

pub(crate) fn rewrite_path(dir: &Path, base: u64) -> PathBuf {
    let mut p = segment_path(dir, base).into_os_string();
    p.push(REWRITE_SUFFIX);
    PathBuf::from(p)
}

/// A rewrite in progress. Dropping it without `Log::commit_rewrite` abandons it (the partial file
/// is removed).
pub struct SegmentRewrite {
    pub(crate) original: SealedSegment,
    /// The new segment, as it will be once swapped in (its `path` is the final name); taken by
    /// the swap.
    pub(crate) seg: Option<Segment>,
    pub(crate) temp_path: PathBuf,
    /// Bytes not yet written, starting at file position `written` (block aligned).
    pending: Vec<u8>,
    written: u64,
    interval: u64,
    pub(crate) batches: u64,
    pub(crate) finished: bool,
}

impl std::fmt::Debug for SegmentRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentRewrite").field("original", &self.original).field("batches", &self.batches).finish()
    }
}

impl SegmentRewrite {
    pub(crate) async fn create(dir: &Path, original: SealedSegment, interval: u64) -> Result<SegmentRewrite> {
        let temp_path = rewrite_path(dir, original.base);
        let file: DmaFile = Segment::open_file(&temp_path, true).await?;
        file.truncate(0).await.ctx(&temp_path, "truncating rewrite file")?;
        let seg = Segment::create_from(original.base, segment_path(dir, original.base), file);
        Ok(SegmentRewrite {
            original,
            seg: Some(seg),
            temp_path,
            pending: Vec::with_capacity(REWRITE_BUFFER_BYTES),
            written: 0,
            interval,
            batches: 0,
            finished: false,
        })
    }

    /// The segment being rewritten.
    pub fn original(&self) -> SealedSegment {
        self.original
    }

    /// Batches kept so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Bytes of frames kept so far.
    pub fn size_bytes(&self) -> u64 {
        self.seg.as_ref().map_or(0, |s| s.size)
    }

    fn seg(&mut self) -> &mut Segment {
        self.seg.as_mut().expect("the new segment is only taken by the swap")
    }

    /// Keeps a batch occupying offsets `[base_offset, base_offset + record_count)`: after the last
    /// kept batch and inside the original segment's range.
    pub async fn push(
        &mut self,
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        payload: &[u8],
    ) -> Result<()> {
        assert!(!self.finished, "push after finish");
        if record_count == 0 || payload.len() > crate::batch::MAX_PAYLOAD_LEN {
            return Err(Error::InvalidBatch(format!(
                "rewrite of segment {}: batch at {base_offset} with {record_count} offsets and {} bytes",
                self.original.base,
                payload.len()
            )));
        }
        let h = BatchHeader::new(base_offset, record_count, max_timestamp, payload);
        let from = self.seg().next_offset;
        if base_offset < from || h.next_offset() > self.original.end_offset {
            return Err(Error::InvalidBatch(format!(
                "rewrite of segment {} [{from}, {}): batch [{base_offset}, {}) is out of order or outside the segment",
                self.original.base,
                self.original.end_offset,
                h.next_offset()
            )));
        }
        let interval = self.interval;
        let seg = self.seg();
        let position = seg.size;
        seg.on_frame(&h, position, interval);
        self.pending.extend_from_slice(&h.encode());
        self.pending.extend_from_slice(payload);
        self.batches += 1;
        if self.pending.len() >= REWRITE_BUFFER_BYTES {
            let whole = align_down(self.pending.len() as u64) as usize;
            self.write_pending(whole).await?;
        }
        Ok(())
    }

    /// Writes the first `len` (block-aligned, possibly zero-padded) pending bytes.
    async fn write_pending(&mut self, len: usize) -> Result<()> {
        debug_assert_eq!(len as u64 % crate::segment::BLOCK, 0);
        if len == 0 {
            return Ok(());
        }
        let file = self.seg().held_file().clone();
        let mut buf = file.alloc_dma_buffer(len);
        let have = len.min(self.pending.len());
        buf.as_bytes_mut()[..have].copy_from_slice(&self.pending[..have]);
        buf.as_bytes_mut()[have..].fill(0);
        let n = file.write_at(buf, self.written).await.ctx(&self.temp_path, "writing rewritten segment")?;
        if n < len {
            return Err(Error::DiskFull {
                path: self.temp_path.clone(),
                op: "writing rewritten segment (short write)",
            });
        }
        self.pending.drain(..have);
        self.written += len as u64;
        Ok(())
    }

    /// Writes what is buffered, trims the padding and syncs: the file is complete on disk.
    pub(crate) async fn finish(&mut self) -> Result<()> {
        assert!(!self.finished, "finish twice");
        let len = align_up(self.pending.len() as u64) as usize;
        self.write_pending(len).await?;
        assert!(self.pending.is_empty());
        let (file, size) = (self.seg().held_file().clone(), self.seg().size);
        file.truncate(size).await.ctx(&self.temp_path, "trimming rewritten segment")?;
        file.fdatasync().await.ctx(&self.temp_path, "syncing rewritten segment")?;
        self.finished = true;
        // The writer swaps it in; the time range of the original stays (retention by time and the
        // time index judge a segment by when its data was written, which compaction does not change).
        let (original_max, end) = (self.original.max_timestamp, self.original.end_offset);
        let seg = self.seg();
        seg.max_timestamp = seg.max_timestamp.max(original_max);
        seg.next_offset = end;
        Ok(())
    }
}

impl Drop for SegmentRewrite {
    fn drop(&mut self) {
        // Abandoned or refused: the original stays. After a swap the name is gone (renamed) and
        // this fails harmlessly. Best effort: a leftover is removed at the next open.
        let _ = std::fs::remove_file(&self.temp_path);
    }
}
