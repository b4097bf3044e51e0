//! The records inside a stored Kafka RecordBatch v2, for the cleaner: decompress the records
//! section (bounded, `codec`), find each record's offset delta, key and whether it is a tombstone,
//! and rebuild a batch from a subset of its records (same header fields, offsets, timestamps and
//! codec; new count, length and CRC32C).
//!
//! Record layout (inside the records section): length varint, attributes i8, timestampDelta varlong,
//! offsetDelta varint, keyLength varint (-1: null), key, valueLength varint (-1: null), value,
//! headers. The length prefix delimits the record, so headers are never parsed.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use super::batch::{zigzag_varint, BatchError, BatchInfo, VarintError, CRC_START, HEADER_LEN, MAX_VARLONG_BYTES};
use super::codec::{self, Codec, MAX_DECOMPRESSED_BATCH_BYTES};
use super::validate::CONTROL_BIT;

/// One record of a batch: where it is in the records section and what the cleaner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub offset_delta: i32,
    /// Byte range of the key in the records section; `None` for a null key.
    pub key: Option<Range<usize>>,
    /// Null value: a tombstone.
    pub tombstone: bool,
    /// Byte range of the whole record (length prefix included).
    pub span: Range<usize>,
}

fn corrupt(m: impl Into<String>) -> BatchError {
    BatchError::Corrupt(m.into())
}

fn varint(b: &[u8], at: &mut usize) -> Result<i64, BatchError> {
    zigzag_varint(b, at, MAX_VARLONG_BYTES).map_err(|e| match e {
        VarintError::Cut => corrupt("record ends inside a varint"),
        VarintError::TooLong => corrupt("varint longer than 10 bytes"),
    })
}

/// The records section of `batch` (whose header is `info`), decompressed if the batch is.
pub fn records_section(batch: &Bytes, info: &BatchInfo) -> Result<Bytes, BatchError> {
    if batch.len() < info.size || info.size < HEADER_LEN {
        return Err(corrupt(format!("batch of {} bytes claims {}", batch.len(), info.size)));
    }
    let codec = Codec::from_attributes(info.attributes)?;
    codec::decompress(codec, batch.slice(HEADER_LEN..info.size), MAX_DECOMPRESSED_BATCH_BYTES)
}

/// Walks the `count` records of a records section.
pub fn parse_records(section: &[u8], count: i32) -> Result<Vec<RecordView>, BatchError> {
    let count = usize::try_from(count).map_err(|_| corrupt(format!("negative record count {count}")))?;
    // A record takes at least 7 bytes: a count beyond that is a lie, not a reason to allocate.
    let mut out = Vec::with_capacity(count.min(section.len() / 7 + 1));
    let mut at = 0usize;
    for i in 0..count {
        let start = at;
        let len = varint(section, &mut at)?;
        let len = usize::try_from(len).map_err(|_| corrupt(format!("record {i}: negative length {len}")))?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= section.len())
            .ok_or_else(|| corrupt(format!("record {i} overruns its batch")))?;
        let body = &section[..end];
        at += 1; // attributes
        varint(body, &mut at)?; // timestamp delta
        let offset_delta = varint(body, &mut at)?;
        let offset_delta =
            i32::try_from(offset_delta).map_err(|_| corrupt(format!("record {i}: offset delta {offset_delta}")))?;
        let key_len = varint(body, &mut at)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = at..at + key_len as usize;
            if k.end > end {
                return Err(corrupt(format!("record {i}: key overruns the record")));
            }
            at = k.end;
            Some(k)
        };
        let value_len = varint(body, &mut at)?;
        if value_len >= 0 && at + value_len as usize > end {
            return Err(corrupt(format!("record {i}: value overruns the record")));
        }
        out.push(RecordView { offset_delta, key, tombstone: value_len < 0, span: start..end });
        at = end;
    }
    if at != section.len() {
        return Err(corrupt(format!("{} bytes after the last of {count} records", section.len() - at)));
    }
    Ok(out)
}

