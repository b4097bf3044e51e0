//! Reaching a partition from any core: run work on the partition's owner (`on_partition`,
//! `on_leader`), and fetch reads that stay zero-copy on the owner and are copied once when they
//! cross to another core.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::Shard;
use crate::partition::{Partition, PartitionError, StoredBatch};

/// Stored batches read on another core, copied so they can cross threads.
#[derive(Debug, Clone)]
pub struct RemoteRead {
    pub batches: Vec<Bytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// Reads from a partition on this core (the stored buffers, spliced to the socket), or copied
/// from its owner.
pub enum FetchedRecords {
    Local(Vec<StoredBatch>, i64, i64),
    Remote(RemoteRead),
}

impl Shard {
    /// Runs `job` on the core owning `topic`-`partition`, with the partition open there.
    pub async fn on_partition<R, F, Fut>(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        job: F,
    ) -> Result<R, PartitionError>
    where
        F: FnOnce(Rc<Partition>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, PartitionError>> + 'static,
        R: Send + 'static,
    {
        let owner = self.owner(topic, partition)?;
        let topic = topic.to_string();
        let ran = self.invoke_on(owner, move |s| async move { job(s.local(&topic, partition)?).await }).await;
        ran.map_err(|e| PartitionError::new(ResponseError::UnknownServerError, e.to_string()))?
    }

    /// Like `on_partition`, for partitions this broker must lead (NOT_LEADER_OR_FOLLOWER if not).
    pub async fn on_leader<R, F, Fut>(self: &Rc<Self>, topic: &str, partition: i32, job: F) -> Result<R, PartitionError>
    where
        F: FnOnce(Rc<Partition>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, PartitionError>> + 'static,
        R: Send + 'static,
    {
        self.on_partition(topic, partition, move |p| async move {
            p.check_leader()?;
            job(p).await
        })
        .await
    }

    /// Reads up to `max_bytes` from `offset` of a partition this broker leads, on any core.
    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<FetchedRecords, PartitionError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            let p = self.leading(topic, partition)?;
            let batches = p.read(offset, max_bytes).await?;
            return Ok(FetchedRecords::Local(batches, p.high_watermark(), p.log_start_offset()));
        }
        let read = self
            .on_leader(topic, partition, move |p| async move {
                let batches = p.read(offset, max_bytes).await?;
                // Crossing to another core needs owned, Send bytes: one copy (local reads splice).
                let batches = batches.iter().map(|b| Bytes::copy_from_slice(&b.payload)).collect();
                Ok(RemoteRead { batches, high_watermark: p.high_watermark(), log_start_offset: p.log_start_offset() })
            })
            .await?;
        Ok(FetchedRecords::Remote(read))
    }
}
