//! The cluster-metadata Raft group in-process: each node is a real `ControlPlane` (its own thread,
//! tokio runtime, TCP listener on 127.0.0.1 and directory under the target dir). Synchronisation
//! is by waiting on Raft metrics, never by sleeping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice::cluster::{
    BasicNode, BrokerEndpoints, ClusterCommand, ControlPlane, ControlPlaneConfig, ControlPlaneError, Metrics, NodeId,
    Rejection, Reply, WriteOutcome,
};

/// Bound on any wait in these tests; they pass in a small fraction of it.
const WAIT: Duration = Duration::from_secs(10);
/// The target for electing a new leader after the old one stops.
const FAILOVER_TARGET: Duration = Duration::from_secs(3);

fn block<T>(reply: Reply<T>) -> Result<T, ControlPlaneError> {
    futures_executor::block_on(reply).unwrap_or(Err(ControlPlaneError::Stopped))
}

struct TestCluster {
    dir: PathBuf,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, ControlPlane>,
    snapshot_after_entries: u64,
}

impl TestCluster {
    /// Starts nodes 1..=n on free ports and initialises them as one cluster.
    fn start(name: &str, n: u64, snapshot_after_entries: u64) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster_raft").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = Self { dir, addrs: BTreeMap::new(), nodes: BTreeMap::new(), snapshot_after_entries };
        for id in 1..=n {
            cluster.start_node(id, "127.0.0.1:0".parse().unwrap());
        }
        let members = cluster.addrs.iter().map(|(id, a)| (*id, BasicNode::new(a.to_string()))).collect();
        block(cluster.nodes[&1].initialize(members)).unwrap();
        cluster
    }

    fn start_node(&mut self, id: NodeId, addr: SocketAddr) {
        let mut config = ControlPlaneConfig::new(id, self.dir.join(format!("node-{id}")), addr);
        config.snapshot_after_entries = self.snapshot_after_entries;
        config.logs_kept_after_snapshot = 0;
        let node = ControlPlane::start(config).unwrap();
        self.addrs.insert(id, node.rpc_addr());
        self.nodes.insert(id, node);
    }

    fn node(&self, id: NodeId) -> &ControlPlane {
        &self.nodes[&id]
    }

    fn wait(&self, id: NodeId, what: &str, until: impl Fn(&Metrics) -> bool + Send + Sync + 'static) -> Metrics {
        block(self.node(id).wait_for(what, WAIT, until)).unwrap_or_else(|e| panic!("node {id}: {e}"))
    }

    /// Waits until every running node agrees on one leader (other than `not`) and returns it.
    fn leader(&self, not: Option<NodeId>) -> NodeId {
        let first = *self.nodes.keys().next().unwrap();
        let m = self.wait(first, "a leader", move |m| m.current_leader.is_some_and(|l| Some(l) != not));
        let leader = m.current_leader.unwrap();
        for id in self.nodes.keys() {
            self.wait(*id, "the same leader", move |m| m.current_leader == Some(leader));
        }
        leader
    }

    fn write(&self, id: NodeId, cmd: ClusterCommand) -> Result<WriteOutcome, ControlPlaneError> {
        block(self.node(id).write(cmd))
    }

    /// Waits until every running node applied `index`, then checks they hold the same state.
    fn converged(&self, index: u64) {
        for id in self.nodes.keys() {
            self.wait(*id, "applied", move |m| m.last_applied.is_some_and(|l| l.index >= index));
        }
        let states: Vec<_> = self.nodes.values().map(|n| n.state()).collect();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "state machines differ: {states:#?}");
    }
}

fn register(broker_id: i32) -> ClusterCommand {
    let endpoints = BrokerEndpoints {
        kafka_addr: format!("127.0.0.1:{}", 19000 + broker_id),
        replication_addr: format!("127.0.0.1:{}", 19500 + broker_id),
    };
    ClusterCommand::RegisterBroker { broker_id, endpoints }
}

fn create_topic(name: &str) -> ClusterCommand {
    ClusterCommand::CreateTopic {
        name: name.into(),
        topic_id: [name.len() as u8; 16],
        configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
        assignment: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
    }
}

