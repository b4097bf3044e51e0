//! RecordBatch v2 framing: parse and check the 61-byte header and CRC32C of each batch in a
//! Produce request's records or a leader's replicated bytes, patch the broker-assigned fields (base
//! offset, partition leader epoch; both outside the CRC by Kafka's design) without re-encoding, and
//! walk records for timestamp lookup. The records inside are checked by `validate`.

use bytes::{Bytes, BytesMut};

/// Size of the RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the CRC-covered part (baseOffset .. crc).
pub const CRC_START: usize = 21;
const MAGIC_V2: i8 = 2;
const MAGIC_AT: usize = 16;

/// Header fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: i64,
    /// Whole batch size in bytes (12 + batchLength).
    pub size: usize,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchInfo {
    /// Compression codec bits of `attributes` (0: none).
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }

    /// Offsets the batch occupies.
    pub fn offset_count(&self) -> u32 {
        (self.last_offset_delta as u32).wrapping_add(1)
    }
}

/// Why a batch was rejected, mapped to a Kafka error code by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// CORRUPT_MESSAGE (2): framing, CRC, compressed data.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// INVALID_RECORD (87): a well-framed batch whose contents break Kafka's rules.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// INVALID_TXN_STATE (48): a transactional batch outside a transaction.
    #[error("{0}")]
    InvalidTxnState(String),
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT (43): message format v0/v1.
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    /// MESSAGE_TOO_LARGE (10).
    #[error("record batch of {size} bytes exceeds max.message.bytes {limit}")]
    TooLarge { size: usize, limit: usize },
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Parses the header of the batch at the start of `b` (which may hold more batches after it).
pub fn parse_header(b: &[u8]) -> Result<BatchInfo, BatchError> {
    // The magic sits at byte 16 in every message format: a v0/v1 message set (whose messages can
    // be shorter than a v2 header) is named as such before its length is judged.
    if let Some(&magic) = b.get(MAGIC_AT) {
        if magic as i8 != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic as i8));
        }
    }
    if b.len() < HEADER_LEN {
        return Err(BatchError::Corrupt(format!("{} bytes is shorter than a batch header", b.len())));
    }
    let batch_length = be_i32(b, 8);
    if batch_length < (HEADER_LEN - 12) as i32 {
        return Err(BatchError::Corrupt(format!("batchLength {batch_length} is too small")));
    }
    Ok(BatchInfo {
        base_offset: be_i64(b, 0),
        size: 12 + batch_length as usize,
        crc: be_i32(b, 17) as u32,
        attributes: be_i16(b, 21),
        last_offset_delta: be_i32(b, 23),
        base_timestamp: be_i64(b, 27),
        max_timestamp: be_i64(b, 35),
        producer_id: be_i64(b, 43),
        producer_epoch: be_i16(b, 51),
        base_sequence: be_i32(b, 53),
        records_count: be_i32(b, 57),
    })
}

/// The one batch of a Produce request's partition data (Kafka: "Produce requests with version 3 and
/// above are only allowed to contain exactly one record batch per partition"): framing and CRC32C
/// right, size within `max_batch_bytes`, header within Kafka's rules for client batches
/// (`validate::check_header`). The records inside are walked separately (`validate::BatchCheck`),
/// so the caller can yield while a large batch is checked.
pub fn produced_batch(records: &Bytes, max_batch_bytes: usize) -> Result<(BatchInfo, Bytes), BatchError> {
    if records.is_empty() {
        return Err(BatchError::InvalidRecord(
            "Produce requests must have at least one record batch per partition".into(),
        ));
    }
    let mut batches = split(records, max_batch_bytes, |info| super::validate::check_header(info).map(|_| ()))?;
    if batches.len() != 1 {
        return Err(BatchError::InvalidRecord(
            "Produce requests are only allowed to contain exactly one record batch per partition".into(),
        ));
    }
    Ok(batches.remove(0))
}

/// The partition leader epoch written in a stored batch's header (bytes 12..16).
pub fn partition_leader_epoch(b: &[u8]) -> Option<i32> {
    (b.len() >= HEADER_LEN).then(|| be_i32(b, 12))
}

/// Splits batches copied from a leader: each header sane and its CRC32C right. Unlike produce, the
/// record count may be below the offsets a batch spans (compaction removed records from it).
pub fn split_replicated(records: &Bytes) -> Result<Vec<(BatchInfo, Bytes)>, BatchError> {
    split(records, usize::MAX, |info| {
        if info.last_offset_delta < 0 || info.base_offset < 0 {
            return Err(BatchError::Corrupt(format!(
                "batch at {}: last offset delta {}",
                info.base_offset, info.last_offset_delta
            )));
        }
        Ok(())
    })
}

/// Splits concatenated batches: each header parsed, its claimed size present and within
/// `max_batch_bytes`, its CRC32C right, then `check` (in that order, batch by batch).
fn split(
    records: &Bytes,
    max_batch_bytes: usize,
    check: impl Fn(&BatchInfo) -> Result<(), BatchError>,
) -> Result<Vec<(BatchInfo, Bytes)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let info = parse_header(&records[at..])?;
        if info.size > records.len() - at {
            return Err(BatchError::Corrupt(format!(
                "batch claims {} bytes but only {} remain",
                info.size,
                records.len() - at
            )));
        }
        if info.size > max_batch_bytes {
            return Err(BatchError::TooLarge { size: info.size, limit: max_batch_bytes });
        }
        let bytes = records.slice(at..at + info.size);
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        if crc != info.crc {
            return Err(BatchError::Corrupt(format!(
                "CRC32C {crc:#010x} does not match the header's {:#010x}",
                info.crc
            )));
        }
        check(&info)?;
        out.push((info, bytes));
        at += info.size;
    }
    Ok(out)
}

