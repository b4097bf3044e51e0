//! A partition leader's view of its followers (Kafka's `Partition`/`Replica` bookkeeping): each
//! follower's log end offset as its fetches report it, when it last caught up, the high watermark
//! that follows from the ISR, and which ISR change to propose. Pure logic: times are passed in (ms),
//! nothing here does I/O, so the rules are unit-tested as they are.

use std::collections::BTreeMap;

use crate::cluster::BrokerId;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end offset: the offset of its latest fetch (it holds everything below).
    /// `None` until it fetched in this leadership.
    pub log_end_offset: Option<u64>,
    /// Last time (ms) the follower was caught up with the leader's log end (Kafka's
    /// `lastCaughtUpTimeMs`); starts at the leadership start.
    pub last_caught_up_ms: i64,
    /// The leader's log end offset and the time of the follower's previous fetch: a fetch at or
    /// above that offset proves the follower was caught up at that time.
    pub previous_fetch: Option<(u64, i64)>,
}

/// The replica set of a partition this broker leads, as the cluster metadata last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// This broker's id.
    pub me: BrokerId,
    /// Log end offset when this leadership (epoch) started: a follower joining the ISR must have
    /// reached it (Kafka's rule: a new ISR member holds every record of the current epoch's leader).
    pub epoch_start_offset: u64,
    pub followers: BTreeMap<BrokerId, FollowerProgress>,
}

impl LeaderState {
    /// A fresh leadership at `now_ms`: every follower counts as caught up now (Kafka resets it at
    /// election), none has a known log end yet.
    pub fn new(
        me: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        epoch_start_offset: u64,
        now_ms: i64,
    ) -> LeaderState {
        assert!(leader_epoch >= 0, "leader epoch {leader_epoch} is negative");
        assert!(replicas.contains(&me), "leader {me} is not among the replicas {replicas:?}");
        let followers = replicas
            .iter()
            .filter(|b| **b != me)
            .map(|b| (*b, FollowerProgress { log_end_offset: None, last_caught_up_ms: now_ms, previous_fetch: None }))
            .collect();
        let state = LeaderState { leader_epoch, partition_epoch, replicas, isr, me, epoch_start_offset, followers };
        state.assert_isr_within_replicas();
        state
    }

    /// The ISR is a subset of the replicas, without duplicates.
    fn assert_isr_within_replicas(&self) {
        for (i, b) in self.isr.iter().enumerate() {
            assert!(self.replicas.contains(b), "ISR member {b} is not a replica of {:?}", self.replicas);
            assert!(!self.isr[..i].contains(b), "ISR {:?} lists {b} twice", self.isr);
        }
    }

    /// Takes newer metadata for the same leadership (same epoch): the ISR and partition epoch. A
    /// follower that left the ISR (the controller found it dead, or it lagged) must fetch again to
    /// prove it caught up: what it reported before no longer counts.
    pub fn update_isr(&mut self, partition_epoch: i32, isr: Vec<BrokerId>) {
        assert!(
            partition_epoch >= self.partition_epoch,
            "partition epoch moved back from {} to {partition_epoch}",
            self.partition_epoch
        );
        for (b, p) in self.followers.iter_mut() {
            if self.isr.contains(b) && !isr.contains(b) {
                p.log_end_offset = None;
                p.previous_fetch = None;
            }
        }
        self.partition_epoch = partition_epoch;
        self.isr = isr;
        self.assert_isr_within_replicas();
    }

    /// Records a fetch of `follower` at `fetch_offset` while the leader's log ends at `leader_leo`.
    /// Returns false for a broker that is not a replica.
    pub fn on_fetch(&mut self, follower: BrokerId, fetch_offset: u64, leader_leo: u64, now_ms: i64) -> bool {
        let Some(p) = self.followers.get_mut(&follower) else { return false };
        if fetch_offset >= leader_leo {
            p.last_caught_up_ms = now_ms;
        } else if let Some((previous_leo, previous_ms)) = p.previous_fetch {
            if fetch_offset >= previous_leo {
                p.last_caught_up_ms = p.last_caught_up_ms.max(previous_ms);
            }
        }
        p.log_end_offset = Some(fetch_offset);
        p.previous_fetch = Some((leader_leo, now_ms));
        true
    }

    /// The high watermark the ISR allows: the smallest log end offset among the ISR, the leader's
    /// own included. A member that has not fetched yet holds it at `current` (no regression).
    pub fn high_watermark(&self, leader_leo: u64, current: u64) -> u64 {
        let hw = self.isr_minimum(leader_leo).map_or(current.min(leader_leo), |m| m.max(current.min(leader_leo)));
        // Post-conditions: never above the leader's log end, never below what it was (unless the
        // log itself ends below it, which only a truncation of a non-leader does).
        assert!(hw <= leader_leo, "high watermark {hw} above the log end {leader_leo}");
        assert!(hw >= current.min(leader_leo), "high watermark moved back from {current} to {hw}");
        hw
    }