#[test]
fn three_nodes_replicate_refuse_follower_writes_fail_over_and_rejoin() {
    let mut cluster = TestCluster::start("failover", 3, 1000);
    let leader = cluster.leader(None);

    // (a) Writes on the leader reach all three state machines.
    for id in 1..=3 {
        assert_eq!(cluster.write(leader, register(id)).unwrap().result, Ok(()));
    }
    let created = cluster.write(leader, create_topic("orders")).unwrap();
    assert_eq!(created.result, Ok(()));
    cluster.converged(created.log_index);
    let state = cluster.node(leader).state();
    assert_eq!(state.brokers.len(), 3);
    assert_eq!(state.topics["orders"].partitions[1].leader, 2);

    // A follower refuses writes and names the leader.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    match cluster.write(follower, register(9)) {
        Err(ControlPlaneError::ForwardToLeader { leader_id, leader_addr }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr, Some(cluster.addrs[&leader].to_string()));
        }
        other => panic!("follower write answered {other:?}"),
    }

    // (e) Leader epochs only go up: a stale SetLeader is a refused command, not a Raft error.
    let set_leader = |leader, leader_epoch| ClusterCommand::SetLeader {
        topic: "orders".into(),
        partition: 0,
        leader,
        leader_epoch,
        isr: vec![1, 2, 3],
    };
    assert_eq!(cluster.write(leader, set_leader(2, 1)).unwrap().result, Ok(()));
    let stale = cluster.write(leader, set_leader(3, 1)).unwrap();
    assert_eq!(stale.result, Err(Rejection::StaleLeaderEpoch { current: 1, proposed: 1 }));
    cluster.converged(stale.log_index);
    assert_eq!(cluster.node(follower).state().topics["orders"].partitions[0].leader, 2);

    // (b) Stop the leader: the others elect a new one within the target and take writes.
    let old_leader = leader;
    let old_addr = cluster.addrs[&old_leader];
    cluster.nodes.remove(&old_leader).unwrap().shutdown();
    let stopped = Instant::now();
    let leader = cluster.leader(Some(old_leader));
    let failover = stopped.elapsed();
    println!("failover: node {leader} leads {failover:?} after node {old_leader} stopped");
    assert!(failover < FAILOVER_TARGET, "new leader after {failover:?}");
    let created = cluster.write(leader, create_topic("payments")).unwrap();
    assert_eq!(created.result, Ok(()));
    cluster.converged(created.log_index);

    // (c) The old leader restarts from its directory, with its log and vote, and catches up.
    cluster.start_node(old_leader, old_addr);
    // Before hearing from anyone, it re-applied its own committed log (persisted entries and
    // committed id): the SetLeader it committed as leader is there.
    assert_eq!(cluster.node(old_leader).state().topics["orders"].partitions[0].leader, 2);
    let before_stop = stale.log_index;
    cluster.wait(old_leader, "the reloaded log", move |m| m.current_term >= 1 && m.last_log_index >= Some(before_stop));
    cluster.converged(created.log_index);
    assert!(cluster.node(old_leader).state().topics.contains_key("payments"));
    assert_eq!(cluster.leader(None), leader);
}

#[test]
fn lagging_node_is_caught_up_by_snapshot() {
    const SNAPSHOT_AFTER_ENTRIES: u64 = 10;
    let mut cluster = TestCluster::start("snapshot", 3, SNAPSHOT_AFTER_ENTRIES);
    let leader = cluster.leader(None);
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let lagging_addr = cluster.addrs[&lagging];
    cluster.nodes.remove(&lagging).unwrap().shutdown();

    // (d) Enough entries for snapshots; the log behind them is purged, so the lagging node can
    // only be caught up by installing one.
    let mut last = 0;
    for id in 1..=(3 * SNAPSHOT_AFTER_ENTRIES as i32) {
        last = cluster.write(leader, register(id)).unwrap().log_index;
    }
    let m = cluster.wait(leader, "snapshot and purge", move |m| {
        m.snapshot.is_some_and(|s| s.index + SNAPSHOT_AFTER_ENTRIES > last) && m.purged.is_some_and(|p| p.index > 10)
    });
    let purged = m.purged.unwrap().index;

    cluster.start_node(lagging, lagging_addr);
    cluster.converged(last);
    let m = cluster.node(lagging).metrics();
    assert!(m.snapshot.is_some_and(|s| s.index >= purged), "caught up without a snapshot: {m:?}");
    assert_eq!(cluster.node(lagging).state().brokers.len(), 3 * SNAPSHOT_AFTER_ENTRIES as usize);
}
