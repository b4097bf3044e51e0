//! The open files of sealed segments, per core: a cache with a hard cap, LRU eviction and an idle
//! close, so that a partition keeps only its active segment open however many segments it has
//! (a descriptor per segment for the life of the partition runs a broker with long retention out
//! of descriptors). A sealed segment is opened when a read needs it. The read holds its own `Rc` to
//! the file: eviction and idle close only drop the cache's reference, so a file is never closed
//! under a read in flight; it closes when that read ends.
//!
//! One cache per thread, i.e. per glommio executor (the engine runs one per core); the owner sets
//! its limits with [`set_segment_file_limits`] on each core. Knows nothing of logs or offsets:
//! entries are keyed by a number each `Segment` takes once (`FileKey`), and a file opened by path
//! is checked against the inode its segment had (a compaction rewrite renames a new file over it).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::io::DmaFile;

use crate::error::{Error, Result};

/// Default of [`SegmentFileLimits::max_open_files`].
pub const DEFAULT_MAX_OPEN_SEGMENT_FILES: usize = 512;
/// Default of [`SegmentFileLimits::idle_close_ms`].
pub const DEFAULT_SEGMENT_FILE_IDLE_CLOSE_MS: u64 = 60_000;
/// Looks for idle files this many times per idle period: a file closes between 1 and
/// 1 + 1/this idle periods after its last use.
const IDLE_SWEEPS_PER_PERIOD: u32 = 4;
/// Shortest pause between two looks for idle files.
const MIN_IDLE_SWEEP_MS: u64 = 5;

/// Bounds of one core's cache of sealed segment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFileLimits {
    /// Most sealed segment files the cache holds open (>= 1); opening one more closes the least
    /// recently used. Files only a read in flight still holds are not counted: they close when
    /// that read ends.
    pub max_open_files: usize,
    /// A cached file unused for this long is closed (>= 1).
    pub idle_close_ms: u64,
}

impl Default for SegmentFileLimits {
    fn default() -> Self {
        SegmentFileLimits {
            max_open_files: DEFAULT_MAX_OPEN_SEGMENT_FILES,
            idle_close_ms: DEFAULT_SEGMENT_FILE_IDLE_CLOSE_MS,
        }
    }
}

impl SegmentFileLimits {
    fn validate(&self) -> Result<()> {
        if self.max_open_files == 0 || self.idle_close_ms == 0 {
            return Err(Error::InvalidConfig(format!(
                "segment file cache: max_open_files ({}) and idle_close_ms ({}) must be >= 1",
                self.max_open_files, self.idle_close_ms
            )));
        }
        Ok(())
    }
}

/// Counters of this core's cache since its thread started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentFileStats {
    /// Files the cache holds open now.
    pub open_files: usize,
    /// Files opened for a read (cache misses).
    pub opens: u64,
    /// Reads served by a file already open.
    pub hits: u64,
    /// Files closed to make room (least recently used first).
    pub evictions: u64,
    /// Files closed after `idle_close_ms` unused.
    pub idle_closes: u64,
}

/// Sealed segment files held open by the caches of all cores of this process.
static OPEN_ON_ALL_CORES: AtomicUsize = AtomicUsize::new(0);

/// Sets this core's cache limits (call on each executor before opening logs; later calls apply at
/// once, closing the least recently used files beyond a lower cap).
pub fn set_segment_file_limits(limits: SegmentFileLimits) -> Result<()> {
    limits.validate()?;
    let evicted = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.limits = limits;
        c.evict_to(limits.max_open_files)
    });
    drop(evicted);
    Ok(())
}

/// This core's cache limits.
pub fn segment_file_limits() -> SegmentFileLimits {
    CACHE.with(|c| c.borrow().limits)
}

/// This core's cache counters.
pub fn segment_file_stats() -> SegmentFileStats {
    CACHE.with(|c| c.borrow().stats)
}

