//! The partition log: an ordered set of segments with one writer task per log.
//!
//! Appends are assigned offsets synchronously, in call order, and queued; the writer task drains the
//! queue, packs every queued batch into one aligned DMA buffer (rewriting the partial last block in
//! place), issues one write, then — under `Durability::Always` — one fdatasync for all of them
//! (group commit: everything that queued up while a write or sync was in flight shares the next).
//! An append resolves only after its bytes were written (and synced, per policy). State visible to
//! readers changes only after a write completed, so a reader never sees a half-written batch.
//! Truncation, roll, retention, checkpoint and close go through the same queue, so they are ordered
//! with appends. Everything here runs on one glommio executor: `Log` is `!Send` by design.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use glommio::io::ReadResult;
use tracing::{debug, error, warn};

use crate::batch::{BatchHeader, HEADER_LEN};
use crate::cache::TailCache;
use crate::checkpoint::LogCheckpoint;
use crate::config::{Durability, LogConfig};
use crate::epochs::EpochCache;
use crate::error::{Error, GlommioResultExt, IoResultExt, Result};
use crate::framed_file::sync_dir;
use crate::recovery::{delete_segment_files, recover, remove_index_files, RecoveryReport};
use crate::rewrite::{SealedSegment, SegmentRewrite};
use crate::segment::{align_down, align_up, Segment};

/// A batch to append.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// Offsets the batch occupies (>= 1).
    pub record_count: u32,
    /// Largest record timestamp in ms.
    pub max_timestamp: i64,
    /// Opaque bytes to store.
    pub payload: Bytes,
}

/// What an `append_or_reject` builder decides once it knows the base offset.
pub enum Admission<R> {
    /// Append this payload (with its CRC32C when the caller has it).
    Append(Bytes, Option<u32>),
    /// Do not append; the reason goes back to the caller.
    Reject(R),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset assigned to the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Counters of one log since it was opened (for metrics and for tests of group commit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches written.
    pub batches_written: u64,
    /// DMA writes issued (one per group of batches).
    pub writes: u64,
    /// fdatasync calls on segment files.
    pub syncs: u64,
    /// Bytes of frames written (excluding rewrites of the partial last block).
    pub bytes_written: u64,
}

/// Payload of a batch returned by `read`: a ref-counted view into either the tail cache or a DMA
/// read buffer. No copy is made on the read path.
#[derive(Clone, Debug)]
pub enum BatchBytes {
    /// From the in-memory tail cache.
    Memory(Bytes),
    /// A slice of a DMA read buffer.
    Disk(ReadResult),
}

impl std::ops::Deref for BatchBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BatchBytes::Memory(b) => b,
            BatchBytes::Disk(r) => r,
        }
    }
}

/// One stored batch.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    /// Its frame header (offsets, count, timestamp, CRC).
    pub header: BatchHeader,
    /// The payload exactly as appended.
    pub payload: BatchBytes,
}

enum Control {
    Roll,
    /// Swap a finished rewrite in for the segment it was made from.
    Replace(Box<SegmentRewrite>),
    Truncate(u64),
    /// Empty the log and restart it at an offset (which may be past its end).
    Restart(u64),
    Retention(i64),
    AdvanceStart(u64),
    Checkpoint,
    /// Record a leader epoch's start offset (persisted before it is visible).
    AssignEpoch(i32, u64),
    Flush,
    Close,
    Abandon,
}

