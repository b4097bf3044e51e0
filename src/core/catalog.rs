//! Applying the topic catalog on a core: adopting a snapshot, opening the partitions it assigns
//! here and closing removed ones (within the descriptor budget), taking the roles a cluster's
//! metadata gives, and publishing a changed catalog to every core.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use super::Shard;
use crate::config::TopicSettings;
use crate::partition::{Partition, PartitionError, Role};
use crate::topics::{self, Catalog, ClusterView, TopicMeta, CONSUMER_OFFSETS_TOPIC};

/// A partition the catalog assigns to a core that the core could not open.
#[derive(Debug, Clone)]
pub struct OpenFailure {
    pub topic: String,
    pub partition: i32,
    pub core: usize,
    pub error: String,
    /// Left closed because its files did not fit in the descriptor budget (not an I/O error).
    pub out_of_descriptors: bool,
}

impl Shard {
    /// Adopts `table` (unless this core already has a newer one), then opens partitions newly
    /// assigned to this core and closes/deletes removed ones. Serialised per core. Returns the
    /// partitions it could not open (each also logged): a partition whose files do not fit in the
    /// descriptor budget is left closed, so that the listeners keep descriptors to accept with.
    pub async fn apply_catalog(&self, table: Arc<Catalog>) -> Vec<OpenFailure> {
        let _permit = self.apply_lock.acquire_permit(1).await;
        let previous = self.catalog.borrow().version;
        if table.version < previous {
            return Vec::new();
        }
        *self.catalog.borrow_mut() = table.clone();
        debug_assert!(self.catalog.borrow().version >= previous, "a core never goes back to an older catalog");
        let data_dir = self.config.data_dir.clone();
        let mut wanted: Vec<(Arc<TopicMeta>, i32)> = Vec::new();
        for t in table.topics.values() {
            for (p, s) in t.partition_cores.iter().enumerate() {
                if *s as usize == self.id && table.hosts(&t.name, p as i32) {
                    wanted.push((t.clone(), p as i32));
                }
            }
        }
        // Committed offsets first: if descriptors run short, groups keep working.
        wanted.sort_by_key(|(t, _)| t.name != CONSUMER_OFFSETS_TOPIC);
        let wanted_keys: HashSet<(String, i32)> = wanted.iter().map(|(t, p)| (t.name.clone(), *p)).collect();
        let removed: Vec<(String, i32)> =
            self.partitions.borrow().keys().filter(|k| !wanted_keys.contains(*k)).cloned().collect();
        for key in removed {
            let part = self.partitions.borrow_mut().remove(&key);
            if let Some(part) = part {
                let dir = part.dir().to_path_buf();
                if let Err(e) = part.close().await {
                    warn!(topic = %key.0, partition = key.1, error = %e, "closing deleted partition");
                }
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    warn!(dir = %dir.display(), error = %e, "removing deleted partition");
                }
                info!(topic = %key.0, partition = key.1, core = self.id, "partition deleted");
            }
        }
        let mut failures = Vec::new();
        let mut guard: Option<crate::topic_limits::OpenGuard> = None;
        for (t, p) in wanted {
            let key = (t.name.clone(), p);
            let settings = match TopicSettings::resolve(&self.config, &t.configs) {
                Ok(s) => s,
                Err(e) => {
                    error!(topic = %t.name, error = %e, "invalid stored topic config; using broker defaults");
                    TopicSettings::resolve(&self.config, &[]).expect("broker defaults are valid")
                }
            };
            let open = self.partitions.borrow().get(&key).cloned();
            if let Some(part) = open {
                if part.settings() != settings {
                    if let Err(e) = part.update_settings(settings) {
                        error!(topic = %t.name, partition = p, error = %e, "cannot apply new topic config");
                    }
                }
                continue;
            }
            let dir = topics::partition_dir(&data_dir, &t.name, p);
            let guard = guard.get_or_insert_with(|| crate::topic_limits::OpenGuard::new(&self.config));
            if let Err(e) = guard.take(crate::topic_limits::descriptors_of_partition_dir(&dir)) {
                let f = OpenFailure {
                    topic: t.name.clone(),
                    partition: p,
                    core: self.id,
                    error: e,
                    out_of_descriptors: true,
                };
                failures.push(f);
                continue;
            }
            match Partition::open(&dir, &t.name, p, settings).await {
                Ok(part) => {
                    if table.cluster.is_some() {
                        // No role until the metadata gives one (below): clients are refused meanwhile.
                        part.become_follower(-1, -1);
                    }
                    debug!(topic = %t.name, partition = p, core = self.id, "partition open");
                    self.partitions.borrow_mut().insert(key, part);
                }
                Err(e) => {
                    error!(topic = %t.name, partition = p, error = %e, "cannot open partition");
                    let error = e.to_string();
                    failures.push(OpenFailure {
                        topic: t.name.clone(),
                        partition: p,
                        core: self.id,
                        error,
                        out_of_descriptors: false,
                    });
                }
            }
        }
        if let Some(first) = failures.iter().find(|f| f.out_of_descriptors) {
            // One line for all of them: thousands of partitions may be left closed.
            let closed = failures.iter().filter(|f| f.out_of_descriptors).count();
            error!(
                core = self.id,
                partitions = closed,
                example = %format!("{}-{}", first.topic, first.partition),
                reason = %first.error,
                "partitions left closed: not enough file descriptors"
            );
        }
        // Post-conditions: this core holds exactly the wanted partitions it could open.
        debug_assert!(
            self.partitions.borrow().keys().all(|k| wanted_keys.contains(k)),
            "no partition the catalog took away stays open"
        );
        debug_assert!(
            self.shutting_down()
                || wanted_keys.iter().all(|k| self.partitions.borrow().contains_key(k)
                    || failures.iter().any(|f| f.topic == k.0 && f.partition == k.1)),
            "every partition assigned here is open or reported as not opened"
        );
        if let Some(view) = &table.cluster {
            self.apply_roles(view).await;
        }
        failures
    }

    /// Cluster mode: makes each open partition leader or follower as the metadata says; a new
    /// leadership of a `__consumer_offsets` partition loads its groups' committed offsets.
    async fn apply_roles(&self, view: &ClusterView) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let mut followers_changed = false;
        for p in parts {
            let Some(ps) = view.partition(&p.topic, p.index) else { continue };
            let before = p.role();
            if ps.leader == view.node_id {
                let r = p
                    .become_leader(
                        view.node_id,
                        ps.leader_epoch,
                        ps.partition_epoch,
                        ps.replicas.clone(),
                        ps.isr.clone(),
                    )
                    .await;
                if let Err(e) = r {
                    error!(topic = %p.topic, partition = p.index, error = %e, "cannot take the leadership");
                    continue;
                }
                let was_leader = matches!(&before, Role::Leader(l) if l.leader_epoch == ps.leader_epoch);
                followers_changed |= matches!(before, Role::Follower { .. });
                if !was_leader {
                    for hook in self.services.leadership_hooks() {
                        hook(p.clone()).await;
                    }
                }
            } else {
                p.become_follower(ps.leader, ps.leader_epoch);
                followers_changed |= !matches!(before,
                    Role::Follower { leader, leader_epoch } if leader == ps.leader && leader_epoch == ps.leader_epoch);
            }
        }
        if followers_changed {
            self.followers_changed.notify(usize::MAX);
        }
    }

    /// Persists `table` (single node; a cluster's metadata lives in Raft) and makes every core
    /// apply it; returns once all have, with the partitions they could not open.
    pub(crate) async fn publish(self: &Rc<Self>, mut table: Catalog) -> Result<Vec<OpenFailure>, PartitionError> {
        table.version = self.catalog.borrow().version + 1;
        if table.cluster.is_none() {
            topics::save(&self.config.data_dir, &table).await?;
        }
        let table = Arc::new(table);
        let mut failures = Vec::new();
        for core in 0..self.cores {
            let table = table.clone();
            match self.invoke_on(core, move |s| async move { s.apply_catalog(table).await }).await {
                Ok(f) => failures.extend(f),
                Err(e) => warn!(core, error = %e, "catalog not applied"),
            }
        }
        self.last_open_failures.replace(failures.clone());
        Ok(failures)
    }
}
