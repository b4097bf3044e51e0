//! Round trips, byte-by-byte delivery, bit flips, truncation, limits and forged frames of the
//! replication wire format.

use bytes::Bytes;

use super::codec::encode_metadata;
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
            partitions: vec![EpochQuery { topic_id: TOPIC, partition: 4, current_leader_epoch: 9, requested_epoch: 5 }],
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
    assert_eq!(encode(1, &bad, &raw).unwrap_err(), WireError::RangeOutOfBounds { offset: 68, len: 257, raw_len: 324 });
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
