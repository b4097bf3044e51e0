//! RecordBatch v2 as a client builds it (kafka-protocol's `RecordBatchEncoder`): records with keys and
//! values, one codec, and the idempotent producer fields. The broker refuses more than one batch per
//! partition in a produce request, and the encoder starts a new batch wherever `offset - sequence`
//! changes, so plain records get `sequence = offset - 1` (base sequence -1) and idempotent ones
//! `base_sequence + offset`: either way one batch. [`encode_records`] takes records exactly as given
//! (any field) and [`forge`] edits a built batch as a lying client would.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use crate::error::{ClientError, Result};

/// The record format this client writes: RecordBatch v2 (magic 2).
pub const RECORD_BATCH_VERSION: i8 = 2;
/// Producer id, epoch and base sequence of a batch that is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

/// The records of one batch, built up then encoded.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<Record>,
}

impl BatchBuilder {
    /// An empty, non-idempotent batch with `compression`.
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder {
            compression,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            records: Vec::new(),
        }
    }

    /// The batch of an idempotent producer: its id and epoch, and the sequence of its first record
    /// (taken as given: a test may send values a broker must refuse). Call before the first `push`.
    pub fn idempotent(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> BatchBuilder {
        assert!(self.records.is_empty(), "BatchBuilder::idempotent after records were pushed");
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn with_capacity(mut self, records: usize) -> BatchBuilder {
        self.records.reserve(records);
        self
    }

    /// Appends a record created at `timestamp_ms` (a `None` value is a tombstone).
    pub fn push(&mut self, timestamp_ms: i64, key: Option<Bytes>, value: Option<Bytes>) -> &mut BatchBuilder {
        let index = self.records.len();
        let offset = i64::try_from(index).unwrap_or(i64::MAX);
        let delta = i32::try_from(index).unwrap_or(i32::MAX);
        // Plain: -1, 0, 1, ... (base sequence -1). Idempotent: wraps past i32::MAX to 0, as Kafka's do.
        let sequence = if self.base_sequence == NO_SEQUENCE {
            delta - 1
        } else {
            self.base_sequence.checked_add(delta).unwrap_or_else(|| delta - (i32::MAX - self.base_sequence) - 1)
        };
        self.records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence,
            timestamp: timestamp_ms,
            key,
            value,
            headers: Default::default(),
        });
        self
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records as built so far (for a test that then changes one field: see `encode_records`).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Appends the encoded batch to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) -> Result<()> {
        encode_records_into(buf, &self.records, self.compression)
    }

    /// The encoded batch.
    pub fn build(&self) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// Escape hatch: `records` encoded exactly as given (every field the caller's), in as many batches as
/// the encoder makes of them.
pub fn encode_records(records: &[Record], compression: Compression) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    encode_records_into(&mut buf, records, compression)?;
    Ok(buf.freeze())
}

fn encode_records_into(buf: &mut BytesMut, records: &[Record], compression: Compression) -> Result<()> {
    let options = RecordEncodeOptions { version: RECORD_BATCH_VERSION, compression };
    RecordBatchEncoder::encode(buf, records, &options)
        .map_err(|e| ClientError::Invalid(format!("encoding a record batch: {e}")))
}

/// Edits a built batch as a lying client would: the byte offsets of the RecordBatch v2 header fields,
/// and the CRC32C recomputed over the edit so that the lie is not caught by the checksum.
pub mod forge {
    use bytes::Bytes;

    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = 8;
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    /// The CRC32C covers everything from the attributes on.
    pub const CRC_START: usize = 21;
    /// The low byte of the 16-bit attributes (codec bits 0-2, timestamp type 3, transactional 4,
    /// control 5).
    pub const ATTRIBUTES_LOW: usize = 22;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORDS_COUNT: usize = 57;
    /// Bytes of the header before the records.
    pub const HEADER_LEN: usize = 61;

    /// `batch` after `edit`, its CRC32C recomputed over all bytes from `CRC_START`.
    pub fn forge(batch: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut b = batch.to_vec();
        edit(&mut b);
        if b.len() >= CRC_START {
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Bytes::from(b)
    }

    /// Writes `v` big-endian at `at` (nothing if the batch is too short).
    pub fn set_i32(b: &mut [u8], at: usize, v: i32) {
        if let Some(field) = b.get_mut(at..at + 4) {
            field.copy_from_slice(&v.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn values(n: usize) -> Vec<Option<Bytes>> {
        (0..n).map(|i| Some(Bytes::from(format!("v{i}")))).collect()
    }

    #[test]
    fn plain_and_idempotent_records_make_one_batch() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let mut plain = BatchBuilder::new(compression);
            let mut idem = BatchBuilder::new(compression).idempotent(7, 2, 40);
            for v in values(5) {
                plain.push(1_000, None, v.clone());
                idem.push(1_000, Some(Bytes::from_static(b"k")), v);
            }
            let plain = plain.build().expect("encode");
            let infos = RecordBatchDecoder::decode_batch_info(&mut plain.clone()).expect("decode");
            assert_eq!(infos.len(), 1, "{compression:?}: {infos:?}");
            assert_eq!((infos[0].producer_id, infos[0].base_sequence), (-1, -1));
            let idem = idem.build().expect("encode");
            let infos = RecordBatchDecoder::decode_batch_info(&mut idem.clone()).expect("decode");
            assert_eq!(infos.len(), 1, "{compression:?}: {infos:?}");
            assert_eq!((infos[0].producer_id, infos[0].producer_epoch, infos[0].base_sequence), (7, 2, 40));
        }
    }

    #[test]
    fn forged_fields_keep_a_valid_crc() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(1, None, Some(Bytes::from_static(b"x")));
        let honest = b.build().expect("encode");
        let lie = forge::forge(&honest, |b| forge::set_i32(b, forge::RECORDS_COUNT, 2));
        let crc = u32::from_be_bytes([lie[17], lie[18], lie[19], lie[20]]);
        assert_eq!(crc, crc32c::crc32c(&lie[forge::CRC_START..]));
        assert_eq!(i32::from_be_bytes([lie[57], lie[58], lie[59], lie[60]]), 2);
    }
}
