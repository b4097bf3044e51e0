//! One core's share of the broker: the partitions it owns, its copy of the topic catalog, and
//! message passing with the other cores over glommio channel meshes (a request mesh and a reply
//! mesh). A partition is only ever touched by its owner; other cores send it a [`CoreRequest`].
//! Core 0 owns the catalog: topic creation and deletion run there and are broadcast to every core.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;
use tracing::{debug, error, info, warn};

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    SyncGroupRequest, SyncGroupResponse,
};

use crate::config::{BrokerConfig, TopicSettings};
use crate::groups::offsets_log::{self, Committed, OffsetRecord, OFFSETS_TOPIC};
use crate::groups::GroupCoordinator;
use crate::partition::{Partition, PartitionError, Produced};
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

/// Stored batches read on another core, copied so they can cross threads.
#[derive(Debug, Clone)]
pub struct RemoteRead {
    pub batches: Vec<Bytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// Requests one core sends another.
pub enum CoreRequest {
    Produce {
        topic: String,
        partition: i32,
        records: Bytes,
        acks: i16,
        timeout: Duration,
    },
    Fetch {
        topic: String,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    },
    WaitForData {
        topic: String,
        partition: i32,
        offset: i64,
        timeout: Duration,
    },
    ListOffset {
        topic: String,
        partition: i32,
        timestamp: i64,
    },
    Watermarks {
        topic: String,
        partition: i32,
    },
    DeleteRecords {
        topic: String,
        partition: i32,
        offset: i64,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    AllocateProducerId,
    AlterTopicConfigs {
        changes: Vec<TopicConfigChange>,
        validate_only: bool,
    },
    CatalogChanged(Arc<TopicTable>),
    Group(Box<GroupCall>),
    /// A replication connection accepted by another core for this one (the follower asked for it
    /// in its Hello): serve it here, where the partitions it fetches live.
    AdoptReplicaConnection {
        fd: std::os::fd::OwnedFd,
        hello: crate::replication::Hello,
        correlation_id: u32,
    },
    /// A follower's fetch of partitions this core owns (when its connection landed elsewhere).
    ReplicaFetch {
        follower: i32,
        partitions: Vec<crate::replication::FetchPartition>,
    },
}

/// Group-coordinator work, run on the core coordinating the group.
pub enum GroupCall {
    Join(JoinGroupRequest, i16, String, String),
    Sync(SyncGroupRequest, i16),
    Heartbeat(HeartbeatRequest),
    Leave(LeaveGroupRequest, i16),
    Commit { group: String, generation: i32, member: String, records: Vec<OffsetRecord> },
    FetchOffsets { group: String, wanted: Option<Vec<(String, i32)>> },
    List(Vec<String>),
    Describe(String, i16),
    Delete(String),
    OffsetDelete { group: String, partitions: Vec<(String, i32)> },
}

pub enum GroupReply {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    Leave(LeaveGroupResponse),
    Commit(Result<(), ResponseError>),
    Offsets(Vec<(String, i32, Option<Committed>)>),
    List(Vec<ListedGroup>),
    Describe(DescribedGroup),
    Code(i16),
    OffsetDelete(i16, Vec<(String, i32, i16)>),
}

/// Replies to [`CoreRequest`]s, variant by variant.
pub enum CoreReply {
    Produce(Result<Produced, PartitionError>),
    Fetch(Result<RemoteRead, PartitionError>),
    Waited,
    ListOffset(Result<Option<(i64, i64)>, PartitionError>),
    Watermarks(Result<(i64, i64), PartitionError>),
    DeleteRecords(Result<i64, PartitionError>),
    Topics(Vec<TopicOutcome>),
    ProducerId(Result<i64, PartitionError>),
    Group(GroupReply),
    ReplicaFetched(Vec<(crate::replication::FetchedPartition, Vec<Bytes>)>),
    /// A catalog snapshot applied: the partitions this core could not open.
    CatalogApplied(Vec<OpenFailure>),
    Done,
}

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

pub struct Envelope {
    from: usize,
    id: u64,
    body: CoreRequest,
}

pub struct ReplyEnvelope {
    id: u64,
    body: CoreReply,
}

/// The catalog owner: core 0.
pub const CATALOG_CORE: usize = 0;

pub struct Shard {
    pub id: usize,
    pub cores: usize,
    pub config: Arc<BrokerConfig>,
    catalog: RefCell<Arc<TopicTable>>,
    partitions: RefCell<HashMap<(String, i32), Rc<Partition>>>,
    requests: Senders<Envelope>,
    replies: Senders<ReplyEnvelope>,
    pending: RefCell<HashMap<u64, oneshot::Sender<CoreReply>>>,
    next_call: Cell<u64>,
    /// Serialises catalog changes (core 0 only).
    pub(crate) catalog_lock: Semaphore,
    /// Serialises applying catalog snapshots on this core.
    apply_lock: Semaphore,
    /// Serialises publishing cluster metadata (core 0, cluster mode).
    pub(crate) sync_lock: Semaphore,
    /// Producer ids reserved by the persisted catalog and not yet handed out (core 0 only).
    pub(crate) producer_ids: Cell<(i64, i64)>,
    pub shutdown: Event,
    pub shutting_down: Cell<bool>,
    /// Groups whose `__consumer_offsets` partition this core owns.
    pub groups: GroupCoordinator,
    /// This core's metrics (read by the exporter thread).
    pub metrics: Arc<crate::metrics::CoreMetrics>,
    /// Cluster mode: this broker's member of the cluster-metadata Raft group.
    pub control: Option<Arc<crate::cluster::ControlPlane>>,
    /// Notified when this core's followed partitions or their leaders change (fetchers re-plan).
    pub followers_changed: Event,
    /// Partitions with an ISR change proposal in flight (one at a time each).
    pub isr_pending: RefCell<std::collections::HashSet<(String, i32)>>,
    /// Partitions the cores could not open when this core last published the catalog (core 0):
    /// how cluster topic administration learns that a topic it created did not open here.
    pub(crate) last_open_failures: RefCell<Vec<OpenFailure>>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cores: usize,
        config: Arc<BrokerConfig>,
        catalog: Arc<TopicTable>,
        requests: Senders<Envelope>,
        replies: Senders<ReplyEnvelope>,
        metrics: Arc<crate::metrics::CoreMetrics>,
        control: Option<Arc<crate::cluster::ControlPlane>>,
    ) -> Rc<Shard> {
        // Before any core opens a partition (the first core to get here does it for the process).
        crate::topic_limits::raise_descriptor_limit();
        let next = catalog.next_producer_id;
        Rc::new(Shard {
            id,
            cores,
            config,
            catalog: RefCell::new(catalog),
            partitions: RefCell::new(HashMap::new()),
            requests,
            replies,
            pending: RefCell::new(HashMap::new()),
            next_call: Cell::new(0),
            catalog_lock: Semaphore::new(1),
            apply_lock: Semaphore::new(1),
            sync_lock: Semaphore::new(1),
            producer_ids: Cell::new((next, next)),
            shutdown: Event::new(),
            shutting_down: Cell::new(false),
            groups: GroupCoordinator::default(),
            metrics,
            control,
            followers_changed: Event::new(),
            isr_pending: RefCell::new(Default::default()),
            last_open_failures: RefCell::new(Vec::new()),
        })
    }

