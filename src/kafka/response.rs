//! Response framing, including zero-copy Fetch: the response is encoded by kafka-protocol as usual,
//! but each partition's `records` field is a placeholder of the right length; when the encoder
//! writes a placeholder, [`SpliceBuf`] records the stored batch views in its place instead of
//! copying. The connection then writes the encoded pieces and the batch views to the socket in order.

use crate::partition::BatchBytes;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;

/// Records longer than this are copied instead of spliced (the placeholder region is static).
pub const MAX_SPLICED_RECORDS_BYTES: usize = 128 << 20;
/// Zero-filled, never read: only its address and length are used (it stays in untouched .bss pages).
static PLACEHOLDER: [u8; MAX_SPLICED_RECORDS_BYTES] = [0; MAX_SPLICED_RECORDS_BYTES];

/// A piece of a response on the wire.
#[derive(Clone, Debug)]
pub enum Chunk {
    Encoded(Bytes),
    Stored(BatchBytes),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Encoded(b) => b.len(),
            Chunk::Stored(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Encoded(b) => b,
            Chunk::Stored(b) => b,
        }
    }
}

/// The records of one partition in a Fetch response: stored batches, sent as they are.
#[derive(Default, Debug)]
pub struct RecordsSplice {
    pub pieces: Vec<BatchBytes>,
    pub len: usize,
}

impl RecordsSplice {
    pub fn push(&mut self, b: BatchBytes) {
        self.len += b.len();
        self.pieces.push(b);
    }

    /// The value to put in the message's `records` field: a placeholder (spliced by `SpliceBuf`)
    /// or, when too large for the placeholder, a copy.
    pub fn field(&self) -> Option<Bytes> {
        if self.len == 0 {
            Some(Bytes::new())
        } else if self.len <= MAX_SPLICED_RECORDS_BYTES {
            Some(Bytes::from_static(&PLACEHOLDER[..self.len]))
        } else {
            let mut v = BytesMut::with_capacity(self.len);
            for p in &self.pieces {
                v.extend_from_slice(p);
            }
            Some(v.freeze())
        }
    }

    fn spliced(&self) -> bool {
        self.len > 0 && self.len <= MAX_SPLICED_RECORDS_BYTES
    }
}

/// A `BufMut` for kafka-protocol's encoder that replaces placeholder records with batch views.
pub struct SpliceBuf {
    cur: BytesMut,
    out: Vec<Chunk>,
    /// Spliced records, in the order the encoder writes them.
    pending: std::collections::VecDeque<RecordsSplice>,
    written: usize,
}

impl SpliceBuf {
    pub fn new(splices: Vec<RecordsSplice>) -> Self {
        SpliceBuf {
            cur: BytesMut::with_capacity(4096),
            out: Vec::new(),
            pending: splices.into_iter().filter(RecordsSplice::spliced).collect(),
            written: 0,
        }
    }

    fn flush_cur(&mut self) {
        if !self.cur.is_empty() {
            self.out.push(Chunk::Encoded(self.cur.split().freeze()));
        }
    }

    /// The pieces, in wire order. Every placeholder must have been replaced.
    pub fn finish(mut self) -> Vec<Chunk> {
        assert!(self.pending.is_empty(), "every spliced records field was written by the encoder");
        self.flush_cur();
        self.out
    }
}

// SAFETY: delegates the uninitialised-memory contract to the inner BytesMut.
unsafe impl BufMut for SpliceBuf {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        self.written += cnt;
        self.cur.advance_mut(cnt)
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.cur.capacity() == self.cur.len() {
            self.cur.reserve(4096);
        }
        self.cur.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let is_placeholder = !src.is_empty() && src.as_ptr() == PLACEHOLDER.as_ptr();
        if is_placeholder {
            let splice = self.pending.pop_front().expect("a placeholder is written once per spliced records");
            assert_eq!(splice.len, src.len(), "placeholder length matches its records");
            self.flush_cur();
            self.out.extend(splice.pieces.into_iter().map(Chunk::Stored));
            self.written += src.len();
        } else {
            self.cur.extend_from_slice(src);
            self.written += src.len();
        }
    }
}

impl ByteBufMut for SpliceBuf {
    fn offset(&self) -> usize {
        self.written
    }

    fn seek(&mut self, offset: usize) {
        // Gaps are not used by message encoders; support moving within the current chunk only.
        let start = self.written - self.cur.len();
        assert!(offset >= start, "seek before the current chunk");
        let rel = offset - start;
        if rel > self.cur.len() {
            self.cur.resize(rel, 0);
        } else {
            self.cur.truncate(rel);
        }
        self.written = offset;
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = self.written - self.cur.len();
        &mut self.cur[r.start - start..r.end - start]
    }
}

