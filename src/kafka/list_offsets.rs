//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) or the first offset at or after a
//! timestamp, per partition, answered by the owning core.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::partition::PartitionError;
use crate::shard::{CoreReply, CoreRequest, Shard};

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    // leader_epoch exists from v4; below it must stay at its default.
    let epoch = if version >= 4 { crate::partition::LEADER_EPOCH } else { -1 };
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let r = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let result = match shard.owner(&name, p.partition_index) {
                Err(e) => Err(e),
                Ok(owner) => {
                    let req = CoreRequest::ListOffset {
                        topic: name.clone(),
                        partition: p.partition_index,
                        timestamp: p.timestamp,
                    };
                    match shard.call(owner, req).await {
                        CoreReply::ListOffset(r) => r,
                        _ => Err(PartitionError::new(ResponseError::UnknownServerError, "owner core did not answer")),
                    }
                }
            };
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
