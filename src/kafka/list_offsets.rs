//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) or the first offset at or after a
//! timestamp, per partition, answered by the owning core.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::core::Shard;
use crate::partition::{Partition, PartitionError};

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    // leader_epoch exists from v4; below it must stay at its default.
    let epoch = if version >= 4 { crate::partition::LEADER_EPOCH } else { -1 };
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let r = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let timestamp = p.timestamp;
            let result = shard
                .on_leader(&name, p.partition_index, move |p| async move { list_offset(&p, timestamp).await })
                .await;
            partitions.push(match result {
                Ok(Some((offset, ts))) => r.with_offset(offset).with_timestamp(ts).with_leader_epoch(epoch),
                // No record at or after the timestamp: Kafka answers offset -1, timestamp -1.
                Ok(None) => r.with_offset(-1).with_timestamp(-1).with_leader_epoch(-1),
                Err(e) => r.with_error_code(e.code.code()).with_offset(-1).with_timestamp(-1).with_leader_epoch(-1),
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// ListOffsets for one partition: -2 earliest, -1 latest, -3 max timestamp, else the first record
/// at or after the timestamp (`None`: there is none).
async fn list_offset(p: &Partition, timestamp: i64) -> Result<Option<(i64, i64)>, PartitionError> {
    match timestamp {
        -2 => Ok(Some((p.log_start_offset(), -1))),
        -1 => Ok(Some((p.high_watermark(), -1))),
        -3 => p.max_timestamp().await,
        ts if ts >= 0 => p.offset_for_timestamp(ts).await,
        _ => Err(PartitionError::new(ResponseError::InvalidRequest, format!("unsupported timestamp {timestamp}"))),
    }
}
