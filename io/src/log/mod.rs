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
//!
//! `append` is the append path (offsets assigned in call order, back-pressure), `writer` holds
//! the writer task, `control` the operations that change which offsets the log holds
//! (truncation, retention, DeleteRecords, the swap of a compaction rewrite), `read` the read path.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use glommio::io::ReadResult;
use tracing::warn;

use crate::batch::BatchHeader;
use crate::cache::TailCache;
use crate::config::LogConfig;
use crate::epochs::EpochCache;
use crate::error::{Error, IoResultExt, Result};
use crate::recovery::{recover, RecoveryReport};
use crate::rewrite::{SealedSegment, SegmentRewrite};
use crate::segment::Segment;

mod append;
mod control;
mod read;
mod writer;

use writer::writer_loop;

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
}

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
