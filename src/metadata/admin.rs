//! Topic administration and producer-id allocation: CreateTopics, DeleteTopics, CreatePartitions,
//! (Incremental)AlterConfigs and InitProducerId's id blocks, written once for a single node and a
//! cluster. Every change runs on the catalog core, one at a time (`AdminState::lock`), validated
//! here (Kafka's rules; the limits in `topic_limits`), then written to the store (`store`): the
//! catalog file on a single node, a Raft command in a cluster. A topic or partition that then
//! fails to open on this broker is taken back where the store allows it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;

use super::controller;
use super::store::{CatalogChange, CatalogStore, FileStore, RaftStore};
use crate::cluster::BrokerId;
use crate::config::TopicSettings;
use crate::core::{OpenFailure, Shard, CATALOG_CORE};
use crate::partition::PartitionError;
use crate::producer_state::PRODUCER_ID_BLOCK;
use crate::topic_limits::{self, PartitionBudget};

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// A change to one topic's config overrides.
#[derive(Debug, Clone)]
pub struct TopicConfigChange {
    pub topic: String,
    /// AlterConfigs: the overrides become exactly `set`.
    pub replace: bool,
    /// IncrementalAlterConfigs SET (and AlterConfigs' entries).
    pub set: Vec<(String, String)>,
    /// IncrementalAlterConfigs DELETE: back to the broker default.
    pub delete: Vec<String>,
}

/// Result of a catalog change for one topic.
#[derive(Debug, Clone)]
pub struct TopicOutcome {
    pub name: String,
    pub id: [u8; 16],
    pub error: Option<(ResponseError, String)>,
    pub partitions: i32,
}

/// The catalog core's administration state (installed there on first use).
pub struct AdminState {
    /// Serialises catalog changes.
    pub(crate) lock: Semaphore,
    /// Producer ids reserved and not yet handed out: `next..limit`.
    pub(crate) producer_ids: Cell<(i64, i64)>,
}

impl AdminState {
    pub(crate) fn of(shard: &Shard) -> Rc<AdminState> {
        assert_eq!(shard.id, CATALOG_CORE, "administration state lives on the catalog core");
        if let Some(state) = shard.services.get::<AdminState>() {
            return state;
        }
        // No id handed out yet by this process: the next block starts at the persisted mark.
        let next = shard.catalog().next_producer_id;
        let state = Rc::new(AdminState { lock: Semaphore::new(1), producer_ids: Cell::new((next, next)) });
        shard.services.install(state.clone());
        state
    }
}

/// The error for an administrative change the catalog core did not answer.
fn unanswered(e: crate::core::MeshError) -> (ResponseError, String) {
    (ResponseError::UnknownServerError, format!("topic administration: {e}"))
}

fn all_failed(names: Vec<String>, e: (ResponseError, String)) -> Vec<TopicOutcome> {
    names.into_iter().map(|n| refused(n, [0; 16], 0, e.clone())).collect()
}

/// Runs `$call(store, shard, args...)` on the catalog core with this broker's store.
macro_rules! on_catalog_core {
    ($shard:expr, $call:ident($($arg:ident),*)) => {
        $shard
            .invoke_on(CATALOG_CORE, move |s| async move {
                match s.control.clone() {
                    Some(cp) => $call(&RaftStore { shard: &s, cp: &cp }, &s, $($arg),*).await,
                    None => $call(&FileStore { shard: &s }, &s, $($arg),*).await,
                }
            })
            .await
    };
}

/// CreateTopics (also Metadata's auto-creation).
pub async fn create_topics(shard: &Rc<Shard>, new: Vec<NewTopic>, validate_only: bool) -> Vec<TopicOutcome> {
    let names: Vec<String> = new.iter().map(|t| t.name.clone()).collect();
    let ran = on_catalog_core!(shard, create_topics_in(new, validate_only));
    ran.unwrap_or_else(|e| all_failed(names, unanswered(e)))
}

