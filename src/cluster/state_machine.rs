//! openraft's storage-v2 `RaftStateMachine` over [`ClusterState`]. Applying is the pure
//! [`ClusterState::apply`]; its result goes back to the `client_write` caller. Snapshots are the
//! bincode-serialised state plus openraft's meta (last applied log id, membership), kept in the
//! file `snapshot` under the node's directory (replaced atomically) and reloaded at start; openraft
//! then re-applies the committed log entries after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::disk::{self, DiskError};
use super::metadata::ClusterState;
use super::types::{CommandResult, NodeId, TypeConfig};

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"SRSN");
const SNAPSHOT_VERSION: u32 = 1;

/// A snapshot as stored: openraft's meta and the serialised [`ClusterState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct SmInner {
    snapshot_path: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterState,
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built by this process, to make snapshot ids unique.
    built: u64,
}

/// The cluster-metadata state machine; clones share it (openraft takes one as snapshot builder, the
/// control plane keeps one to read the state).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<SmInner>>,
}

impl StateMachineStore {
    /// Opens the state machine under `dir`, starting from the stored snapshot if there is one.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        disk::io_ctx(std::fs::create_dir_all(dir), dir, "creating")?;
        let snapshot_path = dir.join("snapshot");
        let snapshot: Option<StoredSnapshot> = disk::read_framed(&snapshot_path, SNAPSHOT_MAGIC, SNAPSHOT_VERSION)?;
        let (state, last_applied, membership) = match &snapshot {
            Some(s) => (disk::decode(&s.data, &snapshot_path)?, s.meta.last_log_id, s.meta.last_membership.clone()),
            None => (ClusterState::default(), None, StoredMembership::default()),
        };
        let inner = SmInner { snapshot_path, last_applied, membership, state, snapshot, built: 0 };
        Ok(Self { inner: Arc::new(Mutex::new(inner)) })
    }

    /// A copy of the current cluster state (as applied on this node).
    pub fn state(&self) -> ClusterState {
        self.lock().state.clone()
    }

    fn lock(&self) -> MutexGuard<'_, SmInner> {
        // Every change under the lock is a plain in-memory assignment after the fallible work.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn snapshot_err(meta: &SnapshotMeta<NodeId, BasicNode>, e: DiskError) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.built),
            None => format!("none-{}", inner.built),
        };
        let meta =
            SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone(), snapshot_id };
        let data = disk::encode(&inner.state, &inner.snapshot_path).map_err(|e| snapshot_err(&meta, e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        disk::write_atomic(&inner.snapshot_path, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, &stored)
            .map_err(|e| snapshot_err(&meta, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "raft: built snapshot");
        inner.snapshot = Some(stored);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(cmd) => {
                    let result = inner.state.apply(&cmd);
                    if let Err(rejection) = &result {
                        tracing::debug!(log_id = %entry.log_id, %rejection, "raft: command refused");
                    }
                    result
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(())
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let data = snapshot.into_inner();
        let state: ClusterState = disk::decode(&data, &inner.snapshot_path).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))
        })?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        disk::write_atomic(&inner.snapshot_path, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, &stored)
            .map_err(|e| snapshot_err(meta, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "raft: installed snapshot");
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner
            .snapshot
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}
