//! The writer task of a log: it drains the queue, packs appends into one aligned DMA write per
//! group (group commit under `Durability::Always`), rolls segments, syncs and checkpoints, and runs
//! the control operations in queue order with the appends.

use super::control::{advance_start, replace_segment, retention, truncate, truncate_fully};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use tracing::{debug, error, warn};

use super::{Appended, Control, Request, Shared};
use crate::batch::{BatchHeader, HEADER_LEN};
use crate::checkpoint::LogCheckpoint;
use crate::config::Durability;
use crate::error::{Error, GlommioResultExt, Result};
use crate::framed_file::sync_dir;
use crate::segment::{align_down, align_up, Segment};

struct Pending {
    header: BatchHeader,
    explicit: bool,
    payload: Bytes,
    reply: oneshot::Sender<Result<Appended>>,
}

pub(super) async fn writer_loop(sh: Rc<Shared>) {
    loop {
        let reqs: Vec<Request> = sh.queue.borrow_mut().drain(..).collect();
        if reqs.is_empty() {
            if sh.state.borrow().closed {
                break;
            }
            let listener = sh.work.listen();
            if !sh.queue.borrow().is_empty() || sh.state.borrow().closed {
                continue;
            }
            let (sync_at, checkpoint_at) = deadlines(&sh);
            match sync_at.into_iter().chain(checkpoint_at).min() {
                None => listener.await,
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    let woke = glommio::timer::timeout(wait, async {
                        listener.await;
                        Ok(())
                    })
                    .await;
                    if woke.is_err() {
                        if sync_at.is_some_and(|t| t <= Instant::now()) {
                            let _ = sync_active(&sh).await;
                        }
                        periodic_checkpoint(&sh).await;
                    }
                }
            }
            continue;
        }
        sh.room.notify(usize::MAX);
        process(&sh, reqs).await;
        periodic_checkpoint(&sh).await;
    }
    if !sh.state.borrow().abandoned {
        // Best effort on drop without close(): make written data durable.
        let _ = sync_active(&sh).await;
    }
    // Close segment files explicitly (a dropped glommio file is only closed on a later reactor
    // cycle, which never comes if the executor ends), then release the directory lock, so a closed
    // log can be reopened at once, even while old handles are still around.
    let segments = std::mem::take(&mut sh.state.borrow_mut().segments);
    for (_, mut seg) in segments {
        for file in [seg.file.take(), crate::file_cache::take(seg.key)].into_iter().flatten() {
            if let Err(e) = file.close_rc().await {
                warn!(path = %seg.path.display(), error = %e, "closing segment file");
            }
        }
    }
    sh.lock.borrow_mut().take();
    sh.writer_exited.set(true);
    sh.exited.notify(usize::MAX);
    debug!(dir = %sh.dir.display(), "log writer exited");
}

/// When the writer must wake up on its own: to sync under `Durability::Interval`, and to move the
/// recovery point forward.
fn deadlines(sh: &Shared) -> (Option<Instant>, Option<Instant>) {
    let st = sh.state.borrow();
    let sync_at = match (sh.config.get().durability, st.dirty_since) {
        (Durability::Interval(d), Some(t)) => Some(t + d),
        _ => None,
    };
    let checkpoint_at = match sh.config.get().checkpoint_interval_ms {
        Some(ms) if st.next_offset > st.checkpointed_offset && st.poisoned.is_none() => {
            Some(st.last_checkpoint + Duration::from_millis(ms))
        }
        _ => None,
    };
    (sync_at, checkpoint_at)
}

async fn periodic_checkpoint(sh: &Rc<Shared>) {
    let (_, at) = deadlines(sh);
    if at.is_some_and(|t| t <= Instant::now()) {
        if let Err(e) = write_checkpoint(sh).await {
            warn!(dir = %sh.dir.display(), error = %e, "periodic checkpoint failed");
            // Try again one interval later rather than on every wake-up.
            sh.state.borrow_mut().last_checkpoint = Instant::now();
        }
    }
}