/// Sealed segment files the caches of every core hold open now (for a process-wide descriptor
/// budget).
pub fn open_segment_files_on_all_cores() -> usize {
    OPEN_ON_ALL_CORES.load(Ordering::Relaxed)
}

/// A segment's entry in the cache: unique per segment on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey(u64);

struct Entry {
    file: Rc<DmaFile>,
    /// Position in `lru`.
    tick: u64,
    used_at: Instant,
}

struct Cache {
    limits: SegmentFileLimits,
    /// The executor whose reactor the cached files belong to.
    executor: Option<usize>,
    entries: HashMap<FileKey, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, FileKey>,
    next_tick: u64,
    next_key: u64,
    stats: SegmentFileStats,
    /// The idle sweeper task runs (at most one per cache).
    sweeping: bool,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        limits: SegmentFileLimits::default(),
        executor: None,
        entries: HashMap::new(),
        lru: BTreeMap::new(),
        next_tick: 0,
        next_key: 0,
        stats: SegmentFileStats::default(),
        sweeping: false,
    });
}

impl Cache {
    fn check(&self) {
        assert!(self.entries.len() <= self.limits.max_open_files, "open segment files within the cap");
        debug_assert_eq!(self.entries.len(), self.lru.len(), "every entry has one place in the LRU order");
        debug_assert_eq!(self.entries.len(), self.stats.open_files, "the open count is the entries");
    }

    fn touch(&mut self, key: FileKey) -> Option<Rc<DmaFile>> {
        let tick = self.next_tick;
        let e = self.entries.get_mut(&key)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        e.used_at = Instant::now();
        self.lru.insert(tick, key);
        self.next_tick += 1;
        Some(e.file.clone())
    }

    fn remove(&mut self, key: FileKey) -> Option<Rc<DmaFile>> {
        let e = self.entries.remove(&key)?;
        self.lru.remove(&e.tick);
        self.stats.open_files -= 1;
        OPEN_ON_ALL_CORES.fetch_sub(1, Ordering::Relaxed);
        Some(e.file)
    }

    /// Removes least recently used entries until at most `keep` are left; returns their files for
    /// the caller to drop once the cache is no longer borrowed.
    fn evict_to(&mut self, keep: usize) -> Vec<Rc<DmaFile>> {
        let mut out = Vec::new();
        while self.entries.len() > keep {
            let Some((_, key)) = self.lru.pop_first() else { break };
            let e = self.entries.remove(&key).expect("an LRU position names an entry");
            self.stats.open_files -= 1;
            self.stats.evictions += 1;
            OPEN_ON_ALL_CORES.fetch_sub(1, Ordering::Relaxed);
            out.push(e.file);
        }
        out
    }

    /// Adds `file` under `key` (which must be absent), evicting to make room.
    fn insert(&mut self, key: FileKey, file: Rc<DmaFile>) -> Vec<Rc<DmaFile>> {
        debug_assert!(!self.entries.contains_key(&key), "inserted once");
        let evicted = self.evict_to(self.limits.max_open_files - 1);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(key, Entry { file, tick, used_at: Instant::now() });
        self.lru.insert(tick, key);
        self.stats.open_files += 1;
        OPEN_ON_ALL_CORES.fetch_add(1, Ordering::Relaxed);
        self.check();
        evicted
    }

    /// Forgets files of another (ended) executor: their reactor is gone, they cannot be used here.
    fn bind_to_current_executor(&mut self) -> Vec<Rc<DmaFile>> {
        let id = glommio::executor().id();
        if self.executor == Some(id) {
            return Vec::new();
        }
        self.executor = Some(id);
        self.sweeping = false;
        self.evict_to(0)
    }
}

/// A key for a new segment.
pub(crate) fn new_key() -> FileKey {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.next_key += 1;
        FileKey(c.next_key)
    })
}

