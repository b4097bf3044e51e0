//! The group coordinator (Kafka's classic group protocol): generations, member ids (KIP-394),
//! session and rebalance timeouts, leader-computed assignments relayed as opaque bytes (so range,
//! round-robin and cooperative-sticky all work), static membership (KIP-345), and committed
//! offsets made durable in `__consumer_offsets` before they are acknowledged.
//!
//! A group lives on the core that owns its `__consumer_offsets` partition; other cores forward
//! group requests there. Everything here runs on that one core.

pub mod offsets_log;
pub mod service;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long an offset commit waits for the in-sync replicas of its `__consumer_offsets` partition.
const COMMIT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::core::Shard;
use crate::partition::Acks;
use offsets_log::{Committed, OffsetRecord, OFFSETS_TOPIC};

/// Kafka's `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
pub const MIN_SESSION_TIMEOUT_MS: i32 = 6_000;
pub const MAX_SESSION_TIMEOUT_MS: i32 = 1_800_000;
/// Kafka's `group.initial.rebalance.delay.ms`: a new group waits this long for more members.
pub const INITIAL_REBALANCE_DELAY_MS: u64 = 3_000;
/// Kafka's `offset.metadata.max.bytes`.
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;
/// Kafka's `group.max.size`.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Kafka's `offsets.retention.minutes` (7 days): offsets of an empty group expire after this.
pub const OFFSETS_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often timers (sessions, rebalances, offset expiry) are checked.
pub const TICK_MS: u64 = 100;

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

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<(oneshot::Sender<JoinGroupResponse>, i16)>,
    sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order (the first member is the default leader).
    members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED and not yet used (KIP-394).
    pending: HashSet<String>,
    rebalance_deadline: Option<Instant>,
    /// A new group waits for more members until this instant (initial rebalance delay).
    join_not_before: Option<Instant>,
    offsets: BTreeMap<(String, i32), Committed>,
    /// When the group last became empty (offset retention counts from there).
    empty_since_ms: i64,
}