async fn process(sh: &Rc<Shared>, reqs: Vec<Request>) {
    let mut group: Vec<Pending> = Vec::new();
    let mut group_bytes = 0usize;
    let mut done: Vec<(oneshot::Sender<Result<Appended>>, Appended)> = Vec::new();
    let mut failed: Option<Error> = None;
    for req in reqs {
        if let Some(e) = &failed {
            fail_request(req, e.clone());
            continue;
        }
        match req {
            Request::Append { header_base, explicit, record_count, max_timestamp, payload, crc, reply } => {
                if let Some(cause) = sh.state.borrow().poisoned.clone() {
                    let _ = reply.send(Err(Error::Poisoned { path: sh.dir.clone(), cause }));
                    continue;
                }
                let header = match crc {
                    Some(c) => {
                        BatchHeader::with_payload_crc(header_base, record_count, max_timestamp, payload.len(), c)
                    }
                    None => BatchHeader::new(header_base, record_count, max_timestamp, &payload),
                };
                let frame = header.frame_len();
                let roll = needs_roll(sh, group_bytes, &header);
                if (roll || group_bytes + frame > sh.config.get().max_write_bytes) && !group.is_empty() {
                    if let Err(e) = write_group(sh, std::mem::take(&mut group), &mut done).await {
                        failed = Some(fail_group(sh, e));
                    }
                    group_bytes = 0;
                }
                if failed.is_none() && roll {
                    if let Err(e) = roll_active(sh).await {
                        failed = Some(fail_group(sh, e));
                    }
                }
                if let Some(e) = &failed {
                    let _ = reply.send(Err(e.clone()));
                    continue;
                }
                group_bytes += frame;
                group.push(Pending { header, explicit, payload, reply });
            }
            Request::Control { op, reply } => {
                if !group.is_empty() {
                    if let Err(e) = write_group(sh, std::mem::take(&mut group), &mut done).await {
                        failed = Some(fail_group(sh, e));
                    }
                    group_bytes = 0;
                }
                if let Some(e) = &failed {
                    let _ = reply.send(Err(e.clone()));
                    continue;
                }
                // Appends written before a control op are acknowledged under their policy first.
                finish(sh, &mut done).await;
                let res = run_control(sh, op).await;
                let _ = reply.send(res);
            }
        }
    }
    if !group.is_empty() {
        if let Err(e) = write_group(sh, group, &mut done).await {
            fail_group(sh, e);
        }
    }
    finish(sh, &mut done).await;
}

fn fail_request(req: Request, e: Error) {
    match req {
        Request::Append { reply, .. } => drop(reply.send(Err(e))),
        Request::Control { reply, .. } => drop(reply.send(Err(e))),
    }
}

/// A write failed: every append not yet written (this group, the rest of this drain and anything
/// queued since) fails, and offsets restart after the last written batch.
fn fail_group(sh: &Shared, e: Error) -> Error {
    error!(dir = %sh.dir.display(), error = %e, "log write failed");
    let queued: Vec<Request> = sh.queue.borrow_mut().drain(..).collect();
    for r in queued {
        fail_request(r, e.clone());
    }
    let mut st = sh.state.borrow_mut();
    st.assigned_offset = st.next_offset;
    e
}

/// Applies the durability policy to `done`, then resolves them.
async fn finish(sh: &Rc<Shared>, done: &mut Vec<(oneshot::Sender<Result<Appended>>, Appended)>) {
    if done.is_empty() {
        return;
    }
    let mut result = Ok(());
    match sh.config.get().durability {
        Durability::Always => result = sync_active(sh).await,
        Durability::Interval(d) => {
            if sh.state.borrow().dirty_since.is_some_and(|t| t.elapsed() >= d) {
                result = sync_active(sh).await;
            }
        }
        Durability::Never => {}
    }
    for (reply, a) in done.drain(..) {
        let _ = reply.send(result.clone().map(|()| a));
    }
}

fn needs_roll(sh: &Shared, group_bytes: usize, h: &BatchHeader) -> bool {
    let st = sh.state.borrow();
    let Some(active) = st.segments.values().next_back() else { return false };
    let size = active.size + group_bytes as u64;
    if size == 0 {
        return false;
    }
    if size + h.frame_len() as u64 > sh.config.get().segment_bytes {
        return true;
    }
    // Offsets relative to the segment base must fit the index's u32.
    if h.last_offset() - active.base > u64::from(u32::MAX) {
        return true;
    }
    match (sh.config.get().segment_ms, active.first_timestamp) {
        (Some(ms), Some(first)) => h.max_timestamp.saturating_sub(first) > ms as i64,
        _ => false,
    }
}

