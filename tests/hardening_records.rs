//! Issue 13, items 1–3 and 10: what a produced batch must be before the broker stores it. Each test
//! sends batches a careless or hostile client could send (a header that lies about its records,
//! undefined codecs, garbage varints, control or transactional bits, a decompression bomb, legacy
//! magic) straight over the wire, checks Kafka's error code, that nothing was written, and that a
//! real consumer (librdkafka) then reads the partition from offset 0 to its end without an error.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use common::cluster::call;
use common::{unique_topic, Broker};
use sluice_client::batch::forge::{
    forge, set_i32, ATTRIBUTES_LOW, HEADER_LEN, LAST_OFFSET_DELTA, PRODUCER_ID, RECORDS_COUNT,
};
use sluice_client::requests::{self, NewTopic};
use sluice_client::BatchBuilder;

const PRODUCE_VERSION: i16 = 9;
const NONE: i16 = 0;
const CORRUPT_MESSAGE: i16 = 2;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
const INVALID_TXN_STATE: i16 = 48;
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
const INVALID_RECORD: i16 = 87;
const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn create_topic(addr: SocketAddr, topic: &str, configs: &[(&str, &str)]) {
    let spec = NewTopic { name: topic, partitions: 1, replication_factor: -1, configs };
    let created = call(addr, &requests::create_topics(&[spec], 10_000), 5).expect("CreateTopics answered");
    assert_eq!(created.topics[0].error_code, NONE, "{:?}", created.topics[0].error_message);
}

/// One Produce of `records` to partition 0: (error code, base offset, error message).
fn produce_at(addr: SocketAddr, topic: &str, records: Bytes, version: i16) -> (i16, i64, String) {
    let response = call(addr, &requests::produce(topic, 0, records, 1, 10_000), version).expect("Produce answered");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset, p.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
}

fn produce(addr: SocketAddr, topic: &str, records: Bytes) -> (i16, i64, String) {
    produce_at(addr, topic, records, PRODUCE_VERSION)
}

/// An honest batch of `values` (keyed `k<i>`) with `compression`.
fn batch(values: &[&str], compression: Compression) -> Bytes {
    let mut batch = BatchBuilder::new(compression);
    for (i, v) in values.iter().enumerate() {
        batch.push(common::now_ms(), Some(Bytes::from(format!("k{i}"))), Some(Bytes::copy_from_slice(v.as_bytes())));
    }
    batch.build().expect("encode batch")
}

/// Every record of partition 0 read with librdkafka from the beginning: (offset, value). Fails on
/// any consumer error (a poison pill makes librdkafka report one forever).
fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("rdkafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("assignment");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    while got.len() < expected {
        assert!(Instant::now() < deadline, "{} of {expected} records read: {got:?}", got.len());
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                got.push((m.offset(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()))
            }
            Some(Err(e)) => panic!("consumer error after {} records: {e}", got.len()),
        }
    }
    got
}

#[test]
fn a_batch_whose_header_lies_about_its_records_is_refused_and_offsets_stay_dense() {
    let broker = Broker::start();
    let topic = unique_topic("lying");
    create_topic(broker.addr(), &topic, &[]);
    let three = batch(&["a", "b", "c"], Compression::None);

    // Header: one record, last offset delta 0; inside: three records.
    let fewer = forge(&three, |b| {
        set_i32(b, LAST_OFFSET_DELTA, 0);
        set_i32(b, RECORDS_COUNT, 1);
    });
    let (code, _, message) = produce(broker.addr(), &topic, fewer);
    assert_eq!(code, INVALID_RECORD, "{message}");
    // Header: 2^31 - 1 records; inside: one.
    let one = batch(&["x"], Compression::None);
    let huge = forge(&one, |b| {
        set_i32(b, LAST_OFFSET_DELTA, i32::MAX - 1);
        set_i32(b, RECORDS_COUNT, i32::MAX);
    });
    for _ in 0..3 {
        let (code, _, message) = produce(broker.addr(), &topic, huge.clone());
        assert_eq!(code, INVALID_RECORD, "{message}");
    }
    // Count and last offset delta disagree.
    let mismatch = forge(&three, |b| set_i32(b, RECORDS_COUNT, 2));
    assert_eq!(produce(broker.addr(), &topic, mismatch).0, INVALID_RECORD);
    // Two batches in one partition's data (Kafka: exactly one per partition).
    let two = Bytes::from([&three[..], &one[..]].concat());
    assert_eq!(produce(broker.addr(), &topic, two).0, INVALID_RECORD);

    // Nothing was written: the next honest batch starts at offset 0, and a consumer sees 0, 1, 2.
    let (code, base, message) = produce(broker.addr(), &topic, three);
    assert_eq!((code, base), (NONE, 0), "{message}");
    let got = read_all(&broker.bootstrap(), &topic, 3);
    assert_eq!(got, vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);
}