    /// The smallest log end offset in the ISR (the leader's included); `None` while an ISR member
    /// has not fetched in this leadership.
    fn isr_minimum(&self, leader_leo: u64) -> Option<u64> {
        let mut min = leader_leo;
        for b in self.isr.iter().filter(|b| **b != self.me) {
            min = min.min(self.followers.get(b).and_then(|p| p.log_end_offset)?);
        }
        Some(min)
    }

    /// The ISR without the followers that have not caught up for longer than `lag_max_ms`, when
    /// that removes anyone (the leader always stays).
    pub fn shrunk_isr(&self, now_ms: i64, lag_max_ms: i64) -> Option<Vec<BrokerId>> {
        let lagging = |b: &BrokerId| {
            *b != self.me && self.followers.get(b).is_some_and(|p| now_ms - p.last_caught_up_ms > lag_max_ms)
        };
        if !self.isr.iter().any(lagging) {
            return None;
        }
        Some(self.isr.iter().copied().filter(|b| !lagging(b)).collect())
    }

    /// The ISR with the out-of-sync followers that caught up (log end at or above the high
    /// watermark and this epoch's start), when there is any.
    pub fn expanded_isr(&self, high_watermark: u64) -> Option<Vec<BrokerId>> {
        let joining: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|b| !self.isr.contains(b))
            .filter(|b| {
                self.followers
                    .get(b)
                    .and_then(|p| p.log_end_offset)
                    .is_some_and(|leo| leo >= high_watermark && leo >= self.epoch_start_offset)
            })
            .collect();
        if joining.is_empty() {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.extend(joining);
        Some(isr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> LeaderState {
        LeaderState::new(1, 3, 7, vec![1, 2, 3], vec![1, 2, 3], 100, 1_000)
    }

    #[test]
    fn high_watermark_is_the_isr_minimum_and_waits_for_unknown_followers() {
        let mut l = leader();
        assert_eq!(l.high_watermark(150, 100), 100, "followers not heard from hold it");
        l.on_fetch(2, 140, 150, 1_010);
        assert_eq!(l.high_watermark(150, 100), 100);
        l.on_fetch(3, 120, 150, 1_010);
        assert_eq!(l.high_watermark(150, 100), 120);
        // Never below what it was.
        assert_eq!(l.high_watermark(150, 130), 130);
        // A follower out of the ISR does not hold it.
        l.update_isr(8, vec![1, 2]);
        assert_eq!(l.high_watermark(150, 120), 140);
        assert!(!l.on_fetch(9, 1, 150, 1_020), "not a replica");
    }

    #[test]
    fn lagging_followers_leave_and_caught_up_ones_return() {
        let mut l = leader();
        // Follower 2 fetches up to the end; 3 stays behind.
        l.on_fetch(2, 150, 150, 1_100);
        l.on_fetch(3, 110, 150, 1_100);
        assert_eq!(l.shrunk_isr(1_500, 1_000), None);
        // Fetch at the offset the leader had at 3's previous fetch: caught up as of then.
        l.on_fetch(3, 150, 200, 1_900);
        assert_eq!(l.followers[&3].last_caught_up_ms, 1_100);
        l.on_fetch(2, 200, 200, 1_950);
        assert_eq!(l.shrunk_isr(2_050, 1_000), None);
        assert_eq!(l.shrunk_isr(2_200, 1_000), Some(vec![1, 2]));
        l.update_isr(8, vec![1, 2]);
        assert_eq!(l.expanded_isr(150), None, "3 left: its earlier fetches no longer count");
        l.on_fetch(3, 190, 200, 2_250);
        assert_eq!(l.expanded_isr(200), None, "3 is below the high watermark");
        l.on_fetch(3, 200, 200, 2_300);
        assert_eq!(l.expanded_isr(200), Some(vec![1, 2, 3]));
    }

    #[test]
    fn joining_needs_the_epoch_start() {
        let mut l = LeaderState::new(1, 3, 7, vec![1, 2], vec![1], 500, 0);
        l.on_fetch(2, 400, 600, 10);
        assert_eq!(l.expanded_isr(300), None, "below the leader epoch's start offset");
        l.on_fetch(2, 500, 600, 20);
        assert_eq!(l.expanded_isr(300), Some(vec![1, 2]));
    }
}