/// Writes `group` to the active segment with one DMA write: the partial last block is rewritten
/// with the new frames after it, padded with zeros to the block size.
async fn write_group(
    sh: &Rc<Shared>,
    group: Vec<Pending>,
    done: &mut Vec<(oneshot::Sender<Result<Appended>>, Appended)>,
) -> Result<()> {
    let (file, path, start, tail) = {
        let st = sh.state.borrow();
        let seg = st.segments.values().next_back().expect("a log always has an active segment");
        assert_eq!(seg.tail.len() as u64, seg.size - align_down(seg.size), "tail mirrors the partial block");
        (seg.held_file().clone(), seg.path.clone(), align_down(seg.size), seg.tail.clone())
    };
    let total = tail.len() + group.iter().map(|p| p.header.frame_len()).sum::<usize>();
    let padded = align_up(total as u64) as usize;
    let mut buf = file.alloc_dma_buffer(padded);
    let new_tail = {
        let bytes = buf.as_bytes_mut();
        let mut at = tail.len();
        bytes[..at].copy_from_slice(&tail);
        for p in &group {
            bytes[at..at + HEADER_LEN].copy_from_slice(&p.header.encode());
            at += HEADER_LEN;
            bytes[at..at + p.payload.len()].copy_from_slice(&p.payload);
            at += p.payload.len();
        }
        bytes[at..].fill(0);
        bytes[align_down(total as u64) as usize..total].to_vec()
    };
    let began = Instant::now();
    let written = file.write_at(buf, start).await.ctx(&path, "writing");
    crate::latency::record_write(began.elapsed());
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            for p in group {
                let _ = p.reply.send(Err(e.clone()));
            }
            return Err(e);
        }
    };
    if written < padded {
        // A short O_DIRECT write means the device ran out of space (or was cut off) mid-way.
        let e = Error::DiskFull { path: path.clone(), op: "writing (short write)" };
        for p in group {
            let _ = p.reply.send(Err(e.clone()));
        }
        return Err(e);
    }
    let mut stats = sh.stats.get();
    stats.writes += 1;
    stats.batches_written += group.len() as u64;
    stats.bytes_written += (total - tail.len()) as u64;
    sh.stats.set(stats);
    let mut st = sh.state.borrow_mut();
    let interval = sh.config.get().index_interval_bytes;
    let st = &mut *st;
    let seg = st.segments.values_mut().next_back().expect("active segment");
    for p in group {
        let pos = seg.size;
        if p.explicit {
            assert!(p.header.base_offset >= seg.next_offset, "appended offsets increase");
        } else {
            assert_eq!(p.header.base_offset, seg.next_offset, "appended offsets are dense");
        }
        seg.on_frame(&p.header, pos, interval);
        st.cache.push(p.header, p.payload);
        done.push((p.reply, Appended { base_offset: p.header.base_offset, last_offset: p.header.last_offset() }));
    }
    seg.tail = new_tail;
    st.next_offset = seg.next_offset;
    if st.dirty_since.is_none() {
        st.dirty_since = Some(Instant::now());
    }
    Ok(())
}

/// fdatasyncs the active segment if anything is unsynced. A failed sync poisons the log.
async fn sync_active(sh: &Rc<Shared>) -> Result<()> {
    let (file, path) = {
        let st = sh.state.borrow();
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { path: sh.dir.clone(), cause: cause.clone() });
        }
        if st.dirty_since.is_none() {
            return Ok(());
        }
        let seg = st.segments.values().next_back().expect("active segment");
        (seg.held_file().clone(), seg.path.clone())
    };
    let since = Instant::now();
    let mut stats = sh.stats.get();
    stats.syncs += 1;
    sh.stats.set(stats);
    let synced = file.fdatasync().await.ctx(&path, "syncing");
    crate::latency::record_sync(since.elapsed());
    match synced {
        Ok(()) => {
            let mut st = sh.state.borrow_mut();
            // Appends written during the sync are not covered by it.
            if st.dirty_since.is_some_and(|t| t <= since) {
                st.dirty_since = None;
            }
            Ok(())
        }
        Err(e) => {
            poison(sh, &e);
            Err(e)
        }
    }
}

pub(super) fn poison(sh: &Shared, e: &Error) {
    error!(dir = %sh.dir.display(), error = %e, "log poisoned: refusing writes until reopened");
    sh.state.borrow_mut().poisoned = Some(e.to_string());
    sh.room.notify(usize::MAX);
}