impl Group {
    fn new(id: &str, now_ms: i64) -> Self {
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

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn has_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Topics the members subscribe to (consumer protocol), for OffsetDelete's check.
    fn subscribed_topics(&self) -> HashSet<String> {
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

    fn start_rebalance(&mut self, why: &str) {
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

    fn all_joined(&self) -> bool {
        self.members.iter().all(|m| m.join_waiter.is_some())
    }

    /// Completes the join phase if every member rejoined (and any initial delay passed), or
    /// unconditionally when `deadline_passed` (dropping the members that did not rejoin).
    fn maybe_complete_join(&mut self, deadline_passed: bool, now_ms: i64) {
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

    fn join_response(&self, member_id: &str, members: Vec<JoinGroupResponseMember>, version: i16) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(if version >= 7 { self.protocol_type.as_deref().map(s) } else { None })
            .with_protocol_name(self.protocol.as_deref().map(s))
            .with_leader(s(self.leader.as_deref().unwrap_or_default()))
            .with_member_id(s(member_id))
            .with_members(members)
    }

    /// The protocol every member supports with the most first-choice votes (Kafka's rule).
    fn select_protocol(&self) -> Option<String> {
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

    fn remove_member(&mut self, id: &str, why: &str, now_ms: i64) {
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

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn join_error(code: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default().with_error_code(code.code()).with_generation_id(-1).with_member_id(s(member_id))
}

/// All groups coordinated by this core.
#[derive(Default)]
pub struct GroupCoordinator {
    groups: RefCell<HashMap<String, Group>>,
}

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

    /// Kafka's member id shape: `<client id>-<uuid>`.
    fn new_member_id(&self, client_id: &str) -> String {
        let prefix = if client_id.is_empty() { "member" } else { client_id };
        format!("{prefix}-{}", uuid::Uuid::new_v4().hyphenated())
    }

    pub async fn join(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        if group_id.is_empty() {
            return join_error(ResponseError::InvalidGroupId, &member_id);
        }
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&req.session_timeout_ms) {
            return join_error(ResponseError::InvalidSessionTimeout, &member_id);
        }
        let protocol_type = req.protocol_type.to_string();
        let protocols: Vec<(String, Bytes)> =
            req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect();
        if protocol_type.is_empty() || protocols.is_empty() {
            return join_error(ResponseError::InconsistentGroupProtocol, &member_id);
        }
        let instance_id = req.group_instance_id.as_ref().map(|i| i.to_string());
        let rebalance_ms =
            if version == 0 { req.session_timeout_ms } else { req.rebalance_timeout_ms.max(req.session_timeout_ms) };
        let rx = {
            let mut groups = self.groups.borrow_mut();
            let now = now_ms();
            let g = groups.entry(group_id.clone()).or_insert_with(|| Group::new(&group_id, now));
            if let Some(pt) = &g.protocol_type {
                if !g.members.is_empty() && pt != &protocol_type {
                    return join_error(ResponseError::InconsistentGroupProtocol, &member_id);
                }
            }
            if !g.members.is_empty()
                && !g.members.iter().all(|m| {
                    m.id == member_id || m.protocols.iter().any(|(p, _)| protocols.iter().any(|(q, _)| p == q))
                })
            {
                return join_error(ResponseError::InconsistentGroupProtocol, &member_id);
            }
            // Static member (KIP-345): its instance id identifies it across restarts.
            let static_known = instance_id
                .as_ref()
                .and_then(|i| g.members.iter().find(|m| m.instance_id.as_ref() == Some(i)).map(|m| m.id.clone()));
            let mut member_id = member_id;
            if member_id.is_empty() {
                match (&static_known, &instance_id) {
                    (Some(old), Some(_)) => {
                        // Same instance, new incarnation: it takes over the old member's place.
                        let new_id = self.new_member_id(client_id);
                        if let Some(m) = g.member(old) {
                            if let Some((w, _)) = m.join_waiter.take() {
                                let _ = w.send(join_error(ResponseError::FencedInstanceId, old));
                            }
                            m.id = new_id.clone();
                        }
                        if g.leader.as_deref() == Some(old.as_str()) {
                            g.leader = Some(new_id.clone());
                        }
                        member_id = new_id;
                    }
                    (None, Some(_)) => member_id = self.new_member_id(client_id),
                    (_, None) => {
                        let new_id = self.new_member_id(client_id);
                        if version >= 4 {
                            // KIP-394: the client must rejoin with this id.
                            g.pending.insert(new_id.clone());
                            return join_error(ResponseError::MemberIdRequired, &new_id);
                        }
                        member_id = new_id;
                    }
                }
            } else if !g.has_member(&member_id) && !g.pending.remove(&member_id) {
                if let Some(old) = &static_known {
                    if old != &member_id {
                        return join_error(ResponseError::FencedInstanceId, &member_id);
                    }
                }
                return join_error(ResponseError::UnknownMemberId, &member_id);
            }
            if !g.has_member(&member_id) && g.members.len() >= MAX_GROUP_MEMBERS {
                return join_error(ResponseError::GroupMaxSizeReached, &member_id);
            }
            let (tx, rx) = oneshot::channel();
            let known = g.has_member(&member_id);
            let unchanged = g.member(&member_id).is_some_and(|m| m.protocols == protocols);
            let is_leader = g.leader.as_deref() == Some(member_id.as_str());
            match g.member(&member_id) {
                Some(m) => {
                    m.protocols = protocols;
                    m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                    m.rebalance_timeout = Duration::from_millis(rebalance_ms as u64);
                    m.last_seen = Instant::now();
                    m.join_waiter = Some((tx, version));
                }
                None => g.members.push(Member {
                    id: member_id.clone(),
                    instance_id: instance_id.clone(),
                    client_id: client_id.to_string(),
                    client_host: client_host.to_string(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                    rebalance_timeout: Duration::from_millis(rebalance_ms as u64),
                    protocols,
                    assignment: Bytes::new(),
                    last_seen: Instant::now(),
                    join_waiter: Some((tx, version)),
                    sync_waiter: None,
                }),
            }
            g.protocol_type = Some(protocol_type);
            match g.state {
                GroupState::Stable | GroupState::CompletingRebalance if known && unchanged && !is_leader => {
                    // A follower rejoining with the same metadata gets the current generation.
                    let m = g.members.iter_mut().find(|m| m.id == member_id).expect("just updated");
                    let (w, v) = m.join_waiter.take().expect("just set");
                    let resp = g.join_response(&member_id, Vec::new(), v);
                    let _ = w.send(resp);
                }
                GroupState::PreparingRebalance => {
                    if let Some(t) = g.join_not_before {
                        // Each new member in the initial delay extends it (up to the deadline).
                        let next = Instant::now() + Duration::from_millis(INITIAL_REBALANCE_DELAY_MS);
                        g.join_not_before = Some(g.rebalance_deadline.map_or(next, |d| next.min(d)).max(t));
                    }
                    g.maybe_complete_join(false, now);
                }
                _ => {
                    g.start_rebalance("member joined");
                    g.maybe_complete_join(false, now);
                }
            }
            rx
        };
        rx.await.unwrap_or_else(|_| join_error(ResponseError::RebalanceInProgress, ""))
    }

    pub async fn sync(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let err = |e: ResponseError| SyncGroupResponse::default().with_error_code(e.code());
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let rx = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&group_id) else { return err(ResponseError::UnknownMemberId) };
            if !g.has_member(&member_id) {
                return err(ResponseError::UnknownMemberId);
            }
            if req.generation_id != g.generation {
                return err(ResponseError::IllegalGeneration);
            }
            if version >= 5 {
                let pt_ok = req.protocol_type.as_ref().is_none_or(|p| Some(p.as_str()) == g.protocol_type.as_deref());
                let pn_ok = req.protocol_name.as_ref().is_none_or(|p| Some(p.as_str()) == g.protocol.as_deref());
                if !pt_ok || !pn_ok {
                    return err(ResponseError::InconsistentGroupProtocol);
                }
            }
            let finish = |g: &Group, a: Bytes| {
                let r = SyncGroupResponse::default().with_assignment(a);
                if version >= 5 {
                    r.with_protocol_type(g.protocol_type.as_deref().map(s))
                        .with_protocol_name(g.protocol.as_deref().map(s))
                } else {
                    r
                }
            };
            match g.state {
                GroupState::Empty | GroupState::PreparingRebalance => return err(ResponseError::RebalanceInProgress),
                GroupState::Stable => {
                    let a = g.member(&member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                    if let Some(m) = g.member(&member_id) {
                        m.last_seen = Instant::now();
                    }
                    return finish(g, a);
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = g.member(&member_id) {
                m.sync_waiter = Some(tx);
                m.last_seen = Instant::now();
            }
            if g.leader.as_deref() == Some(member_id.as_str()) {
                let assignments: HashMap<String, Bytes> =
                    req.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
                for m in &mut g.members {
                    m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
                }
                debug_assert!(g.state == GroupState::CompletingRebalance, "sync completes a join, not {:?}", g.state);
                g.state = GroupState::Stable;
                let pt = g.protocol_type.clone();
                let pn = g.protocol.clone();
                for m in &mut g.members {
                    if let Some(w) = m.sync_waiter.take() {
                        let r = SyncGroupResponse::default().with_assignment(m.assignment.clone());
                        let r = if version >= 5 {
                            r.with_protocol_type(pt.as_deref().map(s)).with_protocol_name(pn.as_deref().map(s))
                        } else {
                            r
                        };
                        let _ = w.send(r);
                    }
                }
                info!(group = %g.id, generation = g.generation, "group stable");
            }
            rx
        };
        rx.await.unwrap_or_else(|_| err(ResponseError::RebalanceInProgress))
    }

    pub fn heartbeat(&self, req: HeartbeatRequest) -> HeartbeatResponse {
        let code = |e: ResponseError| HeartbeatResponse::default().with_error_code(e.code());
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(req.group_id.0.as_str()) else { return code(ResponseError::UnknownMemberId) };
        let generation = g.generation;
        let state = g.state;
        let Some(m) = g.member(req.member_id.as_str()) else { return code(ResponseError::UnknownMemberId) };
        m.last_seen = Instant::now();
        match state {
            GroupState::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            _ if req.generation_id != generation => code(ResponseError::IllegalGeneration),
            _ => HeartbeatResponse::default(),
        }
    }

    pub fn leave(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut groups = self.groups.borrow_mut();
        let now = now_ms();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let Some(g) = groups.get_mut(req.group_id.0.as_str()) else {
            return LeaveGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code());
        };
        let mut results = Vec::new();
        let mut any_error = None;
        for (member_id, instance) in leaving {
            // A static member may leave by instance id alone.
            let id = match (&instance, member_id.is_empty()) {
                (Some(i), true) => g.members.iter().find(|m| m.instance_id.as_ref() == Some(i)).map(|m| m.id.clone()),
                _ => g.has_member(&member_id).then(|| member_id.clone()),
            };
            let code = match id {
                Some(id) => {
                    g.remove_member(&id, "left the group", now);
                    0
                }
                None => {
                    any_error = Some(ResponseError::UnknownMemberId);
                    ResponseError::UnknownMemberId.code()
                }
            };
            results.push(
                MemberResponse::default()
                    .with_member_id(s(&member_id))
                    .with_group_instance_id(instance.as_deref().map(s))
                    .with_error_code(code),
            );
        }
        if version >= 3 {
            LeaveGroupResponse::default().with_members(results)
        } else {
            LeaveGroupResponse::default().with_error_code(any_error.map(|e| e.code()).unwrap_or(0))
        }
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

    pub fn list(&self, states: &[String]) -> Vec<ListedGroup> {
        self.groups
            .borrow()
            .values()
            .filter(|g| states.is_empty() || states.iter().any(|st| st.eq_ignore_ascii_case(g.state.name())))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(s(&g.id)))
                    .with_protocol_type(s(g.protocol_type.as_deref().unwrap_or_default()))
                    .with_group_state(s(g.state.name()))
                    .with_group_type(s("classic"))
            })
            .collect()
    }

    pub fn describe(&self, group_id: &str, version: i16) -> DescribedGroup {
        let groups = self.groups.borrow();
        let base = DescribedGroup::default().with_group_id(GroupId(s(group_id))).with_authorized_operations(i32::MIN);
        let Some(g) = groups.get(group_id) else {
            // Kafka: an unknown group is "Dead"; v6 says GROUP_ID_NOT_FOUND.
            let d = base.with_group_state(s("Dead"));
            return if version >= 6 { d.with_error_code(ResponseError::GroupIdNotFound.code()) } else { d };
        };
        let proto = g.protocol.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        let members = g
            .members
            .iter()
            .map(|m| {
                DescribedGroupMember::default()
                    .with_member_id(s(&m.id))
                    .with_group_instance_id(if version >= 4 { m.instance_id.as_deref().map(s) } else { None })
                    .with_client_id(s(&m.client_id))
                    .with_client_host(s(&m.client_host))
                    .with_member_metadata(m.metadata_for(&proto))
                    .with_member_assignment(if stable { m.assignment.clone() } else { Bytes::new() })
            })
            .collect();
        base.with_group_state(s(g.state.name()))
            .with_protocol_type(s(g.protocol_type.as_deref().unwrap_or_default()))
            .with_protocol_data(s(&proto))
            .with_members(members)
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

    pub fn forget(&self, group_id: &str) {
        self.groups.borrow_mut().remove(group_id);
    }

    pub fn exists(&self, group_id: &str) -> bool {
        self.groups.borrow().contains_key(group_id)
    }

    /// Topics the group is subscribed to (OffsetDelete refuses to delete those commits).
    pub fn subscribed(&self, group_id: &str) -> HashSet<String> {
        self.groups.borrow().get(group_id).map(|g| g.subscribed_topics()).unwrap_or_default()
    }

    /// Expires sessions, completes overdue rebalances, and returns offsets whose retention ended.
    pub fn tick(&self) -> Vec<(String, Vec<OffsetRecord>)> {
        let now = Instant::now();
        let now_ms = now_ms();
        let mut expired_offsets = Vec::new();
        let mut groups = self.groups.borrow_mut();
        for g in groups.values_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|m| m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout)
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                g.remove_member(&id, "session timeout", now_ms);
            }
            if g.state == GroupState::PreparingRebalance {
                let overdue = g.rebalance_deadline.is_some_and(|d| now >= d);
                g.maybe_complete_join(overdue, now_ms);
            }
            if g.state == GroupState::Empty && g.members.is_empty() && now_ms - g.empty_since_ms > OFFSETS_RETENTION_MS
            {
                let recs: Vec<OffsetRecord> = g
                    .offsets
                    .keys()
                    .map(|(t, p)| OffsetRecord { group: g.id.clone(), topic: t.clone(), partition: *p, value: None })
                    .collect();
                if !recs.is_empty() {
                    expired_offsets.push((g.id.clone(), recs));
                }
            }
        }
        expired_offsets
    }
}
