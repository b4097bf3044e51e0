//! Framing of the replication protocol: encoding a message (plus raw batch bytes) into a frame and
//! decoding frames from a byte stream. Pure byte handling: no sockets, no runtime, so it serves
//! glommio connections and tests alike. Nothing here trusts its input: every length is checked
//! against a named limit before anything is allocated for it, every frame's CRC32C is verified,
//! the metadata archive is validated by rkyv's bytecheck, and every raw range is checked against
//! the raw section. A decode error means the stream lost its framing: close the connection.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     4  magic           "SLRP"
//!      4     2  version         PROTOCOL_VERSION; any other is refused (UnsupportedVersion)
//!      6     2  kind            MessageKind
//!      8     4  correlation id  echoed by the answer
//!     12     4  metadata length <= MAX_METADATA_BYTES
//!     16     4  raw length      header + metadata + raw <= the decoder's max_frame_bytes
//!     20     4  CRC32C          over bytes 0..20, then the metadata, then the raw section
//!     24     m  metadata        rkyv archive of the kind's message struct
//!   24+m     r  raw section     concatenated stored batches (fetch responses only)
//! ```
//!
//! The raw section is outside the archive so the leader writes its stored buffers (DMA read
//! results, tail-cache `Bytes`) as they are, after the head, with vectored writes; the follower
//! slices each partition's [`RawRange`] out of the frame's `Bytes` without copying. Only the small
//! metadata is copied (into an aligned buffer for validation and deserialisation).

use bytes::{Buf, Bytes, BytesMut};

use super::messages::*;

/// Frame magic, "SLRP" (Sluice replication protocol).
pub const MAGIC: u32 = u32::from_le_bytes(*b"SLRP");
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of the fixed frame header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of the header covered by the CRC (everything before the CRC field).
const CRC_COVERED_HEADER_BYTES: usize = 20;
/// Limit on one frame's metadata archive (about 100k partitions of a fetch).
pub const MAX_METADATA_BYTES: usize = 4 << 20;
/// Default limit on a whole frame, and the limit the encoder enforces. A follower asks for at most
/// this much per fetch (the sum of its partitions' `max_bytes` plus one batch each).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Why a frame cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported replication protocol version {0} (this broker speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: usize },
    #[error("metadata of {len} bytes exceeds the limit of {limit} bytes")]
    MetadataTooLarge { len: usize, limit: usize },
    #[error("frame CRC32C mismatch: header says {expected:#010x}, content has {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("invalid {kind:?} metadata: {reason}")]
    InvalidMetadata { kind: MessageKind, reason: String },
    #[error("raw range [{offset}, +{len}) is outside the raw section of {raw_len} bytes")]
    RangeOutOfBounds { offset: u32, len: u32, raw_len: u64 },
    #[error("{kind:?} carries {len} raw bytes; only fetch responses have a raw section")]
    UnexpectedRaw { kind: MessageKind, len: u64 },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Encodes the head of a frame (header + metadata) for `msg` followed by the raw section `raw`
/// (its pieces in order). Send the head, then the pieces unchanged. The CRC covers the pieces, and
/// every range of `msg` is checked against them.
pub fn encode_head<B: AsRef<[u8]>>(correlation_id: u32, msg: &Message, raw: &[B]) -> Result<Bytes, WireError> {
    let kind = msg.kind();
    let raw_len: u64 = raw.iter().map(|p| p.as_ref().len() as u64).sum();
    check_raw(kind, msg, raw_len)?;
    let meta = encode_metadata(msg)?;
    if meta.len() > MAX_METADATA_BYTES {
        return Err(WireError::MetadataTooLarge { len: meta.len(), limit: MAX_METADATA_BYTES });
    }
    let frame_len = (HEADER_BYTES + meta.len()) as u64 + raw_len;
    if frame_len > MAX_FRAME_BYTES as u64 {
        return Err(WireError::FrameTooLarge { len: frame_len, limit: MAX_FRAME_BYTES });
    }
    let mut head = BytesMut::with_capacity(HEADER_BYTES + meta.len());
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    head.extend_from_slice(&(kind as u16).to_le_bytes());
    head.extend_from_slice(&correlation_id.to_le_bytes());
    // Both fit: bounded by the limits checked above, which are below u32::MAX.
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&(raw_len as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&head[..CRC_COVERED_HEADER_BYTES]);
    crc = crc32c::crc32c_append(crc, &meta);
    for piece in raw {
        crc = crc32c::crc32c_append(crc, piece.as_ref());
    }
    head.extend_from_slice(&crc.to_le_bytes());
    head.extend_from_slice(&meta);
    Ok(head.freeze())
}

