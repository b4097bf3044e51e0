//! Shared helpers of the storage engine's integration tests: real files on the target disk
//! (never tmpfs), one glommio executor per test.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use sluice_io::{AppendBatch, Log, LogConfig, StoredBatch};

/// A fresh directory under Cargo's target tmp dir (on the same disk as the build, not tmpfs).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sluice-io-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("create temp dir")
}

/// Runs `f` on a new glommio executor with a small DMA memory pool.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move { f().await })
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// Deterministic payload for batch `seq` of `len` bytes.
pub fn payload(seq: u64, len: usize) -> Bytes {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Bytes::from(v)
}

pub fn batch(seq: u64, len: usize, count: u32, ts: i64) -> AppendBatch {
    AppendBatch { record_count: count, max_timestamp: ts, payload: payload(seq, len) }
}

/// Reads the whole log from `from` to the end.
pub async fn read_all(log: &Log, from: u64) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let got = log.read(at, 1 << 20).await.expect("read");
        if got.is_empty() {
            return out;
        }
        at = got.last().unwrap().header.next_offset();
        out.extend(got);
    }
}

pub fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 64 * 1024, index_interval_bytes: 1024, ..LogConfig::default() }
}

pub fn path_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

/// A small ext4 filesystem loop-mounted under `dir` (needs root); unmounted on drop.
pub struct LoopMount {
    pub mnt: PathBuf,
}

impl LoopMount {
    /// `None` when this machine cannot loop-mount (not root, no loop devices): callers print SKIP.
    pub fn new(dir: &std::path::Path, size: &str, read_only: bool) -> Option<LoopMount> {
        use std::process::Command;
        let img = dir.join("fs.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).ok()?;
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        let opts = if read_only { "loop,ro" } else { "loop" };
        let made = ok(Command::new("truncate").args(["-s", size]).arg(&img))
            && ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            && ok(Command::new("mount").args(["-o", opts]).arg(&img).arg(&mnt));
        made.then_some(LoopMount { mnt })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}
