//! Recovery time of a 1 GiB log: `Log::open` after a clean close (checkpoint at the end), and after
//! a crash with a 16 MiB tail written since the last checkpoint (the tail is CRC-verified).
//! Data lives under `target/bench-data` (a real disk, never tmpfs).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use sluice_io::{AppendBatch, Log, LogConfig};

const LOG_BYTES: u64 = 1 << 30;
const BATCH_BYTES: usize = 1 << 20;
const TAIL_BYTES: u64 = 16 << 20;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 128 << 20,
        retention_bytes: Some(LOG_BYTES),
        checkpoint_interval_ms: None,
        ..LogConfig::default()
    }
}

async fn fill(log: &Log, bytes: u64) {
    let payload = Bytes::from(vec![0x5au8; BATCH_BYTES]);
    for _ in 0..bytes / BATCH_BYTES as u64 {
        let b = AppendBatch { record_count: 16, max_timestamp: 0, payload: payload.clone() };
        log.append(b).await.expect("append");
    }
}

fn recovery(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&root).expect("bench data dir");
    let dir = tempfile::tempdir_in(&root).expect("temp dir");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
    let path = dir.path().to_path_buf();
    ex.run(async {
        let log = Log::open(&path, config()).await.expect("open");
        fill(&log, LOG_BYTES).await;
        log.close().await.expect("close");
    });
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    g.bench_function("open_1GiB_clean", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let log = Log::open(&path, config()).await.expect("open");
                    total += t.elapsed();
                    assert_eq!(log.recovery_report().batches_verified, 0);
                    log.close().await.expect("close");
                }
                total
            })
        })
    });
    g.bench_function("open_1GiB_after_crash_16MiB_unverified_tail", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Write a tail past the checkpoint and "crash" (no close, no checkpoint).
                    let log = Log::open(&path, config()).await.expect("open");
                    fill(&log, TAIL_BYTES).await;
                    log.abandon().await.expect("abandon");
                    let t = Instant::now();
                    let log = Log::open(&path, config()).await.expect("open");
                    total += t.elapsed();
                    // Up to the whole tail (less when it crossed a segment roll, which checkpoints).
                    let verified = log.recovery_report().batches_verified;
                    assert!(verified > 0 && verified <= TAIL_BYTES / BATCH_BYTES as u64, "verified {verified}");
                    // Keep the log at ~1 GiB.
                    log.apply_retention(i64::MIN).await.expect("retention");
                    log.close().await.expect("close");
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
