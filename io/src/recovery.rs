//! Opening a log directory: find segments, trust what the checkpoint says is verified (loading its
//! indexes, rebuilding any that are missing or inconsistent), verify every batch after the recovery
//! point with CRC32C, and cut the log at the first bad or torn batch. Nothing before the cut changes.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::{info, warn};

use crate::checkpoint::LogCheckpoint;
use crate::config::LogConfig;
use crate::error::{Error, GlommioResultExt, IoResultExt, Result};
use crate::framed_file::sync_dir;
use crate::index::{offset_index_path, segment_path, time_index_path, SegmentIndex};
use crate::segment::{scan, Segment};

/// Where recovery cut the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Segment that was cut.
    pub segment_base: u64,
    /// File position of the cut (the first bad byte).
    pub position: u64,
    /// The log's next offset after the cut.
    pub next_offset: u64,
    /// What was wrong there.
    pub reason: String,
}

/// What `Log::open` found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Batches whose CRC32C was verified.
    pub batches_verified: u64,
    /// Where the log was cut, if it was.
    pub truncation: Option<Truncation>,
    /// Segments deleted because they followed the cut.
    pub segments_deleted: Vec<u64>,
    /// Segments whose index was rebuilt, with the reason.
    pub indexes_rebuilt: Vec<(u64, String)>,
    /// Why the checkpoint was ignored, if it was.
    pub checkpoint_problem: Option<String>,
}

pub(crate) struct Recovered {
    pub segments: BTreeMap<u64, Segment>,
    pub log_start_offset: u64,
    pub report: RecoveryReport,
}

