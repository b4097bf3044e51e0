//! Topic administration and producer-id allocation: CreateTopics, DeleteTopics, CreatePartitions,
//! (Incremental)AlterConfigs and InitProducerId's id blocks. Every change runs on the catalog core,
//! one at a time (`AdminState::lock`); a single node writes its catalog file and publishes it to
//! every core, a cluster proposes the change through Raft (`controller`). The limits both share
//! (partition counts, descriptors, protected topics) are in `topic_limits`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;

use super::controller;
use crate::config::TopicSettings;
use crate::core::{OpenFailure, Shard, CATALOG_CORE};
use crate::partition::PartitionError;
use crate::topic_limits::{self, PartitionBudget};
use crate::topics::{self, TopicMeta, TopicTable};

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

fn all_failed<T>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(T) -> String,
    e: (ResponseError, String),
) -> Vec<TopicOutcome> {
    items.into_iter().map(|t| refused(name(t), [0; 16], 0, e.clone())).collect()
}

/// CreateTopics (also Metadata's auto-creation).
pub async fn create_topics(shard: &Rc<Shard>, new: Vec<NewTopic>, validate_only: bool) -> Vec<TopicOutcome> {
    let names: Vec<String> = new.iter().map(|t| t.name.clone()).collect();
    let ran = shard
        .invoke_on(CATALOG_CORE, move |s| async move {
            match s.control.clone() {
                Some(cp) => controller::create_topics(&s, &cp, new, validate_only).await,
                None => create_topics_single_node(&s, new, validate_only).await,
            }
        })
        .await;
    ran.unwrap_or_else(|e| all_failed(names, |n| n, unanswered(e)))
}

pub async fn delete_topics(shard: &Rc<Shard>, names: Vec<String>) -> Vec<TopicOutcome> {
    let asked = names.clone();
    let ran = shard
        .invoke_on(CATALOG_CORE, move |s| async move {
            match s.control.clone() {
                Some(cp) => controller::delete_topics(&s, &cp, names).await,
                None => delete_topics_single_node(&s, names).await,
            }
        })
        .await;
    ran.unwrap_or_else(|e| all_failed(asked, |n| n, unanswered(e)))
}

/// CreatePartitions: `wanted` is (topic, new total count).
pub async fn create_partitions(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    let ran = shard
        .invoke_on(CATALOG_CORE, move |s| async move {
            match s.control.clone() {
                Some(cp) => controller::create_partitions(&s, &cp, wanted, validate_only).await,
                None => create_partitions_single_node(&s, wanted, validate_only).await,
            }
        })
        .await;
    ran.unwrap_or_else(|e| all_failed(names, |n| n, unanswered(e)))
}

/// AlterConfigs and IncrementalAlterConfigs of topics.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let names: Vec<String> = changes.iter().map(|c| c.topic.clone()).collect();
    let ran = shard
        .invoke_on(CATALOG_CORE, move |s| async move {
            match s.control.clone() {
                Some(cp) => controller::alter_topic_configs(&s, &cp, changes, validate_only).await,
                None => alter_topic_configs_single_node(&s, changes, validate_only).await,
            }
        })
        .await;
    ran.unwrap_or_else(|e| all_failed(names, |n| n, unanswered(e)))
}

/// A producer id never handed out before (by this broker or, in a cluster, by any).
pub async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, PartitionError> {
    let ran = shard
        .invoke_on(CATALOG_CORE, move |s| async move {
            match s.control.clone() {
                Some(cp) => controller::allocate_producer_id(&s, &cp).await,
                None => allocate_producer_id_single_node(&s).await,
            }
        })
        .await;
    ran.map_err(|e| PartitionError::new(ResponseError::UnknownServerError, e.to_string()))?
}

