//! The group coordinator (Kafka's classic group protocol): generations, member ids (KIP-394),
//! session and rebalance timeouts, leader-computed assignments relayed as opaque bytes (so range,
//! round-robin and cooperative-sticky all work), static membership (KIP-345), and committed
//! offsets made durable in `__consumer_offsets` before they are acknowledged.
//!
//! A group lives on the core that owns its `__consumer_offsets` partition; other cores forward
//! group requests there. Everything here runs on that one core.
//!
//! The coordinator's jobs live in submodules: `group` (one group's state machine), `membership`
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), `offsets` (commits and offset fetches),
//! `offsets_log` (the `__consumer_offsets` record format) and `service` (the per-core service
//! that hosts the coordinator). This file keeps the coordinator type, its limits, the group
//! listings and the timers.

mod group;
mod membership;
mod offsets;
pub mod offsets_log;
pub mod service;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;

use crate::clock::now_ms;
use group::Group;
use offsets_log::OffsetRecord;

pub use group::GroupState;
pub use offsets::PartitionCode;

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

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// All groups coordinated by this core.
#[derive(Default)]
pub struct GroupCoordinator {
    groups: RefCell<HashMap<String, Group>>,
}

impl GroupCoordinator {
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