fn parse_base(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

pub(crate) async fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let mut bases = Vec::new();
    let mut index_bases = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(dir, "listing log directory")? {
        let entry = entry.ctx(dir, "listing log directory")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(crate::rewrite::REWRITE_SUFFIX) {
            // Unfinished atomic writes and unfinished segment rewrites (the original is intact).
            std::fs::remove_file(entry.path()).ctx(&entry.path(), "removing leftover temp file")?;
        } else if let Some(b) = parse_base(&name, ".log") {
            bases.push(b);
        } else if let Some(b) = parse_base(&name, ".index").or_else(|| parse_base(&name, ".timeindex")) {
            index_bases.push(b);
        }
    }
    bases.sort_unstable();
    for b in index_bases {
        if bases.binary_search(&b).is_err() {
            remove_index_files(dir, b)?;
        }
    }

    let checkpoint = match LogCheckpoint::read(dir).await {
        Ok(c) => c,
        Err(e @ Error::CorruptCheckpoint { .. }) => {
            warn!(error = %e, "ignoring checkpoint: verifying the whole log");
            report.checkpoint_problem = Some(e.to_string());
            None
        }
        Err(e) => return Err(e),
    };

    let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
    let interval = config.index_interval_bytes;
    let mut cut = false;
    for (i, &base) in bases.iter().enumerate() {
        if cut {
            delete_segment_files(dir, base).await?;
            report.segments_deleted.push(base);
            continue;
        }
        if let Some(prev) = segments.values_mut().next_back() {
            if prev.next_offset < base {
                // The end of `prev` was compacted away: its range reaches up to this segment.
                prev.next_offset = base;
            } else if prev.next_offset > base {
                // Overlapping segments: everything from here is unreachable by increasing offsets.
                warn!(base, expected = prev.next_offset, "segment overlaps its predecessor: cutting");
                report.truncation = Some(Truncation {
                    segment_base: prev.base,
                    position: prev.size,
                    next_offset: prev.next_offset,
                    reason: format!("segment {base} does not start at {}", prev.next_offset),
                });
                cut = true;
                delete_segment_files(dir, base).await?;
                report.segments_deleted.push(base);
                continue;
            }
        }
        let path = segment_path(dir, base);
        let file = Segment::open_file(&path, false).await?;
        let file_size = file.file_size().await.ctx(&path, "sizing segment")?;
        let mut seg = Segment::create_from(base, path.clone(), file);
        let is_last = i + 1 == bases.len();

        // How much of this segment the checkpoint vouches for.
        let trusted_size = match checkpoint {
            Some(c) if base < c.recovery_segment => Some(u64::MAX),
            Some(c) if base == c.recovery_segment => Some(c.recovery_position),
            _ => None,
        };
        if let Some(trusted) = trusted_size {
            match SegmentIndex::load(dir, base).await {
                Ok(Some((idx, cover))) if cover.size <= trusted && cover.size <= file_size => {
                    seg.index = idx;
                    seg.size = cover.size;
                    seg.next_offset = cover.next_offset;
                    seg.max_timestamp = cover.max_timestamp;
                    if seg.size > 0 {
                        seg.first_timestamp = Some(first_timestamp(&seg).await?);
                    }
                }
                Ok(Some(_)) => report.indexes_rebuilt.push((base, "index covers more than the verified data".into())),
                Ok(None) => report.indexes_rebuilt.push((base, "index missing".into())),
                Err(e @ Error::CorruptIndex { .. }) => {
                    warn!(error = %e, "rebuilding index");
                    report.indexes_rebuilt.push((base, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        let before = seg.size;
        let outcome = scan(&mut seg, file_size, interval).await?;
        report.batches_verified += outcome.batches;
        assert_eq!(outcome.end, seg.size, "scan stops at a frame boundary");
        if let Some(reason) = outcome.problem {
            warn!(segment = base, position = outcome.end, %reason, "cutting the log at the first bad batch");
            seg.held_file().truncate(outcome.end).await.ctx(&path, "cutting segment")?;
            seg.held_file().fdatasync().await.ctx(&path, "syncing cut segment")?;
            report.truncation =
                Some(Truncation { segment_base: base, position: outcome.end, next_offset: seg.next_offset, reason });
            cut = true;
        }
        let rebuilt = report.indexes_rebuilt.last().is_some_and(|(b, _)| *b == base);
        if !is_last && !cut && (rebuilt || (trusted_size.is_none() && seg.size > before)) {
            // A sealed segment verified or re-indexed now: persist its index so the next open is fast.
            seg.index.persist(dir, base, &seg.coverage()).await?;
        }
        if !is_last && !cut {
            // Sealed: closed now, opened again through the per-core cache when read. A log with
            // thousands of segments must not hold thousands of descriptors after recovery.
            if let Some(f) = seg.file.take() {
                f.close_rc().await.ctx(&path, "closing recovered segment")?;
            }
        }
        segments.insert(base, seg);
    }
    if !report.segments_deleted.is_empty() {
        sync_dir(dir).await?;
    }

    let ckpt_start = checkpoint.map(|c| c.log_start_offset).unwrap_or(0);
    if segments.is_empty() {
        let seg = Segment::create(dir, ckpt_start).await?;
        sync_dir(dir).await?;
        segments.insert(ckpt_start, seg);
    }
    // The newest segment takes appends: it holds its file open (reopened when segments after it
    // were cut) and needs its partial last block in memory.
    if let Some(active) = segments.values_mut().next_back() {
        if active.file.is_none() {
            let file = Segment::reopen_for_writing(&active.path, active.inode).await?;
            active.hold(file);
        }
        active.load_tail().await?;
    }
    let first = segments.values().next().map(|s| s.base).unwrap_or(0);
    let next = segments.values().next_back().map(|s| s.next_offset).unwrap_or(0);
    let log_start_offset = ckpt_start.max(first).min(next);
    report.segments = segments.len();
    info!(dir = %dir.display(), segments = report.segments, next_offset = next, log_start_offset,
          batches_verified = report.batches_verified, cut = report.truncation.is_some(), "log recovered");
    Ok(Recovered { segments, log_start_offset, report })
}

async fn first_timestamp(seg: &Segment) -> Result<i64> {
    let r = Segment::read_exact(seg.held_file(), &seg.path, 0, crate::batch::HEADER_LEN).await?;
    crate::batch::BatchHeader::decode(&r).map(|h| h.max_timestamp).ok_or_else(|| Error::CorruptSegment {
        path: seg.path.clone(),
        position: 0,
        reason: "first frame header unreadable".into(),
    })
}

pub(crate) fn remove_index_files(dir: &Path, base: u64) -> Result<()> {
    for p in [offset_index_path(dir, base), time_index_path(dir, base)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::from_io(&p, "removing index", &e)),
        }
    }
    Ok(())
}

/// Removes a segment's data and index files (the caller syncs the directory).
pub(crate) async fn delete_segment_files(dir: &Path, base: u64) -> Result<()> {
    remove_index_files(dir, base)?;
    let p = segment_path(dir, base);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from_io(&p, "removing segment", &e)),
    }
}
