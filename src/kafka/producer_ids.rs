//! InitProducerId for idempotent (non-transactional) producers: a producer id that was never handed
//! out before (reserved in persisted blocks on the catalog core) with epoch 0. Duplicate detection
//! per (producer id, partition) comes with the producer-guarantees work.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::shard::{CoreReply, CoreRequest, Shard, CATALOG_CORE};

pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let r = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        // No transaction coordinator yet: say so rather than pretend.
        return r
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match shard.call(CATALOG_CORE, CoreRequest::AllocateProducerId).await {
        CoreReply::ProducerId(Ok(id)) => r.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        CoreReply::ProducerId(Err(e)) => {
            r.with_error_code(e.code.code()).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
        }
        _ => r
            .with_error_code(ResponseError::UnknownServerError.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
