//! One consumer group's state machine (Kafka's classic protocol): its members, generation and
//! protocol, the rebalance (join phase, initial delay, leader election, protocol selection) and
//! member removal. The coordinator (`membership`, `offsets`) drives it; it does no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use tracing::{debug, info};

use super::offsets_log::Committed;
use super::{s, INITIAL_REBALANCE_DELAY_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

pub(super) struct Member {
    pub(super) id: String,
    pub(super) instance_id: Option<String>,
    pub(super) client_id: String,
    pub(super) client_host: String,
    pub(super) session_timeout: Duration,
    pub(super) rebalance_timeout: Duration,
    pub(super) protocols: Vec<(String, Bytes)>,
    pub(super) assignment: Bytes,
    pub(super) last_seen: Instant,
    pub(super) join_waiter: Option<(oneshot::Sender<JoinGroupResponse>, i16)>,
    pub(super) sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    pub(super) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

pub(super) struct Group {
    pub(super) id: String,
    pub(super) state: GroupState,
    pub(super) generation: i32,
    pub(super) protocol_type: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) leader: Option<String>,
    /// In join order (the first member is the default leader).
    pub(super) members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED and not yet used (KIP-394).
    pub(super) pending: HashSet<String>,
    pub(super) rebalance_deadline: Option<Instant>,
    /// A new group waits for more members until this instant (initial rebalance delay).
    pub(super) join_not_before: Option<Instant>,
    pub(super) offsets: BTreeMap<(String, i32), Committed>,
    /// When the group last became empty (offset retention counts from there).
    pub(super) empty_since_ms: i64,
}

impl Group {
    pub(super) fn new(id: &str, now_ms: i64) -> Self {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: HashSet::new(),
            rebalance_deadline: None,
            join_not_before: None,
            offsets: BTreeMap::new(),
            empty_since_ms: now_ms,
        }
    }

    pub(super) fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    pub(super) fn has_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Topics the members subscribe to (consumer protocol), for OffsetDelete's check.
    pub(super) fn subscribed_topics(&self) -> HashSet<String> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let mut out = HashSet::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return out;
        }
        let Some(proto) = &self.protocol else { return out };
        for m in &self.members {
            let mut meta = m.metadata_for(proto);
            if meta.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            let _ = bytes::Buf::get_i16(&mut meta);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3)) {
                out.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        out
    }

    pub(super) fn start_rebalance(&mut self, why: &str) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let from_empty = self.state == GroupState::Empty;
        // Members waiting for their assignment must rejoin.
        for m in &mut self.members {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncGroupResponse::default().with_error_code(ResponseError::RebalanceInProgress.code()));
            }
        }
        let timeout = self.members.iter().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::from_secs(60));
        let now = Instant::now();
        self.rebalance_deadline = Some(now + timeout);
        self.join_not_before = from_empty.then(|| now + Duration::from_millis(INITIAL_REBALANCE_DELAY_MS).min(timeout));
        self.state = GroupState::PreparingRebalance;
        debug!(group = %self.id, generation = self.generation, reason = why, "preparing rebalance");
    }

    pub(super) fn all_joined(&self) -> bool {
        self.members.iter().all(|m| m.join_waiter.is_some())
    }

    /// Completes the join phase if every member rejoined (and any initial delay passed), or
    /// unconditionally when `deadline_passed` (dropping the members that did not rejoin).
    pub(super) fn maybe_complete_join(&mut self, deadline_passed: bool, now_ms: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let delay_over = self.join_not_before.is_none_or(|t| Instant::now() >= t);
        let ready = self.all_joined() && delay_over;
        if !(deadline_passed || ready) {
            return;
        }
        self.members.retain(|m| {
            let keep = m.join_waiter.is_some();
            if !keep {
                info!(member = %m.id, "member did not rejoin in time: removed");
            }
            keep
        });
        let generation_before = self.generation;
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.rebalance_deadline = None;
        self.join_not_before = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.empty_since_ms = now_ms;
            return;
        }
        self.protocol = self.select_protocol();
        if self.leader.as_ref().is_none_or(|l| !self.has_member(l)) {
            self.leader = Some(self.members[0].id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        // Post-conditions: a new generation, led by one of its members, every member joined.
        assert!(self.generation != generation_before, "group {}: generation did not move", self.id);
        assert!(
            self.leader.as_ref().is_some_and(|l| self.has_member(l)),
            "group {}: leader {:?} is not a member",
            self.id,
            self.leader
        );
        debug_assert!(self.members.iter().all(|m| m.join_waiter.is_some()), "a member that did not rejoin stayed");
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let all: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(s(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(s))
                    .with_metadata(m.metadata_for(&protocol))
            })
            .collect();
        let now = Instant::now();
        let mut waiters = Vec::new();
        for m in &mut self.members {
            m.last_seen = now;
            if let Some((w, version)) = m.join_waiter.take() {
                waiters.push((m.id.clone(), w, version));
            }
        }
        for (id, w, version) in waiters {
            let members = if id == leader { strip_instance_ids(all.clone(), version) } else { Vec::new() };
            let _ = w.send(self.join_response(&id, members, version));
        }
        info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = %protocol, "rebalance: join complete");
    }

    pub(super) fn join_response(
        &self,
        member_id: &str,
        members: Vec<JoinGroupResponseMember>,
        version: i16,
    ) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(if version >= 7 { self.protocol_type.as_deref().map(s) } else { None })
            .with_protocol_name(self.protocol.as_deref().map(s))
            .with_leader(s(self.leader.as_deref().unwrap_or_default()))
            .with_member_id(s(member_id))
            .with_members(members)
    }

    /// The protocol every member supports with the most first-choice votes (Kafka's rule).
    pub(super) fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.members.iter().all(|m| m.protocols.iter().any(|(p, _)| p == *n)))
            .collect();
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in &self.members {
            if let Some((n, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        // Most votes wins; ties go to the earlier candidate in the first member's preference.
        let mut best: Option<(&String, usize)> = None;
        for c in candidates {
            let v = votes.get(c).copied().unwrap_or(0);
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((c, v));
            }
        }
        best.map(|(c, _)| c.clone())
    }

    pub(super) fn remove_member(&mut self, id: &str, why: &str, now_ms: i64) {
        let Some(pos) = self.members.iter().position(|m| m.id == id) else { return };
        let m = self.members.remove(pos);
        info!(group = %self.id, member = %m.id, reason = why, "member removed");
        if let Some((w, _)) = m.join_waiter {
            let _ = w.send(JoinGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code()));
        }
        if let Some(w) = m.sync_waiter {
            let _ = w.send(SyncGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code()));
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.start_rebalance(why),
            GroupState::PreparingRebalance => self.maybe_complete_join(false, now_ms),
            GroupState::Empty => {}
        }
        if self.members.is_empty() && self.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(true, now_ms);
        }
    }
}

/// Kafka sends group_instance_id in JoinGroup member lists only from v5.
fn strip_instance_ids(members: Vec<JoinGroupResponseMember>, version: i16) -> Vec<JoinGroupResponseMember> {
    if version >= 5 {
        members
    } else {
        members.into_iter().map(|m| m.with_group_instance_id(None)).collect()
    }
}
