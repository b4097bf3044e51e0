//! Control operations that change which offsets a log holds, run by the writer in queue order:
//! truncation (replication divergence), restart at an offset, retention, DeleteRecords and the
//! swap of a compaction rewrite.

use super::writer::{poison, write_checkpoint};
use std::rc::Rc;

use tracing::{debug, warn};

use super::Shared;
use crate::batch::{BatchHeader, HEADER_LEN};
use crate::checkpoint::LogCheckpoint;
use crate::epochs::EpochCache;
use crate::error::{Error, GlommioResultExt, IoResultExt, Result};
use crate::framed_file::sync_dir;
use crate::recovery::{delete_segment_files, remove_index_files};
use crate::rewrite::SegmentRewrite;
use crate::segment::{align_down, Segment};

pub(super) async fn truncate(sh: &Rc<Shared>, offset: u64) -> Result<()> {
    let (next, start) = {
        let st = sh.state.borrow();
        (st.next_offset, st.log_start_offset)
    };
    if offset >= next {
        // Nothing to cut, but an epoch starting at the log end goes (Kafka's `truncateTo`: a
        // leader that recorded its epoch and appended nothing in it must not keep claiming it).
        return update_epochs(sh, |e| e.truncate_from_end(next)).await;
    }
    if offset <= start {
        return truncate_fully(sh, offset).await;
    }
    // The segment holding `offset` becomes the active one: it holds its file open from here on.
    let (cut_base, held, cut_path, inode) = {
        let st = sh.state.borrow();
        let (_, seg) = st.segments.range(..=offset).next_back().expect("offset is inside the log");
        (seg.base, seg.file.clone(), seg.path.clone(), seg.inode)
    };
    if held.is_none() {
        let file = Segment::reopen_for_writing(&cut_path, inode).await?;
        if let Some(seg) = sh.state.borrow_mut().segments.get_mut(&cut_base) {
            seg.hold(file);
        }
    }
    // Find the segment holding `offset` and the position of the batch containing it.
    let (base, file, path, from_pos, size, kept_max_ts) = {
        let st = sh.state.borrow();
        let (_, seg) = st.segments.range(..=offset).next_back().expect("offset is inside the log");
        let rel = (offset - seg.base) as u32;
        let (entry_rel, pos) = seg.index.lookup_offset(rel);
        // Upper bound of the timestamps before the walk's start: time entries hold the maximum so
        // far including their own batch, which the cut may remove (an upper bound is safe for
        // retention and time lookup; an underestimate would not be).
        let kept = seg.index.times.iter().filter(|&&(_, r)| r <= entry_rel).map(|&(t, _)| t).max().unwrap_or(i64::MIN);
        (seg.base, seg.held_file().clone(), seg.path.clone(), u64::from(pos), seg.size, kept)
    };
    // Walk headers from the index entry to the batch containing `offset`.
    let mut pos = from_pos;
    let mut max_ts = kept_max_ts;
    let mut cut_offset = None;
    while pos < size {
        let hb = Segment::read_exact(&file, &path, pos, HEADER_LEN).await?;
        let h = BatchHeader::decode(&hb).ok_or_else(|| Error::CorruptSegment {
            path: path.clone(),
            position: pos,
            reason: "bad frame magic while truncating".into(),
        })?;
        if h.last_offset() >= offset {
            cut_offset = Some(h.base_offset);
            break;
        }
        max_ts = max_ts.max(h.max_timestamp);
        pos += h.frame_len() as u64;
    }
    // A straddling batch goes whole; when `offset` is in a gap left by compaction, the log ends
    // at `offset`, before the next batch.
    let cut_offset = cut_offset.map_or(offset, |b| b.min(offset));
    let doomed: Vec<u64> = sh.state.borrow().segments.range(base + 1..).map(|(b, _)| *b).collect();
    file.truncate(pos).await.ctx(&path, "truncating segment")?;
    if let Err(e) = file.fdatasync().await.ctx(&path, "syncing truncated segment") {
        poison(sh, &e);
        return Err(e);
    }
    {
        let mut st = sh.state.borrow_mut();
        for b in &doomed {
            st.segments.remove(b);
        }
        let seg = st.segments.get_mut(&base).expect("cut segment");
        seg.size = pos;
        seg.next_offset = cut_offset;
        seg.index.truncate((cut_offset - base) as u32, pos);
        seg.max_timestamp = if pos == 0 { i64::MIN } else { max_ts };
        if pos == 0 {
            seg.first_timestamp = None;
        }
        st.next_offset = cut_offset;
        st.assigned_offset = cut_offset;
        st.cache.truncate(cut_offset);
        st.dirty_since = None;
    }
    for b in &doomed {
        delete_segment_files(&sh.dir, *b).await?;
    }
    let tail = {
        let mut st = sh.state.borrow_mut();
        let seg = st.segments.get_mut(&base).expect("cut segment");
        std::mem::take(&mut seg.tail)
    };
    drop(tail);
    reload_tail(sh, base).await?;
    sync_dir(&sh.dir).await?;
    // The recovery point must not stay above the new end.
    write_checkpoint(sh).await?;
    update_epochs(sh, |e| e.truncate_from_end(cut_offset)).await?;
    warn!(dir = %sh.dir.display(), offset, new_end = cut_offset, "log truncated");
    Ok(())
}