/// The whole frame as pieces to write in order (vectored): the head, then `raw` as given (cheap
/// `Bytes` clones, no copy).
pub fn encode(correlation_id: u32, msg: &Message, raw: &[Bytes]) -> Result<Vec<Bytes>, WireError> {
    let head = encode_head(correlation_id, msg, raw)?;
    let mut pieces = Vec::with_capacity(1 + raw.len());
    pieces.push(head);
    pieces.extend(raw.iter().filter(|p| !p.is_empty()).cloned());
    Ok(pieces)
}

/// Builds the raw section of a fetch response: each partition's batches are appended and the
/// partition gets the [`RawRange`] covering them. Generic over the piece type so the leader can
/// keep its DMA read results as they are.
#[derive(Debug)]
pub struct RawSection<B> {
    pieces: Vec<B>,
    len: u64,
}

impl<B: AsRef<[u8]>> Default for RawSection<B> {
    fn default() -> Self {
        RawSection { pieces: Vec::new(), len: 0 }
    }
}

impl<B: AsRef<[u8]>> RawSection<B> {
    /// Appends one partition's batches; returns their range. Fails (appending nothing) when the
    /// section would outgrow a frame.
    pub fn push_partition(&mut self, batches: impl IntoIterator<Item = B>) -> Result<RawRange, WireError> {
        let start = self.len;
        let before = self.pieces.len();
        let mut len = 0u64;
        for b in batches {
            len += b.as_ref().len() as u64;
            self.pieces.push(b);
        }
        let end = start + len;
        if end > MAX_FRAME_BYTES as u64 {
            self.pieces.truncate(before);
            return Err(WireError::FrameTooLarge { len: end, limit: MAX_FRAME_BYTES });
        }
        self.len = end;
        // Both fit in u32: bounded by MAX_FRAME_BYTES.
        Ok(RawRange { offset: start as u32, len: len as u32 })
    }

    /// Bytes in the section so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[B] {
        &self.pieces
    }

    /// The pieces, in order.
    pub fn into_pieces(self) -> Vec<B> {
        self.pieces
    }
}

/// A decoded frame. The message is owned; the raw section is a view of the received buffer.
#[derive(Debug, Clone)]
pub struct Frame {
    pub correlation_id: u32,
    pub message: Message,
    /// The whole frame as received.
    bytes: Bytes,
    /// Where the raw section starts in `bytes`.
    raw_start: usize,
}

impl Frame {
    /// The whole raw section (zero-copy).
    pub fn raw(&self) -> Bytes {
        self.bytes.slice(self.raw_start..)
    }

    /// One range of the raw section (zero-copy); `None` when it is outside the section.
    pub fn raw_slice(&self, range: RawRange) -> Option<Bytes> {
        let raw_len = (self.bytes.len() - self.raw_start) as u64;
        if range.end() > raw_len {
            return None;
        }
        let start = self.raw_start + range.offset as usize;
        Some(self.bytes.slice(start..start + range.len as usize))
    }

