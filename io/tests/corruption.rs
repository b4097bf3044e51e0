//! Recovery after damage: torn tail, flipped bits, garbage after the data, deleted or corrupt
//! indexes, a corrupt checkpoint, and the errors for unusable directories. Every test "crashes" with
//! `abandon()` (no final sync, no checkpoint), then damages files and reopens.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use sluice_io::{Error, Log, LogConfig, HEADER_LEN};

const N: u64 = 40;

fn len_of(seq: u64) -> usize {
    100 + (seq as usize * 131) % 2000
}

/// Appends N batches (2 records each) into one segment and "crashes". Returns each batch's file position.
fn write_and_crash(dir: &Path, cfg: LogConfig) -> Vec<u64> {
    let p = dir.to_path_buf();
    run(move || async move {
        let log = Log::open(&p, cfg).await.unwrap();
        let mut positions = Vec::new();
        let mut pos = 0u64;
        for seq in 0..N {
            let a = log.append(batch(seq, len_of(seq), 2, seq as i64)).await.unwrap();
            assert_eq!(a.base_offset, seq * 2);
            positions.push(pos);
            pos += (HEADER_LEN + len_of(seq)) as u64;
        }
        log.abandon().await.unwrap();
        positions
    })
}

fn segment(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn flip_byte(path: &Path, pos: u64) {
    let mut f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(pos)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    b[0] ^= 0x04;
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.write_all(&b).unwrap();
}

/// Reopens and checks that exactly the first `keep` batches survive, intact, and appends go on.
fn reopen_expect(dir: &Path, keep: u64) -> sluice_io::RecoveryReport {
    let p = dir.to_path_buf();
    run(move || async move {
        let log = Log::open(&p, LogConfig::default()).await.unwrap();
        let report = log.recovery_report().clone();
        assert_eq!(log.next_offset(), keep * 2, "report: {report:?}");
        let all = read_all(&log, 0).await;
        assert_eq!(all.len() as u64, keep);
        for (seq, b) in all.iter().enumerate() {
            let seq = seq as u64;
            assert_eq!(b.header.base_offset, seq * 2);
            assert_eq!(&b.payload[..], &payload(seq, len_of(seq))[..]);
        }
        let a = log.append(batch(1000, 10, 1, 0)).await.unwrap();
        assert_eq!(a.base_offset, keep * 2);
        log.close().await.unwrap();
        report
    })
}

#[test]
fn clean_crash_loses_nothing_and_cuts_nothing() {
    let dir = temp_dir();
    write_and_crash(dir.path(), LogConfig::default());
    let report = reopen_expect(dir.path(), N);
    assert_eq!(report.truncation, None);
    assert_eq!(report.batches_verified, N);
}

#[test]
fn torn_tail_is_cut_at_the_last_whole_batch() {
    let dir = temp_dir();
    let pos = write_and_crash(dir.path(), LogConfig::default());
    let last = pos[N as usize - 1];
    let f = OpenOptions::new().write(true).open(segment(dir.path(), 0)).unwrap();
    f.set_len(last + 50).unwrap();
    let report = reopen_expect(dir.path(), N - 1);
    let t = report.truncation.expect("a cut");
    assert_eq!((t.segment_base, t.position, t.next_offset), (0, last, (N - 1) * 2));
}

#[test]
fn flipped_bit_in_the_last_batch_cuts_it() {
    let dir = temp_dir();
    let pos = write_and_crash(dir.path(), LogConfig::default());
    let last = pos[N as usize - 1];
    flip_byte(&segment(dir.path(), 0), last + HEADER_LEN as u64 + 7);
    let report = reopen_expect(dir.path(), N - 1);
    let t = report.truncation.expect("a cut");
    assert_eq!(t.position, last);
    assert!(t.reason.contains("CRC32C"), "{}", t.reason);
}

#[test]
fn flipped_bit_in_a_middle_batch_cuts_there_and_nothing_before_changes() {
    let dir = temp_dir();
    let pos = write_and_crash(dir.path(), LogConfig::default());
    let before = std::fs::read(segment(dir.path(), 0)).unwrap();
    flip_byte(&segment(dir.path(), 0), pos[17] + 3); // inside the CRC field of batch 17
    reopen_expect(dir.path(), 17);
    let after = std::fs::read(segment(dir.path(), 0)).unwrap();
    // Bytes before the cut are untouched (the reopen then appended one batch after them).
    assert_eq!(&after[..pos[17] as usize], &before[..pos[17] as usize]);
}

#[test]
fn garbage_after_the_data_is_removed() {
    let dir = temp_dir();
    let pos = write_and_crash(dir.path(), LogConfig::default());
    let end = pos[N as usize - 1] + (HEADER_LEN + len_of(N - 1)) as u64;
    let mut f = OpenOptions::new().write(true).open(segment(dir.path(), 0)).unwrap();
    f.seek(SeekFrom::Start(end)).unwrap();
    f.write_all(&[0xA5u8; 777]).unwrap();
    drop(f);
    let report = reopen_expect(dir.path(), N);
    let t = report.truncation.expect("garbage is reported as a cut");
    assert_eq!(t.position, end);
}

#[test]
fn zero_fill_after_a_torn_multi_block_write_is_a_clean_end() {
    // A crash can persist later blocks of one write but not the block holding a header: zeros
    // where a header should be end the log there.
    let dir = temp_dir();
    let pos = write_and_crash(dir.path(), LogConfig::default());
    let cut = pos[30];
    let mut f = OpenOptions::new().write(true).open(segment(dir.path(), 0)).unwrap();
    f.seek(SeekFrom::Start(cut)).unwrap();
    f.write_all(&[0u8; HEADER_LEN]).unwrap();
    drop(f);
    reopen_expect(dir.path(), 30);
}

/// Writes several segments, closes cleanly, damages the first segment's index, reopens.
fn sealed_segments_with_damaged_index(damage: impl FnOnce(&Path)) -> sluice_io::RecoveryReport {
    let dir = temp_dir();
    let p = path_of(&dir);
    let cfg = LogConfig { segment_bytes: 16 * 1024, index_interval_bytes: 512, ..LogConfig::default() };
    let cfg2 = cfg;
    let bases = run(move || async move {
        let log = Log::open(&p, cfg).await.unwrap();
        for seq in 0..N {
            log.append(batch(seq, len_of(seq), 2, seq as i64)).await.unwrap();
        }
        let bases = log.segment_bases();
        log.close().await.unwrap();
        bases
    });
    assert!(bases.len() >= 3);
    damage(dir.path());
    let p = path_of(&dir);
    run(move || async move {
        let log = Log::open(&p, cfg2).await.unwrap();
        let report = log.recovery_report().clone();
        assert_eq!(report.truncation, None);
        let all = read_all(&log, 0).await;
        assert_eq!(all.len() as u64, N);
        // Reads at every offset go through the rebuilt index.
        for seq in 0..N {
            let got = log.read(seq * 2 + 1, 1).await.unwrap();
            assert_eq!(got[0].header.base_offset, seq * 2);
            assert_eq!(&got[0].payload[..], &payload(seq, len_of(seq))[..]);
        }
        log.close().await.unwrap();
        report
    })
}

#[test]
fn deleted_index_is_rebuilt() {
    let report =
        sealed_segments_with_damaged_index(|d| std::fs::remove_file(d.join(format!("{:020}.index", 0))).unwrap());
    assert_eq!(report.indexes_rebuilt.len(), 1, "{report:?}");
    assert_eq!(report.indexes_rebuilt[0].0, 0);
}

#[test]
fn corrupt_index_is_rebuilt_and_named() {
    let report = sealed_segments_with_damaged_index(|d| flip_byte(&d.join(format!("{:020}.index", 0)), 20));
    assert_eq!(report.indexes_rebuilt.len(), 1, "{report:?}");
    assert!(report.indexes_rebuilt[0].1.contains("corrupt index"), "{:?}", report.indexes_rebuilt);
}

#[test]
fn corrupt_checkpoint_means_full_verification_not_data_loss() {
    let report = sealed_segments_with_damaged_index(|d| flip_byte(&d.join(sluice_io::CHECKPOINT_FILE), 18));
    assert!(report.checkpoint_problem.is_some());
    assert_eq!(report.batches_verified, N);
}

#[test]
fn clean_reopen_verifies_nothing_before_the_checkpoint() {
    let report = sealed_segments_with_damaged_index(|_| {});
    assert_eq!(report.batches_verified, 0, "{report:?}");
    assert!(report.indexes_rebuilt.is_empty());
}

#[test]
fn tmpfs_data_dir_is_refused_with_a_clear_error() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP: no /dev/shm on this machine");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let p = path_of(&dir);
    let err = run(move || async move { Log::open(&p, LogConfig::default()).await.unwrap_err() });
    assert!(matches!(err, Error::DirectIoUnsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("tmpfs") && msg.contains("--data-dir"), "{msg}");
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let dir = temp_dir();
    let p = path_of(&dir);
    let err = run(move || async move {
        Log::open(&p, LogConfig { segment_bytes: 10, ..LogConfig::default() }).await.unwrap_err()
    });
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

/// EACCES/EPERM/EROFS are reported as `PermissionDenied` naming the path. Root bypasses file
/// modes, so the test uses a read-only filesystem.
#[test]
fn read_only_filesystem_is_permission_denied() {
    let dir = temp_dir();
    let Some(mount) = LoopMount::new(dir.path(), "4M", true) else {
        eprintln!("SKIP read_only_filesystem_is_permission_denied: cannot loop-mount an ext4 image here (needs root)");
        return;
    };
    let p = mount.mnt.join("log");
    let err = run(move || async move { Log::open(&p, LogConfig::default()).await.unwrap_err() });
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("permission denied"), "{err}");
}
