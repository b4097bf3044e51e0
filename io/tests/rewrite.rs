//! Segment rewrites (the engine's half of log compaction), beyond what the model test covers: a
//! rewrite abandoned by a crash leaves its partial file, which the next open removes while the
//! original stays; a rewrite whose segment retention deleted meanwhile is refused; an emptied first
//! segment stays (so the log start does not move) and an emptied later one goes, and reads step
//! over both, before and after a reopen without index files.

mod common;

use common::{batch, path_of, read_all, run, temp_dir};
use sluice_io::{Log, LogConfig, REWRITE_SUFFIX};

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 8 * 1024, index_interval_bytes: 1024, tail_cache_bytes: 0, ..LogConfig::default() }
}

/// Appends `n` one-record batches of 1000 bytes with timestamps from `ts0`; they fill several
/// 8 KiB segments.
async fn fill(log: &Log, n: u64, ts0: i64) {
    for i in 0..n {
        log.append(batch(i, 1000, 1, ts0 + i as i64)).await.expect("append");
    }
}

#[test]
fn abandoned_rewrite_is_removed_at_open_and_the_original_stays() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        let log = Log::open(&path, cfg()).await.unwrap();
        fill(&log, 30, 0).await;
        let before = read_all(&log, 0).await;
        let first = log.sealed_segments()[0];
        let mut rw = log.rewrite_segment(first.base).await.unwrap();
        let kept = &before[1];
        rw.push(kept.header.base_offset, 1, kept.header.max_timestamp, &kept.payload).await.unwrap();
        // A crash before the commit: the partial file stays behind (forget skips the clean-up).
        std::mem::forget(rw);
        log.clone().abandon().await.unwrap();
        let leftover = path.join(format!("{:020}.log{REWRITE_SUFFIX}", first.base));
        assert!(leftover.exists(), "the partial rewrite is on disk");

        let log = Log::open(&path, cfg()).await.unwrap();
        assert!(!leftover.exists(), "open removes an unfinished rewrite");
        let after = read_all(&log, 0).await;
        assert_eq!(after.len(), before.len());
        assert!(after.iter().zip(&before).all(|(a, b)| a.header == b.header && a.payload[..] == b.payload[..]));
        log.close().await.unwrap();
    });
}

#[test]
fn rewrite_of_a_segment_deleted_by_retention_is_refused() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        let log = Log::open(&path, LogConfig { retention_ms: Some(1), ..cfg() }).await.unwrap();
        fill(&log, 30, 0).await;
        let first = log.sealed_segments()[0];
        let rw = log.rewrite_segment(first.base).await.unwrap();
        assert!(log.apply_retention(1_000_000).await.unwrap() > 0);
        assert!(!log.commit_rewrite(rw).await.unwrap(), "the original is gone: nothing to swap");
        assert!(log.log_start_offset() > first.base);
        let leftovers = std::fs::read_dir(&path)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(REWRITE_SUFFIX))
            .count();
        assert_eq!(leftovers, 0, "a refused rewrite leaves no file");
        log.close().await.unwrap();
    });
}

#[test]
fn emptied_segments_are_stepped_over_and_survive_a_reopen_without_indexes() {
    let dir = temp_dir();
    let path = path_of(&dir);
    run(move || async move {
        let log = Log::open(&path, cfg()).await.unwrap();
        fill(&log, 40, 0).await;
        let sealed = log.sealed_segments();
        assert!(sealed.len() >= 3, "{sealed:?}");
        // Empty the first two segments entirely.
        for seg in &sealed[..2] {
            let rw = log.rewrite_segment(seg.base).await.unwrap();
            assert!(log.commit_rewrite(rw).await.unwrap());
        }
        let bases = log.segment_bases();
        assert!(bases.contains(&sealed[0].base), "the emptied first segment stays: {bases:?}");
        assert!(!bases.contains(&sealed[1].base), "an emptied later segment goes: {bases:?}");
        assert_eq!(log.log_start_offset(), 0);
        let check = |got: Vec<sluice_io::StoredBatch>| {
            assert_eq!(got.first().map(|b| b.header.base_offset), Some(sealed[2].base));
            assert_eq!(got.len() as u64, 40 - sealed[2].base);
        };
        check(read_all(&log, 0).await);
        // A read inside the emptied range starts at the next batch.
        let got = log.read(sealed[1].base + 1, 1).await.unwrap();
        assert_eq!(got[0].header.base_offset, sealed[2].base);
        log.close().await.unwrap();

        // Reopen with every index file gone: they are rebuilt from the (gapped) segments.
        for e in std::fs::read_dir(&path).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "index" || x == "timeindex") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let log = Log::open(&path, cfg()).await.unwrap();
        assert!(log.recovery_report().truncation.is_none(), "{:?}", log.recovery_report());
        assert_eq!((log.log_start_offset(), log.next_offset()), (0, 40));
        check(read_all(&log, 0).await);
        log.close().await.unwrap();
    });
}
