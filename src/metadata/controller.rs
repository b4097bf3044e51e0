//! Cluster mode on core 0 of every broker: keeps the cores' catalog in step with the Raft-replicated
//! cluster metadata, registers this broker, turns Kafka admin requests into Raft commands, and —
//! on the broker that leads the Raft group, the controller — elects partition leaders when brokers
//! die and drops dead brokers from ISRs.
//!
//! Liveness: the controller is the Raft leader, and every broker answers its heartbeats (every
//! 100 ms); a broker whose last answer is older than `broker_session_timeout_ms` is dead. Leaders
//! are elected from the ISR only (no unclean election), so no acknowledged record is lost.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use tracing::{info, warn};

use super::admin::{refused, report_open_failures, AdminState, NewTopic, TopicConfigChange, TopicOutcome};
use crate::cluster::{BrokerEndpoints, BrokerId, ClusterCommand, ControlPlane, ControlPlaneError, Rejection};
use crate::config::TopicSettings;
use crate::core::Shard;
use crate::groups::offsets_log::OFFSETS_TOPIC;
use crate::partition::PartitionError;
use crate::topic_limits::{self, PartitionBudget};
use crate::topics::{self, ClusterView, TopicTable};

/// How long a proposal may take (leader elections included) before the request fails.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the controller looks at broker liveness.
const CONTROLLER_TICK: Duration = Duration::from_millis(100);
/// How often a leader looks for ISR changes to propose.
const ISR_TICK: Duration = Duration::from_millis(200);
/// Longest wait for one proposal during a controlled shutdown.
const CONTROLLED_SHUTDOWN_STEP: Duration = Duration::from_secs(1);
/// Most leader and ISR changes the controller proposes per tick (bounds one tick's work).
const MAX_CHANGES_PER_TICK: usize = 256;

/// Starts the cluster tasks of core 0: catalog sync, registration, the controller loop.
pub fn start(shard: &Rc<Shard>, cp: Arc<ControlPlane>) {
    let (s, c) = (shard.clone(), cp.clone());
    glommio::spawn_local(async move { sync_loop(s, c).await }).detach();
    let (s, c) = (shard.clone(), cp.clone());
    glommio::spawn_local(async move { register(s, c).await }).detach();
    let s = shard.clone();
    glommio::spawn_local(async move { controller_loop(s, cp).await }).detach();
}

/// Starts the per-core ISR watcher (every core, cluster mode).
pub fn start_isr_watch(shard: &Rc<Shard>, cp: Arc<ControlPlane>) {
    let s = shard.clone();
    glommio::spawn_local(async move {
        let lag = s.config.replication.replica_lag_time_max_ms as i64;
        while !s.shutting_down.get() {
            glommio::timer::sleep(ISR_TICK).await;
            let now = crate::clock::now_ms();
            for p in s.local_partitions() {
                let Some((isr, leader_epoch, partition_epoch)) = p.isr_change(now, lag) else { continue };
                let key = (p.topic.clone(), p.index);
                if !s.isr_pending.borrow_mut().insert(key.clone()) {
                    continue;
                }
                info!(topic = %p.topic, partition = p.index, ?isr, "proposing ISR change");
                let cmd = ClusterCommand::SetIsr {
                    topic: p.topic.clone(),
                    partition: p.index,
                    isr,
                    leader_epoch,
                    partition_epoch,
                };
                let (s2, cp2) = (s.clone(), cp.clone());
                glommio::spawn_local(async move {
                    match cp2.propose(cmd, PROPOSE_TIMEOUT).await {
                        Ok(Ok(w)) => {
                            if let Err(r) = &w.result {
                                info!(topic = %key.0, partition = key.1, rejection = %r, "ISR change refused");
                            }
                            // Wait until this broker applied it, so the next tick sees the outcome.
                            let _ = cp2.wait_applied(w.log_index, PROPOSE_TIMEOUT).await;
                        }
                        Ok(Err(e)) => warn!(topic = %key.0, partition = key.1, error = %e, "ISR change failed"),
                        Err(_) => {}
                    }
                    s2.isr_pending.borrow_mut().remove(&key);
                })
                .detach();
            }
        }
    })
    .detach();
}