pub async fn delete_topics(shard: &Rc<Shard>, names: Vec<String>) -> Vec<TopicOutcome> {
    let asked = names.clone();
    let ran = on_catalog_core!(shard, delete_topics_in(names));
    ran.unwrap_or_else(|e| all_failed(asked, unanswered(e)))
}

/// CreatePartitions: `wanted` is (topic, new total count).
pub async fn create_partitions(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    let ran = on_catalog_core!(shard, create_partitions_in(wanted, validate_only));
    ran.unwrap_or_else(|e| all_failed(names, unanswered(e)))
}

/// AlterConfigs and IncrementalAlterConfigs of topics.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let names: Vec<String> = changes.iter().map(|c| c.topic.clone()).collect();
    let ran = on_catalog_core!(shard, alter_topic_configs_in(changes, validate_only));
    ran.unwrap_or_else(|e| all_failed(names, unanswered(e)))
}

/// A producer id never handed out before (by this broker or, in a cluster, by any), even across
/// restarts: ids are reserved in blocks, persisted before any of them is used.
pub async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, PartitionError> {
    let ran = on_catalog_core!(shard, allocate_producer_id_in());
    ran.map_err(|e| PartitionError::new(ResponseError::UnknownServerError, e.to_string()))?
}

fn outcome(name: String, id: [u8; 16], partitions: i32, error: Option<(ResponseError, String)>) -> TopicOutcome {
    TopicOutcome { name, id, error, partitions }
}

/// The replication factor of a new topic (Kafka's rules and messages).
fn replication_factor(asked: i16, default: usize, brokers: usize) -> Result<usize, topic_limits::Refusal> {
    let rf = match asked {
        -1 => default,
        n if n >= 1 => n as usize,
        _ => {
            return Err((
                ResponseError::InvalidReplicationFactor,
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ))
        }
    };
    if rf > brokers {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!("Replication factor: {rf} larger than available brokers: {brokers}."),
        ));
    }
    Ok(rf)
}

/// Admits the replicas of `assignment` on every broker they land on (`topic_limits`; the
/// descriptors open now are known for this broker only). `pending`: replicas admitted earlier in
/// this request that the store does not show yet (validate_only); the new ones are added to it.
fn admit<S: CatalogStore>(
    shard: &Shard,
    store: &S,
    budget: &mut PartitionBudget,
    pending: &mut BTreeMap<BrokerId, u64>,
    assignment: &[Vec<BrokerId>],
) -> Result<(), topic_limits::Refusal> {
    let hosted = store.hosted_per_broker();
    let mut new: BTreeMap<BrokerId, u64> = BTreeMap::new();
    for b in assignment.iter().flatten() {
        *new.entry(*b).or_default() += 1;
    }
    for (b, n) in &new {
        let now = hosted.get(b).copied().unwrap_or(0) + pending.get(b).copied().unwrap_or(0);
        budget.admit(*b, now, *n, *b == shard.config.node_id)?;
    }
    for (b, n) in new {
        *pending.entry(b).or_default() += n;
    }
    Ok(())
}

/// The partition of `topic` that did not open on this broker after the last change, if any (the
/// catalog core records what the last publish could not open).
fn open_failure(shard: &Shard, topic: &str) -> Option<OpenFailure> {
    shard.last_open_failures.borrow().iter().find(|f| f.topic == topic).cloned()
}

