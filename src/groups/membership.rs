//! Group membership requests on the coordinator: JoinGroup (member ids per KIP-394, static members
//! per KIP-345, waiting for the rebalance to complete), SyncGroup (the leader's assignment relayed to
//! every member), Heartbeat and LeaveGroup.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use tracing::info;

use super::group::{Group, GroupState, Member};
use super::{
    s, GroupCoordinator, INITIAL_REBALANCE_DELAY_MS, MAX_GROUP_MEMBERS, MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS,
};
use crate::clock::now_ms;

fn join_error(code: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default().with_error_code(code.code()).with_generation_id(-1).with_member_id(s(member_id))
}

impl GroupCoordinator {
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
}
