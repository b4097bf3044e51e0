//! Segment rolling (size and age), retention (size and age), timestamp lookup, truncation, and
//! a full disk, on real files.

mod common;

use common::*;
use sluice_io::{Durability, Error, Log, LogConfig};

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 8 * 1024, index_interval_bytes: 512, retention_ms: None, ..LogConfig::default() }
}

#[test]
fn rolls_by_size_and_by_age() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, LogConfig { segment_ms: Some(60_000), ..cfg() }).await.unwrap();
        for seq in 0..8u64 {
            log.append(batch(seq, 1000, 1, 1_000)).await.unwrap();
        }
        // 8 frames of 1032 bytes fit in 8 KiB... the 8th does not: one roll.
        assert_eq!(log.segment_bases(), vec![0, 7]);
        // A batch more than segment_ms newer than the active segment's first batch rolls.
        log.append(batch(100, 10, 1, 1_000 + 60_000)).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 7]);
        log.append(batch(101, 10, 1, 1_000 + 60_001)).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 7, 9]);
        // An explicit roll of an empty active segment is a no-op.
        log.roll().await.unwrap();
        log.roll().await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 7, 9, 10]);
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 7, 9, 10]);
        assert_eq!(read_all(&log, 0).await.len(), 10);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_size_and_age_moves_the_log_start() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let conf = LogConfig { retention_bytes: Some(20 * 1024), retention_ms: Some(10_000), ..cfg() };
        let log = Log::open(&p, conf).await.unwrap();
        // 40 batches of ~1 KiB, timestamps 0..40 s: about 6 segments of 7 batches.
        for seq in 0..40u64 {
            log.append(batch(seq, 1000, 1, seq as i64 * 1000)).await.unwrap();
        }
        let before = log.segment_bases();
        assert!(before.len() >= 5, "{before:?}");
        // By size: keep at most 20 KiB (whole segments only, never the active one).
        let now = 40_000; // nothing older than 10 s yet... except segments with max ts < 30 s
        let deleted = log.apply_retention(now).await.unwrap();
        assert!(deleted >= 2, "deleted {deleted}");
        let after = log.segment_bases();
        assert_eq!(&before[deleted as usize..], &after[..]);
        assert_eq!(log.log_start_offset(), after[0]);
        assert!(log.size_bytes() <= 20 * 1024 + 8 * 1024);
        for f in &before[..deleted as usize] {
            assert!(!p.join(format!("{f:020}.log")).exists(), "deleted segment file remains");
        }
        // Reading below the log start is out of range, at it works.
        let start = log.log_start_offset();
        assert!(matches!(log.read(start - 1, 100).await, Err(Error::OffsetOutOfRange { .. })));
        assert_eq!(log.read(start, 100).await.unwrap()[0].header.base_offset, start);
        // By age: far in the future everything but the active segment goes.
        log.apply_retention(1_000_000).await.unwrap();
        assert_eq!(log.segment_bases().len(), 1);
        let start = log.log_start_offset();
        log.close().await.unwrap();
        // The log start survives a reopen.
        let log = Log::open(&p, conf).await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(read_all(&log, start).await.len() as u64, log.next_offset() - start);
        log.close().await.unwrap();
    });
}

#[test]
fn offset_for_timestamp_across_segments() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        // Timestamps rise by 10 per batch except a late batch (out of order timestamps are allowed).
        for seq in 0..60u64 {
            let ts = if seq == 30 { 5 } else { seq as i64 * 10 };
            log.append(batch(seq, 700, 3, ts)).await.unwrap();
        }
        assert!(log.segment_bases().len() > 3);
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some((0, 0)));
        assert_eq!(log.offset_for_timestamp(1).await.unwrap(), Some((3, 10)));
        assert_eq!(log.offset_for_timestamp(295).await.unwrap(), Some((31 * 3, 310)));
        assert_eq!(log.offset_for_timestamp(420).await.unwrap(), Some((42 * 3, 420)));
        assert_eq!(log.offset_for_timestamp(590).await.unwrap(), Some((59 * 3, 590)));
        assert_eq!(log.offset_for_timestamp(591).await.unwrap(), None);
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_across_segments_is_durable() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        for seq in 0..40u64 {
            log.append(batch(seq, 1000, 2, seq as i64)).await.unwrap();
        }
        let segs = log.segment_bases().len();
        // Offset 21 is inside batch 10 (offsets 20, 21): the whole batch goes.
        log.truncate_to(21).await.unwrap();
        assert_eq!(log.next_offset(), 20);
        assert!(log.segment_bases().len() < segs);
        let a = log.append(batch(500, 300, 1, 0)).await.unwrap();
        assert_eq!(a.base_offset, 20);
        log.abandon().await.unwrap(); // crash: no final sync or checkpoint
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.recovery_report().truncation, None);
        assert_eq!(log.next_offset(), 21);
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 11);
        for (seq, b) in all.iter().take(10).enumerate() {
            assert_eq!(&b.payload[..], &payload(seq as u64, 1000)[..]);
        }
        assert_eq!(&all[10].payload[..], &payload(500, 300)[..]);
        log.close().await.unwrap();
        // Truncating below the log start empties the log and restarts it at that offset.
        let log = Log::open(&p, LogConfig { retention_ms: Some(1), ..cfg() }).await.unwrap();
        log.apply_retention(i64::MAX).await.unwrap();
        assert!(log.log_start_offset() > 5);
        log.truncate_to(5).await.unwrap();
        assert_eq!((log.log_start_offset(), log.next_offset(), log.segment_bases()), (5, 5, vec![5]));
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!((log.log_start_offset(), log.next_offset()), (5, 5));
        assert_eq!(log.append(batch(1, 1, 1, 0)).await.unwrap().base_offset, 5);
        log.close().await.unwrap();
    });
}