/// Seals the active segment (sync, trim padding, persist index) and starts a new one.
async fn roll_active(sh: &Rc<Shared>) -> Result<()> {
    let (file, path, base, size, next, index, cover) = {
        let st = sh.state.borrow();
        let seg = st.segments.values().next_back().expect("active segment");
        if seg.is_empty() {
            return Ok(());
        }
        (
            seg.held_file().clone(),
            seg.path.clone(),
            seg.base,
            seg.size,
            seg.next_offset,
            seg.index.clone(),
            seg.coverage(),
        )
    };
    let sealed = async {
        file.truncate(size).await.ctx(&path, "trimming sealed segment")?;
        file.fdatasync().await.ctx(&path, "syncing sealed segment")
    };
    if let Err(e) = sealed.await {
        poison(sh, &e);
        return Err(e);
    }
    index.persist(&sh.dir, base, &cover).await?;
    let new = Segment::create(&sh.dir, next).await?;
    sync_dir(&sh.dir).await?;
    let log_start = {
        let mut st = sh.state.borrow_mut();
        if let Some(old) = st.segments.get_mut(&base) {
            old.seal();
        }
        st.segments.insert(next, new);
        st.dirty_since = None;
        st.log_start_offset
    };
    let ckpt = LogCheckpoint {
        recovery_offset: next,
        recovery_segment: next,
        recovery_position: 0,
        log_start_offset: log_start,
    };
    ckpt.write(&sh.dir).await?;
    note_checkpoint(sh, next);
    debug!(dir = %sh.dir.display(), base = next, "rolled segment");
    Ok(())
}

pub(super) async fn write_checkpoint(sh: &Rc<Shared>) -> Result<()> {
    sync_active(sh).await?;
    let (base, index, cover, log_start) = {
        let st = sh.state.borrow();
        let seg = st.segments.values().next_back().expect("active segment");
        (seg.base, seg.index.clone(), seg.coverage(), st.log_start_offset)
    };
    index.persist(&sh.dir, base, &cover).await?;
    LogCheckpoint {
        recovery_offset: cover.next_offset,
        recovery_segment: base,
        recovery_position: cover.size,
        log_start_offset: log_start,
    }
    .write(&sh.dir)
    .await?;
    note_checkpoint(sh, cover.next_offset);
    Ok(())
}

fn note_checkpoint(sh: &Shared, recovery_offset: u64) {
    let mut st = sh.state.borrow_mut();
    st.checkpointed_offset = recovery_offset;
    st.last_checkpoint = Instant::now();
}

async fn run_control(sh: &Rc<Shared>, op: Control) -> Result<u64> {
    if let Some(cause) = sh.state.borrow().poisoned.clone() {
        if !matches!(op, Control::Close | Control::Abandon) {
            return Err(Error::Poisoned { path: sh.dir.clone(), cause });
        }
    }
    match op {
        Control::Roll => roll_active(sh).await.map(|()| 0),
        Control::Flush => sync_active(sh).await.map(|()| 0),
        Control::Checkpoint => write_checkpoint(sh).await.map(|()| 0),
        Control::Abandon => {
            let mut st = sh.state.borrow_mut();
            st.closed = true;
            st.abandoned = true;
            Ok(0)
        }
        Control::Close => {
            let res = if sh.state.borrow().poisoned.is_some() { Ok(()) } else { write_checkpoint(sh).await };
            sh.state.borrow_mut().closed = true;
            res.map(|()| 0)
        }
        Control::Truncate(offset) => truncate(sh, offset).await.map(|()| 0),
        Control::Restart(offset) => truncate_fully(sh, offset).await.map(|()| 0),
        Control::AssignEpoch(epoch, start) => {
            sh.queued_assigns.set(sh.queued_assigns.get().saturating_sub(1));
            let mut next = sh.epochs.borrow().clone();
            if !next.assign(epoch, start)? {
                return Ok(0);
            }
            // Visible only once durable: a failed write leaves the cache as it was.
            next.persist(&sh.dir).await?;
            *sh.epochs.borrow_mut() = next;
            Ok(1)
        }
        Control::Retention(now) => retention(sh, now).await,
        Control::AdvanceStart(offset) => advance_start(sh, offset).await,
        Control::Replace(rw) => replace_segment(sh, *rw).await,
    }
}