/// The file of sealed segment `key` at `path`: the cached one, or opened (read-only) now. Fails
/// with `SegmentFileReplaced` when the file at `path` is gone or is not the segment's (`inode`).
pub(crate) async fn get(key: FileKey, path: &Path, inode: u64) -> Result<Rc<DmaFile>> {
    let hit = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let stale = c.bind_to_current_executor();
        let hit = c.touch(key);
        if hit.is_some() {
            c.stats.hits += 1;
        }
        (hit, stale)
    });
    if let (Some(file), _) = hit {
        return Ok(file);
    }
    let file = match DmaFile::open(path).await {
        Ok(f) => Rc::new(f),
        Err(e) => {
            let e = Error::from_glommio(path, "opening sealed segment", e);
            if let Error::Io { raw_os_error: Some(libc::ENOENT), .. } = e {
                return Err(Error::SegmentFileReplaced { path: path.to_path_buf() });
            }
            return Err(e);
        }
    };
    if file.inode() != inode {
        let _ = file.close_rc().await;
        return Err(Error::SegmentFileReplaced { path: path.to_path_buf() });
    }
    let (file, evicted) = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.stats.opens += 1;
        // Another read may have opened it meanwhile: use that one, drop this one.
        match c.touch(key) {
            Some(existing) => (existing, vec![file]),
            None => {
                let evicted = c.insert(key, file.clone());
                (file, evicted)
            }
        }
    });
    drop(evicted);
    start_sweeper();
    Ok(file)
}

/// Hands an open file of a segment that was just sealed to the cache (its next reader is likely
/// near), evicting to make room.
pub(crate) fn adopt(key: FileKey, file: Rc<DmaFile>) {
    let evicted = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let mut evicted = c.bind_to_current_executor();
        match c.touch(key) {
            Some(_) => evicted.push(file),
            None => evicted.extend(c.insert(key, file)),
        }
        evicted
    });
    drop(evicted);
    start_sweeper();
}

/// Removes `key`'s file from the cache (its segment is gone or reopened for writing); the caller
/// closes it (or drops it: glommio closes a dropped file on its next reactor cycle).
pub(crate) fn take(key: FileKey) -> Option<Rc<DmaFile>> {
    // `try_with`: a segment may be dropped while the thread's locals are being destroyed.
    CACHE.try_with(|c| c.borrow_mut().remove(key)).ok().flatten()
}

/// Starts this core's idle sweeper unless it runs: it closes files unused for `idle_close_ms` and
/// ends when the cache is empty (an idle core runs no timer).
fn start_sweeper() {
    let start = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let start = !c.sweeping && !c.entries.is_empty();
        c.sweeping |= start;
        start
    });
    if start {
        glommio::spawn_local(sweep_idle()).detach();
    }
}