/// A full disk: appends fail with `DiskFull`, nothing acknowledged is lost, and the log keeps
/// working once there is room again. Needs root for a loop-mounted 8 MiB ext4.
#[test]
fn disk_full_fails_appends_cleanly() {
    let dir = temp_dir();
    let Some(mount) = LoopMount::new(dir.path(), "8M", false) else {
        eprintln!("SKIP disk_full_fails_appends_cleanly: cannot loop-mount an ext4 image here (needs root)");
        return;
    };
    let mnt = mount.mnt.clone();
    // Room to free later, so the test can show the log recovers once space is back.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 1 << 20]).unwrap();
    let logdir = mnt.join("log");
    let conf = LogConfig { segment_bytes: 64 << 20, durability: Durability::Always, ..LogConfig::default() };
    let (acked, err) = run({
        let (logdir, conf, filler) = (logdir.clone(), conf, filler.clone());
        move || async move {
            let log = Log::open(&logdir, conf).await.unwrap();
            let mut acked = 0u64;
            let err = loop {
                match log.append(batch(acked, 64 * 1024, 1, 0)).await {
                    Ok(a) => {
                        assert_eq!(a.base_offset, acked);
                        acked += 1;
                    }
                    Err(e) => break e,
                }
                assert!(acked < 1000, "an 8 MiB filesystem cannot take 64 MiB");
            };
            // The log still serves what it acknowledged.
            assert_eq!(read_all(&log, 0).await.len() as u64, acked);
            // With room again, the same log takes appends at the next offset.
            std::fs::remove_file(&filler).unwrap();
            let a = log.append(batch(acked, 64 * 1024, 1, 0)).await.unwrap();
            assert_eq!(a.base_offset, acked);
            log.abandon().await.unwrap();
            (acked + 1, err)
        }
    });
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(acked > 10);
    // Fill the disk again, then reopen on the full disk: every acknowledged batch is there.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler2")).unwrap();
        while f.write_all(&[1u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
    run(move || async move {
        let log = Log::open(&logdir, conf).await.unwrap();
        let all = read_all(&log, 0).await;
        assert_eq!(all.len() as u64, acked);
        for (i, b) in all.iter().enumerate() {
            assert_eq!(&b.payload[..], &payload(i as u64, 64 * 1024)[..]);
        }
        assert!(log.append(batch(0, 64 * 1024, 1, 0)).await.unwrap_err().is_disk_full());
        log.abandon().await.unwrap();
    });
}

#[test]
fn delete_records_moves_the_log_start_durably() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        for seq in 0..30u64 {
            log.append(batch(seq, 1000, 2, 0)).await.unwrap();
        }
        let segs = log.segment_bases().len();
        assert_eq!(log.delete_records_before(31).await.unwrap(), 31);
        assert_eq!(log.log_start_offset(), 31);
        assert!(log.segment_bases().len() < segs, "segments wholly below the start are deleted");
        assert!(matches!(log.read(29, 100).await, Err(Error::OffsetOutOfRange { .. })));
        // The batch holding offset 31 (offsets 30, 31) is still returned whole.
        assert_eq!(log.read(31, 100).await.unwrap()[0].header.base_offset, 30);
        // Never backwards; never past the end.
        assert_eq!(log.delete_records_before(5).await.unwrap(), 31);
        assert!(log.delete_records_before(61).await.is_err());
        log.abandon().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.log_start_offset(), 31);
        assert_eq!(log.delete_records_before(60).await.unwrap(), 60);
        assert!(log.read(60, 100).await.unwrap().is_empty());
        log.close().await.unwrap();
    });
}
