//! The persistent Raft log (openraft's storage-v2 `RaftLogStorage`) of one node, under its own
//! directory:
//! - `log`: append-only records (see [`super::disk`]), one bincode `Entry` each. `truncate` cuts
//!   the file at the first removed entry; `purge` rewrites it without the purged prefix (purges
//!   follow snapshots and are rare). On open the file is cut at the first damaged record, at a
//!   gap in the indexes, like a segment's torn tail.
//! - `log-meta`: vote, committed and last purged log ids, replaced atomically.
//!
//! Entries are also kept in memory (the metadata log is small: it is purged after each snapshot),
//! so reads never touch the disk. Every write is synced before it is acknowledged to openraft.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::disk::{self, DiskError};
use super::types::{NodeId, TypeConfig};

const META_MAGIC: u32 = u32::from_le_bytes(*b"SRLM");
const META_VERSION: u32 = 1;

/// What `log-meta` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct LogInner {
    log_path: PathBuf,
    meta_path: PathBuf,
    file: File,
    /// index → (offset of its record in `log`, entry); contiguous indexes.
    entries: BTreeMap<u64, (u64, Entry<TypeConfig>)>,
    /// Length of the valid part of `log`.
    file_len: u64,
    meta: LogMeta,
}

/// The Raft log store; clones share one log (openraft takes a clone as its log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, cutting a damaged tail.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        disk::io_ctx(std::fs::create_dir_all(dir), dir, "creating")?;
        let log_path = dir.join("log");
        let meta_path = dir.join("log-meta");
        let meta: LogMeta = disk::read_framed(&meta_path, META_MAGIC, META_VERSION)?.unwrap_or_default();
        let bytes = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(DiskError::Io { path: log_path, op: "reading", source }),
        };
        let (records, mut valid_len) = disk::scan_records(&bytes);
        let purged_index = meta.last_purged.map(|l| l.index);
        let mut entries = BTreeMap::new();
        let mut prev: Option<u64> = None;
        for (offset, payload) in records {
            let Ok(entry) = bincode::deserialize::<Entry<TypeConfig>>(payload) else {
                valid_len = offset;
                break;
            };
            let index = entry.log_id.index;
            if prev.is_some_and(|p| index != p + 1) {
                valid_len = offset;
                break;
            }
            prev = Some(index);
            // Left over from a purge that crashed before rewriting the file.
            if purged_index.is_some_and(|p| index <= p) {
                continue;
            }
            entries.insert(index, (offset, entry));
        }
        if valid_len < bytes.len() as u64 {
            tracing::warn!(path = %log_path.display(), valid_len, file_len = bytes.len(), "raft log: cutting damaged tail");
            let f = disk::io_ctx(std::fs::OpenOptions::new().write(true).open(&log_path), &log_path, "opening")?;
            disk::io_ctx(f.set_len(valid_len), &log_path, "truncating")?;
            disk::io_ctx(f.sync_all(), &log_path, "syncing")?;
        }
        let file = disk::open_append(&log_path)?;
        disk::sync_dir(&log_path)?;
        let inner = LogInner { log_path, meta_path, file, entries, file_len: valid_len, meta };
        Ok(Self { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock cannot leave a half-applied change the file does not also
        // show: the in-memory state is updated only after the disk write succeeded.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LogInner {
    fn save_meta(&self) -> Result<(), DiskError> {
        disk::write_atomic(&self.meta_path, META_MAGIC, META_VERSION, &self.meta)
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries.values().next_back().map(|(_, e)| e.log_id).or(self.meta.last_purged)
    }

    /// Rewrites `log` with the entries in memory (after a purge).
    fn rewrite(&mut self) -> Result<(), DiskError> {
        let tmp = self.log_path.with_extension("tmp");
        let mut bytes = Vec::new();
        for (offset, entry) in self.entries.values_mut() {
            *offset = bytes.len() as u64;
            disk::push_record(&mut bytes, &disk::encode(entry, &self.log_path)?);
        }
        let mut f = disk::io_ctx(File::create(&tmp), &tmp, "creating")?;
        disk::io_ctx(f.write_all(&bytes), &tmp, "writing")?;
        disk::io_ctx(f.sync_data(), &tmp, "syncing")?;
        disk::io_ctx(std::fs::rename(&tmp, &self.log_path), &self.log_path, "renaming into place")?;
        disk::sync_dir(&self.log_path)?;
        self.file = disk::open_append(&self.log_path)?;
        self.file_len = bytes.len() as u64;
        Ok(())
    }
}

fn write_err(e: DiskError) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().entries.range(range).map(|(_, (_, e))| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState { last_purged_log_id: inner.meta.last_purged, last_log_id: inner.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let old = inner.meta.vote.replace(*vote);
        inner.save_meta().map_err(|e| {
            inner.meta.vote = old;
            StorageError::from(StorageIOError::write_vote(AnyError::new(&e)))
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let old = std::mem::replace(&mut inner.meta.committed, committed);
        inner.save_meta().map_err(|e| {
            inner.meta.committed = old;
            write_err(e)
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut bytes = Vec::new();
        let mut placed = Vec::new();
        let next_index = inner.last_log_id().map_or(0, |l| l.index + 1);
        for (expected, entry) in (next_index..).zip(entries) {
            // openraft truncates before it appends a conflicting suffix; a gap here is its bug.
            assert_eq!(entry.log_id.index, expected, "raft log append out of order");
            let offset = inner.file_len + bytes.len() as u64;
            disk::push_record(&mut bytes, &disk::encode(&entry, &inner.log_path).map_err(write_err)?);
            placed.push((offset, entry));
        }
        let path = inner.log_path.clone();
        let written = inner.file.write_all(&bytes).and_then(|()| inner.file.sync_data());
        if let Err(source) = written {
            let kind = source.kind();
            let e = DiskError::Io { path, op: "appending", source };
            callback.log_io_completed(Err(std::io::Error::new(kind, e.to_string())));
            return Err(write_err(e));
        }
        inner.file_len += bytes.len() as u64;
        for (offset, entry) in placed {
            inner.entries.insert(entry.log_id.index, (offset, entry));
        }
        drop(inner);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let Some(&(offset, _)) = inner.entries.get(&log_id.index) else { return Ok(()) };
        tracing::debug!(%log_id, "raft log: truncating");
        let path = inner.log_path.clone();
        let cut = inner.file.set_len(offset).and_then(|()| inner.file.sync_all());
        disk::io_ctx(cut, &path, "truncating").map_err(write_err)?;
        inner.file_len = offset;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        if inner.meta.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        tracing::debug!(%log_id, "raft log: purging");
        // Meta first: a crash before the rewrite leaves purged entries in `log`, skipped on open.
        inner.meta.last_purged = Some(log_id);
        inner.save_meta().map_err(write_err)?;
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.rewrite().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tmp/raft-log").join(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 0), index), payload: EntryPayload::Blank }
    }

    /// Appends without openraft's callback (which needs a running Raft): the same file writes.
    fn append(store: &LogStore, range: std::ops::Range<u64>) {
        let mut inner = store.lock();
        for i in range {
            let mut bytes = Vec::new();
            disk::push_record(&mut bytes, &bincode::serialize(&entry(i)).unwrap());
            let offset = inner.file_len;
            inner.file.write_all(&bytes).unwrap();
            inner.file_len += bytes.len() as u64;
            inner.entries.insert(i, (offset, entry(i)));
        }
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[test]
    fn truncate_purge_and_damaged_tail_survive_reopen() {
        let d = dir("reopen");
        let mut store = LogStore::open(&d).unwrap();
        append(&store, 0..10);
        futures_executor::block_on(store.truncate(entry(7).log_id)).unwrap();
        futures_executor::block_on(store.purge(entry(2).log_id)).unwrap();
        append(&store, 7..9);
        let vote = Vote::new(3, 2);
        futures_executor::block_on(store.save_vote(&vote)).unwrap();
        drop(store);

        let mut store = LogStore::open(&d).unwrap();
        assert_eq!(indexes(&store), (3..9).collect::<Vec<_>>());
        assert_eq!(futures_executor::block_on(store.read_vote()).unwrap(), Some(vote));
        let state = futures_executor::block_on(store.get_log_state()).unwrap();
        assert_eq!((state.last_purged_log_id.map(|l| l.index), state.last_log_id.map(|l| l.index)), (Some(2), Some(8)));
        drop(store);

        // A torn last record is cut; everything before it stays.
        let log = d.join("log");
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(len - 3).unwrap();
        let store = LogStore::open(&d).unwrap();
        assert_eq!(indexes(&store), (3..8).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), store.lock().file_len);
    }
}
