//! Descriptors as a budgeted resource: a log with hundreds of sealed segments holds only its active
//! segment (and its lock) open; sealed segments are opened for reads through the per-core cache,
//! which never holds more than its cap; recovery leaves none open; concurrent reads, truncation
//! into a sealed segment, retention and a compaction rewrite all work with a cap of one file.

mod common;

use std::time::{Duration, Instant};

use common::{batch, path_of, payload, read_all, run, temp_dir};
use sluice_io::{segment_file_stats, set_segment_file_limits, Log, LogConfig, SegmentFileLimits};

/// Batches of `BATCH_BYTES` in 8 KiB segments: seven batches per segment.
const BATCHES: u64 = 1400;
const BATCH_BYTES: usize = 1000;

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 8 * 1024, index_interval_bytes: 1024, tail_cache_bytes: 0, ..LogConfig::default() }
}

fn limits(max_open_files: usize) -> SegmentFileLimits {
    SegmentFileLimits { max_open_files, idle_close_ms: 60_000 }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

async fn fill(log: &Log) {
    for i in 0..BATCHES {
        log.append(batch(i, BATCH_BYTES, 1, i as i64)).await.expect("append");
    }
}

fn check_all(all: &[sluice_io::StoredBatch]) {
    assert_eq!(all.len() as u64, BATCHES);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(b.header.base_offset, i as u64);
        assert_eq!(&b.payload[..], &payload(i as u64, BATCH_BYTES)[..], "batch {i}");
    }
}

#[test]
fn many_sealed_segments_hold_no_descriptors_and_reads_stay_within_the_cap() {
    const CAP: usize = 8;
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        set_segment_file_limits(limits(CAP)).unwrap();
        let log = Log::open(&path, cfg()).await.unwrap();
        fill(&log).await;
        let segments = log.segment_bases().len();
        assert!(segments >= 150, "{segments} segments");
        // Rolling hands each sealed file to the cache, which keeps at most CAP.
        assert!(segment_file_stats().open_files <= CAP, "{:?}", segment_file_stats());
        log.close().await.unwrap();
        assert_eq!(segment_file_stats().open_files, 0, "a closed log leaves nothing in the cache");

        // Recovery scans every segment (no checkpoint vouches for them) and closes the sealed ones.
        std::fs::remove_file(path.join(sluice_io::CHECKPOINT_FILE)).unwrap();
        let before = open_descriptors();
        let log = Log::open(&path, cfg()).await.unwrap();
        assert_eq!(log.recovery_report().batches_verified, BATCHES);
        assert_eq!(segment_file_stats().open_files, 0, "recovery leaves no sealed segment open");
        let opened = open_descriptors().saturating_sub(before);
        assert!(opened <= 4, "after recovery of {segments} segments {opened} more descriptors are open");

        let all = read_all(&log, 0).await;
        check_all(&all);
        let s = segment_file_stats();
        assert!(s.open_files <= CAP && s.opens >= segments as u64 - 1, "{s:?}");
        let peak = open_descriptors().saturating_sub(before);
        // The reads returned by read_all still hold the last files they came from.
        assert!(peak <= 4 + CAP + 1, "{peak} descriptors while reading through a cache of {CAP}");
        drop(all);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_reads_with_a_cap_of_one_file_all_succeed() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        set_segment_file_limits(limits(1)).unwrap();
        let log = Log::open(&path, cfg()).await.unwrap();
        fill(&log).await;
        // Every read evicts the file of another read in flight: each keeps its own.
        let readers: Vec<_> = (0..BATCHES)
            .step_by(7)
            .map(|offset| {
                let log = log.clone();
                glommio::spawn_local(async move { (offset, log.read(offset, 1).await) })
            })
            .collect();
        for r in readers {
            let (offset, got) = r.await;
            let got = got.unwrap_or_else(|e| panic!("read at {offset}: {e}"));
            assert_eq!(got[0].header.base_offset, offset);
            assert_eq!(&got[0].payload[..], &payload(offset, BATCH_BYTES)[..]);
        }
        let s = segment_file_stats();
        assert_eq!(s.open_files, 1, "{s:?}");
        assert!(s.evictions > 100, "{s:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_retention_and_rewrite_work_with_a_cap_of_one_file() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        set_segment_file_limits(limits(1)).unwrap();
        let log = Log::open(&path, LogConfig { retention_bytes: Some(100 * 1024), ..cfg() }).await.unwrap();
        fill(&log).await;

        // Truncation into a sealed segment: it becomes the active one and takes appends.
        let cut = 700;
        log.truncate_to(cut).await.unwrap();
        assert_eq!(log.next_offset(), cut);
        let a = log.append(batch(cut, BATCH_BYTES, 1, cut as i64)).await.unwrap();
        assert_eq!(a.base_offset, cut);
        log.roll().await.unwrap();
        let all = read_all(&log, 0).await;
        assert_eq!(all.len() as u64, cut + 1);
        assert_eq!(&all[cut as usize].payload[..], &payload(cut, BATCH_BYTES)[..]);
        drop(all);

        // A rewrite keeping every other batch of the second segment.
        let second = log.sealed_segments()[1];
        let batches = log.read(second.base, 1 << 20).await.unwrap();
        let mut rw = log.rewrite_segment(second.base).await.unwrap();
        for b in batches.iter().step_by(2) {
            rw.push(b.header.base_offset, 1, b.header.max_timestamp, &b.payload).await.unwrap();
        }
        assert!(log.commit_rewrite(rw).await.unwrap());
        let again = log.read(second.base, 1 << 20).await.unwrap();
        assert_eq!(again.len(), batches.iter().step_by(2).count());
        assert!(again.iter().zip(batches.iter().step_by(2)).all(|(a, b)| a.header == b.header));

        // Retention deletes old segments, whose files may be in the cache.
        assert!(log.apply_retention(i64::MAX).await.unwrap() > 0);
        let start = log.log_start_offset();
        assert!(start > 0);
        assert_eq!(read_all(&log, start).await.len() as u64, cut + 1 - start);
        assert!(segment_file_stats().open_files <= 1);
        log.close().await.unwrap();
        assert_eq!(segment_file_stats().open_files, 0);
    });
}

#[test]
fn idle_sealed_files_are_closed() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        set_segment_file_limits(SegmentFileLimits { max_open_files: 64, idle_close_ms: 50 }).unwrap();
        let log = Log::open(&path, cfg()).await.unwrap();
        fill(&log).await;
        drop(read_all(&log, 0).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while segment_file_stats().open_files > 0 {
            assert!(Instant::now() < deadline, "idle files not closed: {:?}", segment_file_stats());
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(segment_file_stats().idle_closes > 0);
        // And opened again when read.
        assert_eq!(log.read(0, 1).await.unwrap()[0].header.base_offset, 0);
        assert_eq!(segment_file_stats().open_files, 1);
        log.close().await.unwrap();
    });
}
