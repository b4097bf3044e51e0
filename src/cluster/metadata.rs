//! The cluster metadata itself and the pure, deterministic rules for applying commands to it. No
//! Raft, no I/O: every replica applying the same commands in the same order holds the same state,
//! and a refused command changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::{BrokerEndpoints, BrokerId, ClusterCommand, CommandResult, Rejection};

/// Upper bound on partitions of one topic, so a command cannot make the state unbounded.
pub const MAX_PARTITIONS_PER_TOPIC: usize = 100_000;
/// Upper bound on the replicas of one partition.
pub const MAX_REPLICAS_PER_PARTITION: usize = 16;

/// Replicas, leader and ISR of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Replica brokers, preferred leader first.
    pub replicas: Vec<BrokerId>,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    /// Bumped by every leader or ISR change (Kafka's partition epoch).
    pub partition_epoch: i32,
    /// In-sync replicas; always a non-empty subset of `replicas` holding `leader`.
    pub isr: Vec<BrokerId>,
}

impl PartitionState {
    fn new(replicas: &[BrokerId]) -> Self {
        PartitionState {
            replicas: replicas.to_vec(),
            leader: replicas[0],
            leader_epoch: 0,
            partition_epoch: 0,
            isr: replicas.to_vec(),
        }
    }
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: [u8; 16],
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionState>,
}

/// First producer id of a new cluster (as the single-node catalog).
pub const FIRST_PRODUCER_ID: i64 = 1000;
/// Largest block of producer ids one command reserves.
pub const MAX_PRODUCER_ID_BLOCK: i64 = 1 << 20;

/// The replicated cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Kafka's cluster id; empty until the first controller names the cluster.
    pub cluster_id: String,
    pub brokers: BTreeMap<BrokerId, BrokerEndpoints>,
    pub topics: BTreeMap<String, TopicState>,
    /// Next producer id not yet reserved.
    pub next_producer_id: i64,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            cluster_id: String::new(),
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_producer_id: FIRST_PRODUCER_ID,
        }
    }
}

impl ClusterState {
    /// Applies `cmd`; on refusal the state is unchanged.
    pub fn apply(&mut self, cmd: &ClusterCommand) -> CommandResult {
        match cmd {
            ClusterCommand::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
                Ok(())
            }
            ClusterCommand::RegisterBroker { broker_id, endpoints } => {
                self.brokers.insert(*broker_id, endpoints.clone());
                Ok(())
            }
            ClusterCommand::CreateTopic { name, topic_id, configs, assignment } => {
                if self.topics.contains_key(name) {
                    return Err(Rejection::TopicExists(name.clone()));
                }
                self.check_assignment(assignment)?;
                let partitions = assignment.iter().map(|r| PartitionState::new(r)).collect();
                let topic = TopicState { id: *topic_id, configs: configs.clone(), partitions };
                self.topics.insert(name.clone(), topic);
                Ok(())
            }
            ClusterCommand::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Ok(()),
                None => Err(Rejection::UnknownTopic(name.clone())),
            },
            ClusterCommand::AddPartitions { name, assignment } => {
                let existing = self.topics.get(name).ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
                if existing.partitions.len() + assignment.len() > MAX_PARTITIONS_PER_TOPIC {
                    return Err(Rejection::InvalidAssignment(format!(
                        "{} partitions (1..={MAX_PARTITIONS_PER_TOPIC})",
                        existing.partitions.len() + assignment.len()
                    )));
                }
                self.check_assignment(assignment)?;
                let t = self.topics.get_mut(name).ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
                t.partitions.extend(assignment.iter().map(|r| PartitionState::new(r)));
                Ok(())
            }
            ClusterCommand::SetTopicConfigs { name, configs } => {
                let t = self.topics.get_mut(name).ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
                t.configs = configs.clone();
                Ok(())
            }
            ClusterCommand::SetLeader { topic, partition, leader, leader_epoch, isr } => {
                let p = self.partition_mut(topic, *partition)?;
                if *leader_epoch <= p.leader_epoch {
                    return Err(Rejection::StaleLeaderEpoch { current: p.leader_epoch, proposed: *leader_epoch });
                }
                if !p.isr.contains(leader) {
                    return Err(Rejection::NotInIsr(*leader));
                }
                let mut next = p.clone();
                next.leader = *leader;
                check_isr(&next, isr)?;
                if isr.iter().any(|b| !p.isr.contains(b)) {
                    return Err(Rejection::InvalidIsr("an election cannot add to the ISR".into()));
                }
                p.leader = *leader;
                p.leader_epoch = *leader_epoch;
                p.partition_epoch += 1;
                p.isr = isr.clone();
                Ok(())
            }
            ClusterCommand::SetIsr { topic, partition, isr, leader_epoch, partition_epoch } => {
                let p = self.partition_mut(topic, *partition)?;
                if *leader_epoch != p.leader_epoch {
                    return Err(Rejection::LeaderEpochMismatch { current: p.leader_epoch, expected: *leader_epoch });
                }
                if *partition_epoch != p.partition_epoch {
                    return Err(Rejection::PartitionEpochMismatch {
                        current: p.partition_epoch,
                        expected: *partition_epoch,
                    });
                }
                check_isr(p, isr)?;
                p.isr = isr.clone();
                p.partition_epoch += 1;
                Ok(())
            }
            ClusterCommand::ReserveProducerIds { start, count } => {
                if !(1..=MAX_PRODUCER_ID_BLOCK).contains(count) {
                    return Err(Rejection::InvalidProducerIdBlock(*count));
                }
                if *start != self.next_producer_id {
                    return Err(Rejection::ProducerIdsTaken { expected: self.next_producer_id, proposed: *start });
                }
                self.next_producer_id += count;
                Ok(())
            }
        }
    }

    fn check_assignment(&self, assignment: &[Vec<BrokerId>]) -> CommandResult {
        let invalid = |why: String| Err(Rejection::InvalidAssignment(why));
        if assignment.is_empty() || assignment.len() > MAX_PARTITIONS_PER_TOPIC {
            return invalid(format!("{} partitions (1..={MAX_PARTITIONS_PER_TOPIC})", assignment.len()));
        }
        for (p, replicas) in assignment.iter().enumerate() {
            if replicas.is_empty() || replicas.len() > MAX_REPLICAS_PER_PARTITION {
                return invalid(format!(
                    "partition {p}: {} replicas (1..={MAX_REPLICAS_PER_PARTITION})",
                    replicas.len()
                ));
            }
            if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
                return invalid(format!("partition {p}: duplicate replica"));
            }
            if let Some(b) = replicas.iter().find(|b| !self.brokers.contains_key(b)) {
                return Err(Rejection::UnknownBroker(*b));
            }
        }
        Ok(())
    }

    fn partition_mut(&mut self, topic: &str, partition: i32) -> Result<&mut PartitionState, Rejection> {
        let t = self.topics.get_mut(topic).ok_or_else(|| Rejection::UnknownTopic(topic.to_owned()))?;
        usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or_else(|| Rejection::UnknownPartition { topic: topic.to_owned(), partition })
    }
}