async fn create_topics_single_node(shard: &Rc<Shard>, new: Vec<NewTopic>, validate_only: bool) -> Vec<TopicOutcome> {
    assert_eq!(shard.id, CATALOG_CORE, "catalog changes run on the catalog core");
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut table = (*shard.catalog()).clone();
    let mut budget = PartitionBudget::of_this_broker(&shard.config, shard.cores);
    let requested = topic_limits::requested_partitions(&shard.config, new.iter().map(|t| t.partitions));
    if let Err(refusal) = budget.check_request(requested) {
        return new.into_iter().map(|t| refused(t.name, [0; 16], t.partitions, refusal.clone())).collect();
    }
    let mut hosted: u64 = table.topics.values().map(|t| t.shards.len() as u64).sum();
    let mut out = Vec::new();
    let mut created = Vec::new();
    for t in new {
        let exists = table.topics.contains_key(&t.name);
        let partitions =
            match topic_limits::validate_new_topic(&shard.config, &t.name, t.partitions, &t.configs, exists) {
                Ok(n) => n,
                Err(refusal) => {
                    out.push(refused(t.name, [0; 16], t.partitions, refusal));
                    continue;
                }
            };
        if t.replication_factor != -1 && t.replication_factor != 1 {
            let msg = format!("Replication factor: {} larger than available brokers: 1.", t.replication_factor);
            out.push(refused(t.name, [0; 16], t.partitions, (ResponseError::InvalidReplicationFactor, msg)));
            continue;
        }
        if let Err(refusal) = budget.admit(shard.config.node_id, hosted, partitions as u64, true) {
            out.push(refused(t.name, [0; 16], t.partitions, refusal));
            continue;
        }
        hosted += partitions as u64;
        let id = *uuid::Uuid::new_v4().as_bytes();
        let shards = table.assign(partitions as u32, shard.cores);
        if !validate_only {
            table.topics.insert(
                t.name.clone(),
                Arc::new(TopicMeta { name: t.name.clone(), id, shards, configs: t.configs.clone() }),
            );
            created.push(t.name.clone());
        }
        out.push(TopicOutcome { name: t.name, id, error: None, partitions });
    }
    if !created.is_empty() {
        let failures = publish_outcomes(shard, table, &mut out).await;
        // A topic with a partition that did not open is taken out again: no half-created topic.
        let broken = open_failures_of(&failures, &created);
        if !broken.is_empty() {
            let mut table = (*shard.catalog()).clone();
            for (name, _) in &broken {
                table.topics.remove(name);
            }
            let undo = shard.publish(table).await.err();
            report_open_failures(&mut out, &broken, undo, "the topic was not created");
        }
    }
    out
}

/// Publishes a changed catalog for an admin request: a failed write fails every change of the
/// request (none is in effect). Returns the partitions that did not open.
async fn publish_outcomes(shard: &Rc<Shard>, table: TopicTable, out: &mut [TopicOutcome]) -> Vec<OpenFailure> {
    match shard.publish(table).await {
        Ok(failures) => failures,
        Err(e) => {
            for o in out.iter_mut().filter(|o| o.error.is_none()) {
                o.error = Some((ResponseError::KafkaStorageError, e.message.clone()));
            }
            Vec::new()
        }
    }
}

