//! Throughput of one compaction pass (`sluice::compaction::clean`) over a fully dirty partition:
//! 32 MiB of sealed 4 MiB segments holding batches of 16 records (100-byte values, keys drawn from
//! 2000), uncompressed and lz4. Each iteration copies a template log directory (not timed), opens it
//! and times the pass: map the keys, rewrite every segment, swap them in. Reported per byte of
//! log before compaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice::config::{BrokerConfig, TopicSettings};
use sluice::record::batch as record_batch;
use sluice_io::Log;

const RECORDS_PER_BATCH: usize = 16;
const VALUE_BYTES: usize = 100;
const KEYS: u64 = 2000;
const LOG_BYTES: u64 = 32 << 20;

fn batch(seq: u64, compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..RECORDS_PER_BATCH)
        .map(|i| {
            let n = seq * RECORDS_PER_BATCH as u64 + i as u64;
            Record {
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
                key: Some(Bytes::from(format!("key-{}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS))),
                value: Some(Bytes::from(format!("{n:>width$}", width = VALUE_BYTES))),
                headers: Default::default(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).expect("batch");
    buf.freeze()
}

fn settings() -> TopicSettings {
    let overrides =
        [("cleanup.policy", "compact"), ("segment.bytes", "4194304")].map(|(k, v)| (k.to_string(), v.to_string()));
    TopicSettings::resolve(&BrokerConfig::default(), &overrides).expect("settings")
}

/// Writes the template log: LOG_BYTES of batches, all sealed. Returns its size in bytes.
async fn write_template(dir: &Path, compression: Compression) -> u64 {
    let log = Log::open(dir, settings().log_config()).await.expect("open");
    let mut seq = 0;
    while log.size_bytes() < LOG_BYTES {
        let b = batch(seq, compression);
        let info = record_batch::parse_header(&b).expect("header");
        log.append_with(info.offset_count(), info.max_timestamp, |base| {
            let (stamped, crc) = record_batch::stamp(&b, &info, base, 0);
            (stamped, Some(crc))
        })
        .await
        .expect("append");
        seq += 1;
    }
    log.roll().await.expect("roll");
    let size = log.size_bytes();
    log.close().await.expect("close");
    size
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for e in std::fs::read_dir(from).expect("template") {
        let e = e.expect("entry");
        if e.file_name() != sluice_io::LOCK_FILE {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

fn compaction(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    let dir = tempfile::tempdir_in(&root).expect("temp dir");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
    let mut g = c.benchmark_group("compaction");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(15));
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let template: PathBuf = dir.path().join(format!("template-{name}"));
        let size = ex.run(write_template(&template, compression));
        g.throughput(Throughput::Bytes(size));
        let mut run = 0u32;
        g.bench_function(format!("pass/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let work = dir.path().join(format!("run-{name}-{run}"));
                    copy_dir(&template, &work);
                    total += ex.run(async {
                        let log = Log::open(&work, settings().log_config()).await.expect("open copy");
                        let start = Instant::now();
                        let stats = sluice::compaction::clean(&log, &settings(), 16 << 20, i64::MAX)
                            .await
                            .expect("clean")
                            .expect("a fully dirty log is compacted");
                        let took = start.elapsed();
                        assert!(stats.records_kept <= KEYS && stats.segments_rewritten > 0, "{stats:?}");
                        log.close().await.expect("close");
                        took
                    });
                    std::fs::remove_dir_all(&work).expect("remove copy");
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, compaction);
criterion_main!(benches);
