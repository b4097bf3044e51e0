//! kill -9 crash test. The parent test re-runs this test binary as a child process that appends
//! deterministic batches from several concurrent tasks under `Durability::Always` and prints one
//! `ACK` line per append that returned `Ok`. The parent SIGKILLs the child at a random moment, reopens
//! the log and checks that every acknowledged batch is there, byte for byte, that offsets are dense
//! and that the log ends cleanly; then the next child continues on the same directory.
//!
//! Every batch's content follows from its sequence number (stored as its timestamp), so the parent
//! can also check batches that were written but never acknowledged.
//! Reproduce a run with `SLUICE_CRASH_SEED=<seed printed by the test>`.

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{payload, read_all, run, temp_dir};
use sluice_io::{AppendBatch, Durability, Log, LogConfig};

/// Set (to the log directory) only in the child process.
const CHILD_DIR_ENV: &str = "SLUICE_CRASH_CHILD_DIR";
/// First sequence number the child appends.
const CHILD_FIRST_SEQ_ENV: &str = "SLUICE_CRASH_FIRST_SEQ";
/// Overrides the random base seed of the parent.
const SEED_ENV: &str = "SLUICE_CRASH_SEED";
const CHILD_TEST_NAME: &str = "crash_child_writer";

/// Kill/restart cycles on one directory.
const ITERATIONS: u64 = 12;
/// Concurrent appending tasks in the child.
const WRITER_TASKS: usize = 4;
/// Small segments so that rolls (and their checkpoints) happen while the child is killed.
const SEGMENT_BYTES: u64 = 256 * 1024;
/// Largest payload of one batch.
const MAX_PAYLOAD_BYTES: usize = 40 * 1024;
/// Bound on one child's appends and run time, in case the parent never kills it.
const CHILD_MAX_APPENDS: u64 = 200_000;
const CHILD_MAX_RUN_MS: u64 = 20_000;
/// Most acks the parent waits for before killing.
const MAX_ACKS_BEFORE_KILL: u64 = 1000;
/// The parent gives up on a child that stays silent this long.
const CHILD_SILENCE_LIMIT_MS: u64 = 10_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        durability: Durability::Always,
        // Periodic checkpoints run while the child is killed, too.
        checkpoint_interval_ms: Some(25),
        ..LogConfig::default()
    }
}

fn mix(seq: u64) -> u64 {
    let mut x = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Payload length of batch `seq`: mostly small, some of several KiB, a few up to 40 KiB.
fn len_of(seq: u64) -> usize {
    let h = mix(seq);
    let r = (h >> 8) as usize;
    match h % 10 {
        0..=5 => 1 + r % 512,
        6..=8 => 512 + r % (8192 - 512),
        _ => 8192 + r % (MAX_PAYLOAD_BYTES - 8192 + 1),
    }
}

fn count_of(seq: u64) -> u32 {
    1 + ((mix(seq) >> 40) % 5) as u32
}

fn batch_of(seq: u64) -> AppendBatch {
    AppendBatch { record_count: count_of(seq), max_timestamp: seq as i64, payload: payload(seq, len_of(seq)) }
}

/// xorshift64*: the parent's randomness, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One acknowledged append, as the child printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    base_offset: u64,
    last_offset: u64,
    seq: u64,
    len: usize,
}

impl Ack {
    fn parse(line: &str) -> Option<Ack> {
        let mut w = line.strip_prefix("ACK ")?.split_whitespace().map(str::parse::<u64>);
        let mut next = || w.next()?.ok();
        let ack = Ack { base_offset: next()?, last_offset: next()?, seq: next()?, len: next()? as usize };
        next().is_none().then_some(ack)
    }
}