/// Publishes the applied cluster metadata to every core whenever Raft applied more of it.
async fn sync_loop(shard: Rc<Shard>, cp: Arc<ControlPlane>) {
    let mut changes = cp.subscribe();
    loop {
        sync(&shard, &cp).await;
        let changed = futures_lite::future::or(async { changes.changed().await.is_ok() }, async {
            shard.wait_shutdown().await;
            false
        })
        .await;
        if !changed {
            return;
        }
    }
}

/// Makes every core adopt the metadata this broker applied, if it is newer than theirs.
pub async fn sync(shard: &Rc<Shard>, cp: &ControlPlane) {
    let _permit = shard.sync_lock.acquire_permit(1).await;
    let metrics = cp.metrics();
    let applied_index = metrics.last_applied.map_or(0, |l| l.index);
    let controller = metrics.current_leader.map(|n| n as BrokerId);
    let current = shard.catalog();
    if let Some(v) = &current.cluster {
        if v.applied_index >= applied_index && v.controller == controller {
            return;
        }
    }
    // The state may be a little ahead of `applied_index` (read after): never behind it.
    let view = ClusterView { node_id: shard.config.node_id, controller, applied_index, state: cp.state() };
    let table = TopicTable::from_cluster(view, shard.cores, 0);
    if let Err(e) = shard.publish(table).await {
        warn!(error = %e.message, "publishing cluster metadata");
    }
}

/// Registers this broker's endpoints (retried until the cluster takes it).
async fn register(shard: Rc<Shard>, cp: Arc<ControlPlane>) {
    let Some(peer) = shard.config.own_peer().cloned() else { return };
    let endpoints = BrokerEndpoints { kafka_addr: peer.kafka.clone(), replication_addr: peer.replication.clone() };
    let cmd = ClusterCommand::RegisterBroker { broker_id: shard.config.node_id, endpoints };
    while !shard.shutting_down.get() {
        match cp.propose(cmd.clone(), PROPOSE_TIMEOUT).await {
            Ok(Ok(w)) => {
                info!(node_id = shard.config.node_id, log_index = w.log_index, "registered with the cluster");
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "registering with the cluster; retrying"),
            Err(_) => return,
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
}

/// While this broker leads the Raft group: names the cluster, creates `__consumer_offsets` once
/// enough brokers registered, and handles dead brokers.
async fn controller_loop(shard: Rc<Shard>, cp: Arc<ControlPlane>) {
    let session = Duration::from_millis(shard.config.replication.broker_session_timeout_ms);
    let mut leading_since: Option<Instant> = None;
    while !shard.shutting_down.get() {
        glommio::timer::sleep(CONTROLLER_TICK).await;
        if !cp.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(|| {
            info!(node_id = shard.config.node_id, "this broker is the controller");
            Instant::now()
        });
        let state = cp.state();
        if state.cluster_id.is_empty() {
            let cluster_id = topics::base64_url(uuid::Uuid::new_v4().as_bytes());
            propose_logged(&cp, ClusterCommand::InitCluster { cluster_id }).await;
            continue;
        }
        let peers = shard.config.cluster.peers.len();
        if !state.topics.contains_key(OFFSETS_TOPIC) && state.brokers.len() >= peers.min(3) {
            create_offsets_topic(&shard, &cp, &state).await;
        }
        // Judge liveness only after a full session of heartbeats from this leadership.
        if since.elapsed() < session {
            continue;
        }
        let acks = cp.peer_acks();
        let me = shard.config.node_id;
        let alive = |b: BrokerId| b == me || acks.get(&(b as u64)).is_some_and(|t| t.elapsed() < session);
        let mut changes = Vec::new();
        for (name, t) in &state.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                let isr: Vec<BrokerId> = p.isr.iter().copied().filter(|b| alive(*b)).collect();
                if !alive(p.leader) {
                    // The first live ISR member in replica order (the preferred order).
                    let Some(leader) = p.replicas.iter().copied().find(|b| isr.contains(b)) else {
                        continue; // offline until an ISR member returns: no unclean election
                    };
                    changes.push(ClusterCommand::SetLeader {
                        topic: name.clone(),
                        partition: i as i32,
                        leader,
                        leader_epoch: p.leader_epoch + 1,
                        isr,
                    });
                } else if isr.len() < p.isr.len() {
                    changes.push(ClusterCommand::SetIsr {
                        topic: name.clone(),
                        partition: i as i32,
                        isr,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                    });
                }
            }
        }
        for cmd in changes.into_iter().take(MAX_CHANGES_PER_TICK) {
            info!(?cmd, "controller: broker failure");
            propose_logged(&cp, cmd).await;
        }
    }
}