async fn delete_topics_single_node(shard: &Rc<Shard>, names: Vec<String>) -> Vec<TopicOutcome> {
    assert_eq!(shard.id, CATALOG_CORE, "catalog changes run on the catalog core");
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut table = (*shard.catalog()).clone();
    let mut out = Vec::new();
    for name in names {
        let Some(t) = table.topics.get(&name).cloned() else {
            let msg = format!("Topic {name} does not exist");
            out.push(refused(name, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &name, "deleted") {
            out.push(refused(name, t.id, t.shards.len() as i32, refusal));
            continue;
        }
        table.topics.remove(&name);
        out.push(TopicOutcome { name, id: t.id, error: None, partitions: t.shards.len() as i32 });
    }
    debug_assert!(
        topics::INTERNAL_TOPICS
            .iter()
            .all(|n| table.topics.contains_key(*n) == shard.catalog().topics.contains_key(*n)),
        "an internal topic is never deleted by a client"
    );
    if out.iter().any(|o| o.error.is_none()) {
        publish_outcomes(shard, table, &mut out).await;
    }
    out
}

async fn create_partitions_single_node(
    shard: &Rc<Shard>,
    wanted: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    assert_eq!(shard.id, CATALOG_CORE, "catalog changes run on the catalog core");
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut table = (*shard.catalog()).clone();
    let mut budget = PartitionBudget::of_this_broker(&shard.config, shard.cores);
    let requested = topic_limits::added_partitions(
        wanted.iter().map(|(name, count)| (table.topics.get(name).map(|t| t.shards.len() as i32), *count)),
    );
    if let Err(refusal) = budget.check_request(requested) {
        return wanted
            .into_iter()
            .map(|(name, count)| {
                let id = table.topics.get(&name).map_or([0; 16], |t| t.id);
                refused(name, id, count, refusal.clone())
            })
            .collect();
    }
    let mut hosted: u64 = table.topics.values().map(|t| t.shards.len() as u64).sum();
    let mut out = Vec::new();
    let mut before: Vec<(String, Arc<TopicMeta>)> = Vec::new();
    for (name, count) in wanted {
        let Some(t) = table.topics.get(&name).cloned() else {
            let msg = format!("Topic {name} does not exist");
            out.push(refused(name, [0; 16], count, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        let current = t.shards.len() as i32;
        let checked = topic_limits::refuse_protected_change(&shard.config, &name, "given more partitions")
            .and_then(|()| topic_limits::validate_partition_increase(current, count))
            .and_then(|added| budget.admit(shard.config.node_id, hosted, added, true).map(|()| added));
        let added = match checked {
            Ok(added) => added,
            Err(refusal) => {
                out.push(refused(name, t.id, count, refusal));
                continue;
            }
        };
        hosted += added;
        if !validate_only {
            let extra = table.assign(added as u32, shard.cores);
            let mut meta = (*t).clone();
            meta.shards.extend(extra);
            table.topics.insert(name.clone(), Arc::new(meta));
            before.push((name.clone(), t.clone()));
        }
        out.push(TopicOutcome { name, id: t.id, error: None, partitions: count });
    }
    if !before.is_empty() {
        let failures = publish_outcomes(shard, table, &mut out).await;
        let grown: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
        let broken = open_failures_of(&failures, &grown);
        if !broken.is_empty() {
            // Back to the partitions they had: the new ones are closed and removed again.
            let mut table = (*shard.catalog()).clone();
            for (name, meta) in before.iter().filter(|(n, _)| broken.iter().any(|(b, _)| b == n)) {
                table.topics.insert(name.clone(), meta.clone());
            }
            let undo = shard.publish(table).await.err();
            report_open_failures(&mut out, &broken, undo, "no partition was added");
        }
    }
    out
}

/// Applies config changes to topics (validated against the broker defaults first).
async fn alter_topic_configs_single_node(
    shard: &Rc<Shard>,
    changes: Vec<TopicConfigChange>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    assert_eq!(shard.id, CATALOG_CORE, "catalog changes run on the catalog core");
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let mut table = (*shard.catalog()).clone();
    let mut out = Vec::new();
    let mut changed = false;
    for c in changes {
        let Some(meta) = table.topics.get(&c.topic).cloned() else {
            let msg = format!("Topic {} does not exist", c.topic);
            out.push(refused(c.topic, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
            continue;
        };
        let partitions = meta.shards.len() as i32;
        if let Err(refusal) = topic_limits::refuse_protected_change(&shard.config, &c.topic, "reconfigured") {
            out.push(refused(c.topic, meta.id, partitions, refusal));
            continue;
        }
        let mut configs = if c.replace { Vec::new() } else { meta.configs.clone() };
        configs.retain(|(k, _)| !c.delete.contains(k) && !c.set.iter().any(|(s, _)| s == k));
        configs.extend(c.set.iter().cloned());
        if let Err(msg) = TopicSettings::resolve(&shard.config, &configs) {
            out.push(refused(c.topic, meta.id, partitions, (ResponseError::InvalidConfig, msg)));
            continue;
        }
        if !validate_only && configs != meta.configs {
            let mut m = (*meta).clone();
            m.configs = configs;
            table.topics.insert(c.topic.clone(), Arc::new(m));
            changed = true;
        }
        out.push(TopicOutcome { name: c.topic, id: meta.id, error: None, partitions });
    }
    if changed {
        publish_outcomes(shard, table, &mut out).await;
    }
    out
}

/// Hands out a producer id that was never handed out before, even across restarts: ids are
/// reserved in blocks persisted in the catalog before any of them is used.
async fn allocate_producer_id_single_node(shard: &Rc<Shard>) -> Result<i64, PartitionError> {
    assert_eq!(shard.id, CATALOG_CORE, "producer ids come from the catalog core");
    let admin = AdminState::of(shard);
    let _permit = admin.lock.acquire_permit(1).await;
    let (next, limit) = admin.producer_ids.get();
    if next < limit {
        admin.producer_ids.set((next + 1, limit));
        return Ok(next);
    }
    let mut table = (*shard.catalog()).clone();
    let start = table.next_producer_id;
    table.next_producer_id = start + crate::producer_state::PRODUCER_ID_BLOCK;
    shard.publish(table).await?;
    admin.producer_ids.set((start + 1, start + crate::producer_state::PRODUCER_ID_BLOCK));
    Ok(start)
}

/// A refused change to one topic.
pub(crate) fn refused(name: String, id: [u8; 16], partitions: i32, (code, msg): topic_limits::Refusal) -> TopicOutcome {
    TopicOutcome { name, id, error: Some((code, msg)), partitions }
}

/// The first open failure of each of `topics` (changed by this request) among `failures`.
pub(crate) fn open_failures_of(failures: &[OpenFailure], topics: &[String]) -> Vec<(String, OpenFailure)> {
    let mut out: Vec<(String, OpenFailure)> = Vec::new();
    for f in failures.iter().filter(|f| topics.contains(&f.topic)) {
        if !out.iter().any(|(t, _)| t == &f.topic) {
            out.push((f.topic.clone(), f.clone()));
        }
    }
    out
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