async fn create_topics_in<S: CatalogStore>(
    store: &S,
    shard: &Rc<Shard>,
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
    let mut pending = BTreeMap::new();
    let mut out = Vec::with_capacity(new.len());
    for t in new {
        let exists = store.topic(&t.name).is_some();
        let checked = topic_limits::validate_new_topic(&shard.config, &t.name, t.partitions, &t.configs, exists)
            .and_then(|n| {
                let brokers = store.brokers();
                let rf = replication_factor(t.replication_factor, store.default_replication_factor(), brokers.len())?;
                let assignment = controller::assign(&brokers, n as usize, rf, store.total_partitions());
                admit(shard, store, &mut budget, &mut pending, &assignment)?;
                Ok((n, assignment))
            });
        let (partitions, assignment) = match checked {
            Ok(ok) => ok,
            Err(refusal) => {
                out.push(refused(t.name, [0; 16], t.partitions, refusal));
                continue;
            }
        };
        let id = *uuid::Uuid::new_v4().as_bytes();
        if validate_only {
            out.push(outcome(t.name, id, partitions, None));
            continue;
        }
        debug_assert_eq!(assignment.len(), partitions as usize, "one replica list per partition");
        pending.clear(); // written: the store shows them from now on
        let configs = t.configs.iter().cloned().collect();
        let create = CatalogChange::CreateTopic { name: t.name.clone(), id, configs, assignment };
        let mut o = outcome(t.name.clone(), id, partitions, store.write(create).await.err());
        if o.error.is_none() {
            debug_assert!(store.topic(&t.name).is_some_and(|s| s.id == id), "a written topic is in the store");
            if let Some(f) = open_failure(shard, &t.name) {
                // No half-created topic: take it out again.
                let undo = store.write(CatalogChange::DeleteTopic { name: t.name.clone() }).await.err();
                let undo = undo.map(|(code, msg)| PartitionError::new(code, msg));
                report_open_failures(
                    std::slice::from_mut(&mut o),
                    &[(t.name.clone(), f)],
                    undo,
                    "the topic was not created",
                );
            }
        }
        out.push(o);
    }
    out
}

async fn delete_topics_in<S: CatalogStore>(store: &S, shard: &Rc<Shard>, names: Vec<String>) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(t) = store.topic(&name) else {
            let msg = format!("Topic {name} does not exist");
            out.push(refused(name, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &name, "deleted") {
            out.push(refused(name, t.id, t.partitions, refusal));
            continue;
        }
        let error = store.write(CatalogChange::DeleteTopic { name: name.clone() }).await.err();
        let error = error.map(|(code, msg)| match code {
            ResponseError::UnknownTopicOrPartition => (code, format!("Topic {name} does not exist")),
            _ => (code, msg),
        });
        debug_assert!(error.is_some() || store.topic(&name).is_none(), "a deleted topic is gone");
        out.push(outcome(name, t.id, t.partitions, error));
    }
    out
}