/// Applies a truncation to the epoch cache and persists it when it changed. The cache follows the
/// log even if the write fails (the next open trims the file against the log again).
async fn update_epochs(sh: &Shared, change: impl FnOnce(&mut EpochCache) -> bool) -> Result<()> {
    let snapshot = {
        let mut epochs = sh.epochs.borrow_mut();
        if !change(&mut epochs) {
            return Ok(());
        }
        epochs.clone()
    };
    snapshot.persist(&sh.dir).await
}

async fn reload_tail(sh: &Rc<Shared>, base: u64) -> Result<()> {
    // Take the segment out of the map while loading so no RefCell borrow spans the read.
    let (file, path, size) = {
        let st = sh.state.borrow();
        let seg = &st.segments[&base];
        (seg.held_file().clone(), seg.path.clone(), seg.size)
    };
    let start = align_down(size);
    let len = (size - start) as usize;
    let tail = if len > 0 { Segment::read_exact(&file, &path, start, len).await?[..len].to_vec() } else { Vec::new() };
    if let Some(seg) = sh.state.borrow_mut().segments.get_mut(&base) {
        seg.tail = tail;
    }
    Ok(())
}

pub(super) async fn truncate_fully(sh: &Rc<Shared>, offset: u64) -> Result<()> {
    let doomed: Vec<u64> = sh.state.borrow().segments.keys().copied().collect();
    // Write the new start first: a crash in between leaves a log that starts at `offset`.
    LogCheckpoint { recovery_offset: offset, recovery_segment: offset, recovery_position: 0, log_start_offset: offset }
        .write(&sh.dir)
        .await?;
    for b in &doomed {
        delete_segment_files(&sh.dir, *b).await?;
    }
    // Kafka clears the epoch cache when it empties a log; a crash before this write leaves
    // entries that the next open trims to the new start.
    update_epochs(sh, EpochCache::clear).await?;
    let seg = Segment::create(&sh.dir, offset).await?;
    sync_dir(&sh.dir).await?;
    let mut st = sh.state.borrow_mut();
    st.segments.clear();
    st.segments.insert(offset, seg);
    st.next_offset = offset;
    st.assigned_offset = offset;
    st.log_start_offset = offset;
    st.cache.clear();
    st.dirty_since = None;
    Ok(())
}

pub(super) async fn retention(sh: &Rc<Shared>, now_ms: i64) -> Result<u64> {
    let doomed: Vec<u64> = {
        let st = sh.state.borrow();
        let mut total: u64 = st.segments.values().map(|s| s.size).sum();
        let active = *st.segments.keys().next_back().expect("active segment");
        let mut doomed = Vec::new();
        for (b, seg) in st.segments.iter() {
            if *b == active {
                break;
            }
            let by_time =
                sh.config.get().retention_ms.is_some_and(|ms| seg.max_timestamp < now_ms.saturating_sub(ms as i64));
            let by_size = sh.config.get().retention_bytes.is_some_and(|limit| total.saturating_sub(seg.size) >= limit);
            if !(by_time || by_size) {
                break;
            }
            total -= seg.size;
            doomed.push(*b);
        }
        doomed
    };
    if doomed.is_empty() {
        return Ok(0);
    }
    let new_start = {
        let st = sh.state.borrow();
        let last = doomed[doomed.len() - 1];
        st.segments[&last].next_offset.max(st.log_start_offset)
    };
    // Persist the new log start before deleting files.
    {
        let mut st = sh.state.borrow_mut();
        st.log_start_offset = new_start;
        st.cache.drop_before(new_start);
        for b in &doomed {
            st.segments.remove(b);
        }
    }
    write_checkpoint(sh).await?;
    update_epochs(sh, |e| e.truncate_from_start(new_start)).await?;
    for b in &doomed {
        delete_segment_files(&sh.dir, *b).await?;
    }
    sync_dir(&sh.dir).await?;
    debug!(dir = %sh.dir.display(), deleted = doomed.len(), new_start, "retention deleted segments");
    Ok(doomed.len() as u64)
}

