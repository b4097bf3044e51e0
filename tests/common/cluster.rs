//! A `sluice dev-cluster` of real broker processes on 127.0.0.1, for the multi-broker tests: start it,
//! `kill -9` a node by its pid file, freeze and thaw one (SIGSTOP/SIGCONT), restart one from its saved
//! command line, and look at the cluster through Metadata and CreateTopics (sluice-client over a std
//! `TcpStream`, so that the controller id and leader epochs are visible, which librdkafka hides).
//! Every wait has a deadline and panics with the tail of every broker's log.
//!
//! It touches only the processes it started (dev-cluster, and the brokers it restarted by hand) and
//! the directory it was given.

use std::cell::Cell;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::protocol::Request;
use sluice_client::requests::{self, NewTopic};
use sluice_client::Connection;

use super::wire;

/// Brokers of every cluster this harness starts (node ids 0, 1, 2).
pub const BROKERS: i32 = 3;
/// dev-cluster's own offsets of the replication and Raft listeners above the Kafka ones.
pub const LISTENER_PORT_OFFSETS: [u16; 3] = [0, 100, 200];
/// How long dev-cluster has to print its ready line (its own limit is 60 s).
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(70);
/// How long dev-cluster has to exit after SIGTERM (its brokers get 30 s, then SIGKILL).
pub const CLUSTER_EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a restarted broker has to answer, or a killed one to be gone.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect, read and write limit of one Metadata or CreateTopics exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Base ports tried before giving up (another process may take a port between check and bind).
const START_ATTEMPTS: usize = 4;
/// Lowest and highest base port picked (the Raft ports go 200 + BROKERS above it); the highest is
/// lowered to stay below the kernel's ephemeral port range.
const BASE_PORT_RANGE: (u16, u16) = (10_000, 60_000);
/// Every port a cluster of this process was given.
static HANDED_OUT_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());
/// How often a condition is looked at again.
pub const POLL: Duration = Duration::from_millis(50);
/// Lines of each broker's log shown when a test fails (lines that differ only in their timestamp
/// count as one), and the most lines read from its end to find them.
const LOG_TAIL_LINES: usize = 40;
const LOG_TAIL_SCAN_LINES: usize = 5_000;
/// `timeout_ms` of CreateTopics.
const CREATE_TOPICS_TIMEOUT_MS: i32 = 10_000;
/// Metadata v8 (leader epochs, controller id, non-flexible) and CreateTopics v5 (configs).
const METADATA_VERSION: i16 = 8;
const CREATE_TOPICS_VERSION: i16 = 5;
/// Kafka error codes the harness acts on.
pub const ERROR_NONE: i16 = 0;
pub const ERROR_REQUEST_TIMED_OUT: i16 = 7;
pub const ERROR_NOT_ENOUGH_REPLICAS: i16 = 19;
pub const ERROR_TOPIC_ALREADY_EXISTS: i16 = 36;
pub const ERROR_INVALID_REPLICATION_FACTOR: i16 = 38;
pub const ERROR_NOT_CONTROLLER: i16 = 41;

/// What the harness last did to a node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// SIGKILLed and gone.
    Killed,
    /// SIGSTOPped: its connections stay open but it answers nothing.
    Stopped,
}

/// A running `sluice dev-cluster` of `BROKERS` brokers. On drop, every broker still alive (including
/// frozen ones and ones restarted by hand) is SIGKILLed, then dev-cluster itself; if the test is
/// failing, dev-cluster's stderr and each broker's log tail are printed first.
pub struct DevCluster {
    child: Option<Child>,
    dir: PathBuf,
    base_port: u16,
    stdout: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    states: Vec<NodeState>,
    /// Brokers this harness restarted by hand (dev-cluster does not manage them), by node id.
    restarted: Vec<Option<Child>>,
    /// Set once a panic message carried the log tails, so that drop does not print them again.
    tails_shown: Cell<bool>,
}

