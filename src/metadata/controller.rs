//! Cluster mode on core 0 of every broker: keeps the cores' catalog in step with the Raft-replicated
//! cluster metadata, registers this broker, writes topic administration's changes as Raft
//! commands (`write`, for `store::RaftStore`), and —
//! on the broker that leads the Raft group, the controller — elects partition leaders when brokers
//! die and drops dead brokers from ISRs.
//!
//! Liveness: the controller is the Raft leader, and every broker answers its heartbeats (every
//! 100 ms); a broker whose last answer is older than `broker_session_timeout_ms` is dead. Leaders
//! are elected from the ISR only (no unclean election), so no acknowledged record is lost.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use tracing::{info, warn};

use crate::cluster::{BrokerEndpoints, BrokerId, ClusterCommand, ControlPlane, ControlPlaneError, Rejection};
use crate::core::Shard;
use crate::groups::offsets_log::OFFSETS_TOPIC;
use crate::topics::{self, Catalog, ClusterView};

/// How long a proposal may take (leader elections included) before the request fails.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Proposals of a producer-id block that may lose a race with another broker's.
const PRODUCER_ID_RESERVE_ATTEMPTS: usize = 16;
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
        while !s.shutting_down() {
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
    let table = Catalog::from_cluster(view, shard.cores, 0);
    if let Err(e) = shard.publish(table).await {
        warn!(error = %e.message, "publishing cluster metadata");
    }
}

/// Registers this broker's endpoints (retried until the cluster takes it).
async fn register(shard: Rc<Shard>, cp: Arc<ControlPlane>) {
    let Some(peer) = shard.config.own_peer().cloned() else { return };
    let endpoints = BrokerEndpoints { kafka_addr: peer.kafka.clone(), replication_addr: peer.replication.clone() };
    let cmd = ClusterCommand::RegisterBroker { broker_id: shard.config.node_id, endpoints };
    while !shard.shutting_down() {
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
    while !shard.shutting_down() {
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
        let replied = cp.peer_heartbeats();
        let me = shard.config.node_id;
        let alive = |b: BrokerId| b == me || replied.get(&(b as u64)).is_some_and(|t| t.elapsed() < session);
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
pub(super) async fn write(
    shard: &Rc<Shard>,
    cp: &ControlPlane,
    cmd: ClusterCommand,
) -> Result<(), (ResponseError, String)> {
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

/// Reserves `count` producer ids never reserved before in the cluster; returns the first.
/// Another broker may reserve the same start concurrently: the loser retries from the new next.
pub(super) async fn reserve_producer_ids(cp: &ControlPlane, count: i64) -> Result<i64, (ResponseError, String)> {
    for _ in 0..PRODUCER_ID_RESERVE_ATTEMPTS {
        let start = cp.state().next_producer_id;
        let cmd = ClusterCommand::ReserveProducerIds { start, count };
        let o = match cp.propose(cmd, PROPOSE_TIMEOUT).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err((ResponseError::RequestTimedOut, e.to_string())),
            Err(_) => return Err((ResponseError::UnknownServerError, "control plane stopped".into())),
        };
        let _ = cp.wait_applied(o.log_index, PROPOSE_TIMEOUT).await;
        if o.result.is_ok() {
            return Ok(start);
        }
    }
    Err((ResponseError::RequestTimedOut, "could not reserve producer ids".into()))
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
