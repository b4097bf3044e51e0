//! The partition's part in replication ([`Role`]: standalone, leader or follower), the role changes
//! the cluster metadata orders (leader epochs only grow), and the high watermark and in-sync replica
//! set a leader keeps (the high watermark never moves back nor passes the log end).

use kafka_protocol::error::ResponseError;
use tracing::info;

use super::{Partition, PartitionError, LEADER_EPOCH};
use crate::cluster::BrokerId;
use crate::metrics::ReplicationSample;
use crate::replication::progress::LeaderState;

/// This partition's part in replication.
#[derive(Debug, Clone)]
pub enum Role {
    /// A single node: this broker is the whole replica set.
    Standalone,
    /// Leads the partition in a cluster.
    Leader(LeaderState),
    /// Copies the partition from `leader`.
    Follower { leader: BrokerId, leader_epoch: i32 },
}

impl Partition {
    pub fn high_watermark(&self) -> i64 {
        match &*self.role.borrow() {
            Role::Standalone => self.log.next_offset() as i64,
            _ => self.hw.get() as i64,
        }
    }

    /// Replication state for metrics.
    pub fn replication_sample(&self) -> ReplicationSample {
        let leo = self.log.next_offset();
        match &*self.role.borrow() {
            Role::Standalone => ReplicationSample {
                leader: true,
                leader_epoch: LEADER_EPOCH,
                replicas: 1,
                in_sync_replicas: 1,
                max_follower_lag: 0,
            },
            Role::Leader(l) => ReplicationSample {
                leader: true,
                leader_epoch: l.leader_epoch,
                replicas: l.replicas.len(),
                in_sync_replicas: l.isr.len(),
                max_follower_lag: l
                    .followers
                    .values()
                    .map(|f| leo.saturating_sub(f.log_end_offset.unwrap_or(0)))
                    .max()
                    .unwrap_or(0),
            },
            Role::Follower { leader_epoch, .. } => {
                ReplicationSample { leader_epoch: (*leader_epoch).max(0), ..ReplicationSample::default() }
            }
        }
    }

    /// The leader and leader epoch this replica follows, when it follows (without copying a
    /// leader's follower table, as `role` would).
    pub fn following(&self) -> Option<(BrokerId, i32)> {
        match &*self.role.borrow() {
            Role::Follower { leader, leader_epoch } => Some((*leader, *leader_epoch)),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Leader epoch of this broker's leadership (0 standalone), or `None` when it follows.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Standalone => Some(LEADER_EPOCH),
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { .. } => None,
        }
    }

    /// The leader epoch the cluster metadata last gave this replica (leader or follower). Metadata is
    /// applied in Raft order, so it only grows: role changes assert it.
    fn cluster_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { leader_epoch, .. } => Some(*leader_epoch),
            Role::Standalone => None,
        }
    }

    /// Clients' produce, fetch and offset lookups go to the leader only.
    pub fn check_leader(&self) -> Result<(), PartitionError> {
        match &*self.role.borrow() {
            Role::Follower { leader, .. } => Err(PartitionError::new(
                ResponseError::NotLeaderOrFollower,
                format!("broker {leader} leads {}-{}", self.topic, self.index),
            )),
            _ => Ok(()),
        }
    }

    /// Makes this broker the partition's leader per the cluster metadata. A new epoch is recorded
    /// in the leader-epoch cache at the current log end (Kafka's `makeLeader`); the same epoch again
    /// only takes the newer ISR.
    pub async fn become_leader(
        &self,
        me: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
    ) -> Result<(), sluice_io::Error> {
        let known = self.cluster_epoch();
        assert!(
            known.is_none_or(|e| e <= leader_epoch),
            "{}-{}: leader epoch moved back from {known:?} to {leader_epoch}",
            self.topic,
            self.index
        );
        let same = matches!(&*self.role.borrow(), Role::Leader(l) if l.leader_epoch == leader_epoch);
        if same {
            if let Role::Leader(l) = &mut *self.role.borrow_mut() {
                l.update_isr(partition_epoch, isr);
            }
        } else {
            let leo = self.log.next_offset();
            self.log.assign_epoch(leader_epoch, leo).await?;
            let start = self.log.epochs().entries().last().map_or(leo, |e| e.start_offset);
            let state =
                LeaderState::new(me, leader_epoch, partition_epoch, replicas, isr, start, crate::clock::now_ms());
            info!(topic = %self.topic, partition = self.index, leader_epoch, start_offset = start, "leading");
            *self.role.borrow_mut() = Role::Leader(state);
            self.role_changed.notify(usize::MAX);
        }
        self.advance_high_watermark();
        Ok(())
    }

    /// Makes this broker a follower of `leader` at `leader_epoch`.
    pub fn become_follower(&self, leader: BrokerId, leader_epoch: i32) {
        if let Some(known) = self.cluster_epoch() {
            assert!(
                known <= leader_epoch,
                "{}-{}: leader epoch moved back from {known} to {leader_epoch}",
                self.topic,
                self.index
            );
        }
        let changed = !matches!(&*self.role.borrow(),
            Role::Follower { leader: l, leader_epoch: e } if *l == leader && *e == leader_epoch);
        if changed {
            info!(topic = %self.topic, partition = self.index, leader, leader_epoch, "following");
            *self.role.borrow_mut() = Role::Follower { leader, leader_epoch };
            self.role_changed.notify(usize::MAX);
        }
    }

    /// Recomputes a leader's high watermark from its ISR; wakes fetches and acks=all waiters when it
    /// moved.
    pub(super) fn advance_high_watermark(&self) {
        let leo = self.log.next_offset();
        let hw = match &*self.role.borrow() {
            Role::Leader(l) => l.high_watermark(leo, self.hw.get()),
            _ => return,
        };
        self.raise_high_watermark(hw);
    }

    /// Moves the high watermark up to `hw` (never down: a lower value is ignored) and wakes fetches
    /// and acks=all waiters when it moved.
    pub(super) fn raise_high_watermark(&self, hw: u64) {
        let (before, leo) = (self.hw.get(), self.log.next_offset());
        assert!(hw <= leo, "{}-{}: high watermark {hw} above the log end {leo}", self.topic, self.index);
        if hw > before {
            self.hw.set(hw);
            self.data_arrived.notify(usize::MAX);
        }
        debug_assert!(self.hw.get() >= before, "high watermark moved back");
    }

    /// The leader's ISR change to propose now, if any: followers lagging over `lag_max_ms` out, or
    /// caught-up ones in. `(isr, leader_epoch, partition_epoch)`.
    pub fn isr_change(&self, now_ms: i64, lag_max_ms: i64) -> Option<(Vec<BrokerId>, i32, i32)> {
        let role = self.role.borrow();
        let Role::Leader(l) = &*role else { return None };
        let isr = l.shrunk_isr(now_ms, lag_max_ms).or_else(|| l.expanded_isr(self.hw.get()))?;
        Some((isr, l.leader_epoch, l.partition_epoch))
    }
}