/// Moves the log start to `offset` (Kafka DeleteRecords): persisted first, then segments wholly
/// below it are deleted. Returns the new log start.
pub(super) async fn advance_start(sh: &Rc<Shared>, offset: u64) -> Result<u64> {
    let (start, next) = {
        let st = sh.state.borrow();
        (st.log_start_offset, st.next_offset)
    };
    if offset > next {
        return Err(Error::OffsetOutOfRange { offset, log_start: start, next_offset: next });
    }
    if offset <= start {
        return Ok(start);
    }
    let doomed: Vec<u64> = {
        let mut st = sh.state.borrow_mut();
        let active = *st.segments.keys().next_back().expect("active segment");
        let doomed: Vec<u64> =
            st.segments.iter().filter(|(b, s)| **b != active && s.next_offset <= offset).map(|(b, _)| *b).collect();
        st.log_start_offset = offset;
        st.cache.drop_before(offset);
        for b in &doomed {
            st.segments.remove(b);
        }
        doomed
    };
    write_checkpoint(sh).await?;
    update_epochs(sh, |e| e.truncate_from_start(offset)).await?;
    for b in &doomed {
        delete_segment_files(&sh.dir, *b).await?;
    }
    if !doomed.is_empty() {
        sync_dir(&sh.dir).await?;
    }
    Ok(offset)
}

/// Swaps a finished rewrite in for its original (see `rewrite.rs`). 1 when swapped, 0 when the
/// original is gone or changed (the rewrite is dropped, which removes its file).
pub(super) async fn replace_segment(sh: &Rc<Shared>, mut rw: SegmentRewrite) -> Result<u64> {
    let base = rw.original.base;
    let (is_first, prev) = {
        let st = sh.state.borrow();
        let active = *st.segments.keys().next_back().expect("active segment");
        let current = st.segments.get(&base).filter(|s| s.base != active);
        let unchanged =
            current.is_some_and(|s| s.next_offset == rw.original.end_offset && s.size == rw.original.size_bytes);
        if !unchanged {
            return Ok(0);
        }
        (st.segments.keys().next() == Some(&base), st.segments.range(..base).next_back().map(|(b, _)| *b))
    };
    // Readers between the rename below and the swap in the state must go on reading the original:
    // it holds its file open until it is swapped out (a reader opening it by path meanwhile would
    // find the new inode, and retries).
    let original = sh.state.borrow().segments[&base].file_ref();
    let original = original.open().await?;
    if let Some(s) = sh.state.borrow_mut().segments.get_mut(&base) {
        s.hold(original);
    }
    let mut seg = rw.seg.take().expect("a finished rewrite holds its segment");
    // Never leave the old index next to the new file: a crash from here on rebuilds it instead.
    remove_index_files(&sh.dir, base)?;
    let emptied = seg.is_empty() && !is_first;
    if emptied {
        // Nothing left: drop the file; the previous segment's range reaches over this one.
        delete_segment_files(&sh.dir, base).await?;
    } else {
        std::fs::rename(&rw.temp_path, &seg.path).ctx(&seg.path, "swapping in rewritten segment")?;
    }
    sync_dir(&sh.dir).await?;
    if !emptied {
        seg.index.persist(&sh.dir, base, &seg.coverage()).await?;
    }
    let mut st = sh.state.borrow_mut();
    let old = if emptied {
        let old = st.segments.remove(&base);
        let prev = prev.expect("a segment that is not the first has a predecessor");
        st.segments.get_mut(&prev).expect("predecessor").next_offset = rw.original.end_offset;
        old
    } else {
        seg.first_timestamp = st.segments.get(&base).and_then(|s| s.first_timestamp);
        // Sealed like any other: its file (the one just written) goes to the cache.
        seg.seal();
        st.segments.insert(base, seg)
    };
    // The tail cache may still hold batches the rewrite dropped.
    st.cache.drop_before(rw.original.end_offset);
    drop(st);
    if let Some(file) = old.and_then(|mut old| old.file.take()) {
        // Closed once the last reader holding the old file is done with it.
        glommio::spawn_local(async move {
            let _ = file.close_rc().await;
        })
        .detach();
    }
    debug!(dir = %sh.dir.display(), base, batches = rw.batches, emptied, "segment rewritten");
    Ok(1)
}
