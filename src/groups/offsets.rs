//! Committed offsets on the coordinator: a commit's generation check, the durable write to the
//! group's `__consumer_offsets` partition (acks=all) before it is applied, offset fetches, the
//! records that delete a group's offsets, and the committed offsets reported as metrics.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use tracing::warn;

use super::group::{Group, GroupState};
use super::offsets_log::{self, Committed, OffsetRecord, OFFSETS_TOPIC};
use super::{service, GroupCoordinator};
use crate::clock::now_ms;
use crate::core::Shard;
use crate::partition::Acks;

/// How long an offset commit waits for the in-sync replicas of its `__consumer_offsets` partition.
const COMMIT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Outcome of a commit for one partition.
pub type PartitionCode = (String, i32, ResponseError);

impl GroupCoordinator {
    /// Every committed offset of this core's groups (metrics).
    pub fn commit_samples(&self) -> Vec<crate::metrics::CommitSample> {
        self.groups
            .borrow()
            .values()
            .flat_map(|g| {
                g.offsets.iter().map(|((topic, partition), c)| crate::metrics::CommitSample {
                    group: g.id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: c.offset,
                })
            })
            .collect()
    }

    /// Validates a commit against the group's generation (Kafka's rules); `Ok` to write it.
    pub fn check_commit(&self, group_id: &str, generation: i32, member_id: &str) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let groups = self.groups.borrow();
        let Some(g) = groups.get(group_id) else {
            return if generation < 0 { Ok(()) } else { Err(ResponseError::IllegalGeneration) };
        };
        if generation < 0 && g.state == GroupState::Empty {
            return Ok(()); // a standalone (simple) consumer
        }
        if g.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        if !g.has_member(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Writes commits (or deletions) durably to the group's offsets partition, then applies them.
    pub async fn persist(
        &self,
        shard: &Rc<Shard>,
        group_id: &str,
        records: Vec<OffsetRecord>,
    ) -> Result<(), ResponseError> {
        if records.is_empty() {
            return Ok(());
        }
        let partitions = service::offsets_partitions(shard);
        let p = offsets_log::partition_for(group_id, partitions);
        let part = shard.local(OFFSETS_TOPIC, p).map_err(|_| ResponseError::NotCoordinator)?;
        let batch = offsets_log::encode_batch(&records, now_ms()).map_err(|_| ResponseError::UnknownServerError)?;
        part.produce(&batch, Acks::All, COMMIT_REPLICATION_TIMEOUT).await.map_err(|e| {
            warn!(group = group_id, error = %e.message, "writing offsets failed");
            ResponseError::KafkaStorageError
        })?;
        self.apply(records);
        Ok(())
    }

    /// Applies offset records (after a write, or while replaying the log at start-up).
    pub fn apply(&self, records: Vec<OffsetRecord>) {
        let mut groups = self.groups.borrow_mut();
        let now = now_ms();
        for r in records {
            let g = groups.entry(r.group.clone()).or_insert_with(|| Group::new(&r.group, now));
            match r.value {
                Some(c) => {
                    g.offsets.insert((r.topic, r.partition), c);
                }
                None => {
                    g.offsets.remove(&(r.topic, r.partition));
                }
            }
        }
        groups.retain(|_, g| {
            !(g.state == GroupState::Empty && g.members.is_empty() && g.offsets.is_empty() && g.generation == 0)
        });
    }

    /// Committed offsets of a group: all, or the requested partitions (missing ones as `None`).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, i32)>>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.groups.borrow();
        let g = groups.get(group_id);
        match wanted {
            Some(w) => w
                .into_iter()
                .map(|(t, p)| {
                    let c = g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned());
                    (t, p, c)
                })
                .collect(),
            None => g
                .map(|g| g.offsets.iter().map(|((t, p), c)| (t.clone(), *p, Some(c.clone()))).collect())
                .unwrap_or_default(),
        }
    }

    /// The records that delete a group (its offsets), if it may be deleted.
    pub fn prepare_delete(&self, group_id: &str) -> Result<Vec<OffsetRecord>, ResponseError> {
        let groups = self.groups.borrow();
        let g = groups.get(group_id).ok_or(ResponseError::GroupIdNotFound)?;
        if !g.members.is_empty() || g.state != GroupState::Empty {
            return Err(ResponseError::NonEmptyGroup);
        }
        Ok(g.offsets
            .keys()
            .map(|(t, p)| OffsetRecord { group: group_id.into(), topic: t.clone(), partition: *p, value: None })
            .collect())
    }
}