    /// Each partition of a fetch response with its stored batches (zero-copy); empty for other
    /// kinds. The ranges were checked when the frame was decoded.
    pub fn fetched(&self) -> Vec<(FetchedPartition, Bytes)> {
        match &self.message {
            Message::ReplicaFetchResponse(r) => {
                r.partitions.iter().map(|p| (*p, self.raw_slice(p.records).unwrap_or_default())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The frame exactly as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Splits a byte stream into frames. Feed it what the connection reads (`push`, or read straight
/// into `buffer_mut`), then take frames with `next_frame` until it returns `Ok(None)`. It buffers at
/// most what it was given; room for a frame is reserved only after its header passed the limits.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

/// What the header of the next frame says.
struct Header {
    kind_code: u16,
    correlation_id: u32,
    meta_len: usize,
    frame_len: usize,
    crc: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max_frame_bytes`, which bounds the memory one connection
    /// can pin. Senders never exceed [`MAX_FRAME_BYTES`], so a larger limit buys nothing.
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder { buf: BytesMut::new(), max_frame_bytes }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, to read into directly (append only).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still missing before `next_frame` can return the next frame (at least 1 when a frame
    /// is incomplete, 0 when one is complete). An error when the header buffered so far is invalid.
    pub fn missing(&self) -> Result<usize, WireError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(HEADER_BYTES - self.buf.len());
        }
        let h = self.header()?;
        Ok(h.frame_len.saturating_sub(self.buf.len()))
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let h = self.header()?;
        if self.buf.len() < h.frame_len {
            // Limits passed: reserving the rest of this frame is bounded.
            self.buf.reserve(h.frame_len - self.buf.len());
            return Ok(None);
        }
        let bytes = self.buf.split_to(h.frame_len).freeze();
        let meta_end = HEADER_BYTES + h.meta_len;
        let mut crc = crc32c::crc32c(&bytes[..CRC_COVERED_HEADER_BYTES]);
        crc = crc32c::crc32c_append(crc, &bytes[HEADER_BYTES..]);
        if crc != h.crc {
            return Err(WireError::ChecksumMismatch { expected: h.crc, actual: crc });
        }
        let kind = MessageKind::from_code(h.kind_code).ok_or(WireError::UnknownKind(h.kind_code))?;
        let message = decode_metadata(kind, &bytes[HEADER_BYTES..meta_end])?;
        check_raw(kind, &message, (h.frame_len - meta_end) as u64)?;
        Ok(Some(Frame { correlation_id: h.correlation_id, message, bytes, raw_start: meta_end }))
    }

    /// At the end of the stream: an error when a frame was left incomplete.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated { buffered: self.buf.len() })
        }
    }

    /// Parses and checks the buffered header (needs `HEADER_BYTES` buffered).
    fn header(&self) -> Result<Header, WireError> {
        let mut b = &self.buf[..HEADER_BYTES];
        let magic = b.get_u32_le();
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = b.get_u16_le();
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind_code = b.get_u16_le();
        let correlation_id = b.get_u32_le();
        let meta_len = b.get_u32_le() as usize;
        let raw_len = b.get_u32_le() as u64;
        let crc = b.get_u32_le();
        if meta_len > MAX_METADATA_BYTES {
            return Err(WireError::MetadataTooLarge { len: meta_len, limit: MAX_METADATA_BYTES });
        }
        let frame_len = (HEADER_BYTES + meta_len) as u64 + raw_len;
        if frame_len > self.max_frame_bytes as u64 {
            return Err(WireError::FrameTooLarge { len: frame_len, limit: self.max_frame_bytes });
        }
        // Fits in usize: at most max_frame_bytes.
        Ok(Header { kind_code, correlation_id, meta_len, frame_len: frame_len as usize, crc })
    }
}

/// Every range of `msg` must lie inside the raw section, and only fetch responses may have one.
fn check_raw(kind: MessageKind, msg: &Message, raw_len: u64) -> Result<(), WireError> {
    if kind != MessageKind::ReplicaFetchResponse && raw_len != 0 {
        return Err(WireError::UnexpectedRaw { kind, len: raw_len });
    }
    match msg.raw_ranges().find(|r| r.end() > raw_len) {
        Some(r) => Err(WireError::RangeOutOfBounds { offset: r.offset, len: r.len, raw_len }),
        None => Ok(()),
    }
}

fn encode_metadata(msg: &Message) -> Result<rkyv::util::AlignedVec, WireError> {
    use rkyv::rancor::Error as E;
    let res = match msg {
        Message::Hello(m) => rkyv::to_bytes::<E>(m),
        Message::HelloAck(m) => rkyv::to_bytes::<E>(m),
        Message::ReplicaFetch(m) => rkyv::to_bytes::<E>(m),
        Message::ReplicaFetchResponse(m) => rkyv::to_bytes::<E>(m),
        Message::OffsetsForLeaderEpoch(m) => rkyv::to_bytes::<E>(m),
        Message::OffsetsForLeaderEpochResponse(m) => rkyv::to_bytes::<E>(m),
    };
    res.map_err(|e| WireError::InvalidMetadata { kind: msg.kind(), reason: format!("encoding: {e}") })
}

/// Validates (bytecheck) and deserialises the metadata of a `kind` frame. The archive is copied
/// into an aligned buffer first: received bytes have no alignment guarantee.
fn decode_metadata(kind: MessageKind, meta: &[u8]) -> Result<Message, WireError> {
    use rkyv::rancor::Error as E;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(meta.len());
    aligned.extend_from_slice(meta);
    let invalid = |e: E| WireError::InvalidMetadata { kind, reason: e.to_string() };
    Ok(match kind {
        MessageKind::Hello => Message::Hello(rkyv::from_bytes::<Hello, E>(&aligned).map_err(invalid)?),
        MessageKind::HelloAck => Message::HelloAck(rkyv::from_bytes::<HelloAck, E>(&aligned).map_err(invalid)?),
        MessageKind::ReplicaFetch => {
            Message::ReplicaFetch(rkyv::from_bytes::<ReplicaFetch, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::ReplicaFetchResponse => {
            Message::ReplicaFetchResponse(rkyv::from_bytes::<ReplicaFetchResponse, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::OffsetsForLeaderEpoch => {
            Message::OffsetsForLeaderEpoch(rkyv::from_bytes::<OffsetsForLeaderEpoch, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::OffsetsForLeaderEpochResponse => Message::OffsetsForLeaderEpochResponse(
            rkyv::from_bytes::<OffsetsForLeaderEpochResponse, E>(&aligned).map_err(invalid)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: TopicId = *b"0123456789abcdef";

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello { node_id: 3, cluster_id: "sluice-test-cluster".into(), core: 1 }),
            Message::HelloAck(HelloAck { node_id: 1, error_code: NO_ERROR }),
            Message::ReplicaFetch(ReplicaFetch {
                follower_id: 2,
                partitions: vec![
                    FetchPartition {
                        topic_id: TOPIC,
                        partition: 0,
                        fetch_offset: 1 << 40,
                        current_leader_epoch: 7,
                        last_fetched_epoch: 6,
                        max_bytes: 1 << 20,
                    },
                    FetchPartition {
                        topic_id: [0xff; 16],
                        partition: i32::MAX,
                        fetch_offset: 0,
                        current_leader_epoch: 0,
                        last_fetched_epoch: UNDEFINED_EPOCH,
                        max_bytes: 0,
                    },
                ],
            }),
            Message::OffsetsForLeaderEpoch(OffsetsForLeaderEpoch {
                follower_id: 2,
                partitions: vec![EpochQuery {
                    topic_id: TOPIC,
                    partition: 4,
                    current_leader_epoch: 9,
                    requested_epoch: 5,
                }],
            }),
            Message::OffsetsForLeaderEpochResponse(OffsetsForLeaderEpochResponse {
                partitions: vec![
                    EpochAnswer {
                        topic_id: TOPIC,
                        partition: 4,
                        error_code: NO_ERROR,
                        end: Some(EpochEndOffset { epoch: 5, end_offset: 1234 }),
                    },
                    EpochAnswer {
                        topic_id: TOPIC,
                        partition: 5,
                        error_code: kafka_protocol::error::ResponseError::FencedLeaderEpoch.code(),
                        end: None,
                    },
                ],
            }),
        ]
    }

    fn fetched(partition: i32, records: RawRange, diverging: Option<EpochEndOffset>) -> FetchedPartition {
        FetchedPartition {
            topic_id: TOPIC,
            partition,
            error_code: NO_ERROR,
            high_watermark: 100 + partition as u64,
            log_start_offset: 3,
            log_end_offset: 200,
            diverging_epoch: diverging,
            records,
        }
    }

    /// A fetch response over three partitions (two with batches, one diverging) and its raw pieces.
    fn fetch_response() -> (Message, Vec<Bytes>) {
        let mut raw = RawSection::default();
        let a = raw.push_partition([Bytes::from(vec![1u8; 61]), Bytes::from(vec![2u8; 7])]).unwrap();
        let b = raw.push_partition(Vec::<Bytes>::new()).unwrap();
        let c = raw.push_partition([Bytes::from((0..=255u8).collect::<Vec<_>>())]).unwrap();
        assert_eq!((a, b, c.offset), (RawRange { offset: 0, len: 68 }, RawRange { offset: 68, len: 0 }, 68));
        let msg = Message::ReplicaFetchResponse(ReplicaFetchResponse {
            partitions: vec![
                fetched(0, a, None),
                fetched(1, b, Some(EpochEndOffset { epoch: 4, end_offset: 90 })),
                fetched(2, c, None),
            ],
        });
        (msg, raw.into_pieces())
    }

    fn frame_bytes(corr: u32, msg: &Message, raw: &[Bytes]) -> Vec<u8> {
        encode(corr, msg, raw).unwrap().concat()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
        let mut d = FrameDecoder::new(MAX_FRAME_BYTES);
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        d.finish()?;
        Ok(out)
    }

    /// A frame with a valid CRC over arbitrary header fields and content.
    fn forged(version: u16, kind: u16, meta: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC.to_le_bytes());
        f.extend_from_slice(&version.to_le_bytes());
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&77u32.to_le_bytes());
        f.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        f.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&f), meta), raw);
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(meta);
        f.extend_from_slice(raw);
        f
    }

    #[test]
    fn every_message_round_trips() {
        let (resp, raw) = fetch_response();
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, m) in samples().into_iter().enumerate() {
            stream.extend(frame_bytes(i as u32, &m, &[]));
            expected.push((i as u32, m));
        }
        stream.extend(frame_bytes(99, &resp, &raw));
        expected.push((99, resp));
        let frames = decode_all(&stream).unwrap();
        assert_eq!(frames.len(), expected.len());
        for (f, (corr, m)) in frames.iter().zip(&expected) {
            assert_eq!(f.correlation_id, *corr);
            assert_eq!(&f.message, m);
        }
        let covered: Vec<MessageKind> = expected.iter().map(|(_, m)| m.kind()).collect();
        for k in MessageKind::ALL {
            assert!(covered.contains(&k), "{k:?} not covered");
            assert_eq!(MessageKind::from_code(k as u16), Some(k));
        }
        assert_eq!(partition_error(NO_ERROR), None);
        assert_eq!(partition_error(74), Some(kafka_protocol::error::ResponseError::FencedLeaderEpoch));
    }

    #[test]
    fn raw_batches_are_slices_of_the_received_buffer() {
        let (msg, raw) = fetch_response();
        let frames = decode_all(&frame_bytes(1, &msg, &raw)).unwrap();
        let f = &frames[0];
        let whole = f.as_bytes().as_ptr_range();
        let parts = f.fetched();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[0].1[..], &[&[1u8; 61][..], &[2u8; 7][..]].concat()[..]);
        assert!(parts[1].1.is_empty());
        assert_eq!(parts[1].0.diverging_epoch, Some(EpochEndOffset { epoch: 4, end_offset: 90 }));
        assert_eq!(&parts[2].1[..], &(0..=255u8).collect::<Vec<_>>()[..]);
        for (_, b) in parts.iter().filter(|(_, b)| !b.is_empty()) {
            let p = b.as_ptr_range();
            assert!(whole.start <= p.start && p.end <= whole.end, "records were copied");
        }
        // The raw section is the tail of the frame, and each range lands where the sender put it.
        let raw_all = f.raw();
        assert_eq!(raw_all.as_ptr_range().end, whole.end);
        assert_eq!(parts[2].1.as_ptr(), raw_all[68..].as_ptr());
        assert_eq!(f.raw_slice(RawRange { offset: 324, len: 1 }), None);
        // `encode_head` + the sender's own pieces is the same frame as `encode`.
        let head = encode_head(1, &msg, &raw).unwrap();
        let mut by_parts = head.to_vec();
        for p in &raw {
            by_parts.extend_from_slice(p);
        }
        assert_eq!(by_parts, frame_bytes(1, &msg, &raw));
    }

    #[test]
    fn byte_by_byte_delivery() {
        let (resp, raw) = fetch_response();
        let mut stream = frame_bytes(5, &resp, &raw);
        for m in samples() {
            stream.extend(frame_bytes(6, &m, &[]));
        }
        let mut d = FrameDecoder::new(MAX_FRAME_BYTES);
        let mut frames = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            assert!(d.missing().is_ok(), "header refused at byte {i}");
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(frames.len(), 1 + samples().len());
        assert_eq!(frames[0].message, resp);
        assert_eq!(frames[0].fetched()[2].1.len(), 256);
        assert_eq!(d.missing().unwrap(), HEADER_BYTES);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (resp, raw) = fetch_response();
        let mut msgs: Vec<(Message, Vec<Bytes>)> = samples().into_iter().map(|m| (m, Vec::new())).collect();
        msgs.push((resp, raw));
        for (m, raw) in msgs {
            let good = frame_bytes(3, &m, &raw);
            for bit in 0..good.len() * 8 {
                let mut bad = good.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                if let Ok(frames) = decode_all(&bad) {
                    panic!("{:?}: flip of bit {bit} undetected: {frames:?}", m.kind());
                }
            }
        }
    }

    #[test]
    fn truncated_frames_are_incomplete_then_an_error_at_end_of_stream() {
        let (resp, raw) = fetch_response();
        let good = frame_bytes(3, &resp, &raw);
        for cut in 1..good.len() {
            let mut d = FrameDecoder::new(MAX_FRAME_BYTES);
            d.push(&good[..cut]);
            assert!(d.next_frame().unwrap().is_none(), "cut at {cut}");
            assert!(d.missing().unwrap() >= 1);
            assert_eq!(d.finish(), Err(WireError::Truncated { buffered: cut }));
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let mut d = FrameDecoder::new(1 << 20);
        let mut header = forged(PROTOCOL_VERSION, MessageKind::ReplicaFetchResponse as u16, &[], &[]);
        header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        d.push(&header);
        assert!(matches!(d.next_frame(), Err(WireError::FrameTooLarge { limit: 1_048_576, .. })));
        assert!(d.buffer_mut().capacity() < 4096, "reserved room for a refused frame");
        let mut d = FrameDecoder::new(usize::MAX);
        let mut header = forged(PROTOCOL_VERSION, MessageKind::Hello as u16, &[], &[]);
        header[12..16].copy_from_slice(&(MAX_METADATA_BYTES as u32 + 1).to_le_bytes());
        d.push(&header);
        assert!(matches!(d.missing(), Err(WireError::MetadataTooLarge { .. })));
        // Just under the limit is fine (waits for the rest).
        let (resp, raw) = fetch_response();
        let good = frame_bytes(3, &resp, &raw);
        let mut d = FrameDecoder::new(good.len());
        d.push(&good);
        assert!(d.next_frame().unwrap().is_some());
        let mut d = FrameDecoder::new(good.len() - 1);
        d.push(&good[..HEADER_BYTES]);
        assert!(matches!(d.next_frame(), Err(WireError::FrameTooLarge { .. })));
        // The encoder refuses what no decoder would take.
        let mut section = RawSection::default();
        let big = Bytes::from(vec![0u8; MAX_FRAME_BYTES / 2 + 1]);
        section.push_partition([big.clone()]).unwrap();
        assert!(matches!(section.push_partition([big]), Err(WireError::FrameTooLarge { .. })));
        assert_eq!(section.pieces().len(), 1, "a refused partition adds nothing");
    }

    #[test]
    fn unknown_version_kind_and_magic() {
        let meta = encode_metadata(&samples()[1]).unwrap();
        assert_eq!(
            decode_all(&forged(2, MessageKind::HelloAck as u16, &meta, &[])).unwrap_err(),
            WireError::UnsupportedVersion(2)
        );
        assert_eq!(decode_all(&forged(PROTOCOL_VERSION, 99, &meta, &[])).unwrap_err(), WireError::UnknownKind(99));
        let frames = decode_all(&forged(PROTOCOL_VERSION, MessageKind::HelloAck as u16, &meta, &[])).unwrap();
        assert_eq!(frames[0].message, samples()[1]);
        let mut bad = forged(PROTOCOL_VERSION, MessageKind::HelloAck as u16, &meta, &[]);
        bad[0] = b'X';
        assert!(matches!(decode_all(&bad), Err(WireError::BadMagic(_))));
        // Metadata of another kind, or garbage, with a valid CRC: bytecheck refuses it.
        let fetch_meta = encode_metadata(&samples()[2]).unwrap();
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::Hello as u16, &fetch_meta, &[])),
            Err(WireError::InvalidMetadata { kind: MessageKind::Hello, .. })
        ));
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::ReplicaFetch as u16, &[0xa5; 40], &[])),
            Err(WireError::InvalidMetadata { .. })
        ));
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::Hello as u16, &[], &[])),
            Err(WireError::InvalidMetadata { .. })
        ));
    }

    #[test]
    fn ranges_outside_the_raw_section_are_refused() {
        let (msg, raw) = fetch_response();
        let Message::ReplicaFetchResponse(mut r) = msg else { unreachable!() };
        // Encoder: a range past the pieces it is given.
        r.partitions[2].records.len += 1;
        let bad = Message::ReplicaFetchResponse(r.clone());
        assert_eq!(
            encode(1, &bad, &raw).unwrap_err(),
            WireError::RangeOutOfBounds { offset: 68, len: 257, raw_len: 324 }
        );
        // Decoder: the same message forged with a valid CRC, and one whose range overflows u32.
        let meta = encode_metadata(&bad).unwrap();
        let raw_bytes = raw.concat();
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::ReplicaFetchResponse as u16, &meta, &raw_bytes)),
            Err(WireError::RangeOutOfBounds { .. })
        ));
        r.partitions[2].records = RawRange { offset: u32::MAX, len: u32::MAX };
        let meta = encode_metadata(&Message::ReplicaFetchResponse(r)).unwrap();
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::ReplicaFetchResponse as u16, &meta, &raw_bytes)),
            Err(WireError::RangeOutOfBounds { .. })
        ));
        // Raw bytes on a message that has no ranges.
        assert_eq!(
            encode(1, &samples()[0], &raw).unwrap_err(),
            WireError::UnexpectedRaw { kind: MessageKind::Hello, len: 324 }
        );
        let meta = encode_metadata(&samples()[0]).unwrap();
        assert!(matches!(
            decode_all(&forged(PROTOCOL_VERSION, MessageKind::Hello as u16, &meta, b"xyz")),
            Err(WireError::UnexpectedRaw { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random fetch responses, delivered in random chunks, come back equal and zero-copy.
        #[test]
        fn fetch_responses_survive_any_chunking(
            parts in proptest::collection::vec((proptest::collection::vec(0usize..300, 0..4), proptest::option::of((0i32..100, 0u64..1_000_000))), 0..12),
            chunk in 1usize..200,
            corr in proptest::prelude::any::<u32>(),
        ) {
            let mut section = RawSection::default();
            let mut partitions = Vec::new();
            let mut expected = Vec::new();
            for (i, (lens, div)) in parts.iter().enumerate() {
                let batches: Vec<Bytes> = lens.iter().enumerate().map(|(j, &n)| Bytes::from(vec![(i * 7 + j) as u8; n])).collect();
                expected.push(batches.concat());
                let range = section.push_partition(batches).unwrap();
                let div = div.map(|(epoch, end_offset)| EpochEndOffset { epoch, end_offset });
                partitions.push(fetched(i as i32, range, div));
            }
            let msg = Message::ReplicaFetchResponse(ReplicaFetchResponse { partitions });
            let bytes = encode(corr, &msg, section.pieces()).unwrap().concat();
            let mut d = FrameDecoder::new(MAX_FRAME_BYTES);
            let mut frames = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            d.finish().unwrap();
            proptest::prop_assert_eq!(frames.len(), 1);
            proptest::prop_assert_eq!(frames[0].correlation_id, corr);
            proptest::prop_assert_eq!(&frames[0].message, &msg);
            let got: Vec<Vec<u8>> = frames[0].fetched().into_iter().map(|(_, b)| b.to_vec()).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
