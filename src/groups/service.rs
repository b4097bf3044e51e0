//! How the group coordinator lives on the cores: one `GroupCoordinator` per core, installed as a
//! core service, coordinating the groups whose `__consumer_offsets` partition that core owns.
//! Requests reach it with `on_coordinator` (a closure run on the group's core); a core loads a
//! partition's committed offsets at start-up and whenever it gains that partition's leadership;
//! its timers expire sessions, rebalances and old offsets.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tracing::{error, info, warn};

use super::offsets_log::{self, OffsetRecord, OFFSETS_TOPIC};
use super::{GroupCoordinator, TICK_MS};
use crate::core::{tasks, Shard};
use crate::partition::{Partition, PartitionError};

/// Installs this core's coordinator, its leadership hook and its timers. Called once per core at
/// start-up, before the core's partitions open.
pub fn install(shard: &Rc<Shard>) {
    let coordinator = Rc::new(GroupCoordinator::default());
    shard.services.install(coordinator.clone());
    let g = coordinator.clone();
    shard.services.on_leadership(Rc::new(move |p: Rc<Partition>| {
        let g = g.clone();
        Box::pin(async move {
            if p.topic == OFFSETS_TOPIC {
                if let Err(e) = g.load_offsets_of(&p).await {
                    error!(partition = p.index, error = %e, "loading committed offsets");
                }
            }
        })
    }));
    let g = coordinator.clone();
    tasks::every(shard, TICK_MS, move |s| {
        let g = g.clone();
        async move {
            for (group, records) in g.tick() {
                if let Err(e) = g.persist(&s, &group, records).await {
                    warn!(group, error = ?e, "expiring offsets failed");
                }
            }
        }
    });
    let g = coordinator;
    tasks::every(shard, shard.config.metrics_publish_interval_ms, move |s| {
        let commits = g.commit_samples();
        async move { s.metrics.publish_commits(commits) }
    });
}

/// Partitions of `__consumer_offsets` (0 before it exists).
pub fn offsets_partitions(shard: &Shard) -> usize {
    shard.catalog().topics.get(OFFSETS_TOPIC).map_or(0, |t| t.partition_cores.len())
}

/// The core coordinating `group`: the owner of its `__consumer_offsets` partition.
pub fn coordinator_core(shard: &Shard, group: &str) -> Result<usize, PartitionError> {
    let n = offsets_partitions(shard);
    if n == 0 {
        return Err(PartitionError::new(ResponseError::CoordinatorNotAvailable, "no offsets topic"));
    }
    shard.owner(OFFSETS_TOPIC, offsets_log::partition_for(group, n))
}

/// Runs `job` with the coordinator on `core` (inline when it is this one).
pub async fn on_core<R, F, Fut>(shard: &Rc<Shard>, core: usize, job: F) -> Result<R, ResponseError>
where
    F: FnOnce(Rc<Shard>, Rc<GroupCoordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let ran = shard
        .invoke_on(core, move |s| async move {
            match s.services.get::<GroupCoordinator>() {
                Some(g) => Ok(job(s, g).await),
                None => Err(ResponseError::CoordinatorNotAvailable),
            }
        })
        .await;
    ran.map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// Runs `job` with the coordinator of `group`, on its core.
pub async fn on_coordinator<R, F, Fut>(shard: &Rc<Shard>, group: &str, job: F) -> Result<R, ResponseError>
where
    F: FnOnce(Rc<Shard>, Rc<GroupCoordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let core = coordinator_core(shard, group).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    on_core(shard, core, job).await
}

/// Replays this core's `__consumer_offsets` partitions into its coordinator (at start-up).
pub async fn load_offsets(shard: &Shard) -> anyhow::Result<()> {
    let Some(g) = shard.services.get::<GroupCoordinator>() else {
        anyhow::bail!("no group coordinator installed on core {}", shard.id)
    };
    for p in shard.local_partitions().into_iter().filter(|p| p.topic == OFFSETS_TOPIC) {
        g.load_offsets_of(&p).await?;
    }
    Ok(())
}

impl GroupCoordinator {
    /// Replays one `__consumer_offsets` partition (to its log end: a new leader's high watermark
    /// may still be catching up with records the ISR holds).
    async fn load_offsets_of(&self, p: &Partition) -> anyhow::Result<()> {
        let mut at = p.log_start_offset();
        let end = p.log_end_offset();
        let mut n = 0usize;
        while at < end {
            let batches = p.read_to_end(at, 1 << 20).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let Some(last) = batches.last() else { break };
            let next = last.header.next_offset() as i64;
            assert!(next > at, "replaying moves forward: {at} -> {next}");
            at = next;
            for b in &batches {
                let recs = offsets_log::decode_batches(Bytes::copy_from_slice(&b.payload))?;
                n += recs.len();
                self.apply(recs);
            }
        }
        if n > 0 {
            info!(partition = p.index, records = n, "committed offsets loaded");
        }
        Ok(())
    }

    /// OffsetCommit of a group member (or of a simple consumer: generation -1).
    pub async fn commit(
        &self,
        shard: &Rc<Shard>,
        group: &str,
        generation: i32,
        member: &str,
        records: Vec<OffsetRecord>,
    ) -> Result<(), ResponseError> {
        self.check_commit(group, generation, member)?;
        self.persist(shard, group, records).await
    }

    /// DeleteGroups of one group: its offsets are tombstoned, then it is forgotten (error code).
    pub async fn delete_group(&self, shard: &Rc<Shard>, group: &str) -> i16 {
        let records = match self.prepare_delete(group) {
            Ok(records) => records,
            Err(e) => return e.code(),
        };
        match self.persist(shard, group, records).await {
            Ok(()) => {
                self.forget(group);
                debug_assert!(!self.exists(group), "a deleted group is gone");
                0
            }
            Err(e) => e.code(),
        }
    }

    /// OffsetDelete: the group's offsets of `partitions`, except those of subscribed topics
    /// (error code of the request, and per partition).
    pub async fn delete_offsets(
        &self,
        shard: &Rc<Shard>,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> (i16, Vec<(String, i32, i16)>) {
        if !self.exists(group) {
            return (ResponseError::GroupIdNotFound.code(), Vec::new());
        }
        let subscribed = self.subscribed(group);
        let mut per = Vec::with_capacity(partitions.len());
        let mut records = Vec::new();
        for (topic, partition) in partitions {
            if subscribed.contains(&topic) {
                per.push((topic, partition, ResponseError::GroupSubscribedToTopic.code()));
            } else {
                records.push(OffsetRecord { group: group.to_string(), topic: topic.clone(), partition, value: None });
                per.push((topic, partition, 0));
            }
        }
        match self.persist(shard, group, records).await {
            Ok(()) => (0, per),
            Err(e) => (e.code(), Vec::new()),
        }
    }
}