enum Request {
    Append {
        header_base: u64,
        /// Placed by `append_at` (may skip offsets) rather than at the next offset.
        explicit: bool,
        record_count: u32,
        max_timestamp: i64,
        payload: Bytes,
        crc: Option<u32>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Control {
        op: Control,
        reply: oneshot::Sender<Result<u64>>,
    },
}

struct State {
    segments: BTreeMap<u64, Segment>,
    /// Offset after the last written batch (what readers can see).
    next_offset: u64,
    /// Offset the next queued append gets.
    assigned_offset: u64,
    log_start_offset: u64,
    cache: TailCache,
    /// Set when a write or sync failed in a way that leaves the disk state unknown.
    poisoned: Option<String>,
    /// An offset-changing operation is queued: appends wait so they get offsets after it.
    exclusive: bool,
    /// Written but not yet fdatasync'ed since this instant.
    dirty_since: Option<Instant>,
    /// Recovery point of the last checkpoint, and when it was written.
    checkpointed_offset: u64,
    last_checkpoint: Instant,
    closed: bool,
    /// Stopped by `abandon`: no final sync, no checkpoint.
    abandoned: bool,
}

struct Shared {
    dir: PathBuf,
    config: Cell<LogConfig>,
    state: RefCell<State>,
    queue: RefCell<VecDeque<Request>>,
    /// Wakes the writer.
    work: Event,
    /// Wakes appenders waiting for queue room or for an exclusive operation to finish.
    room: Event,
    writer_exited: Cell<bool>,
    exited: Event,
    stats: Cell<LogStats>,
    /// The directory lock file (flock'ed), held while the writer runs.
    lock: RefCell<Option<std::fs::File>>,
    report: RecoveryReport,
    /// Leader epochs; changed and persisted only by the writer (and by `open` before it starts),
    /// so writes of the epoch file never race.
    epochs: RefCell<EpochCache>,
    /// `assign_epoch` calls queued and not yet run by the writer; while there are any, a new call
    /// cannot be judged a no-op against the current cache and must queue too.
    queued_assigns: Cell<u64>,
}

/// Holds appends back while an offset-changing operation (truncation) is queued or running.
struct ExclusiveGuard<'a>(&'a Shared);

impl<'a> ExclusiveGuard<'a> {
    fn new(sh: &'a Shared) -> Self {
        sh.state.borrow_mut().exclusive = true;
        ExclusiveGuard(sh)
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        self.0.state.borrow_mut().exclusive = false;
        self.0.room.notify(usize::MAX);
    }
}

struct Handle(Rc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        // Last handle gone: let the writer finish what is queued and exit.
        self.0.state.borrow_mut().closed = true;
        self.0.work.notify(usize::MAX);
    }
}

/// A partition log. Cheap to clone (all clones share one writer). Must be used on the glommio
/// executor that opened it.
#[derive(Clone)]
pub struct Log {
    handle: Rc<Handle>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.shared().dir).finish()
    }
}