/// Controlled shutdown (Kafka's): before a broker stops, the partitions it leads move to another
/// in-sync replica (epoch + 1) and it leaves the ISR of those it follows, so clients and followers
/// move on at once instead of after the session timeout. Bounded by `timeout`; what is left then is
/// handled by the controller when the broker is gone.
pub async fn controlled_shutdown(shard: &Rc<Shard>, cp: &ControlPlane, timeout: Duration) {
    let me = shard.config.node_id;
    let started = Instant::now();
    let state = cp.state();
    let mut moved = 0usize;
    let mut left = 0usize;
    for (name, t) in &state.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            if started.elapsed() >= timeout {
                warn!(moved, left, "controlled shutdown: out of time");
                return;
            }
            let isr: Vec<BrokerId> = p.isr.iter().copied().filter(|b| *b != me).collect();
            let cmd = if p.leader == me {
                let Some(leader) = p.replicas.iter().copied().find(|b| isr.contains(b)) else { continue };
                moved += 1;
                ClusterCommand::SetLeader {
                    topic: name.clone(),
                    partition: i as i32,
                    leader,
                    leader_epoch: p.leader_epoch + 1,
                    isr,
                }
            } else if p.isr.contains(&me) && !isr.is_empty() {
                left += 1;
                ClusterCommand::SetIsr {
                    topic: name.clone(),
                    partition: i as i32,
                    isr,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                }
            } else {
                continue;
            };
            // One slow proposal means the metadata quorum is going too (the whole cluster is being
            // stopped): give up rather than hold the shutdown.
            let step = timeout.saturating_sub(started.elapsed()).min(CONTROLLED_SHUTDOWN_STEP);
            match cp.propose(cmd, step).await {
                Ok(Ok(w)) => {
                    let _ = cp.wait_applied(w.log_index, step).await;
                }
                _ => {
                    warn!(moved, left, "controlled shutdown: the cluster metadata does not answer; stopping anyway");
                    return;
                }
            }
        }
    }
    sync(shard, cp).await;
    info!(moved, left, elapsed_ms = started.elapsed().as_millis() as u64, "controlled shutdown: leadership moved");
}

async fn propose_logged(cp: &ControlPlane, cmd: ClusterCommand) {
    match cp.propose(cmd, PROPOSE_TIMEOUT).await {
        Ok(Ok(w)) => {
            if let Err(r) = w.result {
                info!(rejection = %r, "controller: change refused");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "controller: proposal failed"),
        Err(_) => {}
    }
}

async fn create_offsets_topic(shard: &Rc<Shard>, cp: &ControlPlane, state: &crate::cluster::ClusterState) {
    let rf = state.brokers.len().min(3);
    let brokers: Vec<BrokerId> = state.brokers.keys().copied().collect();
    let partitions = shard.config.offsets_topic_partitions as usize;
    let assignment = assign(&brokers, partitions, rf, 0);
    let cmd = ClusterCommand::CreateTopic {
        name: OFFSETS_TOPIC.into(),
        topic_id: *uuid::Uuid::new_v4().as_bytes(),
        configs: crate::groups::offsets_log::topic_configs().into_iter().collect(),
        assignment,
    };
    info!(partitions, replication_factor = rf, "creating {OFFSETS_TOPIC}");
    propose_logged(cp, cmd).await;
}

/// Replica lists for `partitions` new partitions over `brokers`: partition p's leader is broker
/// `start + p` (round robin), its followers the next ones (Kafka's rack-unaware assignment without
/// the follower shift).
pub fn assign(brokers: &[BrokerId], partitions: usize, rf: usize, start: usize) -> Vec<Vec<BrokerId>> {
    assert!(rf >= 1 && rf <= brokers.len(), "replication factor within the brokers");
    let n = brokers.len();
    (0..partitions).map(|p| (0..rf).map(|j| brokers[(start + p + j) % n]).collect()).collect()
}

/// Proposes `cmd` and waits until this broker applied it and every core adopted it.
async fn write(shard: &Rc<Shard>, cp: &ControlPlane, cmd: ClusterCommand) -> Result<(), (ResponseError, String)> {
    let outcome = match cp.propose(cmd, PROPOSE_TIMEOUT).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(control_error(&e)),
        Err(_) => return Err((ResponseError::UnknownServerError, "control plane stopped".into())),
    };
    match cp.wait_applied(outcome.log_index, PROPOSE_TIMEOUT).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(control_error(&e)),
        Err(_) => return Err((ResponseError::UnknownServerError, "control plane stopped".into())),
    }
    sync(shard, cp).await;
    outcome.result.map_err(|r| rejection_error(&r))
}

