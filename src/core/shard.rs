//! One core of the broker: the partitions it owns, its copy of the topic catalog, its end of the
//! cross-core mesh (`mesh`), the services modules above install on it (`services`), and shutdown.
//! A partition is only ever touched by its owner; other cores reach it with `invoke_on`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;
use tracing::error;

use super::latch::Latch;
use super::mesh::{Envelope, Mesh, ReplyEnvelope};
use super::services::Services;
use super::OpenFailure;
use crate::config::BrokerConfig;
use crate::partition::{Partition, PartitionError};
use crate::topics::Catalog;

/// The catalog owner: core 0. Topic administration runs there and is broadcast to every core.
pub const CATALOG_CORE: usize = 0;

pub struct Shard {
    pub id: usize,
    pub cores: usize,
    pub config: Arc<BrokerConfig>,
    pub(super) catalog: RefCell<Arc<Catalog>>,
    pub(super) partitions: RefCell<HashMap<(String, i32), Rc<Partition>>>,
    pub(super) mesh: Mesh,
    /// Serialises applying catalog snapshots on this core.
    pub(super) apply_lock: Semaphore,
    /// Serialises publishing cluster metadata (core 0, cluster mode).
    pub(crate) sync_lock: Semaphore,
    /// Set once shutdown begins: the accept loop, idle connections and periodic jobs end.
    pub shutdown: Latch,
    /// What the modules above the core installed here (the group coordinator, leadership hooks).
    pub services: Services,
    /// This core's metrics (read by the exporter thread).
    pub metrics: Arc<crate::metrics::CoreMetrics>,
    /// Cluster mode: this broker's member of the cluster-metadata Raft group.
    pub control: Option<Arc<crate::cluster::ControlPlane>>,
    /// Notified when this core's followed partitions or their leaders change (fetchers re-plan).
    pub followers_changed: Event,
    /// Partitions with an ISR change proposal in flight (one at a time each).
    pub isr_pending: RefCell<std::collections::HashSet<(String, i32)>>,
    /// Partitions the cores could not open when this core last published the catalog (core 0):
    /// how topic administration learns that a topic it changed did not open.
    pub(crate) last_open_failures: RefCell<Vec<OpenFailure>>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cores: usize,
        config: Arc<BrokerConfig>,
        catalog: Arc<Catalog>,
        requests: Senders<Envelope>,
        replies: Senders<ReplyEnvelope>,
        metrics: Arc<crate::metrics::CoreMetrics>,
        control: Option<Arc<crate::cluster::ControlPlane>>,
    ) -> Rc<Shard> {
        assert!(id < cores, "core {id} of {cores}");
        // Before any core opens a partition (the first core to get here does it for the process).
        crate::topic_limits::raise_descriptor_limit();
        Rc::new(Shard {
            id,
            cores,
            config,
            catalog: RefCell::new(catalog),
            partitions: RefCell::new(HashMap::new()),
            mesh: Mesh::new(requests, replies),
            apply_lock: Semaphore::new(1),
            sync_lock: Semaphore::new(1),
            shutdown: Latch::default(),
            services: Services::default(),
            metrics,
            control,
            followers_changed: Event::new(),
            isr_pending: RefCell::new(Default::default()),
            last_open_failures: RefCell::new(Vec::new()),
        })
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_set()
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutdown(&self) {
        self.shutdown.wait().await
    }

    /// Runs `work` until it finishes (`Some` of its output) or shutdown begins (`None`).
    pub async fn unless_shutdown<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        self.shutdown.unless_set(work).await
    }

    /// Stops accepting work: the accept loop and idle connections end.
    pub fn begin_shutdown(&self) {
        self.shutdown.set();
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// The owning core of a partition, or the error a client should get.
    pub fn owner(&self, topic: &str, partition: i32) -> Result<usize, PartitionError> {
        let cat = self.catalog.borrow();
        let t = cat.topics.get(topic).ok_or_else(|| {
            PartitionError::new(ResponseError::UnknownTopicOrPartition, format!("unknown topic {topic}"))
        })?;
        usize::try_from(partition).ok().and_then(|p| t.partition_cores.get(p)).map(|s| *s as usize).ok_or_else(|| {
            PartitionError::new(ResponseError::UnknownTopicOrPartition, format!("{topic} has no partition {partition}"))
        })
    }

    /// A partition owned by this core.
    pub fn local(&self, topic: &str, partition: i32) -> Result<Rc<Partition>, PartitionError> {
        self.partitions.borrow().get(&(topic.to_string(), partition)).cloned().ok_or_else(|| {
            // In a cluster, a known partition not hosted here has its replicas on other brokers.
            let code = if self.catalog.borrow().cluster.is_some() {
                ResponseError::NotLeaderOrFollower
            } else {
                ResponseError::UnknownTopicOrPartition
            };
            PartitionError::new(code, format!("{topic}-{partition} is not open here"))
        })
    }

    /// A partition owned by this core that this broker leads (what clients may use).
    pub fn leading(&self, topic: &str, partition: i32) -> Result<Rc<Partition>, PartitionError> {
        let p = self.local(topic, partition)?;
        p.check_leader()?;
        Ok(p)
    }

    /// Every partition open on this core.
    pub fn local_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Closes every partition (flush + checkpoint).
    pub async fn close_all(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in parts {
            if let Err(e) = p.close().await {
                error!(topic = %p.topic, partition = p.index, error = %e, "closing partition");
            }
        }
        debug_assert!(self.partitions.borrow().is_empty(), "no partition opened during close");
    }
}