impl DevCluster {
    /// Starts a dev-cluster (one core per broker) on free ports in a fresh directory under `root` and
    /// waits for its ready line; on a port collision, tries other ports (and a fresh directory: the
    /// brokers of a failed attempt may still be stopping).
    pub fn start(root: &Path) -> DevCluster {
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let base_port = free_base_port(attempt);
            let mut cluster = DevCluster::spawn(&root.join(format!("cluster-{attempt}")), base_port);
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                Err(e) => failures.push(format!("base port {base_port}: {e}\n{}", cluster.stderr())),
            }
        }
        panic!("dev-cluster did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n---\n"));
    }

    fn spawn(dir: &Path, base_port: u16) -> DevCluster {
        let stderr_path = dir.with_extension(format!("{base_port}.stderr"));
        let stderr = fs::File::create(&stderr_path).expect("create dev-cluster stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["dev-cluster", "--brokers", &BROKERS.to_string(), "--cores", "1", "--base-port"])
            .arg(base_port.to_string())
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn sluice dev-cluster");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DevCluster {
            child: Some(child),
            dir: dir.to_path_buf(),
            base_port,
            stdout,
            stderr_path,
            states: vec![NodeState::Running; BROKERS as usize],
            restarted: (0..BROKERS).map(|_| None).collect(),
            tails_shown: Cell::new(false),
        }
    }

    /// Waits for the ready line, and checks that each node's saved command line is the printed one.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with("ready:") => break,
                Ok(line) => printed.push(line),
                Err(_) => return Err(format!("no ready line within {CLUSTER_READY_TIMEOUT:?}; stdout: {printed:?}")),
            }
        }
        for id in 0..BROKERS {
            let prefix = format!("node {id}: ");
            let line = printed.iter().find_map(|l| l.strip_prefix(&prefix)).ok_or(format!("no {prefix:?} line"))?;
            let saved = fs::read_to_string(self.node_dir(id).join("cmdline")).map_err(|e| e.to_string())?;
            assert_eq!(saved, format!("{line}\n"), "saved command line of node {id} differs from the printed one");
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn base_port(&self) -> u16 {
        self.base_port
    }

    pub fn node_dir(&self, id: i32) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn kafka_port(&self, id: i32) -> u16 {
        self.base_port + u16::try_from(id).expect("node id fits u16")
    }

    pub fn kafka_addr(&self, id: i32) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.kafka_port(id)))
    }

    /// `bootstrap.servers` naming every broker, so a client can start while any one is down.
    pub fn bootstrap(&self) -> String {
        (0..BROKERS).map(|id| self.kafka_addr(id).to_string()).collect::<Vec<_>>().join(",")
    }

    pub fn state(&self, id: i32) -> NodeState {
        self.states[node_index(id)]
    }

    /// Nodes neither killed nor frozen: the ones a request can be sent to.
    pub fn running_nodes(&self) -> Vec<i32> {
        (0..BROKERS).filter(|&id| self.state(id) == NodeState::Running).collect()
    }

    /// The pid in the node's pid file (written by dev-cluster, or by `restart`).
    pub fn pid(&self, id: i32) -> Option<libc::pid_t> {
        fs::read_to_string(self.node_dir(id).join("pid")).ok().and_then(|t| t.trim().parse().ok())
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The next line dev-cluster printed, if any within `timeout`.
    pub fn stdout_line(&self, timeout: Duration) -> Option<String> {
        self.stdout.recv_timeout(timeout).ok()
    }

    /// The last `LOG_TAIL_LINES` of every broker's log, and dev-cluster's stderr: for failure messages.
    pub fn log_tails(&self) -> String {
        self.tails_shown.set(true);
        let mut out = format!("--- dev-cluster stderr ---\n{}", self.stderr());
        for id in 0..BROKERS {
            let path = self.node_dir(id).join("broker.log");
            let tail = log_tail(&fs::read_to_string(&path).unwrap_or_default());
            out.push_str(&format!("\n--- node {id} ({:?}) {} ---\n{tail}", self.state(id), path.display()));
        }
        out
    }

    /// Polls `probe` every `POLL` until it returns `Ok`, for at most `timeout`; then panics with
    /// `what`, the probe's last `Err` (what it saw instead) and every broker's log tail.
    #[track_caller]
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(value) => return value,
                Err(seen) if Instant::now() >= deadline => {
                    panic!("{what}: not within {timeout:?}; last seen: {seen}\n{}", self.log_tails())
                }
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    /// SIGKILL the node's broker (found by its pid file) and wait until the process is gone (reaped
    /// by dev-cluster, or here if this harness restarted it).
    #[track_caller]
    pub fn kill9(&mut self, id: i32) {
        assert_ne!(self.state(id), NodeState::Killed, "kill9: node {id} is already killed");
        let pid = self.pid(id).unwrap_or_else(|| panic!("kill9: no pid file for node {id}\n{}", self.log_tails()));
        send_signal(pid, libc::SIGKILL);
        if let Some(mut child) = self.restarted[node_index(id)].take() {
            assert_eq!(child.id(), pid as u32, "pid file of node {id} names another process than the restarted one");
            child.wait().expect("reap the killed broker");
            remove_pid_file_of(&self.node_dir(id), pid);
        } else {
            // dev-cluster reaps it (until then it is a zombie, which still exists).
            self.wait_gone(pid, &format!("killed node {id} (pid {pid}) is reaped"));
        }
        self.states[node_index(id)] = NodeState::Killed;
    }

    /// SIGTERM the node's broker (started by dev-cluster) and wait until it has exited.
    #[track_caller]
    pub fn sigterm(&mut self, id: i32) {
        assert_eq!(self.state(id), NodeState::Running, "sigterm: node {id}");
        assert!(self.restarted[node_index(id)].is_none(), "sigterm: node {id} was restarted by the test");
        let pid = self.pid(id).unwrap_or_else(|| panic!("sigterm: no pid file for node {id}\n{}", self.log_tails()));
        send_signal(pid, libc::SIGTERM);
        self.wait_gone(pid, &format!("node {id} (pid {pid}) exits after SIGTERM"));
        self.states[node_index(id)] = NodeState::Killed;
    }

    /// Waits until process `pid` no longer exists (reaped).
    fn wait_gone(&self, pid: libc::pid_t, what: &str) {
        self.wait_until(what, NODE_TIMEOUT, || {
            if process_exists(pid) {
                Err("process still exists".to_string())
            } else {
                Ok(())
            }
        });
    }

    /// SIGSTOP the node's broker: it keeps its connections but answers nothing (a long stall).
    #[track_caller]
    pub fn freeze(&mut self, id: i32) {
        assert_eq!(self.state(id), NodeState::Running, "freeze: node {id}");
        send_signal(self.pid(id).expect("pid file of a running node"), libc::SIGSTOP);
        self.states[node_index(id)] = NodeState::Stopped;
    }

    /// SIGCONT a node frozen by `freeze`.
    #[track_caller]
    pub fn thaw(&mut self, id: i32) {
        assert_eq!(self.state(id), NodeState::Stopped, "thaw: node {id}");
        send_signal(self.pid(id).expect("pid file of a frozen node"), libc::SIGCONT);
        self.states[node_index(id)] = NodeState::Running;
    }

    /// Restarts a killed node from its saved `cmdline` (output appended to its `broker.log`), writes
    /// its pid file, and waits until its Kafka port answers ApiVersions.
    #[track_caller]
    pub fn restart(&mut self, id: i32) {
        assert_eq!(self.state(id), NodeState::Killed, "restart: node {id} must be killed first");
        let dir = self.node_dir(id);
        let cmdline = fs::read_to_string(dir.join("cmdline")).expect("cmdline of the node");
        assert_eq!(cmdline.lines().count(), 1, "cmdline of node {id} is one line: {cmdline:?}");
        let log = dir.join("broker.log");
        // `exec`: the shell becomes the broker, so the child's pid is the broker's.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {} >> '{}' 2>&1", cmdline.trim(), log.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("restart node {id} from its cmdline: {e}"));
        fs::write(dir.join("pid"), format!("{}\n", child.id())).expect("write the restarted node's pid file");
        self.restarted[node_index(id)] = Some(child);
        self.states[node_index(id)] = NodeState::Running;
        let addr = self.kafka_addr(id);
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            let child = self.restarted[node_index(id)].as_mut().expect("the child just spawned");
            // A broker that exited will never answer: say so rather than wait.
            if let Some(status) = child.try_wait().expect("try_wait restarted node") {
                self.restarted[node_index(id)] = None;
                self.states[node_index(id)] = NodeState::Killed;
                panic!("restarted node {id} exited ({status})\n{}", self.log_tails());
            }
            match wire::api_versions_v0_round_trip(addr, Duration::from_secs(1)) {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "restarted node {id} does not answer on {addr} within {NODE_TIMEOUT:?}: {e}\n{}",
                        self.log_tails()
                    )
                }
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    /// SIGTERM a node restarted by `restart` and its exit status, within `NODE_TIMEOUT`.
    #[track_caller]
    pub fn terminate_restarted(&mut self, id: i32) -> ExitStatus {
        let mut child = self.restarted[node_index(id)].take().expect("terminate_restarted: node was not restarted");
        send_signal(child.id() as libc::pid_t, libc::SIGTERM);
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait restarted node") {
                remove_pid_file_of(&self.node_dir(id), child.id() as libc::pid_t);
                self.states[node_index(id)] = NodeState::Killed;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("restarted node {id} still running {NODE_TIMEOUT:?} after SIGTERM\n{}", self.log_tails());
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM dev-cluster and its exit status, within `CLUSTER_EXIT_TIMEOUT`.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("dev-cluster is running");
        send_signal(child.id() as libc::pid_t, libc::SIGTERM);
        let deadline = Instant::now() + CLUSTER_EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait dev-cluster") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dev-cluster still running {CLUSTER_EXIT_TIMEOUT:?} after SIGTERM; stderr:\n{}", self.stderr());
            }
            thread::sleep(POLL);
        }
    }

    // -----------------------------------------------------------------------------------------------
    // The cluster as clients see it.

    /// Metadata (all brokers, controller, and `topics`, or every topic if `None`) from node `id`.
    pub fn metadata_from(&self, id: i32, topics: Option<&[&str]>) -> Result<ClusterView, String> {
        metadata_at(self.kafka_addr(id), id, topics)
    }

    /// Metadata from the controller if the first running node that answers names a running one, else
    /// from that node. The controller has applied every committed change; a broker just restarted may
    /// still be replaying its Raft log and describe a past state (an ISR it has since left, say).
    pub fn metadata(&self, topics: Option<&[&str]>) -> Result<ClusterView, String> {
        let mut errors = Vec::new();
        for id in self.running_nodes() {
            match self.metadata_from(id, topics) {
                Ok(view) => {
                    let controller = view.controller;
                    if controller == id
                        || !(0..BROKERS).contains(&controller)
                        || self.state(controller) != NodeState::Running
                    {
                        return Ok(view);
                    }
                    return Ok(self.metadata_from(controller, topics).unwrap_or(view));
                }
                Err(e) => errors.push(format!("node {id}: {e}")),
            }
        }
        Err(format!("no running node answered Metadata: {errors:?}"))
    }

    /// One partition as `metadata` sees it.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionView, String> {
        self.metadata(Some(&[topic]))?.partition(topic, partition)
    }

    /// The partition's leader, once a running node names one.
    #[track_caller]
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        self.wait_until(&format!("{topic}/{partition} has a leader"), NODE_TIMEOUT, || {
            let p = self.partition(topic, partition)?;
            if p.leader >= 0 {
                Ok(p.leader)
            } else {
                Err(format!("{p:?}"))
            }
        })
    }

    /// Waits until the partition's leader is a node that is running and its ISR is exactly its
    /// replicas (every replica caught up): the state a test starts its faults from.
    #[track_caller]
    pub fn wait_fully_replicated(&self, topic: &str, partition: i32, timeout: Duration) -> PartitionView {
        self.wait_until(&format!("{topic}/{partition}: a running leader and every replica in the ISR"), timeout, || {
            let p = self.partition(topic, partition)?;
            let running = p.leader >= 0 && self.state(p.leader) == NodeState::Running;
            if running && p.error_code == ERROR_NONE && !p.replicas.is_empty() && sorted(&p.isr) == sorted(&p.replicas)
            {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
    }

    /// The controller id once a running node names a controller that is itself running.
    #[track_caller]
    pub fn controller(&self, timeout: Duration) -> i32 {
        self.wait_until("a running controller", timeout, || {
            let view = self.metadata(None)?;
            if view.controller >= 0 && self.state(view.controller) == NodeState::Running {
                Ok(view.controller)
            } else {
                Err(format!("controller {} per node {}", view.controller, view.answered_by))
            }
        })
    }

    /// CreateTopics sent to the controller (per Metadata), retried while the controller moves (NOT_CONTROLLER,
    /// REQUEST_TIMED_OUT, no answer) for up to `NODE_TIMEOUT`; any other outcome is returned as the
    /// topic's error code and message. A retry that finds the topic created by an earlier attempt
    /// answers TOPIC_ALREADY_EXISTS, which is returned as success.
    #[track_caller]
    pub fn create_topic_result(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> (i16, String) {
        let topic_spec = NewTopic { name: topic, partitions, replication_factor, configs };
        let request = requests::create_topics(&[topic_spec], CREATE_TOPICS_TIMEOUT_MS);
        let mut attempts = 0;
        self.wait_until(&format!("CreateTopics {topic} answered"), NODE_TIMEOUT + NODE_TIMEOUT, || {
            attempts += 1;
            let controller = self.metadata(None)?.controller;
            let target = if controller >= 0 && self.state(controller) == NodeState::Running {
                controller
            } else {
                *self.running_nodes().first().ok_or("no running node")?
            };
            let response = call(self.kafka_addr(target), &request, CREATE_TOPICS_VERSION)
                .map_err(|e| format!("node {target}: {e}"))?;
            let result = response.topics.first().ok_or("CreateTopics answer without topics")?;
            let message = result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
            match result.error_code {
                ERROR_NOT_CONTROLLER | ERROR_REQUEST_TIMED_OUT => {
                    Err(format!("node {target}: error {}: {message}", result.error_code))
                }
                ERROR_TOPIC_ALREADY_EXISTS if attempts > 1 => Ok((ERROR_NONE, message)),
                code => Ok((code, message)),
            }
        })
    }

    /// Creates the topic (panics on an error) and waits until every partition is fully replicated.
    /// INVALID_REPLICATION_FACTOR is retried for up to `NODE_TIMEOUT`: right after the cluster or a
    /// broker starts, the controller may not count every broker as alive yet.
    #[track_caller]
    pub fn create_topic(&self, topic: &str, partitions: i32, replication_factor: i16, configs: &[(&str, &str)]) {
        let what = format!("create {topic} (RF {replication_factor}, {configs:?})");
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            let (code, message) = self.create_topic_result(topic, partitions, replication_factor, configs);
            match code {
                ERROR_NONE => break,
                ERROR_INVALID_REPLICATION_FACTOR if Instant::now() < deadline => thread::sleep(POLL),
                _ => panic!("{what}: error {code}: {message}\n{}", self.log_tails()),
            }
        }
        for p in 0..partitions {
            let view = self.wait_fully_replicated(topic, p, NODE_TIMEOUT);
            assert_eq!(view.replicas.len(), replication_factor as usize, "{what}: replicas of partition {p}: {view:?}");
        }
    }

    /// Kill -9 the partition's leader and wait until a running node names a new leader for it (a
    /// different node, with a higher leader epoch, itself in the ISR). Returns (killed, new view).
    #[track_caller]
    pub fn kill_leader_and_wait_failover(
        &mut self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> (i32, PartitionView) {
        let before = self.wait_until(&format!("{topic}/{partition}: a running leader"), NODE_TIMEOUT, || {
            let p = self.partition(topic, partition)?;
            if p.leader >= 0 && self.state(p.leader) == NodeState::Running {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        });
        self.kill9(before.leader);
        let after = self.wait_new_leader(topic, partition, &before, timeout);
        (before.leader, after)
    }

    /// Waits until a running node names a leader for the partition other than `before.leader`, with a
    /// higher leader epoch, which is itself in the ISR and running.
    #[track_caller]
    pub fn wait_new_leader(
        &self,
        topic: &str,
        partition: i32,
        before: &PartitionView,
        timeout: Duration,
    ) -> PartitionView {
        let what =
            format!("{topic}/{partition}: a new leader after node {} (epoch {})", before.leader, before.leader_epoch);
        self.wait_until(&what, timeout, || {
            let p = self.partition(topic, partition)?;
            let moved = p.leader >= 0 && p.leader != before.leader && p.leader_epoch > before.leader_epoch;
            if moved && p.isr.contains(&p.leader) && self.state(p.leader) == NodeState::Running {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
    }

    /// Waits until `node` is in the partition's ISR again (it caught up with the leader).
    #[track_caller]
    pub fn wait_in_isr(&self, topic: &str, partition: i32, node: i32, timeout: Duration) -> PartitionView {
        self.wait_until(&format!("{topic}/{partition}: node {node} back in the ISR"), timeout, || {
            let p = self.partition(topic, partition)?;
            if p.isr.contains(&node) && p.leader >= 0 {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
    }

    /// Waits until `node` is out of the partition's ISR (the controller saw it die).
    #[track_caller]
    pub fn wait_out_of_isr(&self, topic: &str, partition: i32, node: i32, timeout: Duration) -> PartitionView {
        self.wait_until(&format!("{topic}/{partition}: node {node} removed from the ISR"), timeout, || {
            let p = self.partition(topic, partition)?;
            if !p.isr.contains(&node) && p.leader >= 0 {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.tails_shown.get() {
            eprintln!("{}", self.log_tails());
        }
        // Frozen brokers would not act on dev-cluster's SIGTERM: SIGKILL every broker still alive.
        for id in 0..BROKERS {
            if let Some(mut child) = self.restarted[node_index(id)].take() {
                let _ = child.kill();
                let _ = child.wait();
            } else if self.state(id) != NodeState::Killed {
                if let Some(pid) = self.pid(id).filter(|&pid| is_broker_of(pid, &self.node_dir(id))) {
                    // SAFETY: kill(2) on a broker of this cluster (its command line names its directory).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster as one broker's Metadata answer describes it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub answered_by: i32,
    /// (node id, host, port), by node id.
    pub brokers: Vec<(i32, String, i32)>,
    pub controller: i32,
    pub topics: Vec<TopicView>,
}

#[derive(Clone, Debug)]
pub struct TopicView {
    pub name: String,
    pub error_code: i16,
    /// By partition index.
    pub partitions: Vec<PartitionView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    pub error_code: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl ClusterView {
    pub fn topic(&self, topic: &str) -> Result<&TopicView, String> {
        let t = self
            .topics
            .iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| format!("node {} does not list topic {topic}", self.answered_by))?;
        if t.error_code != ERROR_NONE {
            return Err(format!("node {}: topic {topic} error {}", self.answered_by, t.error_code));
        }
        Ok(t)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionView, String> {
        self.topic(topic)?
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .cloned()
            .ok_or_else(|| format!("node {} does not list {topic}/{partition}", self.answered_by))
    }
}

fn sorted(ids: &[i32]) -> Vec<i32> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

fn node_index(id: i32) -> usize {
    assert!((0..BROKERS).contains(&id), "node id {id} out of 0..{BROKERS}");
    id as usize
}

/// Metadata from the broker at `addr` (node `id`), for `topics` (None: all).
pub fn metadata_at(addr: SocketAddr, id: i32, topics: Option<&[&str]>) -> Result<ClusterView, String> {
    let response = call(addr, &requests::metadata(topics, METADATA_VERSION), METADATA_VERSION)?;
    let mut brokers: Vec<(i32, String, i32)> =
        response.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
    brokers.sort();
    let topics = response
        .topics
        .iter()
        .map(|t| {
            let mut partitions: Vec<PartitionView> = t
                .partitions
                .iter()
                .map(|p| PartitionView {
                    partition: p.partition_index,
                    error_code: p.error_code,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            TopicView {
                name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                error_code: t.error_code,
                partitions,
            }
        })
        .collect();
    Ok(ClusterView { answered_by: id, brokers, controller: response.controller_id.0, topics })
}

/// One request on a fresh sluice-client connection and its whole answer, decoded; any failure as text.
pub fn call<R: Request>(addr: SocketAddr, request: &R, version: i16) -> Result<R::Response, String> {
    let options = wire::RawClient::options("sluice-cluster-test", REQUEST_TIMEOUT, wire::MAX_RESPONSE_FRAME_BYTES);
    let mut conn = Connection::connect_addr(addr, &options).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.call_at(request, version).map_err(|e| format!("API {} v{version} at {addr}: {e}", R::KEY))
}

pub fn send_signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on a broker process of a cluster this test started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// Whether a process with this pid exists (a zombie counts).
pub fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The last `LOG_TAIL_LINES` distinct lines of a broker log, lines equal but for their timestamp (the
/// first word) shown once, at their last occurrence, with their count: a broker retrying something
/// in a loop fills its log, often with a few lines taking turns.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let scanned = &lines[lines.len().saturating_sub(LOG_TAIL_SCAN_LINES)..];
    // text after the timestamp -> (index of its last occurrence, count)
    let mut seen: std::collections::HashMap<&str, (usize, usize)> = std::collections::HashMap::new();
    for (i, line) in scanned.iter().enumerate() {
        let text = line.split_once(' ').map_or(*line, |(_, rest)| rest);
        let entry = seen.entry(text).or_insert((i, 0));
        *entry = (i, entry.1 + 1);
    }
    let mut last: Vec<(usize, usize)> = seen.into_values().collect();
    last.sort_unstable();
    last[last.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|&(i, count)| {
            if count > 1 {
                format!("{}  [{count} times in the last {} lines]", scanned[i], scanned.len())
            } else {
                scanned[i].to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes the node's pid file if it names `pid` (a broker this harness restarted and that is gone), as
/// dev-cluster does for the brokers it started.
fn remove_pid_file_of(node_dir: &Path, pid: libc::pid_t) {
    let path = node_dir.join("pid");
    if fs::read_to_string(&path).is_ok_and(|t| t.trim() == pid.to_string()) {
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// Whether `pid` is a broker of the node in `node_dir` (its command line names the directory), so
/// that a stale pid file never makes the harness signal an unrelated process.
fn is_broker_of(pid: libc::pid_t, node_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = node_dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}

/// A base port whose Kafka, replication and Raft ports for every broker are free right now.
fn free_base_port(attempt: usize) -> u16 {
    // Below the kernel's ephemeral range: the port of a killed broker must stay free for its restart,
    // and an outgoing connection (a client's, another broker's) could otherwise be given it.
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let highest_offset = LISTENER_PORT_OFFSETS.iter().max().copied().unwrap_or(0) + BROKERS as u16;
    let (low, high) = (BASE_PORT_RANGE.0, BASE_PORT_RANGE.1.min(ephemeral_low.saturating_sub(highest_offset + 1)));
    assert!(low < high, "no room for cluster ports between {low} and the ephemeral range at {ephemeral_low}");
    let ports_of = |base: u16| -> Vec<u16> {
        LISTENER_PORT_OFFSETS.iter().flat_map(|off| (0..BROKERS as u16).map(move |i| base + off + i)).collect()
    };
    // Never the ports of another cluster of this test process, not even those of its dead brokers.
    let mut handed_out = HANDED_OUT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64)
        + attempt as u64 * 104_729;
    let span = u64::from(high - low);
    for step in 0..span {
        let base = low + ((seed + step * 331) % span) as u16;
        let ports = ports_of(base);
        let all_free = ports.iter().all(|p| !handed_out.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if all_free {
            handed_out.extend(ports);
            return base;
        }
    }
    panic!("no free base port in {low}..{high}");
}

/// A directory under target/ (never tmpfs: the brokers use O_DIRECT), removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target/")
}
