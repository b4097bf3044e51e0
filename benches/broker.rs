//! Broker throughput on loopback, 1 core vs 2 cores: produce (1 KiB records in 16 KiB batches,
//! acks=1, and acks=all with `flush.messages=1`, i.e. fsync per batch with group commit) and fetch
//! (a 64 MiB topic read from offset 0). The client is a lean pipelined Kafka client on
//! kafka-protocol (4 connections, 8 requests in flight each) running on the same 2-vCPU machine, so
//! it competes with the broker for CPU: read the figures as this machine's, not the broker's ceiling.
//! `SLUICE_BENCH_BINARY=path` runs the same client against another broker build (before/after).

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice::admin_client::AdminClient;

const PARTITIONS: i32 = 4;
const CONNECTIONS: usize = 4;
const WINDOW: usize = 8;
const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;
const FETCH_TOPIC_BYTES: usize = 64 << 20;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

struct Broker {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(cores: usize) -> Broker {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
        std::fs::create_dir_all(&root).expect("bench data dir");
        let dir = tempfile::tempdir_in(&root).expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        // SLUICE_BENCH_BINARY: another build of the broker (a before/after comparison, same client).
        let binary = std::env::var_os("SLUICE_BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_sluice").into());
        let child = Command::new(binary)
            .args(["serve", "--cores", &cores.to_string(), "--listen", &addr, "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start sluice");
        let deadline = Instant::now() + Duration::from_secs(20);
        while AdminClient::connect(&addr).and_then(|mut c| c.metadata(None)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, addr, _dir: dir }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame<R: Request>(req: &R, version: i16) -> Bytes {
    sluice_client::frame::encode_request(req, version, 1, "bench").expect("request frame")
}

fn read_response(s: &mut TcpStream) -> Bytes {
    sluice_client::frame::read_frame(s, sluice_client::frame::MAX_FRAME_BYTES, "the broker").expect("response")
}

fn batch() -> Bytes {
    let records: Vec<Record> = (0..RECORDS_PER_BATCH)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![b'x'; RECORD_BYTES])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &opts).expect("batch");
    buf.freeze()
}

fn produce_frames(topic: &str, acks: i16) -> Vec<Bytes> {
    let b = batch();
    (0..PARTITIONS)
        .map(|p| {
            let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(b.clone()))]),
            ]);
            frame(&req, PRODUCE_VERSION)
        })
        .collect()
}

/// Sends `total` produce requests over CONNECTIONS connections, WINDOW in flight on each.
fn produce(addr: &str, frames: &[Bytes], total: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CONNECTIONS {
            let share = total / CONNECTIONS as u64 + u64::from((c as u64) < total % CONNECTIONS as u64);
            let frame = frames[c % frames.len()].clone();
            s.spawn(move || {
                let mut conn = TcpStream::connect(addr).expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                let (mut sent, mut acked) = (0u64, 0u64);
                while acked < share {
                    while sent < share && sent - acked < WINDOW as u64 {
                        conn.write_all(&frame).expect("send");
                        sent += 1;
                    }
                    let mut r = read_response(&mut conn);
                    let _ = ResponseHeader::decode(&mut r, 1).expect("header");
                    acked += 1;
                }
            });
        }
    });
    start.elapsed()
}

/// Reads every partition from offset 0 to its end; returns elapsed time and record bytes seen.
fn fetch_all(addr: &str, topic: &str, ends: &[i64]) -> (Duration, usize) {
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PARTITIONS)
            .map(|p| {
                let end = ends[p as usize];
                s.spawn(move || {
                    let mut conn = TcpStream::connect(addr).expect("connect");
                    let (mut offset, mut bytes) = (0i64, 0usize);
                    while offset < end {
                        let req =
                            FetchRequest::default().with_max_wait_ms(0).with_max_bytes(8 << 20).with_topics(vec![
                                FetchTopic::default()
                                    .with_topic(TopicName(StrBytes::from_string(topic.into())))
                                    .with_partitions(vec![FetchPartition::default()
                                        .with_partition(p)
                                        .with_fetch_offset(offset)
                                        .with_partition_max_bytes(1 << 20)]),
                            ]);
                        conn.write_all(&frame(&req, FETCH_VERSION)).expect("send");
                        let mut r = read_response(&mut conn);
                        let _ =
                            ResponseHeader::decode(&mut r, FetchResponse::header_version(FETCH_VERSION)).expect("hdr");
                        let resp = FetchResponse::decode(&mut r, FETCH_VERSION).expect("fetch response");
                        let part = &resp.responses[0].partitions[0];
                        assert_eq!(part.error_code, 0);
                        let recs = part.records.clone().unwrap_or_default();
                        bytes += recs.len();
                        // Advance past the last whole batch (each holds RECORDS_PER_BATCH offsets).
                        let mut at = 0usize;
                        while at + 12 <= recs.len() {
                            let base = i64::from_be_bytes(recs[at..at + 8].try_into().expect("8 bytes"));
                            let len = i32::from_be_bytes(recs[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
                            at += 12 + len;
                            offset = base + RECORDS_PER_BATCH as i64;
                        }
                    }
                    bytes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("fetcher")).sum()
    });
    (start.elapsed(), total)
}

fn broker(c: &mut Criterion) {
    let batch_bytes = batch().len() as u64;
    for cores in [1usize, 2] {
        let b = Broker::start(cores);
        let mut admin = AdminClient::connect(&b.addr).expect("admin");
        admin.create_topic("plain", PARTITIONS, &[]).expect("create");
        admin.create_topic("synced", PARTITIONS, &[("flush.messages".into(), "1".into())]).expect("create");
        admin.create_topic("readme", PARTITIONS, &[]).expect("create");
        let mut g = c.benchmark_group(format!("broker/{cores}core"));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Bytes(batch_bytes));
        let plain = produce_frames("plain", 1);
        g.bench_function("produce_16KiB_acks1", |bch| bch.iter_custom(|iters| produce(&b.addr, &plain, iters)));
        let synced = produce_frames("synced", -1);
        g.bench_function("produce_16KiB_acksall_fsync", |bch| {
            bch.iter_custom(|iters| produce(&b.addr, &synced, iters))
        });
        // Fill the fetch topic once, then read it whole per iteration.
        let requests = (FETCH_TOPIC_BYTES as u64 / batch_bytes).next_multiple_of(PARTITIONS as u64);
        produce(&b.addr, &produce_frames("readme", 1), requests);
        let per_partition = (requests / PARTITIONS as u64) as i64 * RECORDS_PER_BATCH as i64;
        let ends = vec![per_partition; PARTITIONS as usize];
        let (_, bytes) = fetch_all(&b.addr, "readme", &ends);
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function("fetch_64MiB_topic", |bch| {
            bch.iter_custom(|iters| (0..iters).map(|_| fetch_all(&b.addr, "readme", &ends).0).sum())
        });
        g.finish();
    }
}

criterion_group!(benches, broker);
criterion_main!(benches);