impl Log {
    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// Opens (creating if needed) the log in `dir`, recovering it, and starts its writer task on
    /// the current glommio executor.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).ctx(&dir, "creating log directory")?;
        // glommio's directory operations misbehave on relative paths.
        let dir = std::path::absolute(&dir).ctx(&dir, "resolving log directory")?;
        crate::dio::prepare_dir(&dir).await?;
        let lock = lock_dir(&dir)?;
        // Before recovery opens segment files: a damaged epoch file fails the open with nothing to
        // close.
        let mut epochs = EpochCache::load(&dir).await?;
        let rec = recover(&dir, &config).await?;
        let next = rec.segments.values().next_back().map(|s| s.next_offset).unwrap_or(0);
        // As Kafka does at load: entries past the recovered end (written before a crash cut the
        // tail, or epochs that never got data) and below the log start do not describe this log.
        let cut_end = epochs.truncate_from_end(next);
        let cut_start = epochs.truncate_from_start(rec.log_start_offset);
        if cut_end || cut_start {
            // Persisted now: a stale entry left in the file would come back after the log grows
            // past it.
            epochs.persist(&dir).await?;
        }
        let state = State {
            segments: rec.segments,
            next_offset: next,
            assigned_offset: next,
            log_start_offset: rec.log_start_offset,
            cache: TailCache::new(config.tail_cache_bytes),
            poisoned: None,
            exclusive: false,
            dirty_since: None,
            checkpointed_offset: next,
            last_checkpoint: Instant::now(),
            closed: false,
            abandoned: false,
        };
        let shared = Rc::new(Shared {
            dir,
            config: Cell::new(config),
            state: RefCell::new(state),
            queue: RefCell::new(VecDeque::new()),
            work: Event::new(),
            room: Event::new(),
            writer_exited: Cell::new(false),
            exited: Event::new(),
            stats: Cell::new(LogStats::default()),
            lock: RefCell::new(Some(lock)),
            report: rec.report,
            epochs: RefCell::new(epochs),
            queued_assigns: Cell::new(0),
        });
        let verified = shared.report.batches_verified > 0 || shared.report.truncation.is_some();
        glommio::spawn_local(writer_loop(shared.clone())).detach();
        let log = Log { handle: Rc::new(Handle(shared)) };
        if verified {
            // Move the recovery point past what was just verified so the next open is fast. Only an
            // optimisation: on a full disk the log must still open and serve what it holds.
            if let Err(e) = log.checkpoint().await {
                if !e.is_disk_full() {
                    return Err(e);
                }
                warn!(dir = %log.dir().display(), error = %e, "could not checkpoint after recovery");
            }
        }
        Ok(log)
    }

    /// What recovery found and did when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared().report
    }

    /// Changes the configuration of the open log (Kafka's dynamic topic configs): retention, roll,
    /// durability and limits apply from the next operation; the tail cache keeps its size.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.shared().config.set(config);
        // A policy change may move the writer's next deadline.
        self.shared().work.notify(1);
        Ok(())
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.shared().config.get()
    }

    /// The leader-epoch cache (a copy; it is small).
    pub fn epochs(&self) -> EpochCache {
        self.shared().epochs.borrow().clone()
    }

    /// The newest leader epoch recorded in this log.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.shared().epochs.borrow().latest_epoch()
    }

    /// Where `requested` ended in this log, against the current log end (see
    /// [`EpochCache::end_offset_for`]): what a leader answers to OffsetsForLeaderEpoch.
    pub fn epoch_end_offset(&self, requested: i32) -> Option<(i32, u64)> {
        let leo = self.next_offset();
        self.shared().epochs.borrow().end_offset_for(requested, leo)
    }

    /// Records that leader epoch `epoch` starts at `start_offset` (Kafka's rules: see
    /// [`EpochCache::assign`]), ordered with queued appends and durable when it returns. Returns
    /// whether the cache changed. Truncation, retention and DeleteRecords keep the cache in step
    /// with the log by themselves.
    pub async fn assign_epoch(&self, epoch: i32, start_offset: u64) -> Result<bool> {
        if epoch < 0 {
            return Err(Error::InvalidEpoch { epoch });
        }
        let sh = self.shared();
        // Fast path for the common call (a follower assigning every fetched batch's epoch): the
        // latest epoch again changes nothing, and costs no trip through the writer (which would
        // break a group commit).
        if sh.queued_assigns.get() == 0 && !sh.epochs.borrow().assign_changes(epoch, start_offset) {
            return Ok(false);
        }
        // Decremented by the writer when it runs the op; a count left behind by a failed log only
        // disables the fast path.
        sh.queued_assigns.set(sh.queued_assigns.get() + 1);
        self.control(Control::AssignEpoch(epoch, start_offset)).await.map(|n| n == 1)
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.shared().stats.get()
    }

    /// Directory of this log.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// Offset after the last written batch (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.shared().state.borrow().next_offset
    }

    /// First readable offset.
    pub fn log_start_offset(&self) -> u64 {
        self.shared().state.borrow().log_start_offset
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared().state.borrow().segments.values().map(|s| s.size).sum()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.shared().state.borrow().segments.keys().copied().collect()
    }

    /// Appends a batch; resolves once written (and synced under `Durability::Always`).
    pub async fn append(&self, batch: AppendBatch) -> Result<Appended> {
        let AppendBatch { record_count, max_timestamp, payload } = batch;
        self.append_with(record_count, max_timestamp, move |_| (payload, None)).await
    }

    /// Appends a batch built once its base offset is known: `build(base_offset)` runs synchronously
    /// when the offset is assigned and returns the payload (e.g. with the offset patched in) and,
    /// optionally, the payload's CRC32C if the caller already computed it (saves one pass).
    pub async fn append_with(
        &self,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> (Bytes, Option<u32>),
    ) -> Result<Appended> {
        let admitted = self
            .append_or_reject::<std::convert::Infallible>(record_count, max_timestamp, |base| {
                let (payload, crc) = build(base);
                Admission::Append(payload, crc)
            })
            .await?;
        Ok(admitted.unwrap_or_else(|never| match never {}))
    }

    /// Like [`Log::append_with`], but `build` may refuse the batch after seeing its base offset
    /// (e.g. a duplicate or out-of-order producer sequence): then nothing is queued, no offset is
    /// used, and the refusal is returned as `Ok(Err(reason))`. `build` runs synchronously with the
    /// offset assignment, so a check it makes and the append it admits cannot be interleaved with
    /// another append.
    pub async fn append_or_reject<R>(
        &self,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> Admission<R>,
    ) -> Result<std::result::Result<Appended, R>> {
        self.append_inner(None, record_count, max_timestamp, build).await
    }

    /// Appends a batch at `base_offset` instead of the next offset: a follower copying its leader's
    /// batches keeps the leader's offsets, which skip what the leader's compaction removed.
    /// `base_offset` below the offset the next append would get is refused (`InvalidBatch`).
    pub async fn append_at(&self, base_offset: u64, batch: AppendBatch) -> Result<Appended> {
        let AppendBatch { record_count, max_timestamp, payload } = batch;
        let admitted = self
            .append_inner::<std::convert::Infallible>(Some(base_offset), record_count, max_timestamp, |_| {
                Admission::Append(payload, None)
            })
            .await?;
        Ok(admitted.unwrap_or_else(|never| match never {}))
    }

    async fn append_inner<R>(
        &self,
        at: Option<u64>,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> Admission<R>,
    ) -> Result<std::result::Result<Appended, R>> {
        if record_count == 0 {
            return Err(Error::InvalidBatch("record_count must be >= 1".into()));
        }
        self.wait_for_room(false).await?;
        let sh = self.shared();
        // No await from here until the request is queued: offsets follow queue order.
        let next = sh.state.borrow().assigned_offset;
        let base = at.unwrap_or(next);
        if base < next || base.checked_add(u64::from(record_count)).is_none() {
            return Err(Error::InvalidBatch(format!(
                "append at offset {base} with {record_count} offsets: the log's next offset is {next}"
            )));
        }
        let (payload, crc) = match build(base) {
            Admission::Append(p, c) => (p, c),
            Admission::Reject(r) => return Ok(Err(r)),
        };
        if payload.len() > sh.config.get().max_batch_bytes {
            return Err(Error::BatchTooLarge { size: payload.len(), limit: sh.config.get().max_batch_bytes });
        }
        sh.state.borrow_mut().assigned_offset = base + u64::from(record_count);
        let (reply, rx) = oneshot::channel();
        sh.queue.borrow_mut().push_back(Request::Append {
            header_base: base,
            explicit: at.is_some(),
            record_count,
            max_timestamp,
            payload,
            crc,
            reply,
        });
        sh.work.notify(1);
        rx.await.map_err(|_| Error::Closed { path: sh.dir.clone() })?.map(Ok)
    }

    /// `Ok(true)` when an append (or, with `exclusive`, a control op) may be queued now.
    fn room_now(&self, exclusive: bool) -> Result<bool> {
        let sh = self.shared();
        let st = sh.state.borrow();
        if st.closed {
            return Err(Error::Closed { path: sh.dir.clone() });
        }
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { path: sh.dir.clone(), cause: cause.clone() });
        }
        Ok(!st.exclusive && (exclusive || sh.queue.borrow().len() < sh.config.get().max_pending_appends))
    }

    async fn wait_for_room(&self, exclusive: bool) -> Result<()> {
        while !self.room_now(exclusive)? {
            let listener = self.shared().room.listen();
            if !self.room_now(exclusive)? {
                listener.await;
            }
        }
        Ok(())
    }

    async fn control(&self, op: Control) -> Result<u64> {
        let exclusive = matches!(op, Control::Truncate(_) | Control::Restart(_));
        let close = matches!(op, Control::Close | Control::Abandon);
        if close {
            if self.shared().state.borrow().closed {
                return Ok(0);
            }
        } else {
            self.wait_for_room(true).await?;
        }
        let sh = self.shared();
        // Cleared when the op is done, even if this future is dropped before that.
        let _exclusive = exclusive.then(|| ExclusiveGuard::new(sh));
        let (reply, rx) = oneshot::channel();
        sh.queue.borrow_mut().push_back(Request::Control { op, reply });
        if close {
            sh.state.borrow_mut().closed = true;
        }
        sh.work.notify(1);
        rx.await.map_err(|_| Error::Closed { path: sh.dir.clone() })?
    }

    /// Starts a new segment now (no-op when the active one is empty).
    pub async fn roll(&self) -> Result<()> {
        self.control(Control::Roll).await.map(drop)
    }

    /// Removes every batch holding an offset >= `offset` (replication divergence). A batch that
    /// straddles `offset` is removed whole. Below the log start, the log is emptied and restarts at
    /// `offset`. At or past the log end only leader epochs starting at the log end are removed.
    /// Durable when it returns.
    pub async fn truncate_to(&self, offset: u64) -> Result<()> {
        self.control(Control::Truncate(offset)).await.map(drop)
    }

    /// Empties the log and restarts it at `offset`, wherever that is (a follower whose whole log
    /// is below its leader's log start starts over there). Durable when it returns.
    pub async fn restart_at(&self, offset: u64) -> Result<()> {
        self.control(Control::Restart(offset)).await.map(drop)
    }

    /// Deletes whole old segments beyond `retention_ms` (by their newest timestamp, against
    /// `now_ms`) or `retention_bytes`; never the active segment. Returns the number deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<u64> {
        self.control(Control::Retention(now_ms)).await
    }

    /// Makes `offset` the first readable offset (Kafka DeleteRecords), durably; segments wholly
    /// below it are deleted. Offsets above the log end are out of range. Returns the log start.
    pub async fn delete_records_before(&self, offset: u64) -> Result<u64> {
        self.control(Control::AdvanceStart(offset)).await
    }

    /// fdatasyncs, persists the active segment's index and writes the recovery checkpoint.
    pub async fn checkpoint(&self) -> Result<()> {
        self.control(Control::Checkpoint).await.map(drop)
    }

    /// The sealed segments (every one but the active), oldest first.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        let st = self.shared().state.borrow();
        let mut v: Vec<SealedSegment> = st
            .segments
            .values()
            .map(|s| SealedSegment {
                base: s.base,
                end_offset: s.next_offset,
                size_bytes: s.size,
                max_timestamp: s.max_timestamp,
            })
            .collect();
        v.pop();
        v
    }

    /// Starts rewriting sealed segment `base` (log compaction): push the batches to keep, then
    /// `commit_rewrite`. Appends, reads and other operations go on meanwhile.
    pub async fn rewrite_segment(&self, base: u64) -> Result<SegmentRewrite> {
        let original = self
            .sealed_segments()
            .into_iter()
            .find(|s| s.base == base)
            .ok_or_else(|| Error::InvalidBatch(format!("no sealed segment with base offset {base}")))?;
        SegmentRewrite::create(self.dir(), original, self.shared().config.get().index_interval_bytes).await
    }

    /// Completes a rewrite: syncs the new file and swaps it in for the original, atomically and
    /// durably. Returns false (and discards the rewrite) when the original changed meanwhile
    /// (deleted by retention or DeleteRecords).
    pub async fn commit_rewrite(&self, mut rewrite: SegmentRewrite) -> Result<bool> {
        rewrite.finish().await?;
        self.control(Control::Replace(Box::new(rewrite))).await.map(|n| n == 1)
    }

    /// fdatasyncs everything written so far.
    pub async fn flush(&self) -> Result<()> {
        self.control(Control::Flush).await.map(drop)
    }

    /// Stops the writer the way a crash would leave the files: queued appends are finished (written
    /// and synced per policy), but there is no final sync and no checkpoint, so the next open
    /// verifies everything after the last recovery point. For crash tests and benchmarks.
    pub async fn abandon(self) -> Result<()> {
        let res = self.control(Control::Abandon).await.map(drop);
        self.closed().await;
        res
    }

    /// Finishes queued appends, syncs, checkpoints and stops the writer; returns once it has
    /// stopped. Later calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let res = self.control(Control::Close).await.map(drop);
        self.closed().await;
        res
    }

    /// Reads whole batches starting with the first one holding an offset >= `offset` (the one
    /// containing it, unless compaction removed it): the first batch always (even if larger than
    /// `max_bytes`), then following batches of the same segment while their payloads fit in
    /// `max_bytes`. Empty at the log end; `OffsetOutOfRange` outside `[start, end]`.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>> {
        let mut offset = offset;
        let mut replaced = 0;
        loop {
            let (out, segment_end) = match self.read_one_segment(offset, max_bytes).await {
                // The sealed segment was deleted or rewritten while its file was being opened: the
                // log's state has changed since, so the next attempt sees what replaced it (or
                // that the offset is now below the log start).
                Err(Error::SegmentFileReplaced { .. }) if replaced < MAX_REPLACED_FILE_RETRIES => {
                    replaced += 1;
                    continue;
                }
                other => other?,
            };
            match segment_end {
                // Everything from `offset` to the end of a sealed segment was compacted away: the
                // next batch is in a later segment. Terminates: `offset` < `end` (asserted below).
                Some(end) if out.is_empty() => offset = end,
                _ => return Ok(out),
            }
        }
    }

    /// Reads from the segment holding `offset`: the batches, and — when the segment is sealed and
    /// the read found nothing — the offset where the segment's range ends.
    async fn read_one_segment(&self, offset: u64, max_bytes: usize) -> Result<(Vec<StoredBatch>, Option<u64>)> {
        let sh = self.shared();
        if sh.writer_exited.get() {
            return Err(Error::Closed { path: sh.dir.clone() });
        }
        let (file, path, start_pos, limit, seg_base, sealed_end) = {
            let st = sh.state.borrow();
            if offset < st.log_start_offset || offset > st.next_offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    next_offset: st.next_offset,
                });
            }
            if offset == st.next_offset {
                return Ok((Vec::new(), None));
            }
            if st.cache.first_offset().is_some_and(|f| f <= offset) {
                let out = st
                    .cache
                    .read(offset, max_bytes)
                    .into_iter()
                    .map(|(header, p)| StoredBatch { header, payload: BatchBytes::Memory(p) })
                    .collect();
                return Ok((out, None));
            }
            let Some((_, seg)) = st.segments.range(..=offset).next_back() else {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    next_offset: st.next_offset,
                });
            };
            assert!(offset < seg.next_offset, "segments cover the offsets up to the next one");
            let rel = u32::try_from(offset - seg.base).unwrap_or(u32::MAX);
            let (_, pos) = seg.index.lookup_offset(rel);
            let sealed_end = (seg.next_offset < st.next_offset).then_some(seg.next_offset);
            (seg.file_ref(), seg.path.clone(), u64::from(pos), seg.size, seg.base, sealed_end)
        };
        if start_pos >= limit {
            // An empty sealed segment (everything in it was compacted away).
            return Ok((Vec::new(), sealed_end));
        }
        // Held until the read ends: an eviction meanwhile only drops the cache's reference.
        let key = file.key;
        let file = file.open().await?;
        if !sh.state.borrow().segments.get(&seg_base).is_some_and(|s| s.key == key) {
            // The segment went while its file was being opened (retention, truncation, a rewrite):
            // this read still uses it, but it must not stay in the cache.
            drop(crate::file_cache::take(key));
        }
        let interval = sh.config.get().index_interval_bytes as usize;
        let want = ((limit - start_pos) as usize).min(interval + max_bytes.max(1) + 2 * HEADER_LEN);
        let mut buf = Segment::read_exact(&file, &path, start_pos, want).await?;
        let mut buf_pos = start_pos;
        let mut at = 0usize;
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut expected = None::<u64>;
        while buf_pos + (at as u64) < limit {
            let abs = buf_pos + at as u64;
            // Skipped frames can end past the buffer (index entries are at most about two
            // intervals apart after a reopen or truncation, and a batch can be of any size).
            if buf.len().saturating_sub(at) < HEADER_LEN {
                if !out.is_empty() {
                    break;
                }
                buf = Segment::read_exact(&file, &path, abs, ((limit - abs) as usize).min(want)).await?;
                buf_pos = abs;
                at = 0;
            }
            let h = BatchHeader::decode(&buf[at..]).ok_or_else(|| Error::CorruptSegment {
                path: path.clone(),
                position: abs,
                reason: "bad frame magic on read".into(),
            })?;
            if expected.is_some_and(|e| h.base_offset < e) || h.base_offset < seg_base {
                return Err(Error::CorruptSegment {
                    path,
                    position: abs,
                    reason: "offsets not increasing on read".into(),
                });
            }
            expected = Some(h.next_offset());
            let frame = h.frame_len();
            if h.last_offset() < offset {
                at += frame;
                continue;
            }
            if !out.is_empty() && total + h.payload_len as usize > max_bytes {
                break;
            }
            if buf.len() - at < frame {
                if !out.is_empty() {
                    break;
                }
                // The first wanted batch is larger than what we read: read it (and what fits after).
                let more = ((limit - abs) as usize).min(frame.max(max_bytes + HEADER_LEN));
                buf = Segment::read_exact(&file, &path, abs, more).await?;
                buf_pos = abs;
                at = 0;
            }
            let payload = ReadResult::slice(&buf, at + HEADER_LEN, h.payload_len as usize).ok_or_else(|| {
                Error::CorruptSegment { path: path.clone(), position: abs, reason: "frame beyond read buffer".into() }
            })?;
            total += h.payload_len as usize;
            out.push(StoredBatch { header: h, payload: BatchBytes::Disk(payload) });
            at += frame;
            if at >= buf.len() {
                break;
            }
        }
        Ok((out, sealed_end))
    }

    /// The first batch whose max timestamp is >= `ts`: (its base offset, its max timestamp).
    /// `None` when every batch is older.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
        let start = self.log_start_offset();
        Ok(self.batch_for_timestamp(ts).await?.map(|b| (b.header.base_offset.max(start), b.header.max_timestamp)))
    }

    /// The first batch whose max timestamp is >= `ts`, whole (callers that understand the payload
    /// look inside it for the exact record without reading it again).
    pub async fn batch_for_timestamp(&self, ts: i64) -> Result<Option<StoredBatch>> {
        let (mut offset, end) = {
            let st = self.shared().state.borrow();
            let seg = st
                .segments
                .values()
                .find(|s| !s.is_empty() && s.max_timestamp >= ts && s.next_offset > st.log_start_offset);
            let Some(seg) = seg else { return Ok(None) };
            let rel = seg.index.lookup_time(ts);
            // A segment's max timestamp may be an upper bound (after truncation): when the first
            // candidate holds no match, the scan goes on into later segments.
            ((seg.base + u64::from(rel)).max(st.log_start_offset), st.next_offset)
        };
        while offset < end {
            // The time index lands within about an interval of the match: read that much at a time.
            let step = (2 * self.shared().config.get().index_interval_bytes) as usize;
            let batches = self.read(offset, step).await?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                if b.header.max_timestamp >= ts && b.header.last_offset() >= offset {
                    return Ok(Some(b));
                }
                offset = b.header.next_offset();
            }
        }
        Ok(None)
    }
}

