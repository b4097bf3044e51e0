//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete. Each request is routed to
//! the core coordinating the group (the owner of its `__consumer_offsets` partition); ListGroups
//! asks every core. Responses set only fields that exist in the negotiated version.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::clock::now_ms;
use crate::core::Shard;
use crate::groups::offsets_log::{Committed, OffsetRecord};
use crate::groups::service::{self, on_core};
use crate::groups::GroupCoordinator;
use crate::groups::MAX_OFFSET_METADATA_BYTES;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Runs `job` with the coordinator of `group`; in a cluster only on the broker leading the
/// group's `__consumer_offsets` partition (NOT_COORDINATOR elsewhere).
async fn call<R, F, Fut>(shard: &Rc<Shard>, group: &str, job: F) -> Result<R, ResponseError>
where
    F: FnOnce(Rc<Shard>, Rc<GroupCoordinator>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let (leader, _, _) = coordinator_of(shard, group)?;
    if leader.0 != shard.config.node_id {
        return Err(ResponseError::NotCoordinator);
    }
    service::on_coordinator(shard, group, job).await
}

/// The broker coordinating `group`: this one on a single node; in a cluster the leader of the
/// group's `__consumer_offsets` partition.
fn coordinator_of(shard: &Rc<Shard>, group: &str) -> Result<(BrokerId, String, i32), ResponseError> {
    let cat = shard.catalog();
    let Some(view) = &cat.cluster else {
        let (host, port) = shard.config.advertised();
        return Ok((BrokerId(shard.config.node_id), host, port));
    };
    let n = service::offsets_partitions(shard);
    if n == 0 {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    let partition = crate::groups::offsets_log::partition_for(group, n);
    let leader = view
        .partition(crate::groups::offsets_log::OFFSETS_TOPIC, partition)
        .map(|p| p.leader)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let addr = view.state.brokers.get(&leader).ok_or(ResponseError::CoordinatorNotAvailable)?;
    let (host, port) = addr.kafka_addr.rsplit_once(':').ok_or(ResponseError::CoordinatorNotAvailable)?;
    let port = port.parse().map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    Ok((BrokerId(leader), host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

pub fn find_coordinator(shard: &Rc<Shard>, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let answer = |key: &str| -> Result<(BrokerId, String, i32), ResponseError> {
        if req.key_type != 0 {
            return Err(ResponseError::CoordinatorNotAvailable); // no transaction coordinator yet
        }
        if key.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        service::coordinator_core(shard, key).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        coordinator_of(shard, key)
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let c = Coordinator::default().with_key(k.clone());
                match answer(k) {
                    Ok((node, host, port)) => c.with_node_id(node).with_host(s(&host)).with_port(port),
                    Err(e) => c.with_node_id(BrokerId(-1)).with_port(-1).with_error_code(e.code()),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match answer(&req.key) {
        Ok((node, host, port)) => {
            FindCoordinatorResponse::default().with_node_id(node).with_host(s(&host)).with_port(port)
        }
        Err(e) => FindCoordinatorResponse::default().with_error_code(e.code()).with_node_id(BrokerId(-1)).with_port(-1),
    }
}

pub async fn join(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
    host: String,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    match call(shard, &group, move |_, g| async move { g.join(req, version, &client_id, &host).await }).await {
        Ok(r) => r,
        Err(_) => JoinGroupResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_generation_id(-1),
    }
}

pub async fn sync(shard: &Rc<Shard>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    match call(shard, &group, move |_, g| async move { g.sync(req, version).await }).await {
        Ok(r) => r,
        _ => SyncGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    match call(shard, &group, move |_, g| async move { g.heartbeat(req) }).await {
        Ok(r) => r,
        _ => HeartbeatResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub async fn leave(shard: &Rc<Shard>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    match call(shard, &group, move |_, g| async move { g.leave(req, version) }).await {
        Ok(r) => r,
        _ => LeaveGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub async fn offset_commit(shard: &Rc<Shard>, req: OffsetCommitRequest, _version: i16) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let now = now_ms();
    let cat = shard.catalog();
    // Per-partition validation first; the valid ones are written in one batch.
    let mut codes: Vec<Vec<(i32, Option<ResponseError>)>> = Vec::new();
    let mut records = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        let meta = cat.topics.get(&topic);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default();
            let exists =
                meta.is_some_and(|m| p.partition_index >= 0 && (p.partition_index as usize) < m.partition_cores.len());
            let code = if !exists {
                Some(ResponseError::UnknownTopicOrPartition)
            } else if metadata.len() > MAX_OFFSET_METADATA_BYTES {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else {
                records.push(OffsetRecord {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: p.partition_index,
                    value: Some(Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    }),
                });
                None
            };
            parts.push((p.partition_index, code));
        }
        codes.push(parts);
    }
    let (generation, member, name) = (req.generation_id_or_member_epoch, req.member_id.to_string(), group.clone());
    let outcome =
        call(shard, &group, move |s, g| async move { g.commit(&s, &name, generation, &member, records).await })
            .await
            .and_then(|r| r);
    let topics = req
        .topics
        .iter()
        .zip(codes)
        .map(|(t, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, code)| {
                    let code = code.or(outcome.err()).map(|e| e.code()).unwrap_or(0);
                    OffsetCommitResponsePartition::default().with_partition_index(index).with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

async fn fetch_group(
    shard: &Rc<Shard>,
    group: &str,
    wanted: Option<Vec<(String, i32)>>,
) -> Result<Vec<(String, i32, Option<Committed>)>, ResponseError> {
    let name = group.to_string();
    call(shard, group, move |_, g| async move { g.fetch_offsets(&name, wanted) }).await
}

/// A topic's committed offsets, by partition (`None`: nothing committed).
type TopicOffsets = (String, Vec<(i32, Option<Committed>)>);

/// Groups consecutive (topic, partition, committed) rows by topic, keeping order.
fn by_topic(rows: Vec<(String, i32, Option<Committed>)>) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    for (t, p, c) in rows {
        match out.last_mut() {
            Some((name, parts)) if *name == t => parts.push((p, c)),
            _ => out.push((t, vec![(p, c)])),
        }
    }
    out
}

pub async fn offset_fetch(shard: &Rc<Shard>, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let epoch = |c: &Option<Committed>| if version >= 5 { c.as_ref().map_or(-1, |c| c.leader_epoch) } else { -1 };
    if version >= 8 {
        let mut groups = Vec::new();
        for g in req.groups {
            let group = g.group_id.0.to_string();
            let wanted = g.topics.map(|ts| {
                ts.iter().flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p))).collect()
            });
            let r = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
            groups.push(match fetch_group(shard, &group, wanted).await {
                Err(e) => r.with_error_code(e.code()),
                Ok(rows) => r.with_topics(
                    by_topic(rows)
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default().with_name(TopicName(s(&t))).with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, c)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                            .with_committed_leader_epoch(epoch(&c))
                                            .with_metadata(Some(s(c.as_ref().map_or("", |c| c.metadata.as_str()))))
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                ),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group = req.group_id.0.to_string();
    let wanted = req.topics.map(|ts| {
        ts.iter().flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p))).collect()
    });
    match fetch_group(shard, &group, wanted).await {
        Err(e) => OffsetFetchResponse::default().with_error_code(if version >= 2 { e.code() } else { 0 }),
        Ok(rows) => OffsetFetchResponse::default().with_topics(
            by_topic(rows)
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default().with_name(TopicName(s(&t))).with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, c)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                    .with_committed_leader_epoch(epoch(&c))
                                    .with_metadata(Some(s(c.as_ref().map_or("", |c| c.metadata.as_str()))))
                            })
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

pub async fn list_groups(shard: &Rc<Shard>, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|x| x.to_string()).collect();
    let mut groups = Vec::new();
    for core in 0..shard.cores {
        let states = states.clone();
        if let Ok(l) = on_core(shard, core, move |_, g| async move { g.list(&states) }).await {
            groups.extend(l);
        }
    }
    let groups = groups
        .into_iter()
        .map(|g| {
            let g = if version >= 4 { g } else { g.with_group_state(StrBytes::default()) };
            if version >= 5 {
                g
            } else {
                g.with_group_type(StrBytes::default())
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(shard: &Rc<Shard>, req: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let mut out = Vec::new();
    for g in req.groups {
        let group = g.0.to_string();
        let name = group.clone();
        out.push(match call(shard, &group, move |_, g| async move { g.describe(&name, version) }).await {
            Ok(d) => {
                if req.include_authorized_operations || version < 3 {
                    d
                } else {
                    d.with_authorized_operations(i32::MIN)
                }
            }
            Err(_) => DescribedGroup::default()
                .with_group_id(g)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_authorized_operations(i32::MIN),
        });
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for g in req.groups_names {
        let group = g.0.to_string();
        let name = group.clone();
        let code = match call(shard, &group, move |s, g| async move { g.delete_group(&s, &name).await }).await {
            Ok(c) => c,
            Err(e) => e.code(),
        };
        results.push(DeletableGroupResult::default().with_group_id(GroupId(s(&group))).with_error_code(code));
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let name = group.clone();
    let deleted = call(shard, &group, move |s, g| async move { g.delete_offsets(&s, &name, partitions).await }).await;
    let (code, per) = deleted.unwrap_or_else(|e| (e.code(), Vec::new()));
    if code != 0 {
        return OffsetDeleteResponse::default().with_error_code(code);
    }
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.to_string();
            OffsetDeleteResponseTopic::default().with_name(t.name.clone()).with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        let c =
                            per.iter().find(|(tn, pi, _)| *tn == name && *pi == p.partition_index).map_or(0, |x| x.2);
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(c)
                    })
                    .collect(),
            )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