/// The child: does nothing unless started by the parent with `CHILD_DIR_ENV` set.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let first_seq: u64 = std::env::var(CHILD_FIRST_SEQ_ENV).expect("first seq").parse().expect("first seq number");
    run(move || async move {
        let log = Log::open(&dir, config()).await.expect("child: open");
        let next_seq = Rc::new(Cell::new(first_seq));
        let deadline = Instant::now() + Duration::from_millis(CHILD_MAX_RUN_MS);
        let tasks: Vec<_> = (0..WRITER_TASKS)
            .map(|_| {
                let log = log.clone();
                let next_seq = next_seq.clone();
                glommio::spawn_local(async move {
                    loop {
                        let seq = next_seq.get();
                        if seq >= first_seq + CHILD_MAX_APPENDS || Instant::now() >= deadline {
                            return;
                        }
                        next_seq.set(seq + 1);
                        let a = log.append(batch_of(seq)).await.expect("child: append");
                        // Written straight to fd 1 (not captured by the test harness), one line per write.
                        let line = format!("ACK {} {} {seq} {}\n", a.base_offset, a.last_offset, len_of(seq));
                        let mut out = std::io::stdout().lock();
                        out.write_all(line.as_bytes()).expect("child: stdout");
                        out.flush().expect("child: stdout");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        log.close().await.expect("child: close");
    });
}

/// Kills and reaps the child if the parent panics first.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum KillPlan {
    /// This long after spawning, whatever the child is doing (maybe still opening the log).
    AfterMs(u64),
    /// Once this many acks arrived, plus a delay in microseconds.
    AfterAcks(u64, u64),
}

struct ChildRun {
    acks: Vec<Ack>,
    acks_when_killed: u64,
}

/// Runs one child until `plan` says to kill it, kills it with SIGKILL and collects every ack it
/// printed (also those still in the pipe after the kill).
fn run_child(dir: &Path, first_seq: u64, plan: KillPlan) -> ChildRun {
    let child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", CHILD_TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_FIRST_SEQ_ENV, first_seq.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                // A line cut short by the kill was never completely written: not an ack.
                Ok(0) | Err(_) => return,
                Ok(_) if !line.ends_with('\n') => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let started = Instant::now();
    let mut kill_at = match plan {
        KillPlan::AfterMs(ms) => Some(started + Duration::from_millis(ms)),
        KillPlan::AfterAcks(..) => None,
    };
    let mut acks = Vec::new();
    let mut acks_when_killed = None;
    let mut last_line = Instant::now();
    loop {
        let now = Instant::now();
        if acks_when_killed.is_none() && kill_at.is_some_and(|t| t <= now) {
            child.0.kill().expect("SIGKILL child");
            acks_when_killed = Some(acks.len() as u64);
        }
        let wait = match (acks_when_killed, kill_at) {
            (None, Some(t)) => t.saturating_duration_since(now),
            _ => Duration::from_millis(CHILD_SILENCE_LIMIT_MS),
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                last_line = Instant::now();
                if let Some(ack) = Ack::parse(&line) {
                    acks.push(ack);
                    if let KillPlan::AfterAcks(n, delay_us) = plan {
                        if kill_at.is_none() && acks.len() as u64 >= n {
                            kill_at = Some(Instant::now() + Duration::from_micros(delay_us));
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    acks_when_killed.is_none(),
                    "child's stdout still open {CHILD_SILENCE_LIMIT_MS} ms after the kill"
                );
                assert!(
                    kill_at.is_some() || last_line.elapsed() < Duration::from_millis(CHILD_SILENCE_LIMIT_MS),
                    "child silent for {CHILD_SILENCE_LIMIT_MS} ms after {} acks",
                    acks.len()
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    reader.join().expect("stdout reader");
    let status = child.0.wait().expect("wait for child");
    let acks_when_killed = acks_when_killed.unwrap_or_else(|| {
        panic!("child ended on its own ({status}) after {} acks, before the planned kill {plan:?}", acks.len())
    });
    assert_eq!(status.signal(), Some(9), "child must die of SIGKILL, got {status}");
    ChildRun { acks, acks_when_killed }
}

/// Reopens the log after a kill and checks it against every ack so far; appends one batch (`seq`)
/// to show the log takes appends at its end, and returns its ack.
fn verify_after_kill(dir: PathBuf, acked: BTreeMap<u64, Ack>, seq: u64) -> Ack {
    run(move || async move {
        let log = Log::open(&dir, config()).await.expect("reopen after kill");
        let report = log.recovery_report().clone();
        eprintln!(
            "  recovered: {} segments, {} batches verified, cut: {:?}, next offset {}",
            report.segments,
            report.batches_verified,
            report.truncation,
            log.next_offset()
        );
        let start = log.log_start_offset();
        assert_eq!(start, 0, "nothing deletes from the start of this log");
        let all = read_all(&log, start).await;
        let mut expected_base = start;
        let mut seqs = HashSet::new();
        let mut by_base = BTreeMap::new();
        for b in &all {
            let h = b.header;
            assert_eq!(h.base_offset, expected_base, "offsets are dense from the log start");
            expected_base = h.next_offset();
            // Acknowledged or not, every batch in the log is one the child appended, intact.
            let s = u64::try_from(h.max_timestamp).expect("timestamp is a sequence number");
            assert!(seqs.insert(s), "batch seq {s} appears twice (second at offset {})", h.base_offset);
            assert_eq!(h.record_count, count_of(s), "record count of seq {s} at offset {}", h.base_offset);
            assert_eq!(b.payload.len(), len_of(s), "payload length of seq {s} at offset {}", h.base_offset);
            assert!(b.payload[..] == payload(s, len_of(s))[..], "payload of seq {s} at offset {}", h.base_offset);
            by_base.insert(h.base_offset, (h, s));
        }
        assert_eq!(expected_base, log.next_offset(), "reading to the end reaches next_offset");
        for ack in acked.values() {
            let Some((h, s)) = by_base.get(&ack.base_offset) else {
                panic!("acknowledged batch lost: {ack:?} (log ends at {})", log.next_offset());
            };
            assert_eq!((h.last_offset(), *s, h.payload_len as usize), (ack.last_offset, ack.seq, ack.len), "{ack:?}");
        }
        assert!(seqs.iter().all(|&s| s < seq), "seq {seq} must be new");
        let end = log.next_offset();
        let a = log.append(batch_of(seq)).await.expect("append after recovery");
        assert_eq!(a.base_offset, end, "a new append lands at the recovered end");
        log.close().await.expect("close after verification");
        Ack { base_offset: a.base_offset, last_offset: a.last_offset, seq, len: len_of(seq) }
    })
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let base_seed = std::env::var(SEED_ENV).ok().map(|s| s.parse().expect("numeric seed")).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    eprintln!("crash test base seed {base_seed} (rerun with {SEED_ENV}={base_seed})");
    let mut acked: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut kills_in_flight = 0;
    for iteration in 0..ITERATIONS {
        let mut rng = Rng::new(base_seed.wrapping_add(iteration));
        // Every fourth child is killed by the clock, maybe while still starting up or recovering.
        let plan = if iteration % 4 == 3 {
            KillPlan::AfterMs(rng.below(300))
        } else {
            KillPlan::AfterAcks(1 + rng.below(MAX_ACKS_BEFORE_KILL), rng.below(3000))
        };
        let started = Instant::now();
        let ChildRun { acks, acks_when_killed } = run_child(&path, next_seq, plan);
        eprintln!(
            "iteration {iteration}: {plan:?}, first seq {next_seq}: killed after {acks_when_killed} acks \
             ({} in all) in {:?}",
            acks.len(),
            started.elapsed()
        );
        if acks_when_killed > 0 {
            kills_in_flight += 1;
        }
        for ack in acks {
            assert!(ack.seq >= next_seq, "child acked seq {} below its first {next_seq}", ack.seq);
            assert_eq!(ack.len, len_of(ack.seq));
            assert!(acked.insert(ack.base_offset, ack).is_none(), "offset {} acked twice", ack.base_offset);
        }
        // Above every seq the child may have used, acked or not.
        let probe_seq = next_seq + CHILD_MAX_APPENDS;
        let probe = verify_after_kill(path.clone(), acked.clone(), probe_seq);
        acked.insert(probe.base_offset, probe);
        next_seq = probe_seq + 1;
    }
    assert!(kills_in_flight >= ITERATIONS * 3 / 4, "only {kills_in_flight} kills hit a child while it was appending");
    assert!(acked.len() as u64 > ITERATIONS, "the children acknowledged appends");
}