    /// Copies what the metrics exporter reads from this core's own state: partition offsets and
    /// append counters, groups' committed offsets, storage latencies, executor busy time.
    pub fn publish_metrics(&self) {
        let partitions = self
            .partitions
            .borrow()
            .values()
            .map(|p| {
                let (records, bytes) = p.appended();
                crate::metrics::PartitionSample {
                    topic: p.topic.clone(),
                    partition: p.index,
                    log_start_offset: p.log_start_offset(),
                    log_end_offset: p.log_end_offset(),
                    high_watermark: p.high_watermark(),
                    size_bytes: p.size_bytes(),
                    records_appended: records,
                    bytes_appended: bytes,
                    replication: p.replication_sample(),
                }
            })
            .collect();
        let commits = self.groups.commit_samples();
        self.metrics.publish(crate::metrics::CoreSnapshot { partitions, commits });
        self.metrics.add_storage_latency(&sluice_io::latency::take());
        // executor_stats() hands over what accumulated since the previous call.
        let busy = glommio::executor().executor_stats().total_runtime();
        self.metrics.busy_ns.fetch_add(busy.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutdown(&self) {
        loop {
            if self.shutting_down.get() {
                return;
            }
            let listener = self.shutdown.listen();
            if self.shutting_down.get() {
                return;
            }
            listener.await;
        }
    }

    /// Runs `work` until it finishes (`Some` of its output) or shutdown begins (`None`).
    pub async fn unless_shutdown<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.wait_shutdown().await;
            None
        })
        .await
    }