fn control_error(e: &ControlPlaneError) -> (ResponseError, String) {
    (ResponseError::RequestTimedOut, format!("cluster metadata: {e}"))
}

fn rejection_error(r: &Rejection) -> (ResponseError, String) {
    let code = match r {
        Rejection::TopicExists(_) => ResponseError::TopicAlreadyExists,
        Rejection::UnknownTopic(_) | Rejection::UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
        Rejection::UnknownBroker(_) | Rejection::InvalidAssignment(_) => ResponseError::InvalidReplicaAssignment,
        _ => ResponseError::UnknownServerError,
    };
    (code, r.to_string())
}

fn outcome(name: String, id: [u8; 16], partitions: i32, error: Option<(ResponseError, String)>) -> TopicOutcome {
    TopicOutcome { name, id, error, partitions }
}

/// Partition replicas each broker hosts in `state`.
fn hosted_per_broker(state: &crate::cluster::ClusterState) -> BTreeMap<BrokerId, u64> {
    let mut hosted: BTreeMap<BrokerId, u64> = state.brokers.keys().map(|b| (*b, 0)).collect();
    for t in state.topics.values() {
        for p in &t.partitions {
            for b in &p.replicas {
                *hosted.entry(*b).or_default() += 1;
            }
        }
    }
    hosted
}

/// Admits the new replicas of `assignment` on every broker they land on (the shared limits of
/// `topic_limits`; the descriptors open now are known for this broker only).
fn admit_assignment(
    shard: &Shard,
    budget: &mut PartitionBudget,
    state: &crate::cluster::ClusterState,
    assignment: &[Vec<BrokerId>],
) -> Result<(), topic_limits::Refusal> {
    let hosted = hosted_per_broker(state);
    let mut new: BTreeMap<BrokerId, u64> = BTreeMap::new();
    for b in assignment.iter().flatten() {
        *new.entry(*b).or_default() += 1;
    }
    for (b, n) in new {
        let now = hosted.get(&b).copied().unwrap_or(0);
        budget.admit(b, now, n, b == shard.config.node_id)?;
    }
    Ok(())
}

/// The error for a topic this broker could not open after it was written (its partitions here
/// stay closed), if any; the partitions were reported by the last catalog publish on this core.
fn local_open_failure(shard: &Shard, topic: &str) -> Option<crate::core::OpenFailure> {
    shard.last_open_failures.borrow().iter().find(|f| f.topic == topic).cloned()
}

