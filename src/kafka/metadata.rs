//! Metadata: the brokers (this one alone, or every broker registered in the cluster metadata), and
//! each requested (or every) topic with its partitions: leader, leader epoch, replicas and ISR (a
//! single node leads everything). The controller is the Raft leader. Unknown topics are
//! auto-created when the request and the config allow it.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::config::ClusterConfig;
use crate::core::Shard;
use crate::metadata::admin::{self, NewTopic};
use crate::topics::{ClusterView, TopicMeta};

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(shard.config.node_id);
    let (host, port) = shard.config.advertised();
    let mut names: Option<Vec<String>> =
        req.topics.as_ref().map(|ts| ts.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect());
    // Topic ids (v10+) resolve to names.
    let by_id: Vec<[u8; 16]> = req
        .topics
        .as_ref()
        .map(|ts| ts.iter().filter(|t| t.name.is_none()).map(|t| *t.topic_id.as_bytes()).collect())
        .unwrap_or_default();
    // v0: an empty list means all topics; v1+: null means all.
    if version == 0 && names.as_ref().is_some_and(|n| n.is_empty()) && by_id.is_empty() {
        names = None;
    }
    let auto = shard.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    if let (true, Some(wanted)) = (auto, &names) {
        let missing: Vec<NewTopic> = {
            let cat = shard.catalog();
            wanted
                .iter()
                .filter(|n| !cat.topics.contains_key(*n) && crate::topics::validate_topic_name(n).is_ok())
                // Internal topics are the broker's to create, with their own partition count.
                .filter(|n| !crate::topics::is_internal(n))
                .map(|n| NewTopic { name: n.clone(), partitions: -1, replication_factor: -1, configs: vec![] })
                .collect()
        };
        if !missing.is_empty() {
            // Each topic's outcome shows in the answer below: present, or UNKNOWN_TOPIC_OR_PARTITION.
            admin::create_topics(shard, missing, false).await;
        }
    }
    let cat = shard.catalog();
    let mut topics = Vec::new();
    match &names {
        None if by_id.is_empty() => {
            topics.extend(cat.topics.values().map(|t| topic_entry(t, node, cat.cluster.as_deref())));
        }
        _ => {
            for n in names.iter().flatten() {
                match cat.topics.get(n) {
                    Some(t) => topics.push(topic_entry(t, node, cat.cluster.as_deref())),
                    None => {
                        let code = if crate::topics::validate_topic_name(n).is_err() {
                            ResponseError::InvalidTopicException
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        };
                        topics.push(
                            MetadataResponseTopic::default()
                                .with_error_code(code.code())
                                .with_name(Some(TopicName(StrBytes::from_string(n.clone())))),
                        );
                    }
                }
            }
            for id in &by_id {
                match cat.by_id(id) {
                    Some(t) => topics.push(topic_entry(t, node, cat.cluster.as_deref())),
                    None => topics.push(
                        MetadataResponseTopic::default()
                            .with_error_code(ResponseError::UnknownTopicId.code())
                            .with_topic_id(uuid::Uuid::from_bytes(*id)),
                    ),
                }
            }
        }
    }
    let (brokers, controller) = if let Some(view) = &cat.cluster {
        registered_brokers(view)
    } else if shard.config.cluster.is_cluster() {
        cluster_brokers(&shard.config.cluster)
    } else {
        let single =
            MetadataResponseBroker::default().with_node_id(node).with_host(StrBytes::from_string(host)).with_port(port);
        (vec![single], node)
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(cat.cluster_id.clone())))
        .with_controller_id(controller)
        .with_topics(topics)
}

/// Every peer as a broker (by id), and the controller: the lowest id for now — once cluster metadata
/// runs on Raft, the Raft leader will be the controller. Partitions are still all led by the broker
/// that answers (replication is not built yet), so clients of a cluster see each broker lead what it
/// hosts.
fn cluster_brokers(cluster: &ClusterConfig) -> (Vec<MetadataResponseBroker>, BrokerId) {
    let mut peers: Vec<_> = cluster.peers.iter().collect();
    peers.sort_by_key(|p| p.id);
    let brokers = peers
        .iter()
        .filter_map(|p| {
            // Validated at start; a malformed address could only be skipped, never served.
            let (host, port) = p.kafka_host_port()?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(p.id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(i32::from(port)),
            )
        })
        .collect();
    let controller = peers.first().map_or(BrokerId(-1), |p| BrokerId(p.id));
    (brokers, controller)
}

/// The brokers registered in the cluster metadata, and the controller (the Raft leader).
fn registered_brokers(view: &ClusterView) -> (Vec<MetadataResponseBroker>, BrokerId) {
    let brokers = view
        .state
        .brokers
        .iter()
        .filter_map(|(id, b)| {
            let (host, port) = b.kafka_addr.rsplit_once(':')?;
            let port: i32 = port.parse().ok()?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(*id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port),
            )
        })
        .collect();
    (brokers, BrokerId(view.controller.unwrap_or(-1)))
}

fn topic_entry(t: &TopicMeta, node: BrokerId, view: Option<&ClusterView>) -> MetadataResponseTopic {
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let partitions = (0..t.partition_cores.len() as i32)
        .map(|p| {
            let entry = MetadataResponsePartition::default().with_partition_index(p);
            match view.and_then(|v| v.partition(&t.name, p)) {
                Some(ps) => entry
                    .with_leader_id(BrokerId(ps.leader))
                    .with_leader_epoch(ps.leader_epoch)
                    .with_replica_nodes(ids(&ps.replicas))
                    .with_isr_nodes(ids(&ps.isr)),
                None => entry
                    .with_leader_id(node)
                    .with_leader_epoch(crate::partition::LEADER_EPOCH)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node]),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(uuid::Uuid::from_bytes(t.id))
        .with_is_internal(crate::topics::is_internal(&t.name))
        .with_partitions(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    #[test]
    fn a_cluster_lists_every_peer_by_id_and_the_lowest_id_controls() {
        let peer = |id: i32, port: u16| PeerConfig {
            id,
            kafka: format!("10.0.0.{id}:{port}"),
            replication: format!("10.0.0.{id}:{}", port + 100),
            raft: format!("10.0.0.{id}:{}", port + 200),
        };
        let cluster = ClusterConfig { peers: vec![peer(5, 9005), peer(2, 9002), peer(7, 9007)] };
        let (brokers, controller) = cluster_brokers(&cluster);
        let listed: Vec<(i32, String, i32)> =
            brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
        assert_eq!(
            listed,
            vec![(2, "10.0.0.2".into(), 9002), (5, "10.0.0.5".into(), 9005), (7, "10.0.0.7".into(), 9007)]
        );
        assert_eq!(controller, BrokerId(2));
    }
}