#[test]
fn poison_pills_are_refused_with_kafkas_codes_and_consumers_read_past_nothing() {
    let broker = Broker::start();
    let topic = unique_topic("poison");
    create_topic(broker.addr(), &topic, &[]);
    let addr = broker.addr();
    let good = batch(&["v0", "v1"], Compression::None);

    let undefined_codec = forge(&good, |b| b[ATTRIBUTES_LOW] |= 7);
    assert_eq!(produce(addr, &topic, undefined_codec).0, CORRUPT_MESSAGE);
    let mut gzip_over_noise = good.to_vec();
    for (i, byte) in gzip_over_noise[HEADER_LEN..].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(167).wrapping_add(13);
    }
    let gzip_over_noise = forge(&Bytes::from(gzip_over_noise), |b| b[ATTRIBUTES_LOW] |= 1);
    assert_eq!(produce(addr, &topic, gzip_over_noise).0, CORRUPT_MESSAGE);
    let garbage_varints = forge(&good, |b| b[HEADER_LEN..HEADER_LEN + 12].fill(0xff));
    assert_eq!(produce(addr, &topic, garbage_varints).0, INVALID_RECORD);
    let control = forge(&good, |b| b[ATTRIBUTES_LOW] |= 0x20);
    let (code, _, message) = produce(addr, &topic, control);
    assert_eq!(code, INVALID_RECORD, "{message}");
    assert!(message.contains("control"), "{message}");
    let transactional = forge(&good, |b| b[ATTRIBUTES_LOW] |= 0x10);
    assert_eq!(produce(addr, &topic, transactional).0, INVALID_RECORD);
    let transactional_with_pid = forge(&good, |b| {
        b[ATTRIBUTES_LOW] |= 0x10;
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&1000i64.to_be_bytes());
        b[53..57].copy_from_slice(&0i32.to_be_bytes());
    });
    assert_eq!(produce(addr, &topic, transactional_with_pid).0, INVALID_TXN_STATE);
    let producer_id_without_sequence =
        forge(&good, |b| b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&1000i64.to_be_bytes()));
    assert_eq!(produce(addr, &topic, producer_id_without_sequence).0, INVALID_RECORD);
    // zstd needs Produce v7+ (KIP-110).
    let zstd = batch(&["z"], Compression::Zstd);
    assert_eq!(produce_at(addr, &topic, zstd, 6).0, UNSUPPORTED_COMPRESSION_TYPE);
    // Message format v0: offset, size, crc, magic 0, attributes, key, value (shorter than a v2 header).
    let mut v0 = Vec::new();
    v0.extend_from_slice(&0i64.to_be_bytes());
    v0.extend_from_slice(&14i32.to_be_bytes());
    v0.extend_from_slice(&0u32.to_be_bytes());
    v0.extend_from_slice(&[0, 0]);
    v0.extend_from_slice(&(-1i32).to_be_bytes());
    v0.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(produce(addr, &topic, Bytes::from(v0)).0, UNSUPPORTED_FOR_MESSAGE_FORMAT);

    // Honest batches of every codec go in after all that, from offset 0, and read back cleanly.
    let mut expected = Vec::new();
    for (i, c) in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        let (code, base, message) = produce(addr, &topic, batch(&[&format!("c{i}")], c));
        assert_eq!((code, base), (NONE, i as i64), "{c:?}: {message}");
        expected.push((i as i64, format!("c{i}")));
    }
    assert_eq!(read_all(&broker.bootstrap(), &topic, expected.len()), expected);
}