/// Copies the batch with the broker's base offset and leader epoch written in (outside the CRC),
/// and returns it with the CRC32C of the whole batch, derived from the batch's own verified CRC
/// (so the storage engine does not checksum the payload again).
pub fn stamp(batch: &Bytes, info: &BatchInfo, base_offset: u64, leader_epoch: i32) -> (Bytes, u32) {
    let mut b = BytesMut::from(&batch[..]);
    b[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    let head_crc = crc32c::crc32c(&b[..CRC_START]);
    let crc = crc32c::crc32c_combine(head_crc, info.crc, b.len() - CRC_START);
    (b.freeze(), crc)
}

/// Longest zigzag varint of a 64-bit field (a 32-bit field takes at most 5 bytes).
pub(crate) const MAX_VARLONG_BYTES: usize = 10;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The bytes ended inside it.
    Cut,
    /// Longer than allowed.
    TooLong,
}

/// The zigzag varint of at most `max_bytes` bytes at `b[*at..]`; on success `at` moves past it.
/// The one varint reader of the record format (timestamp lookup, the cleaner, produce validation).
pub(crate) fn zigzag_varint(b: &[u8], at: &mut usize, max_bytes: usize) -> Result<i64, VarintError> {
    let rest = b.get(*at..).unwrap_or_default();
    let mut v: u64 = 0;
    for (n, &byte) in rest.iter().take(max_bytes).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * n);
        if byte & 0x80 == 0 {
            *at += n + 1;
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(if rest.len() < max_bytes { VarintError::Cut } else { VarintError::TooLong })
}

fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    zigzag_varint(b, at, MAX_VARLONG_BYTES).ok()
}

/// For an uncompressed batch, the offset and timestamp of the first record at or above
/// `min_offset` whose timestamp is >= `ts`. `None` when the batch is compressed or no record
/// qualifies.
pub fn first_record_at_or_after(batch: &[u8], ts: i64, min_offset: i64) -> Option<(i64, i64)> {
    let info = parse_header(batch).ok()?;
    if info.compression() != 0 {
        return None;
    }
    let mut at = HEADER_LEN;
    for _ in 0..info.records_count {
        let len = varint(batch, &mut at)?;
        let body_start = at;
        at += 1; // attributes
        let ts_delta = varint(batch, &mut at)?;
        let off_delta = varint(batch, &mut at)?;
        let rec_ts = info.base_timestamp + ts_delta;
        if rec_ts >= ts && info.base_offset + off_delta >= min_offset {
            return Some((info.base_offset + off_delta, rec_ts));
        }
        at = body_start + usize::try_from(len).ok()?;
        if at > batch.len() {
            return None;
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an uncompressed batch of `n` records with the given timestamps (test helper).
    pub(crate) fn make_batch(base_ts: i64, deltas: &[i64]) -> Bytes {
        let mut recs = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            let mut body = vec![0u8];
            put_varint(&mut body, *d);
            put_varint(&mut body, i as i64);
            put_varint(&mut body, -1); // null key
            put_varint(&mut body, 1);
            body.push(b'x');
            put_varint(&mut body, 0); // headers
            put_varint(&mut recs, body.len() as i64);
            recs.extend_from_slice(&body);
        }
        let n = deltas.len() as i32;
        let max_ts = base_ts + deltas.iter().copied().max().unwrap_or(0);
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - 12 + recs.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&recs);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    #[test]
    fn validates_splits_and_stamps() {
        let a = make_batch(1000, &[0, 5, 9]);
        let b = make_batch(2000, &[1]);
        let both = Bytes::from([&a[..], &b[..]].concat());
        assert!(matches!(produced_batch(&both, 1 << 20), Err(BatchError::InvalidRecord(_))));
        let got = split_replicated(&both).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.offset_count(), 3);
        let (stamped, crc) = stamp(&got[0].1, &got[0].0, 42, 7);
        assert_eq!(parse_header(&stamped).unwrap().base_offset, 42);
        assert_eq!(crc, crc32c::crc32c(&stamped));
        assert_eq!(first_record_at_or_after(&stamped, 1004, 0), Some((43, 1005)));
        assert_eq!(first_record_at_or_after(&stamped, 1000, 44), Some((44, 1009)));
        assert_eq!(first_record_at_or_after(&stamped, 1010, 0), None);

        let mut bad = a.to_vec();
        bad[70] ^= 1;
        assert!(matches!(produced_batch(&Bytes::from(bad), 1 << 20), Err(BatchError::Corrupt(_))));
        assert!(matches!(produced_batch(&a, 10), Err(BatchError::TooLarge { .. })));
        assert!(matches!(produced_batch(&a.slice(..50), 1 << 20), Err(BatchError::Corrupt(_))));
        let mut v1 = a.to_vec();
        v1[16] = 1;
        assert_eq!(produced_batch(&Bytes::from(v1), 1 << 20), Err(BatchError::UnsupportedMagic(1)));
    }
}
