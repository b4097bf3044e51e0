//! Produce: each partition's records go to the core that owns the partition (inline when it is
//! this core), all partitions of a request in parallel. The response lists partitions in request
//! order with per-partition error codes. acks=0 gets no response at all (the connection skips it).

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use crate::core::Shard;
use crate::partition::{Acks, PartitionError, Produced};

/// Produce v7 is the first that may carry zstd batches (KIP-110): older clients cannot read them.
const FIRST_ZSTD_VERSION: i16 = 7;
/// Attributes codec id of zstd.
const ZSTD_CODEC: u8 = 4;
/// Byte of a batch's attributes that holds the codec bits.
const ATTRIBUTES_LOW_BYTE: usize = 22;

pub async fn handle(shard: &Rc<Shard>, req: ProduceRequest, version: i16) -> ProduceResponse {
    let (acks, timeout) = (Acks::from_wire(req.acks), Duration::from_millis(req.timeout_ms.max(0) as u64));
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for t in req.topic_data {
        let topic = t.name.0.to_string();
        let mut tasks = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let shard = shard.clone();
            let topic = topic.clone();
            tasks.push(glommio::spawn_local(async move {
                let index = p.index;
                let result = if let Some(acks) = acks {
                    produce_checked(&shard, &topic, index, p.records, acks, timeout, version).await
                } else {
                    Err(PartitionError::new(ResponseError::InvalidRequiredAcks, "acks must be -1, 0 or 1"))
                };
                (index, result)
            }));
        }
        let mut partitions = Vec::with_capacity(tasks.len());
        for task in tasks {
            let (index, result) = task.await;
            partitions.push(partition_response(index, result));
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_topic_id(t.topic_id)
                .with_partition_responses(partitions),
        );
    }
    ProduceResponse::default().with_responses(topics)
}

/// One partition's records: refused if Kafka would refuse them before the partition sees them
/// (internal topic, null records, zstd below v7), else produced on the partition's core.
async fn produce_checked(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    records: Option<bytes::Bytes>,
    acks: Acks,
    timeout: Duration,
    version: i16,
) -> Result<Produced, PartitionError> {
    if crate::topics::INTERNAL_TOPICS.contains(&topic) {
        // Kafka: only the group coordinator writes internal topics.
        return Err(PartitionError::new(
            ResponseError::InvalidTopicException,
            format!("Cannot append to internal topic {topic}"),
        ));
    }
    let Some(records) = records else {
        return Err(PartitionError::new(ResponseError::CorruptMessage, "null records"));
    };
    if version < FIRST_ZSTD_VERSION && records.get(ATTRIBUTES_LOW_BYTE).is_some_and(|a| a & 0x7 == ZSTD_CODEC) {
        return Err(PartitionError::new(
            ResponseError::UnsupportedCompressionType,
            format!("Produce requests with version {version} must not use ZStandard compression"),
        ));
    }
    shard.on_partition(topic, partition, move |p| async move { p.produce(&records, acks, timeout).await }).await
}

fn partition_response(index: i32, result: Result<Produced, PartitionError>) -> PartitionProduceResponse {
    let r = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
    match result {
        Ok(p) => r.with_base_offset(p.base_offset).with_log_start_offset(p.log_start_offset),
        Err(e) => r
            .with_error_code(e.code.code())
            .with_base_offset(-1)
            .with_log_start_offset(-1)
            .with_error_message(Some(StrBytes::from_string(e.message))),
    }
}
