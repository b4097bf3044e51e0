//! One segment file: `<base_offset:020>.log`, a sequence of frames written through a glommio DMA
//! (O_DIRECT) file. Owns the segment's in-memory indexes and, while it is the active segment, the
//! bytes of its partial last block (rewritten in place by the next write).

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions, ReadResult};

use crate::batch::{check_frame, BatchHeader, FrameProblem, HEADER_LEN};
use crate::error::{Error, GlommioResultExt, Result};
use crate::file_cache::{self, FileKey};
use crate::index::{segment_path, Coverage, SegmentIndex};

/// O_DIRECT block size used for every write (a multiple of any device's logical block size).
pub(crate) const BLOCK: u64 = 4096;
/// Bytes read per I/O while scanning a segment during recovery.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(BLOCK - 1)
}

pub(crate) fn align_up(v: u64) -> u64 {
    (v + BLOCK - 1) & !(BLOCK - 1)
}

/// A segment and what the log knows about it.
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    /// Open while this is the active segment (or a rewrite being written, or a segment recovery is
    /// scanning); `None` once sealed: reads then go through the per-core cache (`file_cache`).
    pub file: Option<Rc<DmaFile>>,
    /// This segment's entry in the per-core cache of sealed segment files.
    pub key: FileKey,
    /// Inode of the file: a file found at `path` with another one is not this segment's (a
    /// compaction rewrite renamed a new file over it).
    pub inode: u64,
    /// Bytes of whole frames: everything below is readable, nothing at or above is.
    pub size: u64,
    /// Offset following the last batch (== base when empty).
    pub next_offset: u64,
    /// Largest batch timestamp (i64::MIN when empty).
    pub max_timestamp: i64,
    /// Timestamp of the first batch, for age-based rolling.
    pub first_timestamp: Option<i64>,
    pub index: SegmentIndex,
    /// Bytes [align_down(size), size): the partial last block (active segment only).
    pub tail: Vec<u8>,
}

impl Segment {
    pub(crate) async fn open_file(path: &Path, create: bool) -> Result<DmaFile> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .ctx(path, if create { "creating segment" } else { "opening segment" })
    }

    /// Creates an empty segment file.
    pub(crate) async fn create(dir: &Path, base: u64) -> Result<Segment> {
        let path = segment_path(dir, base);
        let file = Self::open_file(&path, true).await?;
        // A leftover file with this name (e.g. from a truncation cut short) must not leak old bytes.
        file.truncate(0).await.ctx(&path, "truncating new segment")?;
        Ok(Self::create_from(base, path, file))
    }

    /// An empty in-memory segment over an open file (recovery fills it in by scanning).
    pub(crate) fn create_from(base: u64, path: PathBuf, file: DmaFile) -> Segment {
        Segment {
            base,
            path,
            inode: file.inode(),
            file: Some(Rc::new(file)),
            key: file_cache::new_key(),
            size: 0,
            next_offset: base,
            max_timestamp: i64::MIN,
            first_timestamp: None,
            index: SegmentIndex::default(),
            tail: Vec::new(),
        }
    }

    /// The file of a segment that holds it open: the active one, a rewrite, or one being recovered.
    pub(crate) fn held_file(&self) -> &Rc<DmaFile> {
        self.file.as_ref().expect("the active segment (or one being written or recovered) holds its file open")
    }

    /// What a reader needs to get this segment's file without borrowing the log's state.
    pub(crate) fn file_ref(&self) -> SegmentFileRef {
        SegmentFileRef { key: self.key, path: self.path.clone(), inode: self.inode, held: self.file.clone() }
    }

    /// This segment stops being the active one: its file moves to the per-core cache (the next
    /// reader is likely near), which closes it when it needs the room or it stays unused.
    pub(crate) fn seal(&mut self) {
        self.tail = Vec::new();
        if let Some(file) = self.file.take() {
            file_cache::adopt(self.key, file);
        }
    }

    /// Opens a sealed segment's file for writing (truncation or recovery makes it the active one
    /// again), checking that the file at `path` is still the segment's (`inode`).
    pub(crate) async fn reopen_for_writing(path: &Path, inode: u64) -> Result<Rc<DmaFile>> {
        let file = Rc::new(Self::open_file(path, false).await?);
        if file.inode() != inode {
            let _ = file.close_rc().await;
            return Err(Error::SegmentFileReplaced { path: path.to_path_buf() });
        }
        Ok(file)
    }

    /// Holds `file` open as the active segment's (the cache's copy, if any, goes).
    pub(crate) fn hold(&mut self, file: Rc<DmaFile>) {
        drop(file_cache::take(self.key));
        self.file = Some(file);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub(crate) fn coverage(&self) -> Coverage {
        Coverage { size: self.size, next_offset: self.next_offset, max_timestamp: self.max_timestamp }
    }

    /// Updates size, offsets, timestamps and indexes for a frame just written at `position`.
    pub(crate) fn on_frame(&mut self, h: &BatchHeader, position: u64, interval: u64) {
        assert_eq!(position, self.size, "frames are contiguous");
        // Dense for appends (the writer asserts it); a compacted segment may skip offsets.
        assert!(h.base_offset >= self.next_offset, "offsets are strictly increasing");
        let rel = u32::try_from(h.base_offset - self.base).unwrap_or(u32::MAX);
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        self.first_timestamp.get_or_insert(h.max_timestamp);
        self.index.on_batch(rel, position as u32, h.frame_len() as u64, self.max_timestamp, interval);
        self.size += h.frame_len() as u64;
        self.next_offset = h.next_offset();
    }

    /// Reloads `tail` (the partial last block) from disk after recovery or truncation.
    pub(crate) async fn load_tail(&mut self) -> Result<()> {
        let start = align_down(self.size);
        let len = (self.size - start) as usize;
        self.tail.clear();
        if len > 0 {
            let r = self.held_file().read_at(start, len).await.ctx(&self.path, "reading tail block")?;
            if r.len() != len {
                return Err(Error::CorruptSegment {
                    path: self.path.clone(),
                    position: start,
                    reason: format!("tail block read returned {} of {len} bytes", r.len()),
                });
            }
            self.tail.extend_from_slice(&r);
        }
        Ok(())
    }

    /// Reads `len` bytes at `pos`, requiring all of them (the caller stays below `size`).
    pub(crate) async fn read_exact(file: &DmaFile, path: &Path, pos: u64, len: usize) -> Result<ReadResult> {
        let r = file.read_at(pos, len).await.ctx(path, "reading segment")?;
        if r.len() < len {
            return Err(Error::CorruptSegment {
                path: path.to_path_buf(),
                position: pos,
                reason: format!("short read: {} of {len} bytes", r.len()),
            });
        }
        Ok(r)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Gone from the log (deleted, truncated away, replaced, closed): its cached file goes too.
        // A read in flight keeps its own reference.
        drop(file_cache::take(self.key));
    }
}

