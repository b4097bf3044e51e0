//! Client reads of a partition: fetches up to the high watermark, the long-poll wait for data, and
//! ListOffsets' lookups by timestamp.

use kafka_protocol::error::ResponseError;

use super::{Partition, PartitionError, StoredBatch};
use crate::record::batch as record_batch;

impl Partition {
    /// Stored batches from the one holding `offset`, up to `max_bytes` (the first batch whole even
    /// if larger), never above the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<StoredBatch>, PartitionError> {
        let offset = u64::try_from(offset)
            .map_err(|_| PartitionError::new(ResponseError::OffsetOutOfRange, "negative fetch offset"))?;
        let hw = self.high_watermark() as u64;
        let mut batches = self.log.read(offset, max_bytes).await?;
        batches.retain(|b| b.header.base_offset < hw);
        Ok(batches)
    }

    /// Stored batches from the one holding `offset` up to the log end (above the high watermark
    /// too): for the broker's own replay of a log it now leads.
    pub async fn read_to_end(&self, offset: i64, max_bytes: usize) -> Result<Vec<StoredBatch>, PartitionError> {
        let offset = u64::try_from(offset)
            .map_err(|_| PartitionError::new(ResponseError::OffsetOutOfRange, "negative offset"))?;
        Ok(self.log.read(offset, max_bytes).await?)
    }

    /// Resolves once the high watermark is above `offset` (or at once if it already is).
    pub async fn wait_for_data(&self, offset: i64) {
        loop {
            if self.high_watermark() > offset {
                return;
            }
            let listener = self.data_arrived.listen();
            if self.high_watermark() > offset {
                return;
            }
            listener.await;
        }
    }

    /// The first offset whose record timestamp is >= `ts`, with that timestamp (Kafka ListOffsets).
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, PartitionError> {
        // The engine answers per batch; look inside the batch for the exact record.
        let Some(b) = self.log.batch_for_timestamp(ts).await? else { return Ok(None) };
        let start = self.log_start_offset();
        if let Some(found) = exact_or_batch(&b, ts, start) {
            return Ok(Some(found));
        }
        // Every qualifying record of that batch lies below the log start (DeleteRecords cut into
        // it): the answer is in a later batch.
        let mut at = b.header.next_offset();
        let end = self.log.next_offset();
        while at < end {
            let batches = self.log.read(at, 64 << 10).await?;
            if batches.is_empty() {
                break;
            }
            for nb in &batches {
                if nb.header.max_timestamp >= ts {
                    return Ok(exact_or_batch(nb, ts, start));
                }
                at = nb.header.next_offset();
            }
        }
        Ok(None)
    }

    /// Largest timestamp and its batch's last offset (ListOffsets MAX_TIMESTAMP, -3).
    pub async fn max_timestamp(&self) -> Result<Option<(i64, i64)>, PartitionError> {
        let mut best: Option<(i64, i64)> = None;
        let mut at = self.log.log_start_offset();
        let end = self.log.next_offset();
        while at < end {
            let batches = self.log.read(at, 1 << 20).await?;
            let Some(last) = batches.last() else { break };
            for b in &batches {
                if best.is_none_or(|(_, ts)| b.header.max_timestamp > ts) {
                    best = Some((b.header.last_offset() as i64, b.header.max_timestamp));
                }
            }
            at = last.header.next_offset();
        }
        Ok(best)
    }
}

/// The first record at or above `start` with a timestamp >= `ts` in an uncompressed batch; for a
/// compressed batch its base offset (clamped to `start`) and max timestamp, the best answer without
/// decompressing (records before the match are returned too; consumers skip them).
fn exact_or_batch(b: &StoredBatch, ts: i64, start: i64) -> Option<(i64, i64)> {
    let compressed = record_batch::parse_header(&b.payload).map_or(true, |h| h.compression() != 0);
    if compressed {
        return Some(((b.header.base_offset as i64).max(start), b.header.max_timestamp));
    }
    record_batch::first_record_at_or_after(&b.payload, ts, start)
}