async fn sweep_idle() {
    loop {
        let idle_ms = CACHE.with(|c| c.borrow().limits.idle_close_ms);
        let pause = (idle_ms / u64::from(IDLE_SWEEPS_PER_PERIOD)).max(MIN_IDLE_SWEEP_MS);
        glommio::timer::sleep(Duration::from_millis(pause)).await;
        let (idle, go_on) = CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if !c.sweeping {
                // Reset for another executor: that one runs its own sweeper.
                return (Vec::new(), false);
            }
            let limit = Duration::from_millis(c.limits.idle_close_ms);
            let now = Instant::now();
            let doomed: Vec<FileKey> =
                c.entries.iter().filter(|(_, e)| now.duration_since(e.used_at) >= limit).map(|(k, _)| *k).collect();
            let mut idle = Vec::with_capacity(doomed.len());
            for key in doomed {
                if let Some(f) = c.remove(key) {
                    c.stats.idle_closes += 1;
                    idle.push(f);
                }
            }
            c.check();
            let go_on = !c.entries.is_empty();
            c.sweeping = go_on;
            (idle, go_on)
        });
        for f in idle {
            // A read in flight may still hold it: then it closes when that read ends.
            let _ = f.close_rc().await;
        }
        if !go_on {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files<F, Fut>(n: usize, f: F)
    where
        F: FnOnce(Vec<(std::path::PathBuf, u64)>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = Vec::new();
        for i in 0..n {
            let p = dir.path().join(format!("{i}.log"));
            std::fs::write(&p, vec![i as u8 + 1; 4096]).expect("write file");
            let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).expect("stat"));
            files.push((p, ino));
        }
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || f(files))
            .expect("spawn executor")
            .join()
            .expect("executor thread");
        drop(dir);
    }

    #[test]
    fn cap_and_lru_order() {
        with_files(3, |files| async move {
            set_segment_file_limits(SegmentFileLimits { max_open_files: 2, idle_close_ms: 60_000 }).unwrap();
            let keys: Vec<FileKey> = (0..3).map(|_| new_key()).collect();
            for i in [0, 1, 0] {
                get(keys[i], &files[i].0, files[i].1).await.unwrap();
            }
            let s = segment_file_stats();
            assert_eq!((s.open_files, s.opens, s.hits, s.evictions), (2, 2, 1, 0));
            // 1 is the least recently used: opening 2 closes it, 0 stays.
            get(keys[2], &files[2].0, files[2].1).await.unwrap();
            let s = segment_file_stats();
            assert_eq!((s.open_files, s.evictions), (2, 1));
            get(keys[0], &files[0].0, files[0].1).await.unwrap();
            assert_eq!(segment_file_stats().hits, 2, "0 was kept");
            get(keys[1], &files[1].0, files[1].1).await.unwrap();
            assert_eq!(segment_file_stats().opens, 4, "1 was reopened");
            // A lower cap applies at once.
            set_segment_file_limits(SegmentFileLimits { max_open_files: 1, idle_close_ms: 60_000 }).unwrap();
            assert_eq!(segment_file_stats().open_files, 1);
            assert!(take(keys[1]).is_some(), "the most recent one stayed");
            assert_eq!(segment_file_stats().open_files, 0);
            assert!(set_segment_file_limits(SegmentFileLimits { max_open_files: 0, idle_close_ms: 1 }).is_err());
        });
    }

    #[test]
    fn a_read_in_flight_keeps_an_evicted_file() {
        with_files(2, |files| async move {
            set_segment_file_limits(SegmentFileLimits { max_open_files: 1, idle_close_ms: 60_000 }).unwrap();
            let (a, b) = (new_key(), new_key());
            let held = get(a, &files[0].0, files[0].1).await.unwrap();
            get(b, &files[1].0, files[1].1).await.unwrap();
            let s = segment_file_stats();
            assert_eq!((s.open_files, s.evictions), (1, 1), "a was evicted");
            // The reader's reference still reads a's bytes.
            let r = held.read_at_aligned(0, 4096).await.unwrap();
            assert_eq!(r.len(), 4096);
            assert!(r.iter().all(|&x| x == 1));
            assert!(Rc::strong_count(&held) == 1, "only the reader holds it now");
            held.close_rc().await.unwrap();
        });
    }

    #[test]
    fn idle_files_close_and_replaced_files_are_refused() {
        with_files(2, |files| async move {
            set_segment_file_limits(SegmentFileLimits { max_open_files: 4, idle_close_ms: 20 }).unwrap();
            let a = new_key();
            drop(get(a, &files[0].0, files[0].1).await.unwrap());
            assert_eq!(segment_file_stats().open_files, 1);
            let deadline = Instant::now() + Duration::from_secs(10);
            while segment_file_stats().open_files > 0 {
                assert!(Instant::now() < deadline, "idle file not closed: {:?}", segment_file_stats());
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(segment_file_stats().idle_closes, 1);
            // Another inode at the path (a rewrite renamed over it), or no file: refused, not cached.
            let wrong = get(new_key(), &files[0].0, files[1].1).await.unwrap_err();
            assert!(matches!(wrong, Error::SegmentFileReplaced { .. }), "{wrong}");
            let gone = get(new_key(), &files[0].0.with_extension("gone"), 1).await.unwrap_err();
            assert!(matches!(gone, Error::SegmentFileReplaced { .. }), "{gone}");
            assert_eq!(segment_file_stats().open_files, 0);
        });
    }
}