#[test]
fn clients_cannot_write_the_offsets_topic() {
    let broker = Broker::start();
    // Make the coordinator create __consumer_offsets, then try to append to it directly.
    let probe = unique_topic("probe");
    create_topic(broker.addr(), &probe, &[]);
    let (code, _, message) = produce(broker.addr(), "__consumer_offsets", batch(&["x"], Compression::None));
    assert_eq!(code, INVALID_TOPIC_EXCEPTION, "{message}");
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A zstd batch whose records expand to `records` × 1 MiB of zeros, keyed: a few hundred KiB on the
/// wire. Built streaming, so the test itself never holds the expanded form.
fn zstd_bomb(records: usize) -> Bytes {
    const VALUE: usize = 1 << 20;
    let mut section = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    let zeros = vec![0u8; VALUE];
    for i in 0..records {
        let mut head = Vec::new();
        let key = b"bomb";
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, i as i64); // offset delta
        varint(&mut body, key.len() as i64);
        body.extend_from_slice(key);
        varint(&mut body, VALUE as i64);
        let tail_len = 1; // header count
        varint(&mut head, (body.len() + VALUE + tail_len) as i64);
        section.write_all(&head).and_then(|_| section.write_all(&body)).expect("compress");
        section.write_all(&zeros).expect("compress");
        section.write_all(&[0]).expect("compress"); // no headers
    }
    let section = section.finish().expect("zstd finish");
    let n = records as i32;
    let mut b = Vec::with_capacity(HEADER_LEN + section.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - 12 + section.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&4i16.to_be_bytes()); // zstd
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&common::now_ms().to_be_bytes());
    b.extend_from_slice(&common::now_ms().to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&section);
    forge(&b, |_| {})
}

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[test]
fn a_decompression_bomb_on_a_compacted_topic_is_refused_within_a_bounded_memory() {
    let broker = Broker::start();
    let pid = broker.pid();
    let topic = unique_topic("bomb");
    create_topic(broker.addr(), &topic, &[("cleanup.policy", "compact")]);
    let (code, _, message) = produce(broker.addr(), &topic, batch(&["before"], Compression::Zstd));
    assert_eq!(code, NONE, "{message}");
    let before_kib = peak_rss_kib(pid);

    // 1 GiB of records in a few hundred KiB (the 4 GiB bomb behaves the same: the walk
    // stops at the cap, whatever the claim).
    let bomb = zstd_bomb(1024);
    assert!(bomb.len() < 1 << 20, "bomb of {} bytes", bomb.len());
    let began = Instant::now();
    let (code, _, message) = produce(broker.addr(), &topic, bomb);
    let took = began.elapsed();
    assert_eq!(code, CORRUPT_MESSAGE, "{message}");
    assert!(message.contains("limit"), "{message}");
    let after_kib = peak_rss_kib(pid);
    println!("bomb refused in {took:?}: peak RSS {before_kib} KiB before, {after_kib} KiB after");
    // The walk holds a 64 KiB read buffer and a zstd window of at most 16 MiB.
    assert!(after_kib < before_kib + 48 * 1024, "peak RSS grew from {before_kib} to {after_kib} KiB");

    // Nothing was written; the partition goes on.
    let (code, base, message) = produce(broker.addr(), &topic, batch(&["after"], Compression::Zstd));
    assert_eq!((code, base), (NONE, 1), "{message}");
}
