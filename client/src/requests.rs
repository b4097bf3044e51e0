//! Builders of the requests this workspace's clients send, with Kafka's "no value" defaults filled
//! in (replica id -1: a consumer, not a follower). Callers chain kafka-protocol's `with_*` setters for
//! anything else.

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteRecordsRequest, DeleteTopicsRequest, FetchRequest, FindCoordinatorRequest,
    GroupId, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// ListOffsets' `timestamp` asking for the log end offset (the high watermark for consumers).
pub const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets' `timestamp` asking for the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// FindCoordinator's `key_type` of a consumer group.
pub const COORDINATOR_KEY_TYPE_GROUP: i8 = 0;
/// The first FindCoordinator version that batches keys (`coordinator_keys`, KIP-699).
pub const FIND_COORDINATOR_BATCHED_VERSION: i16 = 4;

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The first Metadata version with `allow_auto_topic_creation` (before it, a broker's own setting
/// decides, and the field must keep its default to be encodable).
pub const METADATA_AUTO_CREATE_FIELD_VERSION: i16 = 4;

/// Metadata of `topics` (every topic if `None`) at `version`, never asking to create one.
pub fn metadata(topics: Option<&[&str]>, version: i16) -> MetadataRequest {
    let request = MetadataRequest::default().with_topics(topics.map(|names| {
        names.iter().map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name)))).collect()
    }));
    if version >= METADATA_AUTO_CREATE_FIELD_VERSION {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}

/// A topic to create: replication factor -1 is the broker's default.
#[derive(Clone, Copy, Debug)]
pub struct NewTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: &'a [(&'a str, &'a str)],
}

pub fn create_topics(topics: &[NewTopic<'_>], timeout_ms: i32) -> CreateTopicsRequest {
    let topics = topics
        .iter()
        .map(|t| {
            CreatableTopic::default()
                .with_name(topic_name(t.name))
                .with_num_partitions(t.partitions)
                .with_replication_factor(t.replication_factor)
                .with_configs(
                    t.configs
                        .iter()
                        .map(|(name, value)| {
                            CreatableTopicConfig::default()
                                .with_name(str_bytes(name))
                                .with_value(Some(str_bytes(value)))
                        })
                        .collect(),
                )
        })
        .collect();
    CreateTopicsRequest::default().with_topics(topics).with_timeout_ms(timeout_ms)
}

pub fn delete_topics(names: &[&str], timeout_ms: i32) -> DeleteTopicsRequest {
    DeleteTopicsRequest::default()
        .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
        .with_timeout_ms(timeout_ms)
}

/// One record batch (or several, back to back) for one partition.
pub fn produce(topic: &str, partition: i32, records: Bytes, acks: i16, timeout_ms: i32) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(timeout_ms).with_topic_data(vec![
        TopicProduceData::default().with_name(topic_name(topic)).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(records)),
        ]),
    ])
}

/// A consumer's Fetch of `(partition, offset)`s of one topic, each up to `partition_max_bytes`; the
/// request-wide limits (`max_wait_ms`, `min_bytes`, `max_bytes`) are kafka-protocol's defaults
/// (0, 0, i32::MAX) until set.
pub fn fetch(topic: &str, positions: &[(i32, i64)], partition_max_bytes: i32) -> FetchRequest {
    let partitions = positions
        .iter()
        .map(|&(partition, offset)| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(partitions)])
}

/// A consumer's ListOffsets of `partitions` at `timestamp` (`LATEST_TIMESTAMP`, `EARLIEST_TIMESTAMP`,
/// or a time in ms).
pub fn list_offsets(topic: &str, partitions: &[i32], timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
        .with_name(topic_name(topic))
        .with_partitions(
            partitions
                .iter()
                .map(|&p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp))
                .collect(),
        )])
}

/// The coordinator of consumer group `group`, in the shape `version` has (one key, or a batch of one).
pub fn find_coordinator(group: &str, version: i16) -> FindCoordinatorRequest {
    let request = FindCoordinatorRequest::default().with_key_type(COORDINATOR_KEY_TYPE_GROUP);
    if version >= FIND_COORDINATOR_BATCHED_VERSION {
        request.with_coordinator_keys(vec![str_bytes(group)])
    } else {
        request.with_key(str_bytes(group))
    }
}

/// A standalone consumer's commit of `(partition, next offset)`s (generation -1, no member id: Kafka's
/// "simple" commit, accepted while the group has no members).
pub fn offset_commit(group: &str, topic: &str, offsets: &[(i32, i64)]) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(
            offsets
                .iter()
                .map(|&(p, o)| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(o)
                        .with_committed_leader_epoch(-1)
                })
                .collect(),
        )])
}

/// A new idempotent producer id (no transactional id).
pub fn init_producer_id(transaction_timeout_ms: i32) -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(transaction_timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// Deletes the records of `topic`'s `(partition, offset)`s below each offset (moves the log start).
pub fn delete_records(topic: &str, offsets: &[(i32, i64)], timeout_ms: i32) -> DeleteRecordsRequest {
    DeleteRecordsRequest::default().with_timeout_ms(timeout_ms).with_topics(vec![DeleteRecordsTopic::default()
        .with_name(topic_name(topic))
        .with_partitions(
            offsets
                .iter()
                .map(|&(p, o)| DeleteRecordsPartition::default().with_partition_index(p).with_offset(o))
                .collect(),
        )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_request;

    /// Every builder encodes at every version this client speaks (a field set that a version lacks is
    /// an encoding error, found here rather than against a broker).
    #[test]
    fn builders_encode_at_every_supported_version() {
        let configs = [("cleanup.policy", "compact")];
        let topic = NewTopic { name: "t", partitions: 2, replication_factor: -1, configs: &configs };
        for v in 1..=12 {
            encode_request(&metadata(Some(&["t"]), v), v, 1, "c").expect("Metadata");
            encode_request(&metadata(None, v), v, 1, "c").expect("Metadata, all topics");
        }
        for v in 2..=7 {
            encode_request(&create_topics(&[topic], 1000), v, 1, "c").expect("CreateTopics");
        }
        for v in 1..=5 {
            encode_request(&delete_topics(&["t"], 1000), v, 1, "c").expect("DeleteTopics");
        }
        for v in 3..=9 {
            encode_request(&produce("t", 0, Bytes::new(), -1, 1000), v, 1, "c").expect("Produce");
        }
        for v in 4..=12 {
            encode_request(&fetch("t", &[(0, 5)], 1 << 20), v, 1, "c").expect("Fetch");
        }
        for v in 1..=7 {
            encode_request(&list_offsets("t", &[0, 1], LATEST_TIMESTAMP), v, 1, "c").expect("ListOffsets");
        }
        for v in 1..=4 {
            encode_request(&find_coordinator("g", v), v, 1, "c").expect("FindCoordinator");
        }
        for v in 2..=8 {
            encode_request(&offset_commit("g", "t", &[(0, 3)]), v, 1, "c").expect("OffsetCommit");
        }
        for v in 0..=4 {
            encode_request(&init_producer_id(60_000), v, 1, "c").expect("InitProducerId");
        }
        for v in 0..=2 {
            encode_request(&delete_records("t", &[(0, 3)], 1000), v, 1, "c").expect("DeleteRecords");
        }
    }
}
