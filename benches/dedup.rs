//! Cost of the idempotent-producer duplicate check on the append path: `Partition::produce` of
//! 16 KiB batches (16 × 1 KiB records) from 16 concurrent tasks, plain batches vs batches of an
//! idempotent producer (consecutive sequences, so every batch is checked and reserved). Durability
//! `Never`, so the check is compared with the cheapest append there is.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice::config::{BrokerConfig, TopicSettings};
use sluice::partition::Partition;

const RECORDS: usize = 16;
const RECORD_BYTES: usize = 1024;
const TASKS: usize = 16;

fn batch(producer_id: i64, base_sequence: i32) -> Bytes {
    let records: Vec<Record> = (0..RECORDS)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: if producer_id >= 0 { 0 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch whenever offset − sequence changes: keep it constant.
            sequence: base_sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![b'x'; RECORD_BYTES])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .expect("batch");
    buf.freeze()
}

fn dedup(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    let dir = tempfile::tempdir_in(&root).expect("temp dir");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
    let mut config = BrokerConfig::default();
    config.log.segment_bytes = 256 << 20;
    config.log.retention_bytes = 512 << 20;
    let settings = TopicSettings::resolve(&config, &[]).expect("settings");
    let plain_dir = dir.path().join("plain-0");
    let idem_dir = dir.path().join("idem-0");
    let (plain, idem) = ex.run(async {
        (
            Partition::open(&plain_dir, "plain", 0, settings.clone()).await.expect("open"),
            Partition::open(&idem_dir, "idem", 0, settings.clone()).await.expect("open"),
        )
    });
    let template = batch(-1, 0);
    sluice::record::batch::produced_batch(&template, 1 << 20).expect("one valid batch");
    let mut next_seq = 0i32;
    let mut g = c.benchmark_group("dedup");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(template.len() as u64));
    let run = |p: &Rc<Partition>, batches: Vec<Bytes>| -> Duration {
        ex.run(async {
            let start = Instant::now();
            let per_task = batches.len().div_ceil(TASKS);
            // Each task appends its chunk in order (in the idempotent case a chunk is exactly one
            // producer's consecutive sequences).
            let mut tasks = Vec::new();
            for chunk in batches.chunks(per_task.max(1)) {
                let (p, chunk) = (p.clone(), chunk.to_vec());
                tasks.push(glommio::spawn_local(async move {
                    for b in chunk {
                        p.produce(&b, sluice::partition::Acks::Leader, std::time::Duration::from_secs(30))
                            .await
                            .expect("produce");
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let _ = p.apply_retention(i64::MIN).await;
            start.elapsed()
        })
    };
    g.bench_function("produce_16KiB_plain", |b| {
        // Distinct buffers, like the idempotent case (the same buffer would stay cache-hot).
        b.iter_custom(|iters| run(&plain, (0..iters).map(|_| Bytes::copy_from_slice(&template)).collect()))
    });
    // Idempotent: one producer per task, each with its own consecutive sequences.
    let mut next_pid = 1000i64;
    g.bench_function("produce_16KiB_idempotent", |b| {
        b.iter_custom(|iters| {
            let per_task = (iters as usize).div_ceil(TASKS).max(1);
            let mut batches = Vec::with_capacity(iters as usize);
            while batches.len() < iters as usize {
                next_pid += 1;
                next_seq = 0;
                for _ in 0..per_task.min(iters as usize - batches.len()) {
                    batches.push(batch(next_pid, next_seq));
                    next_seq += RECORDS as i32;
                }
            }
            run(&idem, batches)
        })
    });
    g.finish();
    ex.run(async {
        plain.close().await.expect("close");
        idem.close().await.expect("close");
    });
}

/// The check alone: one `check_and_reserve` + completion per batch, for 1000 producers in turn.
fn check_only(c: &mut Criterion) {
    use sluice::producer_state::ProducerStates;
    let mut g = c.benchmark_group("dedup");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    let mut states = ProducerStates::default();
    let mut seqs = vec![0i32; 1000];
    let mut i = 0usize;
    let mut offset = 0i64;
    g.bench_function("check_and_reserve", |b| {
        b.iter(|| {
            let pid = i % seqs.len();
            i += 1;
            let r = states.check_and_reserve(pid as i64, 0, seqs[pid], RECORDS as u32, offset, 0);
            let completion = r.ok().expect("in sequence");
            completion.complete(true);
            seqs[pid] += RECORDS as i32;
            offset += RECORDS as i64;
        })
    });
    g.finish();
}

criterion_group!(benches, dedup, check_only);
criterion_main!(benches);
