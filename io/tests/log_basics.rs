//! Append, read (cache and disk), roll, reopen, timestamp lookup, retention and truncation against
//! real files.

mod common;

use common::*;
use sluice_io::{Durability, Log, LogConfig};

#[test]
fn append_read_round_trip_from_cache_and_disk() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let cfg = LogConfig { tail_cache_bytes: 8 * 1024, ..small_segments() };
        let log = Log::open(&p, cfg).await.unwrap();
        let mut expected = Vec::new();
        for seq in 0..200u64 {
            let len = 1 + (seq as usize * 37) % 3000;
            let count = 1 + (seq % 5) as u32;
            let a = log.append(batch(seq, len, count, 1000 + seq as i64)).await.unwrap();
            assert_eq!(a.last_offset - a.base_offset + 1, u64::from(count));
            expected.push((a.base_offset, payload(seq, len)));
        }
        assert!(log.segment_bases().len() > 1, "64 KiB segments must have rolled");
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), expected.len());
        for (b, (base, p)) in all.iter().zip(&expected) {
            assert_eq!(b.header.base_offset, *base);
            assert_eq!(&b.payload[..], &p[..]);
        }
        // A read in the middle of a batch returns that whole batch first.
        let (base, _) = expected[10];
        let got = log.read(base + 1, 1).await.unwrap();
        assert!((got[0].header.base_offset..=got[0].header.last_offset()).contains(&(base + 1)));
        // Reading at the end is empty; beyond is out of range.
        let end = log.next_offset();
        assert!(log.read(end, 100).await.unwrap().is_empty());
        assert!(log.read(end + 1, 100).await.is_err());
        log.close().await.unwrap();

        let log = Log::open(&p, small_segments()).await.unwrap();
        assert_eq!(log.next_offset(), end);
        assert_eq!(log.recovery_report().truncation, None);
        let again = read_all(&log, 0).await;
        assert_eq!(again.len(), expected.len());
        for (b, (_, p)) in again.iter().zip(&expected) {
            assert_eq!(&b.payload[..], &p[..]);
        }
        // Appends continue after the recovered end, in the reopened active segment.
        let a = log.append(batch(999, 10, 1, 5)).await.unwrap();
        assert_eq!(a.base_offset, end);
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_with_concurrent_appenders() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let cfg = LogConfig { durability: Durability::Always, ..LogConfig::default() };
        let log = Log::open(&p, cfg).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut offs = Vec::new();
                for i in 0..50u64 {
                    let a = log.append(batch(t * 1000 + i, 500, 1, 0)).await.unwrap();
                    offs.push(a.base_offset);
                }
                offs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let offs = t.await;
            assert!(offs.windows(2).all(|w| w[0] < w[1]), "each appender's offsets increase");
            all.extend(offs);
        }
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<u64>>());
        // Group commit: appends queued while a write or sync was in flight shared the next one.
        let stats = log.stats();
        assert_eq!(stats.batches_written, 400);
        assert!(stats.syncs * 2 <= 400 && stats.writes * 2 <= 400, "{stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn periodic_checkpoint_bounds_recovery_after_a_crash() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let cfg = LogConfig { checkpoint_interval_ms: Some(1), ..LogConfig::default() };
        let log = Log::open(&p, cfg).await.unwrap();
        for seq in 0..20u64 {
            log.append(batch(seq, 1000, 1, 0)).await.unwrap();
        }
        // The writer checkpoints on its own once the interval passed after the last write.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !p.join(sluice_io::CHECKPOINT_FILE).exists() {
            assert!(std::time::Instant::now() < deadline, "no periodic checkpoint within 10 s");
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        log.append(batch(20, 1000, 1, 0)).await.unwrap();
        log.abandon().await.unwrap(); // no final sync or checkpoint: a crash as far as files go
        let reopened = Log::open(&p, cfg).await.unwrap();
        let report = reopened.recovery_report().clone();
        assert_eq!(reopened.next_offset(), 21);
        assert!(report.batches_verified < 21, "recovery re-verified the checkpointed batches: {report:?}");
        reopened.close().await.unwrap();
    });
}

#[test]
fn a_log_directory_opens_once() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, LogConfig::default()).await.unwrap();
        let err = Log::open(&p, LogConfig::default()).await.unwrap_err();
        assert!(matches!(err, sluice_io::Error::InUse { .. }), "{err}");
        log.close().await.unwrap();
        // Closed means released, even while the old handle is still in scope.
        let again = Log::open(&p, LogConfig::default()).await.unwrap();
        again.close().await.unwrap();
        assert!(log.append(batch(0, 1, 1, 0)).await.is_err(), "a closed log refuses appends");
    });
}