async fn create_partitions_in<S: CatalogStore>(
    store: &S,
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut budget = PartitionBudget::of_this_broker(&shard.config, shard.cores);
    let requested = topic_limits::added_partitions(
        wanted.iter().map(|(name, count)| (store.topic(name).map(|t| t.partitions), *count)),
    );
    if let Err(refusal) = budget.check_request(requested) {
        return wanted
            .into_iter()
            .map(|(name, count)| {
                let id = store.topic(&name).map_or([0; 16], |t| t.id);
                refused(name, id, count, refusal.clone())
            })
            .collect();
    }
    let mut pending = BTreeMap::new();
    let mut out = Vec::with_capacity(wanted.len());
    for (name, count) in wanted {
        let Some(t) = store.topic(&name) else {
            let msg = format!("Topic {name} does not exist");
            out.push(refused(name, [0; 16], count, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        let brokers = store.brokers();
        let checked = topic_limits::refuse_protected_change(&shard.config, &name, "given more partitions")
            .and_then(|()| topic_limits::validate_partition_increase(t.partitions, count))
            .and_then(|added| {
                if t.replication_factor > brokers.len() {
                    let msg = format!("{} replicas, {} brokers", t.replication_factor, brokers.len());
                    return Err((ResponseError::InvalidReplicationFactor, msg));
                }
                let assignment =
                    controller::assign(&brokers, added as usize, t.replication_factor, store.total_partitions());
                admit(shard, store, &mut budget, &mut pending, &assignment)?;
                Ok(assignment)
            });
        let assignment = match checked {
            Ok(a) => a,
            Err(refusal) => {
                out.push(refused(name, t.id, count, refusal));
                continue;
            }
        };
        if validate_only {
            out.push(outcome(name, t.id, count, None));
            continue;
        }
        pending.clear(); // written: the store shows them from now on
        let grow = CatalogChange::AddPartitions { name: name.clone(), assignment };
        let mut o = outcome(name.clone(), t.id, count, store.write(grow).await.err());
        if o.error.is_none() {
            debug_assert!(
                store.topic(&name).is_some_and(|s| s.partitions == count),
                "the topic has its new partitions"
            );
            if let Some(f) = open_failure(shard, &name) {
                let broken = [(name.clone(), f)];
                if store.can_remove_partitions() {
                    // Back to the partitions it had: the new ones are closed and removed again.
                    let undo = CatalogChange::RemovePartitions { name: name.clone(), partitions: t.partitions };
                    let undo = store.write(undo).await.err().map(|(code, msg)| PartitionError::new(code, msg));
                    report_open_failures(std::slice::from_mut(&mut o), &broken, undo, "no partition was added");
                } else {
                    // Raft metadata never removes partitions: report which one stays closed here.
                    report_open_failures(std::slice::from_mut(&mut o), &broken, None, "it stays closed on this broker");
                }
            }
        }
        out.push(o);
    }
    out
}

async fn alter_topic_configs_in<S: CatalogStore>(
    store: &S,
    shard: &Rc<Shard>,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let Some(t) = store.topic(&c.topic) else {
            let msg = format!("Topic {} does not exist", c.topic);
            out.push(refused(c.topic, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &c.topic, "reconfigured") {
            out.push(refused(c.topic, t.id, t.partitions, refusal));
            continue;
        }
        let mut configs = if c.replace { BTreeMap::new() } else { t.configs.clone() };
        configs.retain(|k, _| !c.delete.contains(k));
        configs.extend(c.set.iter().cloned());
        let listed: Vec<(String, String)> = configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Err(msg) = TopicSettings::resolve(&shard.config, &listed) {
            out.push(refused(c.topic, t.id, t.partitions, (ResponseError::InvalidConfig, msg)));
            continue;
        }
        let error = if validate_only || configs == t.configs {
            None
        } else {
            store.write(CatalogChange::SetConfigs { name: c.topic.clone(), configs }).await.err()
        };
        out.push(outcome(c.topic, t.id, t.partitions, error));
    }
    out
}

async fn allocate_producer_id_in<S: CatalogStore>(store: &S, shard: &Rc<Shard>) -> Result<i64, PartitionError> {
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let (next, limit) = admin.producer_ids.get();
    debug_assert!(next <= limit, "reserved ids: {next}..{limit}");
    if next < limit {
        admin.producer_ids.set((next + 1, limit));
        return Ok(next);
    }
    let start =
        store.reserve_producer_ids(PRODUCER_ID_BLOCK).await.map_err(|(code, msg)| PartitionError::new(code, msg))?;
    debug_assert!(start >= limit, "producer-id blocks only move forward: {start} after {limit}");
    admin.producer_ids.set((start + 1, start + PRODUCER_ID_BLOCK));
    Ok(start)
}

/// A refused change to one topic.
pub(crate) fn refused(name: String, id: [u8; 16], partitions: i32, (code, msg): topic_limits::Refusal) -> TopicOutcome {
    TopicOutcome { name, id, error: Some((code, msg)), partitions }
}

/// Marks the outcome of each topic in `broken` with the partition that did not open; `undo` is
/// the error of taking the change back, if that failed too.
pub(crate) fn report_open_failures(
    out: &mut [TopicOutcome],
    broken: &[(String, OpenFailure)],
    undo: Option<PartitionError>,
    undone: &str,
) {
    for o in out.iter_mut() {
        let Some((_, f)) = broken.iter().find(|(t, _)| t == &o.name) else { continue };
        let code =
            if f.out_of_descriptors { ResponseError::InvalidPartitions } else { ResponseError::KafkaStorageError };
        let after = match &undo {
            None => undone.to_string(),
            Some(e) => format!("taking the change back failed too: {}", e.message),
        };
        let msg = format!(
            "Partition {}-{} could not be opened (core {}): {}; {after}.",
            f.topic, f.partition, f.core, f.error
        );
        o.error = Some((code, msg));
    }
}
