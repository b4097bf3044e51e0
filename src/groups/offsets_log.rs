//! Committed offsets in the `__consumer_offsets` topic, in Kafka's own record format so that tools
//! reading that topic understand it: key v1 = (group, topic, partition), value v3 = (offset,
//! leader epoch, metadata, commit timestamp); a null value (tombstone) deletes the commit.
//! Records are written as RecordBatch v2 through the normal produce path of the partition (so they
//! get the same validation, offsets and durability), and replayed on start-up.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The internal topic.
pub const OFFSETS_TOPIC: &str = crate::topics::CONSUMER_OFFSETS_TOPIC;
const KEY_VERSION_OFFSET: i16 = 1;
const VALUE_VERSION: i16 = 3;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A change to a group's committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// `None`: the commit was deleted.
    pub value: Option<Committed>,
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn get_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_i16();
    if len < 0 || b.remaining() < len as usize {
        return None;
    }
    String::from_utf8(b.split_to(len as usize).to_vec()).ok()
}

pub fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(KEY_VERSION_OFFSET);
    put_string(&mut b, group);
    put_string(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub fn encode_value(c: &Committed) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(VALUE_VERSION);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    put_string(&mut b, &c.metadata);
    b.put_i64(c.commit_timestamp_ms);
    b.freeze()
}

/// Parses one record; `None` for records that are not offset commits (e.g. group metadata).
pub fn decode(key: &Bytes, value: Option<&Bytes>) -> Option<OffsetRecord> {
    let mut k = key.clone();
    if k.remaining() < 2 || k.get_i16() != KEY_VERSION_OFFSET {
        return None;
    }
    let group = get_string(&mut k)?;
    let topic = get_string(&mut k)?;
    if k.remaining() < 4 {
        return None;
    }
    let partition = k.get_i32();
    let value = match value {
        None => None,
        Some(v) => {
            let mut v = v.clone();
            if v.remaining() < 2 {
                return None;
            }
            let version = v.get_i16();
            if !(1..=3).contains(&version) || v.remaining() < 8 {
                return None;
            }
            let offset = v.get_i64();
            let leader_epoch = if version >= 3 && v.remaining() >= 4 { v.get_i32() } else { -1 };
            let metadata = get_string(&mut v)?;
            let commit_timestamp_ms = if v.remaining() >= 8 { v.get_i64() } else { -1 };
            Some(Committed { offset, leader_epoch, metadata, commit_timestamp_ms })
        }
    };
    Some(OffsetRecord { group, topic, partition, value })
}

/// One uncompressed RecordBatch v2 holding `records`.
pub fn encode_batch(records: &[OffsetRecord], now_ms: i64) -> anyhow::Result<Bytes> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol's encoder starts a new batch whenever offset - sequence changes; one
            // batch per commit (a produce holds exactly one), base sequence -1 (no producer id).
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(encode_key(&r.group, &r.topic, r.partition)),
            value: r.value.as_ref().map(encode_value),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &recs, &RecordEncodeOptions { version: 2, compression: Compression::None })?;
    Ok(buf.freeze())
}

/// Decodes every offset record in concatenated stored batches. The coordinator writes them
/// uncompressed (and clients cannot produce to this topic), so a compressed batch is refused
/// rather than handed to a decoder that would expand it without bound.
pub fn decode_batches(bytes: Bytes) -> anyhow::Result<Vec<OffsetRecord>> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while buf.has_remaining() {
        let info = crate::record::batch::parse_header(&buf)?;
        if info.compression() != 0 {
            anyhow::bail!("compressed batch at offset {} in {OFFSETS_TOPIC}", info.base_offset);
        }
        let set = RecordBatchDecoder::decode(&mut buf)?;
        for r in set.records {
            if let Some(key) = &r.key {
                if let Some(rec) = decode(key, r.value.as_ref()) {
                    out.push(rec);
                }
            }
        }
    }
    Ok(out)
}

/// Java's `String.hashCode`, which Kafka uses to place a group on an offsets partition.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Configs of `__consumer_offsets`: fsync'ed per batch, compacted (the latest commit per group and
/// partition stays; tombstones from expiry and deletes go after a day).
pub fn topic_configs() -> Vec<(String, String)> {
    [("cleanup.policy", "compact"), ("flush.messages", "1"), ("retention.ms", "-1"), ("segment.bytes", "104857600")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `__consumer_offsets` partition of a group (Kafka: abs(hashCode) % partitions).
pub fn partition_for(group: &str, partitions: usize) -> i32 {
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    (abs as usize % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let recs = vec![
            OffsetRecord {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(Committed { offset: 42, leader_epoch: 0, metadata: "meta".into(), commit_timestamp_ms: 7 }),
            },
            OffsetRecord { group: "g".into(), topic: "t".into(), partition: 4, value: None },
        ];
        let batch = encode_batch(&recs, 1000).unwrap();
        assert_eq!(decode_batches(batch).unwrap(), recs);
    }

    #[test]
    fn java_string_hash() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(partition_for("hello", 50), 22);
    }
}