/// CreateTopics in a cluster: validated like a single node's (`topic_limits`), replicas assigned
/// over the registered brokers, one Raft command per topic.
pub async fn create_topics(
    shard: &Rc<Shard>,
    cp: &ControlPlane,
    new: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut budget = PartitionBudget::of_this_broker(&shard.config, shard.cores);
    let requested = topic_limits::requested_partitions(&shard.config, new.iter().map(|t| t.partitions));
    if let Err(refusal) = budget.check_request(requested) {
        return new.into_iter().map(|t| refused(t.name, [0; 16], t.partitions, refusal.clone())).collect();
    }
    let mut out = Vec::new();
    for t in new {
        let state = cp.state();
        let exists = state.topics.contains_key(&t.name);
        let partitions =
            match topic_limits::validate_new_topic(&shard.config, &t.name, t.partitions, &t.configs, exists) {
                Ok(n) => n,
                Err(refusal) => {
                    out.push(refused(t.name, [0; 16], t.partitions, refusal));
                    continue;
                }
            };
        let brokers: Vec<BrokerId> = state.brokers.keys().copied().collect();
        let rf = if t.replication_factor == -1 {
            usize::from(shard.config.replication.default_replication_factor)
        } else {
            usize::try_from(t.replication_factor).unwrap_or(0)
        };
        if rf < 1 || rf > brokers.len() {
            let msg = format!("Replication factor: {rf} larger than available brokers: {}.", brokers.len());
            out.push(refused(t.name, [0; 16], t.partitions, (ResponseError::InvalidReplicationFactor, msg)));
            continue;
        }
        let start = state.topics.values().map(|t| t.partitions.len()).sum::<usize>();
        let assignment = assign(&brokers, partitions as usize, rf, start);
        if let Err(refusal) = admit_assignment(shard, &mut budget, &state, &assignment) {
            out.push(refused(t.name, [0; 16], t.partitions, refusal));
            continue;
        }
        let id = *uuid::Uuid::new_v4().as_bytes();
        if validate_only {
            out.push(outcome(t.name, id, partitions, None));
            continue;
        }
        let cmd = ClusterCommand::CreateTopic {
            name: t.name.clone(),
            topic_id: id,
            configs: t.configs.iter().cloned().collect::<BTreeMap<_, _>>(),
            assignment,
        };
        let mut o = outcome(t.name.clone(), id, partitions, write(shard, cp, cmd).await.err());
        if o.error.is_none() {
            if let Some(f) = local_open_failure(shard, &t.name) {
                // No half-created topic: take it out of the cluster again.
                let undo = write(shard, cp, ClusterCommand::DeleteTopic { name: t.name.clone() })
                    .await
                    .err()
                    .map(|(_, msg)| PartitionError::new(ResponseError::UnknownServerError, msg));
                report_open_failures(
                    std::slice::from_mut(&mut o),
                    &[(t.name.clone(), f)],
                    undo,
                    "the topic was deleted again",
                );
            }
        }
        out.push(o);
    }
    out
}

pub async fn delete_topics(shard: &Rc<Shard>, cp: &ControlPlane, names: Vec<String>) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut out = Vec::new();
    for name in names {
        let existing = cp.state().topics.get(&name).map(|t| (t.id, t.partitions.len() as i32));
        let (id, partitions) = existing.unwrap_or(([0; 16], 0));
        if existing.is_some() {
            if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &name, "deleted") {
                out.push(refused(name, id, partitions, refusal));
                continue;
            }
        }
        let error = write(shard, cp, ClusterCommand::DeleteTopic { name: name.clone() }).await.err();
        let error = error.map(|(code, msg)| match code {
            ResponseError::UnknownTopicOrPartition => (code, format!("Topic {name} does not exist")),
            _ => (code, msg),
        });
        out.push(outcome(name, id, partitions, error));
    }
    out
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    cp: &ControlPlane,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut budget = PartitionBudget::of_this_broker(&shard.config, shard.cores);
    let state = cp.state();
    let requested = topic_limits::added_partitions(
        wanted.iter().map(|(name, count)| (state.topics.get(name).map(|t| t.partitions.len() as i32), *count)),
    );
    if let Err(refusal) = budget.check_request(requested) {
        return wanted
            .into_iter()
            .map(|(name, count)| {
                let id = state.topics.get(&name).map_or([0; 16], |t| t.id);
                refused(name, id, count, refusal.clone())
            })
            .collect();
    }
    let mut out = Vec::new();
    for (name, count) in wanted {
        let state = cp.state();
        let Some(t) = state.topics.get(&name) else {
            let e = (ResponseError::UnknownTopicOrPartition, format!("Topic {name} does not exist"));
            out.push(outcome(name, [0; 16], count, Some(e)));
            continue;
        };
        let current = t.partitions.len() as i32;
        let checked = topic_limits::refuse_protected_change(&shard.config, &name, "given more partitions")
            .and_then(|()| topic_limits::validate_partition_increase(current, count));
        let added = match checked {
            Ok(added) => added,
            Err(refusal) => {
                out.push(refused(name, t.id, count, refusal));
                continue;
            }
        };
        let rf = t.partitions.first().map_or(1, |p| p.replicas.len());
        let brokers: Vec<BrokerId> = state.brokers.keys().copied().collect();
        if rf > brokers.len() {
            let e = (ResponseError::InvalidReplicationFactor, format!("{rf} replicas, {} brokers", brokers.len()));
            out.push(outcome(name, t.id, count, Some(e)));
            continue;
        }
        let id = t.id;
        let start = state.topics.values().map(|t| t.partitions.len()).sum::<usize>();
        let assignment = assign(&brokers, added as usize, rf, start);
        if let Err(refusal) = admit_assignment(shard, &mut budget, &state, &assignment) {
            out.push(refused(name, id, count, refusal));
            continue;
        }
        if validate_only {
            out.push(outcome(name, id, count, None));
            continue;
        }
        let mut o = outcome(name.clone(), id, count, None);
        o.error = write(shard, cp, ClusterCommand::AddPartitions { name: name.clone(), assignment }).await.err();
        if o.error.is_none() {
            if let Some(f) = local_open_failure(shard, &name) {
                // Partitions cannot be removed from a topic: report which one stays closed here.
                report_open_failures(
                    std::slice::from_mut(&mut o),
                    &[(name.clone(), f)],
                    None,
                    "it stays closed on this broker",
                );
            }
        }
        out.push(o);
    }
    out
}

pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    cp: &ControlPlane,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut out = Vec::new();
    for c in changes {
        let state = cp.state();
        let Some(t) = state.topics.get(&c.topic) else {
            let e = (ResponseError::UnknownTopicOrPartition, format!("Topic {} does not exist", c.topic));
            out.push(outcome(c.topic, [0; 16], 0, Some(e)));
            continue;
        };
        let (id, partitions) = (t.id, t.partitions.len() as i32);
        if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &c.topic, "reconfigured") {
            out.push(refused(c.topic, id, partitions, refusal));
            continue;
        }
        let mut configs = if c.replace { BTreeMap::new() } else { t.configs.clone() };
        configs.retain(|k, _| !c.delete.contains(k));
        configs.extend(c.set.iter().cloned());
        let listed: Vec<(String, String)> = configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Err(msg) = TopicSettings::resolve(&shard.config, &listed) {
            out.push(outcome(c.topic, id, partitions, Some((ResponseError::InvalidConfig, msg))));
            continue;
        }
        let error = if validate_only || configs == t.configs {
            None
        } else {
            write(shard, cp, ClusterCommand::SetTopicConfigs { name: c.topic.clone(), configs }).await.err()
        };
        out.push(outcome(c.topic, id, partitions, error));
    }
    out
}

/// A producer id never handed out before in the cluster: blocks are reserved through Raft.
pub async fn allocate_producer_id(shard: &Rc<Shard>, cp: &ControlPlane) -> Result<i64, PartitionError> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let (next, limit) = admin.producer_ids.get();
    if next < limit {
        admin.producer_ids.set((next + 1, limit));
        return Ok(next);
    }
    // Another broker may reserve the same start concurrently: the loser retries from the new next.
    for _ in 0..16 {
        let start = cp.state().next_producer_id;
        let cmd = ClusterCommand::ReserveProducerIds { start, count: crate::producer_state::PRODUCER_ID_BLOCK };
        let o = match cp.propose(cmd, PROPOSE_TIMEOUT).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(PartitionError::new(ResponseError::RequestTimedOut, e.to_string())),
            Err(_) => return Err(PartitionError::new(ResponseError::UnknownServerError, "control plane stopped")),
        };
        let _ = cp.wait_applied(o.log_index, PROPOSE_TIMEOUT).await;
        if o.result.is_ok() {
            admin.producer_ids.set((start + 1, start + crate::producer_state::PRODUCER_ID_BLOCK));
            return Ok(start);
        }
    }
    Err(PartitionError::new(ResponseError::RequestTimedOut, "could not reserve producer ids"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_rotates_leaders_and_spreads_replicas() {
        let a = assign(&[1, 2, 3], 4, 3, 0);
        assert_eq!(a, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]]);
        let b = assign(&[1, 2, 3], 2, 2, 1);
        assert_eq!(b, vec![vec![2, 3], vec![3, 1]]);
    }
}