/// A segment's file as a reader sees it: held open by the segment, or to get from the cache.
pub(crate) struct SegmentFileRef {
    pub key: FileKey,
    pub path: PathBuf,
    inode: u64,
    held: Option<Rc<DmaFile>>,
}

impl SegmentFileRef {
    /// The open file: the segment's own, or the cached one (opened now if needed).
    pub(crate) async fn open(&self) -> Result<Rc<DmaFile>> {
        match &self.held {
            Some(f) => Ok(f.clone()),
            None => file_cache::get(self.key, &self.path, self.inode).await,
        }
    }
}

/// What a recovery scan found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last valid frame.
    pub end: u64,
    /// Why the scan stopped before the end of the file, when it found damage (not for a clean end).
    pub problem: Option<String>,
    /// Batches verified.
    pub batches: u64,
}

/// Verifies frames (CRC32C, dense offsets) from `seg.size` on, appending them to `seg`, until the
/// end of the file or the first bad frame. `file_size` is the size of the file on disk.
pub(crate) async fn scan(seg: &mut Segment, file_size: u64, interval: u64) -> Result<ScanOutcome> {
    let mut batches = 0;
    loop {
        let pos = seg.size;
        if pos >= file_size {
            return Ok(ScanOutcome { end: pos, problem: None, batches });
        }
        let want = (file_size - pos).min(SCAN_CHUNK_BYTES as u64) as usize;
        let chunk = seg.held_file().read_at(pos, want).await.ctx(&seg.path, "scanning segment")?;
        let mut at = 0usize;
        let mut progressed = false;
        loop {
            let abs = pos + at as u64;
            let rest_of_file = file_size - abs;
            match check_frame(&chunk[at..], seg.next_offset) {
                Ok(h) => {
                    seg.on_frame(&h, abs, interval);
                    at += h.frame_len();
                    batches += 1;
                    progressed = true;
                }
                Err(FrameProblem::Torn) if rest_of_file > (chunk.len() - at) as u64 => {
                    // Only the chunk is short; read on from this frame.
                    if !progressed {
                        let need = BatchHeader::decode(&chunk[at..]).map(|h| h.frame_len()).unwrap_or(HEADER_LEN);
                        if need as u64 > rest_of_file {
                            return Ok(torn(abs, batches));
                        }
                        let big = Segment::read_exact(seg.held_file(), &seg.path, abs, need).await?;
                        match check_frame(&big, seg.next_offset) {
                            Ok(h) => {
                                seg.on_frame(&h, abs, interval);
                                batches += 1;
                            }
                            Err(p) => return Ok(stop(abs, p, batches)),
                        }
                    }
                    break;
                }
                Err(FrameProblem::CleanEnd) => {
                    let garbage = tail_has_data(seg, abs, file_size).await?;
                    let problem = garbage.then(|| format!("non-zero bytes after the end of data at position {abs}"));
                    return Ok(ScanOutcome { end: abs, problem, batches });
                }
                Err(p) => return Ok(stop(abs, p, batches)),
            }
            if at >= chunk.len() {
                break;
            }
        }
    }
}

fn torn(abs: u64, batches: u64) -> ScanOutcome {
    ScanOutcome { end: abs, problem: Some(format!("torn frame at position {abs}")), batches }
}

fn stop(abs: u64, p: FrameProblem, batches: u64) -> ScanOutcome {
    match p {
        FrameProblem::CleanEnd => ScanOutcome { end: abs, problem: None, batches },
        FrameProblem::Torn => torn(abs, batches),
        FrameProblem::Corrupt(r) => ScanOutcome { end: abs, problem: Some(format!("{r} at position {abs}")), batches },
    }
}

/// True when any byte in [from, file_size) is non-zero (zero padding of the last block is normal).
async fn tail_has_data(seg: &Segment, from: u64, file_size: u64) -> Result<bool> {
    let mut pos = from;
    while pos < file_size {
        let want = (file_size - pos).min(SCAN_CHUNK_BYTES as u64) as usize;
        let r = seg.held_file().read_at(pos, want).await.ctx(&seg.path, "scanning segment tail")?;
        if r.is_empty() {
            break;
        }
        if r.iter().any(|&b| b != 0) {
            return Ok(true);
        }
        pos += r.len() as u64;
    }
    Ok(false)
}