/// A batch holding only the records at `kept` (spans in `section`, in order): the original header
/// with the record count, length and CRC32C updated, records compressed with the batch's codec.
pub fn rebuild(batch: &Bytes, info: &BatchInfo, section: &[u8], kept: &[Range<usize>]) -> Result<Bytes, BatchError> {
    let mut plain = BytesMut::with_capacity(kept.iter().map(|r| r.len()).sum());
    for r in kept {
        plain.put_slice(&section[r.clone()]);
    }
    let mut records = BytesMut::new();
    let fill = |b: &mut BytesMut| -> anyhow::Result<()> {
        b.put_slice(&plain);
        Ok(())
    };
    let res = match info.compression() {
        0 => fill(&mut records),
        1 => Gzip::compress(&mut records, fill),
        2 => Snappy::compress(&mut records, fill),
        3 => Lz4::compress(&mut records, fill),
        4 => Zstd::compress(&mut records, fill),
        c => return Err(corrupt(format!("unknown compression codec {c}"))),
    };
    res.map_err(|e| corrupt(format!("compressing records: {e:#}")))?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
    out.put_slice(&batch[..HEADER_LEN]);
    out.put_slice(&records);
    let batch_length = i32::try_from(out.len() - 12).map_err(|_| corrupt("rebuilt batch too large"))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// The user records of a batch: its (decompressed) records section and the records in it. `None`
/// for a control batch (transaction markers), which callers keep as it is.
pub fn user_records(batch: &Bytes, info: &BatchInfo) -> Result<Option<(Bytes, Vec<RecordView>)>, BatchError> {
    if info.attributes & CONTROL_BIT != 0 {
        return Ok(None);
    }
    let section = records_section(batch, info)?;
    let records = parse_records(&section, info.records_count)?;
    Ok(Some((section, records)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::parse_header;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
            delete_horizon: false,
        }
    }

    fn encode(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records, &RecordEncodeOptions { version: 2, compression }).unwrap();
        buf.freeze()
    }

    #[test]
    fn keys_tombstones_and_a_rebuilt_subset_round_trip_for_every_codec() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            // The encoder keeps records in one batch only while offset - sequence is constant.
            let recs: Vec<Record> =
                [(0, Some("a"), Some("1")), (1, Some("b"), None), (2, Some("a"), Some("3")), (3, None, Some("4"))]
                    .iter()
                    .map(|&(o, k, v)| Record {
                        sequence: o as i32,
                        producer_id: 7,
                        producer_epoch: 0,
                        ..record(o, k, v)
                    })
                    .collect();
            let batch = encode(&recs, compression);
            let info = parse_header(&batch).unwrap();
            assert_eq!(info.records_count, 4, "{compression:?}: one batch");
            let section = records_section(&batch, &info).unwrap();
            let views = parse_records(&section, info.records_count).unwrap();
            let keys: Vec<Option<&[u8]>> = views.iter().map(|v| v.key.clone().map(|k| &section[k])).collect();
            assert_eq!(keys, vec![Some(&b"a"[..]), Some(b"b"), Some(b"a"), None]);
            assert_eq!(views.iter().map(|v| v.tombstone).collect::<Vec<_>>(), vec![false, true, false, false]);
            assert_eq!(views.iter().map(|v| v.offset_delta).collect::<Vec<_>>(), vec![0, 1, 2, 3]);

            // Keep records 1 and 2: offsets, header fields and values survive, CRC is right.
            let kept = vec![views[1].span.clone(), views[2].span.clone()];
            let rebuilt = rebuild(&batch, &info, &section, &kept).unwrap();
            let rinfo = parse_header(&rebuilt).unwrap();
            assert_eq!(rinfo.size, rebuilt.len());
            assert_eq!((rinfo.records_count, rinfo.last_offset_delta), (2, 3));
            assert_eq!(crc32c::crc32c(&rebuilt[CRC_START..]), rinfo.crc);
            let mut cursor = rebuilt.clone();
            let decoded = RecordBatchDecoder::decode_all(&mut cursor).unwrap();
            let records: Vec<_> = decoded.into_iter().flat_map(|b| b.records).collect();
            assert_eq!(records.len(), 2, "{compression:?}");
            assert_eq!((records[0].offset, records[0].value.is_none()), (1, true));
            assert_eq!((records[1].offset, records[1].value.as_deref()), (2, Some(&b"3"[..])));
            assert_eq!(records[1].timestamp, 1_700_000_000_002);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let recs = vec![record(0, Some("k"), Some("v"))];
        let batch = encode(&recs, Compression::None);
        let info = parse_header(&batch).unwrap();
        let section = records_section(&batch, &info).unwrap();
        for cut in 0..section.len() {
            assert!(parse_records(&section[..cut], 1).is_err());
        }
        assert!(parse_records(&section, 2).is_err());
        assert!(parse_records(&[0xff; 16], 1).is_err());
        assert!(parse_records(&section, -1).is_err());
        let mut bad = BytesMut::from(&batch[..]);
        bad[22] |= 4; // claim zstd
        let info = parse_header(&bad).unwrap();
        assert!(records_section(&bad.freeze(), &info).is_err());
    }
}
