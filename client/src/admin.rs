//! Typed calls on top of [`requests`](crate::requests): where a topic's partitions live, topic
//! creation and deletion, log end offsets, group coordinators and simple offset commits. Each turns
//! a Kafka error code into [`ClientError::Broker`].

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, MetadataResponse};

use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::error_code;
use crate::requests::{self, NewTopic};

/// How often a not-yet-ready topic or coordinator is asked about again.
pub const TOPIC_READY_POLL: Duration = Duration::from_millis(100);
pub const COORDINATOR_POLL: Duration = Duration::from_millis(200);

/// Where a topic's partitions live: broker addresses and the leader of each partition.
#[derive(Clone, Debug)]
pub struct TopicLayout {
    pub topic: String,
    /// node id → `host:port`.
    pub brokers: HashMap<i32, String>,
    /// Leader node id of partition `i` (index = partition).
    pub leaders: Vec<i32>,
}

impl TopicLayout {
    pub fn partitions(&self) -> i32 {
        self.leaders.len() as i32
    }

    pub fn leader_address(&self, partition: i32) -> Result<&str> {
        let leader = usize::try_from(partition).ok().and_then(|p| self.leaders.get(p)).copied().unwrap_or(-1);
        self.brokers
            .get(&leader)
            .map(String::as_str)
            .ok_or_else(|| ClientError::Invalid(format!("partition {partition} has no known leader ({leader})")))
    }

    /// Partitions grouped by leader address, in partition order.
    pub fn by_leader(&self, partitions: &[i32]) -> Result<Vec<(String, Vec<i32>)>> {
        let mut groups: Vec<(String, Vec<i32>)> = Vec::new();
        for &p in partitions {
            let addr = self.leader_address(p)?.to_string();
            match groups.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, ps)) => ps.push(p),
                None => groups.push((addr, vec![p])),
            }
        }
        Ok(groups)
    }
}

fn broker_error(conn: &Connection, api: &'static str, code: i16, detail: Option<String>) -> ClientError {
    ClientError::Broker { broker: conn.broker().to_string(), api, code, detail }
}

/// Creates `topic` if it is missing (TOPIC_ALREADY_EXISTS is fine) and waits up to `ready_timeout`
/// until every partition has a leader. An existing topic is used with the partitions it has.
pub fn ensure_topic(conn: &mut Connection, topic: NewTopic<'_>, ready_timeout: Duration) -> Result<TopicLayout> {
    if let Some(layout) = topic_layout(conn, topic.name)? {
        return Ok(layout);
    }
    let response = conn.call(&requests::create_topics(&[topic], 30_000))?;
    for result in &response.topics {
        if result.error_code != error_code::NONE && result.error_code != error_code::TOPIC_ALREADY_EXISTS {
            let detail = result.error_message.as_ref().map(|m| m.to_string());
            return Err(broker_error(conn, "CreateTopics", result.error_code, detail));
        }
    }
    let deadline = Instant::now() + ready_timeout;
    loop {
        if let Some(layout) = topic_layout(conn, topic.name)? {
            return Ok(layout);
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Invalid(format!(
                "topic {} has no leader for every partition {ready_timeout:?} after creation",
                topic.name
            )));
        }
        thread::sleep(TOPIC_READY_POLL);
    }
}

/// The topic's layout, or `None` while it does not exist or some partition has no leader.
pub fn topic_layout(conn: &mut Connection, topic: &str) -> Result<Option<TopicLayout>> {
    let version = conn.version(ApiKey::Metadata)?;
    let response: MetadataResponse = conn.call_at(&requests::metadata(Some(&[topic]), version), version)?;
    let brokers: HashMap<i32, String> =
        response.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let Some(t) = response.topics.iter().find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic)) else {
        return Ok(None);
    };
    match t.error_code {
        error_code::NONE => {}
        error_code::UNKNOWN_TOPIC_OR_PARTITION | error_code::LEADER_NOT_AVAILABLE => return Ok(None),
        code => return Err(broker_error(conn, "Metadata", code, None)),
    }
    if t.partitions.is_empty() {
        return Ok(None);
    }
    let mut leaders = vec![-1; t.partitions.len()];
    for p in &t.partitions {
        let index = usize::try_from(p.partition_index).ok().filter(|&i| i < leaders.len());
        let Some(index) = index else {
            return Err(ClientError::protocol(conn.broker(), format!("partition index {}", p.partition_index)));
        };
        leaders[index] = p.leader_id.0;
    }
    if leaders.iter().any(|l| !brokers.contains_key(l)) {
        return Ok(None);
    }
    Ok(Some(TopicLayout { topic: topic.to_string(), brokers, leaders }))
}

/// Log end offsets (ListOffsets "latest") of `partitions`, which must all be led by `conn`'s broker.
pub fn latest_offsets(conn: &mut Connection, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
    let response = conn.call(&requests::list_offsets(topic, partitions, requests::LATEST_TIMESTAMP))?;
    let mut out = Vec::with_capacity(partitions.len());
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != error_code::NONE {
                let detail = Some(format!("partition {}", p.partition_index));
                return Err(broker_error(conn, "ListOffsets", p.error_code, detail));
            }
            out.push((p.partition_index, p.offset));
        }
    }
    Ok(out)
}

/// The `host:port` of `group`'s coordinator (FindCoordinator; waits up to `timeout` while it is not
/// available yet).
pub fn find_coordinator(conn: &mut Connection, group: &str, timeout: Duration) -> Result<String> {
    let version = conn.version(ApiKey::FindCoordinator)?;
    let request = requests::find_coordinator(group, version);
    let deadline = Instant::now() + timeout;
    loop {
        let response = conn.call_at(&request, version)?;
        let (code, message, host, port) = match response.coordinators.first() {
            Some(c) if version >= requests::FIND_COORDINATOR_BATCHED_VERSION => {
                (c.error_code, c.error_message.clone(), c.host.clone(), c.port)
            }
            _ => (response.error_code, response.error_message.clone(), response.host.clone(), response.port),
        };
        match code {
            error_code::NONE => return Ok(format!("{}:{port}", host.as_str())),
            error_code::COORDINATOR_NOT_AVAILABLE if Instant::now() < deadline => thread::sleep(COORDINATOR_POLL),
            code => return Err(broker_error(conn, "FindCoordinator", code, message.map(|m| m.to_string()))),
        }
    }
}

/// Commits `offsets` (partition, next offset to read) for a standalone consumer of `group`; `conn`
/// must be the group's coordinator.
pub fn commit_offsets(conn: &mut Connection, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
    let response = conn.call(&requests::offset_commit(group, topic, offsets))?;
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != error_code::NONE {
                let detail = Some(format!("group {group} partition {}", p.partition_index));
                return Err(broker_error(conn, "OffsetCommit", p.error_code, detail));
            }
        }
    }
    Ok(())
}