fn check_isr(p: &PartitionState, isr: &[BrokerId]) -> CommandResult {
    let invalid = |why: &str| Err(Rejection::InvalidIsr(why.to_owned()));
    if isr.is_empty() {
        return invalid("empty");
    }
    if isr.iter().collect::<BTreeSet<_>>().len() != isr.len() {
        return invalid("duplicate broker");
    }
    if isr.iter().any(|b| !p.replicas.contains(b)) {
        return invalid("not a subset of the replicas");
    }
    if !isr.contains(&p.leader) {
        return invalid("does not hold the leader");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(id: BrokerId) -> BrokerEndpoints {
        BrokerEndpoints {
            kafka_addr: format!("127.0.0.1:{}", 9000 + id),
            replication_addr: format!("127.0.0.1:{}", 9100 + id),
        }
    }

    fn with_topic() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&ClusterCommand::RegisterBroker { broker_id: id, endpoints: endpoints(id) }).unwrap();
        }
        let create = ClusterCommand::CreateTopic {
            name: "t".into(),
            topic_id: [7; 16],
            configs: BTreeMap::new(),
            assignment: vec![vec![1, 2, 3], vec![2, 3, 1]],
        };
        s.apply(&create).unwrap();
        s
    }

    fn set_leader(leader: BrokerId, leader_epoch: i32, isr: Vec<BrokerId>) -> ClusterCommand {
        ClusterCommand::SetLeader { topic: "t".into(), partition: 0, leader, leader_epoch, isr }
    }

    fn set_isr(isr: Vec<BrokerId>, leader_epoch: i32, partition_epoch: i32) -> ClusterCommand {
        ClusterCommand::SetIsr { topic: "t".into(), partition: 0, isr, leader_epoch, partition_epoch }
    }

    /// Applies `cmd`, expecting `want`; a refused command must leave the state as it was.
    fn check(s: &mut ClusterState, cmd: ClusterCommand, want: CommandResult) {
        let before = s.clone();
        assert_eq!(s.apply(&cmd), want, "{cmd:?}");
        if want.is_err() {
            assert_eq!(*s, before, "a refused command changed the state");
        }
    }

    #[test]
    fn create_topic_starts_at_preferred_leader_epoch_zero() {
        let s = with_topic();
        let p = &s.topics["t"].partitions[1];
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (2, 0, vec![2, 3, 1]));
    }

    #[test]
    fn create_topic_validates_assignment() {
        let mut s = with_topic();
        let create = |name: &str, assignment: Vec<Vec<BrokerId>>| ClusterCommand::CreateTopic {
            name: name.into(),
            topic_id: [1; 16],
            configs: BTreeMap::new(),
            assignment,
        };
        check(&mut s, create("t", vec![vec![1]]), Err(Rejection::TopicExists("t".into())));
        check(&mut s, create("u", vec![vec![1, 9]]), Err(Rejection::UnknownBroker(9)));
        check(&mut s, create("u", vec![]), Err(Rejection::InvalidAssignment("0 partitions (1..=100000)".into())));
        check(
            &mut s,
            create("u", vec![vec![1, 1]]),
            Err(Rejection::InvalidAssignment("partition 0: duplicate replica".into())),
        );
        check(&mut s, ClusterCommand::DeleteTopic { name: "u".into() }, Err(Rejection::UnknownTopic("u".into())));
        check(&mut s, ClusterCommand::DeleteTopic { name: "t".into() }, Ok(()));
        assert!(s.topics.is_empty());
    }

    #[test]
    fn set_leader_needs_a_higher_epoch_and_an_isr_member() {
        let mut s = with_topic();
        check(&mut s, set_leader(2, 1, vec![2, 3, 1]), Ok(()));
        check(&mut s, set_leader(3, 1, vec![3]), Err(Rejection::StaleLeaderEpoch { current: 1, proposed: 1 }));
        check(&mut s, set_leader(3, 0, vec![3]), Err(Rejection::StaleLeaderEpoch { current: 1, proposed: 0 }));
        check(&mut s, set_isr(vec![2], 1, 1), Ok(()));
        check(&mut s, set_leader(3, 2, vec![3]), Err(Rejection::NotInIsr(3)));
        let unknown =
            ClusterCommand::SetLeader { topic: "t".into(), partition: 5, leader: 2, leader_epoch: 9, isr: vec![2] };
        check(&mut s, unknown, Err(Rejection::UnknownPartition { topic: "t".into(), partition: 5 }));
        let p = &s.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 2));
        check(&mut s, set_isr(vec![2, 3], 1, 2), Ok(()));
        // The election drops the dead leader 2 from the ISR; it cannot add anyone.
        check(&mut s, set_leader(3, 2, vec![3]), Ok(()));
        check(
            &mut s,
            set_leader(3, 3, vec![3, 1]),
            Err(Rejection::InvalidIsr("an election cannot add to the ISR".into())),
        );
    }

    #[test]
    fn set_isr_is_fenced_by_leader_epoch_and_validated() {
        let mut s = with_topic();
        check(&mut s, set_isr(vec![1, 2], 3, 0), Err(Rejection::LeaderEpochMismatch { current: 0, expected: 3 }));
        check(&mut s, set_isr(vec![2, 3], 0, 0), Err(Rejection::InvalidIsr("does not hold the leader".into())));
        check(&mut s, set_isr(vec![1, 4], 0, 0), Err(Rejection::InvalidIsr("not a subset of the replicas".into())));
        check(&mut s, set_isr(vec![], 0, 0), Err(Rejection::InvalidIsr("empty".into())));
        check(&mut s, set_isr(vec![1, 1], 0, 0), Err(Rejection::InvalidIsr("duplicate broker".into())));
        check(&mut s, set_isr(vec![1, 3], 0, 0), Ok(()));
        assert_eq!(s.topics["t"].partitions[0].isr, vec![1, 3]);
        // Computed from the ISR before that change: refused.
        check(&mut s, set_isr(vec![1], 0, 0), Err(Rejection::PartitionEpochMismatch { current: 1, expected: 0 }));
    }

    #[test]
    fn producer_id_blocks_and_partitions_and_configs() {
        let mut s = with_topic();
        let reserve = |start, count| ClusterCommand::ReserveProducerIds { start, count };
        check(&mut s, reserve(FIRST_PRODUCER_ID, 1000), Ok(()));
        check(
            &mut s,
            reserve(FIRST_PRODUCER_ID, 1000),
            Err(Rejection::ProducerIdsTaken { expected: 2000, proposed: 1000 }),
        );
        check(&mut s, reserve(2000, 0), Err(Rejection::InvalidProducerIdBlock(0)));
        let add = ClusterCommand::AddPartitions { name: "t".into(), assignment: vec![vec![3, 1]] };
        check(&mut s, add, Ok(()));
        assert_eq!(s.topics["t"].partitions[2].replicas, vec![3, 1]);
        let configs: BTreeMap<String, String> = [("min.insync.replicas".to_string(), "2".to_string())].into();
        check(&mut s, ClusterCommand::SetTopicConfigs { name: "t".into(), configs: configs.clone() }, Ok(()));
        assert_eq!(s.topics["t"].configs, configs);
        check(&mut s, ClusterCommand::InitCluster { cluster_id: "a".into() }, Ok(()));
        check(&mut s, ClusterCommand::InitCluster { cluster_id: "b".into() }, Ok(()));
        assert_eq!(s.cluster_id, "a");
    }
}