/// Encodes a complete response frame (size prefix, header, body) into wire pieces.
pub fn encode(
    correlation_id: i32,
    header_version: i16,
    body: &ResponseKind,
    version: i16,
    splices: Vec<RecordsSplice>,
) -> anyhow::Result<Vec<Chunk>> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version)? + body_size(body, version)?;
    let mut buf = SpliceBuf::new(splices);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    encode_body(body, &mut buf, version)?;
    anyhow::ensure!(buf.offset() == size + 4, "encoded size {} != computed {}", buf.offset(), size + 4);
    Ok(buf.finish())
}

macro_rules! for_each_kind {
    ($body:expr, $x:ident => $e:expr) => {
        match $body {
            ResponseKind::ApiVersions($x) => $e,
            ResponseKind::Metadata($x) => $e,
            ResponseKind::Produce($x) => $e,
            ResponseKind::Fetch($x) => $e,
            ResponseKind::ListOffsets($x) => $e,
            ResponseKind::CreateTopics($x) => $e,
            ResponseKind::DeleteTopics($x) => $e,
            ResponseKind::CreatePartitions($x) => $e,
            ResponseKind::DescribeConfigs($x) => $e,
            ResponseKind::InitProducerId($x) => $e,
            ResponseKind::FindCoordinator($x) => $e,
            ResponseKind::JoinGroup($x) => $e,
            ResponseKind::SyncGroup($x) => $e,
            ResponseKind::Heartbeat($x) => $e,
            ResponseKind::LeaveGroup($x) => $e,
            ResponseKind::OffsetCommit($x) => $e,
            ResponseKind::OffsetFetch($x) => $e,
            ResponseKind::ListGroups($x) => $e,
            ResponseKind::DescribeGroups($x) => $e,
            ResponseKind::DeleteGroups($x) => $e,
            ResponseKind::OffsetDelete($x) => $e,
            ResponseKind::DeleteRecords($x) => $e,
            ResponseKind::AlterConfigs($x) => $e,
            ResponseKind::IncrementalAlterConfigs($x) => $e,
            _ => anyhow::bail!("no encoder wired for this response kind"),
        }
    };
}

fn body_size(body: &ResponseKind, version: i16) -> anyhow::Result<usize> {
    for_each_kind!(body, x => Ok(x.compute_size(version)?))
}

fn encode_body(body: &ResponseKind, buf: &mut SpliceBuf, version: i16) -> anyhow::Result<()> {
    for_each_kind!(body, x => Ok(x.encode(buf, version)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response_with(records: Vec<Option<Bytes>>) -> FetchResponse {
        let partitions = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default().with_partition_index(i as i32).with_high_watermark(9).with_records(r)
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    /// The spliced frame is byte-identical to a plain encoding, and the stored bytes are passed
    /// through by reference, not copied.
    #[test]
    fn fetch_records_are_spliced_not_copied() {
        let a = Bytes::from(vec![1u8; 300]);
        let b = Bytes::from(vec![2u8; 70_000]);
        let c = Bytes::from(vec![3u8; 5]);
        let mut s0 = RecordsSplice::default();
        s0.push(BatchBytes::Memory(a.clone()));
        s0.push(BatchBytes::Memory(b.clone()));
        let empty = RecordsSplice::default();
        let mut s2 = RecordsSplice::default();
        s2.push(BatchBytes::Memory(c.clone()));
        for version in [4i16, 11, 12, 16] {
            let plain =
                response_with(vec![Some(Bytes::from([&a[..], &b[..]].concat())), Some(Bytes::new()), Some(c.clone())]);
            let spliced = response_with(vec![s0.field(), empty.field(), s2.field()]);
            let hv = if version >= 12 { 1 } else { 0 };
            let splices = vec![
                RecordsSplice { pieces: s0.pieces.clone(), len: s0.len },
                RecordsSplice::default(),
                RecordsSplice { pieces: s2.pieces.clone(), len: s2.len },
            ];
            let chunks = encode(7, hv, &ResponseKind::Fetch(spliced), version, splices).unwrap();
            let wire: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().to_vec()).collect();
            let expected = encode(7, hv, &ResponseKind::Fetch(plain), version, Vec::new()).unwrap();
            let expected: Vec<u8> = expected.iter().flat_map(|c| c.bytes().to_vec()).collect();
            assert_eq!(wire, expected, "v{version}");
            let stored: Vec<*const u8> =
                chunks.iter().filter(|c| matches!(c, Chunk::Stored(_))).map(|c| c.bytes().as_ptr()).collect();
            assert_eq!(
                stored,
                vec![a.as_ptr(), b.as_ptr(), c.as_ptr()],
                "v{version}: stored bytes passed by reference"
            );
        }
    }
}
