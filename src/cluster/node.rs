//! [`ControlPlane`]: one broker's member of the cluster-metadata Raft group, on a thread of its own.
//! openraft 0.9 needs tokio, so the thread runs a current-thread tokio runtime owning the
//! [`Raft`] instance, its RPC listener and its stores; nothing else ever runs there, and nothing
//! on the data path waits for it. Other threads (glommio executors included) talk to it through a
//! bounded channel; each call answers through a `futures_channel` oneshot, which any executor can
//! await, or a plain thread can block on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_channel::oneshot;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, SnapshotPolicy};
use tokio::sync::{mpsc, watch};

use super::disk::DiskError;
use super::log_store::LogStore;
use super::metadata::ClusterState;
use super::network::{self, PeerClients, PeerHeartbeats};
use super::state_machine::StateMachineStore;
use super::types::{ClusterCommand, CommandResult, NodeId, TypeConfig};

/// Settings of one control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub node_id: NodeId,
    /// Directory of the Raft log, vote and snapshot (e.g. `<data>/__raft`).
    pub dir: PathBuf,
    /// Where Raft RPCs are served (port 0: any free port, see [`ControlPlane::rpc_addr`]).
    pub rpc_addr: SocketAddr,
    /// A leader's heartbeat period; LAN-tuned.
    pub heartbeat_interval_ms: u64,
    /// A follower hearing no leader for a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot (so slightly lagging followers need no snapshot).
    pub logs_kept_after_snapshot: u64,
    /// Requests queued to the control-plane thread; more are refused with [`ControlPlaneError::Busy`].
    pub max_pending_requests: usize,
    /// Where this node reaches each peer's Raft listener, by node id (its own configuration);
    /// peers not listed are reached at the address the membership records.
    pub peer_addrs: BTreeMap<NodeId, String>,
}

impl ControlPlaneConfig {
    /// Defaults for a LAN: heartbeat 100 ms, election 300–600 ms.
    pub fn new(node_id: NodeId, dir: PathBuf, rpc_addr: SocketAddr) -> Self {
        Self {
            node_id,
            dir,
            rpc_addr,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_after_entries: 1000,
            logs_kept_after_snapshot: 100,
            max_pending_requests: 1024,
            peer_addrs: BTreeMap::new(),
        }
    }
}

/// Why a control-plane call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// Writes go to the leader; this node is not it.
    #[error("not the leader; forward to node {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader { leader_id: Option<NodeId>, leader_addr: Option<String> },
    #[error("control plane busy: {limit} requests already queued")]
    Busy { limit: usize },
    #[error("control plane stopped")]
    Stopped,
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("starting the control plane: {0}")]
    Start(String),
}

impl From<DiskError> for ControlPlaneError {
    fn from(e: DiskError) -> Self {
        Self::Start(e.to_string())
    }
}

/// A committed write: its log index and the state machine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub log_index: u64,
    pub result: CommandResult,
}

/// The answer to a control-plane call.
pub type Reply<T> = oneshot::Receiver<Result<T, ControlPlaneError>>;
type Responder<T> = oneshot::Sender<Result<T, ControlPlaneError>>;
/// Raft metrics of this node.
pub type Metrics = RaftMetrics<NodeId, BasicNode>;
type MetricsCondition = Box<dyn Fn(&Metrics) -> bool + Send + Sync>;

enum Request {
    Initialize { members: BTreeMap<NodeId, BasicNode>, reply: Responder<()> },
    Write { cmd: ClusterCommand, reply: Responder<WriteOutcome> },
    Propose { cmd: ClusterCommand, timeout: Duration, reply: Responder<WriteOutcome> },
    Wait { until: MetricsCondition, what: String, timeout: Duration, reply: Responder<Metrics> },
    TriggerSnapshot { reply: Responder<()> },
}

