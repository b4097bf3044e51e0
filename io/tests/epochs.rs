//! The leader-epoch cache inside `Log`: persisted by `assign_epoch`, kept in step with truncation,
//! retention and DeleteRecords, trimmed against the log at open, and a damaged file refused.

mod common;

use common::*;
use std::future::Future;

use sluice_io::{EpochEntry, Error, Log, LogConfig, EPOCH_CHECKPOINT_FILE};

fn e(epoch: i32, start_offset: u64) -> EpochEntry {
    EpochEntry { epoch, start_offset }
}

fn cfg() -> LogConfig {
    LogConfig { segment_bytes: 8 * 1024, index_interval_bytes: 512, retention_ms: None, ..LogConfig::default() }
}

/// Appends `n` one-record batches of ~1 KiB.
async fn fill(log: &Log, n: u64) {
    for _ in 0..n {
        let seq = log.next_offset();
        log.append(batch(seq, 1000, 1, seq as i64)).await.unwrap();
    }
}

#[test]
fn assign_persists_and_reopen_trims_to_the_log() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        assert!(log.epochs().is_empty());
        assert!(log.assign_epoch(0, 0).await.unwrap());
        assert!(!log.assign_epoch(0, 5).await.unwrap(), "same epoch again is a no-op");
        fill(&log, 10).await;
        assert!(log.assign_epoch(3, 10).await.unwrap());
        fill(&log, 5).await;
        assert!(matches!(log.assign_epoch(-1, 15).await, Err(Error::InvalidEpoch { epoch: -1 })));
        assert_eq!(log.latest_epoch(), Some(3));
        assert_eq!(log.epoch_end_offset(3), Some((3, 15)));
        assert_eq!(log.epoch_end_offset(1), Some((0, 10)));
        // A new leader epoch at the log end, with no data yet.
        assert!(log.assign_epoch(4, 15).await.unwrap());
        log.close().await.unwrap();

        // As Kafka at load: an epoch that starts at the log end holds nothing and is dropped.
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.epochs().entries(), &[e(0, 0), e(3, 10)]);
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.epochs().entries(), &[e(0, 0), e(3, 10)], "the trim was persisted");
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_retention_and_delete_records_follow_the_log() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        for (epoch, n) in [(1, 10), (2, 10), (5, 10), (6, 10)] {
            log.assign_epoch(epoch, log.next_offset()).await.unwrap();
            fill(&log, n).await;
        }
        assert_eq!(log.epochs().entries(), &[e(1, 0), e(2, 10), e(5, 20), e(6, 30)]);
        // Divergence: the log is cut at 25, the entries starting at or after it go.
        log.truncate_to(25).await.unwrap();
        assert_eq!(log.next_offset(), 25);
        assert_eq!(log.epochs().entries(), &[e(1, 0), e(2, 10), e(5, 20)]);
        assert_eq!(log.epoch_end_offset(5), Some((5, 25)));
        assert_eq!(log.epoch_end_offset(6), None);
        // DeleteRecords inside epoch 2: epoch 1 goes, epoch 2 now starts at the new log start.
        log.delete_records_before(12).await.unwrap();
        assert_eq!(log.epochs().entries(), &[e(2, 12), e(5, 20)]);
        // Retention of whole segments moves the start again.
        log.set_config(LogConfig { retention_bytes: Some(1), ..cfg() }).unwrap();
        assert!(log.apply_retention(0).await.unwrap() > 0);
        let start = log.log_start_offset();
        assert!(start > 12);
        let expected_first = if start >= 20 { e(5, start) } else { e(2, start) };
        assert_eq!(log.epochs().entries()[0], expected_first);
        let before = log.epochs();
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!(log.epochs(), before, "every change was persisted");
        // Truncating below the log start empties the log and the cache (as Kafka).
        log.truncate_to(start).await.unwrap();
        assert!(log.epochs().is_empty());
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert!(log.epochs().is_empty());
        log.close().await.unwrap();
    });
}

#[test]
fn a_damaged_epoch_file_fails_the_open_until_the_caller_decides() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        log.assign_epoch(7, 0).await.unwrap();
        fill(&log, 3).await;
        log.close().await.unwrap();
        let path = p.join(EPOCH_CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        match Log::open(&p, cfg()).await {
            Err(Error::CorruptEpochCache { .. }) => {}
            other => panic!("expected CorruptEpochCache, got {other:?}"),
        }
        // The caller's decision here: drop the file and re-assign from its own batches.
        std::fs::remove_file(&path).unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert!(log.epochs().is_empty());
        assert_eq!(log.next_offset(), 3);
        log.assign_epoch(7, 0).await.unwrap();
        assert_eq!(log.epoch_end_offset(7), Some((7, 3)));
        log.close().await.unwrap();
    });
}

#[test]
fn assigning_the_latest_epoch_again_skips_the_writer() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        log.assign_epoch(2, 0).await.unwrap();
        fill(&log, 3).await;
        // A follower assigns every fetched batch's epoch: the same epoch again is answered at once,
        // without waiting for the writer.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for offset in 0..10 {
            let mut call = std::pin::pin!(log.assign_epoch(2, offset));
            assert!(matches!(call.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(false))));
        }
        // A change does wait for the writer (it is durable when it returns).
        let mut call = std::pin::pin!(log.assign_epoch(3, 3));
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert!(call.await.unwrap());
        assert_eq!(log.epochs().entries(), &[e(2, 0), e(3, 3)]);
        // Queued assignments are applied in call order, the later one winning (Kafka's rules).
        let (l1, l2) = (log.clone(), log.clone());
        let a = glommio::spawn_local(async move { l1.assign_epoch(5, 3).await });
        let b = glommio::spawn_local(async move { l2.assign_epoch(2, 3).await });
        assert!(a.await.unwrap());
        assert!(b.await.unwrap());
        assert_eq!(log.epochs().entries(), &[e(2, 3)]);
        log.close().await.unwrap();
    });
}

#[test]
fn truncating_at_the_end_drops_an_empty_epoch_and_restart_moves_past_the_end() {
    let dir = temp_dir();
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg()).await.unwrap();
        log.assign_epoch(0, 0).await.unwrap();
        fill(&log, 10).await;
        // A leader records epoch 2 at its end, appends nothing, and becomes a follower again: its
        // new leader says epoch 0 ended at 10, so it truncates to 10 — its log end.
        log.assign_epoch(2, 10).await.unwrap();
        log.truncate_to(10).await.unwrap();
        assert_eq!(log.next_offset(), 10, "no batch removed");
        assert_eq!(log.epochs().entries(), &[e(0, 0)], "the empty epoch went");
        // A follower below its leader's log start starts over there, past its own end.
        log.restart_at(25).await.unwrap();
        assert_eq!((log.log_start_offset(), log.next_offset()), (25, 25));
        assert!(log.epochs().is_empty());
        log.assign_epoch(3, 25).await.unwrap();
        log.append_at(
            25,
            sluice_io::AppendBatch { record_count: 1, max_timestamp: 1, payload: bytes::Bytes::from_static(b"x") },
        )
        .await
        .unwrap();
        log.close().await.unwrap();
        let log = Log::open(&p, cfg()).await.unwrap();
        assert_eq!((log.log_start_offset(), log.next_offset()), (25, 26));
        assert_eq!(log.epochs().entries(), &[e(3, 25)]);
        log.close().await.unwrap();
    });
}
