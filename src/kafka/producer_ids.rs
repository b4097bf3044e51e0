//! InitProducerId for idempotent (non-transactional) producers: a producer id that was never handed
//! out before (reserved in persisted blocks on the catalog core) with epoch 0. Duplicate detection
//! per (producer id, partition) comes with the producer-guarantees work.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::core::Shard;
use crate::metadata::admin;

pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let r = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        // No transaction coordinator yet: say so rather than pretend.
        return r
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match admin::allocate_producer_id(shard).await {
        Ok(id) => r.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => r.with_error_code(e.code.code()).with_producer_id(ProducerId(-1)).with_producer_epoch(-1),
    }
}