impl Request {
    fn fail(self, e: ControlPlaneError) {
        // The caller may have dropped its receiver; nobody is left to tell.
        match self {
            Request::Initialize { reply, .. } | Request::TriggerSnapshot { reply } => drop(reply.send(Err(e))),
            Request::Write { reply, .. } | Request::Propose { reply, .. } => drop(reply.send(Err(e))),
            Request::Wait { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// Handle of a running control plane. Dropping it (or [`ControlPlane::shutdown`]) stops Raft and
/// joins the thread.
pub struct ControlPlane {
    node_id: NodeId,
    rpc_addr: SocketAddr,
    requests: Option<mpsc::Sender<Request>>,
    max_pending_requests: usize,
    metrics: watch::Receiver<Metrics>,
    state_machine: StateMachineStore,
    peer_heartbeats: PeerHeartbeats,
    thread: Option<JoinHandle<()>>,
}

impl ControlPlane {
    /// Opens the stores under `config.dir`, binds the RPC listener and starts the thread.
    pub fn start(config: ControlPlaneConfig) -> Result<Self, ControlPlaneError> {
        let raft_config = Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ControlPlaneError::Start(e.to_string()))?;
        let log_store = LogStore::open(&config.dir)?;
        let state_machine = StateMachineStore::open(&config.dir)?;
        let listener = std::net::TcpListener::bind(config.rpc_addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| ControlPlaneError::Start(format!("binding {}: {e}", config.rpc_addr)))?;
        let rpc_addr = listener.local_addr().map_err(|e| ControlPlaneError::Start(e.to_string()))?;
        let (requests, inbox) = mpsc::channel(config.max_pending_requests);
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let node_id = config.node_id;
        let sm = state_machine.clone();
        let peer_heartbeats: PeerHeartbeats = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let network = PeerClients { heartbeats: peer_heartbeats.clone(), addrs: config.peer_addrs.clone() };
        let addrs = Arc::new(config.peer_addrs.clone());
        let thread = std::thread::Builder::new()
            .name(format!("raft-{node_id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(ControlPlaneError::Start(format!("tokio runtime: {e}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(ControlPlaneError::Start(format!("listener: {e}"))));
                            return;
                        }
                    };
                    let raft = match Raft::new(node_id, Arc::new(raft_config), network, log_store, sm).await {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = started_tx.send(Err(ControlPlaneError::Start(format!("raft: {e}"))));
                            return;
                        }
                    };
                    if started_tx.send(Ok(raft.metrics())).is_err() {
                        return;
                    }
                    run(raft, listener, inbox, addrs).await;
                });
            })
            .map_err(|e| ControlPlaneError::Start(format!("spawning thread: {e}")))?;
        let metrics = match started_rx.recv() {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ControlPlaneError::Start("control-plane thread died while starting".into())),
        };
        tracing::info!(node_id, %rpc_addr, "raft control plane started");
        Ok(Self {
            node_id,
            rpc_addr,
            requests: Some(requests),
            max_pending_requests: config.max_pending_requests,
            metrics,
            state_machine,
            peer_heartbeats,
            thread: Some(thread),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address Raft RPCs are served on (the bound port when configured with port 0).
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// Makes a brand-new cluster of `members` (node id → RPC address); call on one node only.
    pub fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Reply<()> {
        self.submit(|reply| Request::Initialize { members, reply })
    }

    /// Proposes `cmd`; answers once it is committed and applied on this (leader) node.
    pub fn write(&self, cmd: ClusterCommand) -> Reply<WriteOutcome> {
        self.submit(|reply| Request::Write { cmd, reply })
    }

    /// Proposes `cmd` from any node: applied here when this node leads, otherwise forwarded to the
    /// leader (retried while there is none or it changes) until `timeout`. Answers once committed
    /// and applied on the leader; this node's state may lag (see [`ControlPlane::wait_applied`]).
    pub fn propose(&self, cmd: ClusterCommand, timeout: Duration) -> Reply<WriteOutcome> {
        self.submit(|reply| Request::Propose { cmd, timeout, reply })
    }

    /// Answers once this node has applied the log up to `index`.
    pub fn wait_applied(&self, index: u64, timeout: Duration) -> Reply<Metrics> {
        self.wait_for("applied index", timeout, move |m| m.last_applied.is_some_and(|l| l.index >= index))
    }

    /// A receiver of every change of this node's Raft metrics (leader, applied index, ...); usable
    /// from any executor.
    pub fn subscribe(&self) -> watch::Receiver<Metrics> {
        self.metrics.clone()
    }

    /// Whether this node leads the Raft group (and so is the controller).
    pub fn is_leader(&self) -> bool {
        self.metrics.borrow().current_leader == Some(self.node_id)
    }

    /// When each peer last acknowledged this node's AppendEntries (meaningful while it leads).
    pub fn peer_heartbeats(&self) -> BTreeMap<NodeId, std::time::Instant> {
        self.peer_heartbeats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Answers with the metrics once `until` holds for them, or `Timeout` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        until: impl Fn(&Metrics) -> bool + Send + Sync + 'static,
    ) -> Reply<Metrics> {
        self.submit(|reply| Request::Wait { until: Box::new(until), what: what.to_owned(), timeout, reply })
    }

    /// Asks for a snapshot now (built in the background; watch `metrics().snapshot`).
    pub fn trigger_snapshot(&self) -> Reply<()> {
        self.submit(|reply| Request::TriggerSnapshot { reply })
    }

    /// The latest Raft metrics (leader, term, applied, snapshot, purged).
    pub fn metrics(&self) -> Metrics {
        self.metrics.borrow().clone()
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.metrics.borrow().current_leader
    }

    /// A copy of the cluster state as applied on this node (may lag the leader's).
    pub fn state(&self) -> ClusterState {
        self.state_machine.state()
    }

    /// Stops Raft and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing the channel ends the thread's request loop, which then shuts Raft down.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(node_id = self.node_id, "raft control-plane thread panicked");
            }
        }
    }

    fn submit<T>(&self, make: impl FnOnce(Responder<T>) -> Request) -> Reply<T> {
        let (tx, rx) = oneshot::channel();
        let request = make(tx);
        match &self.requests {
            None => request.fail(ControlPlaneError::Stopped),
            Some(requests) => match requests.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => {
                    r.fail(ControlPlaneError::Busy { limit: self.max_pending_requests })
                }
                Err(mpsc::error::TrySendError::Closed(r)) => r.fail(ControlPlaneError::Stopped),
            },
        }
        rx
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control-plane thread: serve RPCs and requests until the handle goes away.
async fn run(
    raft: Raft<TypeConfig>,
    listener: tokio::net::TcpListener,
    mut inbox: mpsc::Receiver<Request>,
    addrs: Arc<BTreeMap<NodeId, String>>,
) {
    let server = tokio::spawn(network::serve(listener, raft.clone()));
    while let Some(request) = inbox.recv().await {
        tokio::spawn(handle(raft.clone(), request, addrs.clone()));
    }
    server.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::error!(error = %e, "raft shutdown");
    }
    tracing::info!("raft control plane stopped");
}