    /// Stops accepting work: the accept loop and idle connections end.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.shutdown.notify(usize::MAX);
    }

    pub fn catalog(&self) -> Arc<TopicTable> {
        self.catalog.borrow().clone()
    }

    /// The owning core of a partition, or the error a client should get.
    pub fn owner(&self, topic: &str, partition: i32) -> Result<usize, PartitionError> {
        let cat = self.catalog.borrow();
        let t = cat.topics.get(topic).ok_or_else(|| {
            PartitionError::new(ResponseError::UnknownTopicOrPartition, format!("unknown topic {topic}"))
        })?;
        usize::try_from(partition).ok().and_then(|p| t.shards.get(p)).map(|s| *s as usize).ok_or_else(|| {
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

    /// Sends `req` to `core` and waits for its reply; runs it inline when `core` is this one.
    pub async fn call(self: &Rc<Self>, core: usize, req: CoreRequest) -> CoreReply {
        if core == self.id {
            return Box::pin(self.handle(req)).await;
        }
        let id = self.next_call.get();
        self.next_call.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.metrics.cross_core_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.requests.send_to(core, Envelope { from: self.id, id, body: req }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return CoreReply::Done;
        }
        rx.await.unwrap_or(CoreReply::Done)
    }

    /// Starts the tasks that serve other cores' requests and route their replies to us.
    pub fn start_mesh_tasks(self: &Rc<Self>, mut requests: Receivers<Envelope>, mut replies: Receivers<ReplyEnvelope>) {
        for (_, stream) in requests.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    let shard = shard.clone();
                    shard.metrics.cross_core_served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    glommio::spawn_local(async move {
                        let body = shard.handle(env.body).await;
                        let from = env.from;
                        if shard.replies.send_to(from, ReplyEnvelope { id: env.id, body }).await.is_err() {
                            warn!(to = from, "reply channel closed");
                        }
                    })
                    .detach();
                }
            })
            .detach();
        }
        for (_, stream) in replies.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    if let Some(tx) = shard.pending.borrow_mut().remove(&env.id) {
                        let _ = tx.send(env.body);
                    }
                }
            })
            .detach();
        }
    }

    async fn handle(self: &Rc<Self>, req: CoreRequest) -> CoreReply {
        match req {
            CoreRequest::Produce { topic, partition, records, acks, timeout } => {
                CoreReply::Produce(match self.local(&topic, partition) {
                    Ok(p) => p.produce(&records, acks, timeout).await,
                    Err(e) => Err(e),
                })
            }
            CoreRequest::Fetch { topic, partition, offset, max_bytes } => {
                CoreReply::Fetch(self.read_copied(&topic, partition, offset, max_bytes).await)
            }
            CoreRequest::WaitForData { topic, partition, offset, timeout } => {
                if let Ok(p) = self.local(&topic, partition) {
                    let _ = glommio::timer::timeout(timeout, async {
                        p.wait_for_data(offset).await;
                        Ok(())
                    })
                    .await;
                }
                CoreReply::Waited
            }
            CoreRequest::ListOffset { topic, partition, timestamp } => {
                CoreReply::ListOffset(match self.leading(&topic, partition) {
                    Ok(p) => list_offset(&p, timestamp).await,
                    Err(e) => Err(e),
                })
            }
            CoreRequest::Watermarks { topic, partition } => CoreReply::Watermarks(
                self.leading(&topic, partition).map(|p| (p.log_start_offset(), p.high_watermark())),
            ),
            CoreRequest::DeleteRecords { topic, partition, offset } => {
                CoreReply::DeleteRecords(match self.leading(&topic, partition) {
                    Ok(p) => p.delete_records(offset).await,
                    Err(e) => Err(e),
                })
            }
            CoreRequest::CreateTopics { topics, validate_only } => {
                CoreReply::Topics(self.create_topics(topics, validate_only).await)
            }
            CoreRequest::DeleteTopics { names } => CoreReply::Topics(self.delete_topics(names).await),
            CoreRequest::CreatePartitions { topics, validate_only } => {
                CoreReply::Topics(self.create_partitions(topics, validate_only).await)
            }
            CoreRequest::AllocateProducerId => CoreReply::ProducerId(self.allocate_producer_id().await),
            CoreRequest::AlterTopicConfigs { changes, validate_only } => {
                CoreReply::Topics(self.alter_topic_configs(changes, validate_only).await)
            }
            CoreRequest::CatalogChanged(table) => CoreReply::CatalogApplied(self.apply_catalog(table).await),
            CoreRequest::Group(call) => CoreReply::Group(self.run_group(*call).await),
            CoreRequest::AdoptReplicaConnection { fd, hello, correlation_id } => {
                crate::replica::server::adopt(self.clone(), fd, hello, correlation_id);
                CoreReply::Done
            }
            CoreRequest::ReplicaFetch { follower, partitions } => {
                CoreReply::ReplicaFetched(crate::replica::server::fetch_copied(self, follower, &partitions).await)
            }
        }
    }

    /// Partitions of `__consumer_offsets`.
    pub fn offsets_partitions(&self) -> usize {
        self.catalog.borrow().topics.get(OFFSETS_TOPIC).map_or(0, |t| t.shards.len())
    }

    /// The core coordinating `group`.
    pub fn coordinator_core(&self, group: &str) -> Result<usize, PartitionError> {
        let n = self.offsets_partitions();
        if n == 0 {
            return Err(PartitionError::new(ResponseError::CoordinatorNotAvailable, "no offsets topic"));
        }
        self.owner(OFFSETS_TOPIC, offsets_log::partition_for(group, n))
    }

    /// Runs group work on `core` (inline when it is this one).
    pub async fn group_call(self: &Rc<Self>, core: usize, call: GroupCall) -> Option<GroupReply> {
        match self.call(core, CoreRequest::Group(Box::new(call))).await {
            CoreReply::Group(r) => Some(r),
            _ => None,
        }
    }

    async fn run_group(self: &Rc<Self>, call: GroupCall) -> GroupReply {
        let g = &self.groups;
        match call {
            GroupCall::Join(req, v, client, host) => GroupReply::Join(g.join(req, v, &client, &host).await),
            GroupCall::Sync(req, v) => GroupReply::Sync(g.sync(req, v).await),
            GroupCall::Heartbeat(req) => GroupReply::Heartbeat(g.heartbeat(req)),
            GroupCall::Leave(req, v) => GroupReply::Leave(g.leave(req, v)),
            GroupCall::Commit { group, generation, member, records } => {
                let res = match g.check_commit(&group, generation, &member) {
                    Ok(()) => g.persist(self, &group, records).await,
                    Err(e) => Err(e),
                };
                GroupReply::Commit(res)
            }
            GroupCall::FetchOffsets { group, wanted } => GroupReply::Offsets(g.fetch_offsets(&group, wanted)),
            GroupCall::List(states) => GroupReply::List(g.list(&states)),
            GroupCall::Describe(group, v) => GroupReply::Describe(g.describe(&group, v)),
            GroupCall::Delete(group) => GroupReply::Code(match g.prepare_delete(&group) {
                Err(e) => e.code(),
                Ok(records) => match g.persist(self, &group, records).await {
                    Ok(()) => {
                        g.forget(&group);
                        0
                    }
                    Err(e) => e.code(),
                },
            }),
            GroupCall::OffsetDelete { group, partitions } => {
                if !g.exists(&group) {
                    return GroupReply::OffsetDelete(ResponseError::GroupIdNotFound.code(), Vec::new());
                }
                let subscribed = g.subscribed(&group);
                let mut per = Vec::new();
                let mut records = Vec::new();
                for (t, p) in partitions {
                    if subscribed.contains(&t) {
                        per.push((t, p, ResponseError::GroupSubscribedToTopic.code()));
                    } else {
                        records.push(OffsetRecord {
                            group: group.clone(),
                            topic: t.clone(),
                            partition: p,
                            value: None,
                        });
                        per.push((t, p, 0));
                    }
                }
                match g.persist(self, &group, records).await {
                    Ok(()) => GroupReply::OffsetDelete(0, per),
                    Err(e) => GroupReply::OffsetDelete(e.code(), Vec::new()),
                }
            }
        }
    }

    /// Replays this core's `__consumer_offsets` partitions into the coordinator.
    pub async fn load_offsets(&self) -> anyhow::Result<()> {
        let parts: Vec<Rc<Partition>> =
            self.partitions.borrow().iter().filter(|((t, _), _)| t == OFFSETS_TOPIC).map(|(_, p)| p.clone()).collect();
        for p in parts {
            self.load_offsets_of(&p).await?;
        }
        Ok(())
    }

    /// Replays one `__consumer_offsets` partition (to its log end: a new leader's high watermark
    /// may still be catching up with records the ISR holds).
    async fn load_offsets_of(&self, p: &Partition) -> anyhow::Result<()> {
        let mut at = p.log_start_offset();
        let end = p.log_end_offset();
        let mut n = 0usize;
        while at < end {
            let batches = p.read_to_end(at, 1 << 20).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let Some(last) = batches.last() else { break };
            at = last.header.next_offset() as i64;
            for b in &batches {
                let recs = offsets_log::decode_batches(Bytes::copy_from_slice(&b.payload))?;
                n += recs.len();
                self.groups.apply(recs);
            }
        }
        if n > 0 {
            info!(partition = p.index, records = n, core = self.id, "committed offsets loaded");
        }
        Ok(())
    }

    /// Session and rebalance timers, and offset expiry, for this core's groups.
    pub async fn group_timers(self: Rc<Self>) {
        while !self.shutting_down.get() {
            glommio::timer::sleep(Duration::from_millis(crate::groups::TICK_MS)).await;
            for (group, records) in self.groups.tick() {
                if let Err(e) = self.groups.persist(&self, &group, records).await {
                    warn!(group, error = ?e, "expiring offsets failed");
                }
            }
        }
    }

    async fn read_copied(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<RemoteRead, PartitionError> {
        let p = self.leading(topic, partition)?;
        let batches = p.read(offset, max_bytes).await?;
        // Crossing to another core needs owned, Send bytes: one copy (local fetches splice instead).
        let batches = batches.iter().map(|b| Bytes::copy_from_slice(&b.payload)).collect();
        Ok(RemoteRead { batches, high_watermark: p.high_watermark(), log_start_offset: p.log_start_offset() })
    }

    /// Adopts `table` (unless this core already has a newer one), then opens partitions newly
    /// assigned to this core and closes/deletes removed ones. Serialised per core. Returns the
    /// partitions it could not open (each also logged): a partition whose files do not fit in the
    /// descriptor budget is left closed, so that the listeners keep descriptors to accept with.
    pub async fn apply_catalog(&self, table: Arc<TopicTable>) -> Vec<OpenFailure> {
        let _permit = self.apply_lock.acquire_permit(1).await;
        if table.version < self.catalog.borrow().version {
            return Vec::new();
        }
        *self.catalog.borrow_mut() = table.clone();
        let data_dir = self.config.data_dir.clone();
        let mut wanted: Vec<(Arc<TopicMeta>, i32)> = Vec::new();
        for t in table.topics.values() {
            for (p, s) in t.shards.iter().enumerate() {
                if *s as usize == self.id && table.hosts(&t.name, p as i32) {
                    wanted.push((t.clone(), p as i32));
                }
            }
        }
        // Committed offsets first: if descriptors run short, groups keep working.
        wanted.sort_by_key(|(t, _)| t.name != OFFSETS_TOPIC);
        let removed: Vec<(String, i32)> = {
            let parts = self.partitions.borrow();
            parts.keys().filter(|(t, p)| !wanted.iter().any(|(w, wp)| &w.name == t && wp == p)).cloned().collect()
        };
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
        if let Some(view) = &table.cluster {
            self.apply_roles(view).await;
        }
        failures
    }

    /// Cluster mode: makes each open partition leader or follower as the metadata says; a new
    /// leadership of a `__consumer_offsets` partition loads its groups' committed offsets.
    async fn apply_roles(&self, view: &crate::topics::ClusterView) {
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
                let was_leader =
                    matches!(&before, crate::partition::Role::Leader(l) if l.leader_epoch == ps.leader_epoch);
                followers_changed |= matches!(before, crate::partition::Role::Follower { .. });
                if !was_leader && p.topic == OFFSETS_TOPIC {
                    if let Err(e) = self.load_offsets_of(&p).await {
                        error!(partition = p.index, error = %e, "loading committed offsets");
                    }
                }
            } else {
                p.become_follower(ps.leader, ps.leader_epoch);
                followers_changed |= !matches!(before,
                    crate::partition::Role::Follower { leader, leader_epoch } if leader == ps.leader && leader_epoch == ps.leader_epoch);
            }
        }
        if followers_changed {
            self.followers_changed.notify(usize::MAX);
        }
    }

    /// Persists `table` (single node; a cluster's metadata lives in Raft) and makes every core
    /// apply it; returns once all have, with the partitions they could not open.
    pub(crate) async fn publish(self: &Rc<Self>, mut table: TopicTable) -> Result<Vec<OpenFailure>, PartitionError> {
        table.version = self.catalog.borrow().version + 1;
        if table.cluster.is_none() {
            topics::save(&self.config.data_dir, &table).await?;
        }
        let table = Arc::new(table);
        let mut failures = Vec::new();
        for core in 0..self.cores {
            if let CoreReply::CatalogApplied(f) = self.call(core, CoreRequest::CatalogChanged(table.clone())).await {
                failures.extend(f);
            }
        }
        self.last_open_failures.replace(failures.clone());
        Ok(failures)
    }

    async fn create_topics(self: &Rc<Self>, new: Vec<NewTopic>, validate_only: bool) -> Vec<TopicOutcome> {
        if let Some(cp) = self.control.clone() {
            return crate::controller::create_topics(self, &cp, new, validate_only).await;
        }
        assert_eq!(self.id, CATALOG_CORE, "catalog changes run on the catalog core");
        let _permit = self.catalog_lock.acquire_permit(1).await;
        let mut table = (*self.catalog()).clone();
        let mut budget = PartitionBudget::of_this_broker(&self.config, self.cores);
        let requested = topic_limits::requested_partitions(&self.config, new.iter().map(|t| t.partitions));
        if let Err(refusal) = budget.check_request(requested) {
            return new.into_iter().map(|t| refused(t.name, [0; 16], t.partitions, refusal.clone())).collect();
        }
        let mut hosted: u64 = table.topics.values().map(|t| t.shards.len() as u64).sum();
        let mut out = Vec::new();
        let mut created = Vec::new();
        for t in new {
            let exists = table.topics.contains_key(&t.name);
            let partitions =
                match topic_limits::validate_new_topic(&self.config, &t.name, t.partitions, &t.configs, exists) {
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
            if let Err(refusal) = budget.admit(self.config.node_id, hosted, partitions as u64, true) {
                out.push(refused(t.name, [0; 16], t.partitions, refusal));
                continue;
            }
            hosted += partitions as u64;
            let id = *uuid::Uuid::new_v4().as_bytes();
            let shards = table.assign(partitions as u32, self.cores);
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
            let failures = self.publish_outcomes(table, &mut out).await;
            // A topic with a partition that did not open is taken out again: no half-created topic.
            let broken = open_failures_of(&failures, &created);
            if !broken.is_empty() {
                let mut table = (*self.catalog()).clone();
                for (name, _) in &broken {
                    table.topics.remove(name);
                }
                let undo = self.publish(table).await.err();
                report_open_failures(&mut out, &broken, undo, "the topic was not created");
            }
        }
        out
    }

    /// Publishes a changed catalog for an admin request: a failed write fails every change of the
    /// request (none is in effect). Returns the partitions that did not open.
    async fn publish_outcomes(self: &Rc<Self>, table: TopicTable, out: &mut [TopicOutcome]) -> Vec<OpenFailure> {
        match self.publish(table).await {
            Ok(failures) => failures,
            Err(e) => {
                for o in out.iter_mut().filter(|o| o.error.is_none()) {
                    o.error = Some((ResponseError::KafkaStorageError, e.message.clone()));
                }
                Vec::new()
            }
        }
    }

    async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicOutcome> {
        if let Some(cp) = self.control.clone() {
            return crate::controller::delete_topics(self, &cp, names).await;
        }
        assert_eq!(self.id, CATALOG_CORE, "catalog changes run on the catalog core");
        let _permit = self.catalog_lock.acquire_permit(1).await;
        let mut table = (*self.catalog()).clone();
        let mut out = Vec::new();
        for name in names {
            let Some(t) = table.topics.get(&name).cloned() else {
                let msg = format!("Topic {name} does not exist");
                out.push(refused(name, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
                continue;
            };
            if let Err(refusal) = topic_limits::refuse_protected_change(&self.config, &name, "deleted") {
                out.push(refused(name, t.id, t.shards.len() as i32, refusal));
                continue;
            }
            table.topics.remove(&name);
            out.push(TopicOutcome { name, id: t.id, error: None, partitions: t.shards.len() as i32 });
        }
        debug_assert!(
            topics::INTERNAL_TOPICS
                .iter()
                .all(|n| table.topics.contains_key(*n) == self.catalog().topics.contains_key(*n)),
            "an internal topic is never deleted by a client"
        );
        if out.iter().any(|o| o.error.is_none()) {
            self.publish_outcomes(table, &mut out).await;
        }
        out
    }

    async fn create_partitions(self: &Rc<Self>, wanted: Vec<(String, i32)>, validate_only: bool) -> Vec<TopicOutcome> {
        if let Some(cp) = self.control.clone() {
            return crate::controller::create_partitions(self, &cp, wanted, validate_only).await;
        }
        assert_eq!(self.id, CATALOG_CORE, "catalog changes run on the catalog core");
        let _permit = self.catalog_lock.acquire_permit(1).await;
        let mut table = (*self.catalog()).clone();
        let mut budget = PartitionBudget::of_this_broker(&self.config, self.cores);
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
            let checked = topic_limits::refuse_protected_change(&self.config, &name, "given more partitions")
                .and_then(|()| topic_limits::validate_partition_increase(current, count))
                .and_then(|added| budget.admit(self.config.node_id, hosted, added, true).map(|()| added));
            let added = match checked {
                Ok(added) => added,
                Err(refusal) => {
                    out.push(refused(name, t.id, count, refusal));
                    continue;
                }
            };
            hosted += added;
            if !validate_only {
                let extra = table.assign(added as u32, self.cores);
                let mut meta = (*t).clone();
                meta.shards.extend(extra);
                table.topics.insert(name.clone(), Arc::new(meta));
                before.push((name.clone(), t.clone()));
            }
            out.push(TopicOutcome { name, id: t.id, error: None, partitions: count });
        }
        if !before.is_empty() {
            let failures = self.publish_outcomes(table, &mut out).await;
            let grown: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
            let broken = open_failures_of(&failures, &grown);
            if !broken.is_empty() {
                // Back to the partitions they had: the new ones are closed and removed again.
                let mut table = (*self.catalog()).clone();
                for (name, meta) in before.iter().filter(|(n, _)| broken.iter().any(|(b, _)| b == n)) {
                    table.topics.insert(name.clone(), meta.clone());
                }
                let undo = self.publish(table).await.err();
                report_open_failures(&mut out, &broken, undo, "no partition was added");
            }
        }
        out
    }

    /// Applies config changes to topics (validated against the broker defaults first).
    async fn alter_topic_configs(
        self: &Rc<Self>,
        changes: Vec<TopicConfigChange>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        if let Some(cp) = self.control.clone() {
            return crate::controller::alter_topic_configs(self, &cp, changes, validate_only).await;
        }
        assert_eq!(self.id, CATALOG_CORE, "catalog changes run on the catalog core");
        let _permit = self.catalog_lock.acquire_permit(1).await;
        let mut table = (*self.catalog()).clone();
        let mut out = Vec::new();
        let mut changed = false;
        for c in changes {
            let Some(meta) = table.topics.get(&c.topic).cloned() else {
                let msg = format!("Topic {} does not exist", c.topic);
                out.push(refused(c.topic, [0; 16], 0, (ResponseError::UnknownTopicOrPartition, msg)));
                continue;
            };
            let partitions = meta.shards.len() as i32;
            if let Err(refusal) = topic_limits::refuse_protected_change(&self.config, &c.topic, "reconfigured") {
                out.push(refused(c.topic, meta.id, partitions, refusal));
                continue;
            }
            let mut configs = if c.replace { Vec::new() } else { meta.configs.clone() };
            configs.retain(|(k, _)| !c.delete.contains(k) && !c.set.iter().any(|(s, _)| s == k));
            configs.extend(c.set.iter().cloned());
            if let Err(msg) = TopicSettings::resolve(&self.config, &configs) {
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
            self.publish_outcomes(table, &mut out).await;
        }
        out
    }

    /// Hands out a producer id that was never handed out before, even across restarts: ids are
    /// reserved in blocks persisted in the catalog before any of them is used.
    async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, PartitionError> {
        if let Some(cp) = self.control.clone() {
            return crate::controller::allocate_producer_id(self, &cp).await;
        }
        assert_eq!(self.id, CATALOG_CORE, "producer ids come from the catalog core");
        let _permit = self.catalog_lock.acquire_permit(1).await;
        let (next, limit) = self.producer_ids.get();
        if next < limit {
            self.producer_ids.set((next + 1, limit));
            return Ok(next);
        }
        let mut table = (*self.catalog()).clone();
        let start = table.next_producer_id;
        table.next_producer_id = start + crate::producer_state::PRODUCER_ID_BLOCK;
        self.publish(table).await?;
        self.producer_ids.set((start + 1, start + crate::producer_state::PRODUCER_ID_BLOCK));
        Ok(start)
    }

    /// Runs retention and compaction on this core's partitions.
    pub async fn apply_retention(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            match p.apply_retention(now).await {
                Ok(0) => {}
                Ok(n) => info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted segments"),
                Err(e) => warn!(topic = %p.topic, partition = p.index, error = %e.message, "retention failed"),
            }
            match p.compact(self.config.cleaner_dedupe_buffer_bytes, now).await {
                Ok(None) => {}
                Ok(Some(stats)) if stats.segments_rewritten > 0 => crate::compaction::report(&p.topic, p.index, &stats),
                Ok(Some(_)) => {}
                Err(e) => warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed"),
            }
        }
    }

    /// Snapshots idempotent-producer state of this core's partitions (bounds rebuild at start-up).
    pub async fn snapshot_producers(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.snapshot_producers().await {
                warn!(topic = %p.topic, partition = p.index, error = %e, "producer snapshot failed");
            }
        }
    }

    /// Closes every partition (flush + checkpoint).
    pub async fn close_all(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in parts {
            if let Err(e) = p.close().await {
                error!(topic = %p.topic, partition = p.index, error = %e, "closing partition");
            }
        }
    }
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

/// ListOffsets for one partition: -2 earliest, -1 latest, -3 max timestamp, else by timestamp.
async fn list_offset(p: &Partition, timestamp: i64) -> Result<Option<(i64, i64)>, PartitionError> {
    match timestamp {
        -2 => Ok(Some((p.log_start_offset(), -1))),
        -1 => Ok(Some((p.high_watermark(), -1))),
        -3 => p.max_timestamp().await,
        ts if ts >= 0 => p.offset_for_timestamp(ts).await,
        _ => Err(PartitionError::new(ResponseError::InvalidRequest, format!("unsupported timestamp {timestamp}"))),
    }
}

/// Reads from a partition on this core, or copied from its owner.
pub enum FetchedRecords {
    Local(Vec<sluice_io::StoredBatch>, i64, i64),
    Remote(RemoteRead),
}

impl Shard {
    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<FetchedRecords, PartitionError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            let p = self.leading(topic, partition)?;
            let batches = p.read(offset, max_bytes).await?;
            return Ok(FetchedRecords::Local(batches, p.high_watermark(), p.log_start_offset()));
        }
        match self.call(owner, CoreRequest::Fetch { topic: topic.to_string(), partition, offset, max_bytes }).await {
            CoreReply::Fetch(r) => r.map(FetchedRecords::Remote),
            _ => Err(PartitionError::new(ResponseError::UnknownServerError, "core did not answer")),
        }
    }
}