/// Attempts of one read whose sealed segment file was deleted or replaced while being opened (each
/// one follows a change of the log's state, so more than a few in a row mean a damaged directory).
const MAX_REPLACED_FILE_RETRIES: u32 = 8;

/// File whose flock marks a log directory as open; a second `Log::open` of the same directory (in
/// this process or another) fails instead of running two writers over the same files.
pub const LOCK_FILE: &str = ".lock";

fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(&path, "opening lock file")?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::InUse { path: dir.to_path_buf() });
        }
        return Err(Error::from_io(&path, "locking log directory", &e));
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// The writer task.

struct Pending {
    header: BatchHeader,
    explicit: bool,
    payload: Bytes,
    reply: oneshot::Sender<Result<Appended>>,
}

async fn writer_loop(sh: Rc<Shared>) {
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

fn poison(sh: &Shared, e: &Error) {
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

async fn write_checkpoint(sh: &Rc<Shared>) -> Result<()> {
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

async fn truncate(sh: &Rc<Shared>, offset: u64) -> Result<()> {
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

async fn truncate_fully(sh: &Rc<Shared>, offset: u64) -> Result<()> {
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

async fn retention(sh: &Rc<Shared>, now_ms: i64) -> Result<u64> {
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
async fn advance_start(sh: &Rc<Shared>, offset: u64) -> Result<u64> {
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
async fn replace_segment(sh: &Rc<Shared>, mut rw: SegmentRewrite) -> Result<u64> {
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

impl Log {
    /// Waits until the writer task has exited (after `close`, or after the last clone was dropped).
    pub async fn closed(&self) {
        loop {
            if self.shared().writer_exited.get() {
                return;
            }
            let listener = self.shared().exited.listen();
            if self.shared().writer_exited.get() {
                return;
            }
            listener.await;
        }
    }
}