async fn handle(raft: Raft<TypeConfig>, request: Request, addrs: Arc<BTreeMap<NodeId, String>>) {
    // Replies to callers that gave up are dropped: nothing to do about them.
    match request {
        Request::Initialize { members, reply } => {
            let r = raft.initialize(members).await.map_err(|e| ControlPlaneError::Raft(e.to_string()));
            let _ = reply.send(r);
        }
        Request::Write { cmd, reply } => {
            let r = match raft.client_write(cmd).await {
                Ok(resp) => Ok(WriteOutcome { log_index: resp.log_id.index, result: resp.data }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ControlPlaneError::ForwardToLeader {
                        leader_id: f.leader_id,
                        leader_addr: f.leader_node.map(|n| n.addr),
                    })
                }
                Err(e) => Err(ControlPlaneError::Raft(e.to_string())),
            };
            let _ = reply.send(r);
        }
        Request::Propose { cmd, timeout, reply } => {
            let _ = reply.send(propose(&raft, cmd, timeout, &addrs).await);
        }
        Request::Wait { until, what, timeout, reply } => {
            let r = raft.wait(Some(timeout)).metrics(|m| until(m), &what).await;
            let _ = reply.send(r.map_err(|e| ControlPlaneError::Timeout(format!("{what}: {e}"))));
        }
        Request::TriggerSnapshot { reply } => {
            let r = raft.trigger().snapshot().await.map_err(|e| ControlPlaneError::Raft(e.to_string()));
            let _ = reply.send(r);
        }
    }
}

/// Writes `cmd` through whichever node leads, retrying while leadership moves, until `timeout`.
async fn propose(
    raft: &Raft<TypeConfig>,
    cmd: ClusterCommand,
    timeout: Duration,
    addrs: &BTreeMap<NodeId, String>,
) -> Result<WriteOutcome, ControlPlaneError> {
    const RETRY: Duration = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no leader");
    while tokio::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
            Err(_) => break,
            Ok(Ok(resp)) => return Ok(WriteOutcome { log_index: resp.log_id.index, result: resp.data }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match f.leader_node {
                Some(node) => match network::forward_write(
                    f.leader_id.and_then(|id| addrs.get(&id)).unwrap_or(&node.addr),
                    &cmd,
                    left,
                )
                .await
                {
                    Ok(Ok((log_index, result))) => return Ok(WriteOutcome { log_index, result }),
                    Ok(Err(e)) => last = format!("leader {:?}: {e}", f.leader_id),
                    Err(e) => last = format!("leader {:?}: {e}", f.leader_id),
                },
                None => last = "no leader".into(),
            },
            Ok(Err(e)) => last = e.to_string(),
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(ControlPlaneError::Timeout(format!("proposal ({last})")))
}
