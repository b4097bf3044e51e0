//! Model-based property test of `Log`: random sequences of appends (single, concurrent bursts, and
//! at explicit offsets with gaps),
//! reads, rolls, truncations, reopens (clean, after `abandon`, or with a new index interval),
//! checkpoints, flushes, timestamp lookups, leader-epoch assignments and segment rewrites (compaction: a sealed segment keeps
//! a random subset of its batches, leaving gaps in the offsets) run against the real engine on real files and against
//! an in-memory model (a `Vec` of batches). After every step the engine's end and start offsets must
//! match the model (the epoch cache too: `Log` must keep it in step with truncations and reopens
//! as the plain `EpochCache` does); reads, lookups, truncations and reopens check contents byte for byte. Each case
//! runs on its own glommio executor in a fresh directory, with small segments, a sparse index and a
//! tiny tail cache so that most reads go to disk.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{payload, run, temp_dir};
use proptest::prelude::*;
use sluice_io::{AppendBatch, Durability, EpochCache, Error, Log, LogConfig, StoredBatch};

/// Proptest cases per run: sized to keep this file well under a minute in release mode on 2 cores.
const CASES: u32 = 48;
/// Most operations in one case.
const MAX_OPS_PER_CASE: usize = 60;
/// Payload bytes the full-content comparison asks for per read.
const SCAN_MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
struct BatchSpec {
    len: usize,
    record_count: u32,
    max_timestamp: i64,
}

#[derive(Debug, Clone)]
enum Op {
    Append(BatchSpec),
    /// `append_at` the next offset plus `gap` (a follower copying a compacted leader); also tries
    /// one offset below the next, which must be refused.
    AppendAt {
        gap: u64,
        spec: BatchSpec,
    },
    /// Appends issued concurrently from separate tasks: exercises group writes and back-pressure.
    AppendBurst(Vec<BatchSpec>),
    /// Read at `log_start + pick % (span + 1)`, so the log end is included.
    Read {
        pick: u64,
        max_bytes: usize,
    },
    Roll,
    /// Truncate to `pick % (next_offset + 3)`: anywhere in the log, at its end, or past it (no-op).
    TruncateTo {
        pick: u64,
    },
    /// Close and open again, maybe with another `index_interval_bytes` (an operator's config change).
    Reopen {
        index_interval_bytes: Option<u64>,
    },
    /// `abandon` (no final sync, no checkpoint, as a crash leaves the files) and open again.
    Crash,
    Checkpoint,
    Flush,
    OffsetForTimestamp(i64),
    /// Leader epoch `epoch` starts at the log end (lower, same or higher than the latest).
    AssignEpoch {
        epoch: i32,
    },
    /// Rewrite sealed segment `pick % sealed` keeping the batches whose bit (position % 64) is set
    /// in `keep`; `commit: false` abandons the rewrite half way.
    Compact {
        pick: u64,
        keep: u64,
        commit: bool,
    },
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base_offset: u64,
    record_count: u32,
    max_timestamp: i64,
    payload: Bytes,
}

impl ModelBatch {
    fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start: u64,
    next_offset: u64,
    epochs: EpochCache,
}

impl Model {
    fn push(&mut self, spec: &BatchSpec, payload: Bytes) -> u64 {
        let base_offset = self.next_offset;
        self.batches.push(ModelBatch {
            base_offset,
            record_count: spec.record_count,
            max_timestamp: spec.max_timestamp,
            payload,
        });
        self.next_offset += u64::from(spec.record_count);
        base_offset
    }

    /// Index of the first batch holding an offset >= `offset` (compaction leaves gaps).
    fn index_of(&self, offset: u64) -> Option<usize> {
        let i = self.batches.partition_point(|b| b.next_offset() <= offset);
        (i < self.batches.len()).then_some(i)
    }

    /// Removes every batch holding an offset >= `target` (a straddling batch goes whole); below the
    /// log start the log empties and restarts at `target`.
    fn truncate_to(&mut self, target: u64) {
        if target >= self.next_offset {
            // Kafka: the log stays, but an epoch starting at its end (a leader that appended
            // nothing in it) goes.
            let end = self.next_offset;
            self.epochs.truncate_from_end(end);
            return;
        }
        if target <= self.log_start {
            self.batches.clear();
            self.log_start = target;
            self.next_offset = target;
            self.epochs.clear();
            return;
        }
        let cut = self.batches.partition_point(|b| b.next_offset() <= target);
        // A straddling batch goes whole; in a gap left by compaction the log ends at the target.
        self.next_offset = self.batches.get(cut).map_or(target, |b| b.base_offset.min(target));
        self.batches.truncate(cut);
        self.epochs.truncate_from_end(self.next_offset);
    }

    /// What `Log::open` makes of the epoch file: entries outside `[log start, log end)` go.
    fn reopened(&mut self) {
        self.epochs.truncate_from_end(self.next_offset);
        self.epochs.truncate_from_start(self.log_start);
    }

    fn offset_for_timestamp(&self, ts: i64) -> Option<(u64, i64)> {
        self.batches.iter().find(|b| b.max_timestamp >= ts).map(|b| (b.base_offset, b.max_timestamp))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn same_batch(got: &StoredBatch, want: &ModelBatch) -> Result<(), String> {
    let h = &got.header;
    ensure!(
        h.base_offset == want.base_offset
            && h.record_count == want.record_count
            && h.max_timestamp == want.max_timestamp
            && h.payload_len as usize == want.payload.len(),
        "header {h:?} differs from the model's batch (base {}, count {}, ts {}, len {})",
        want.base_offset,
        want.record_count,
        want.max_timestamp,
        want.payload.len()
    );
    ensure!(got.payload[..] == want.payload[..], "payload of batch {} differs from what was appended", h.base_offset);
    ensure!(h.compute_crc(&got.payload) == h.crc, "CRC of batch {} does not match its payload", h.base_offset);
    Ok(())
}

/// Reads the whole log and compares it with the model, batch by batch.
async fn same_contents(log: &Log, model: &Model) -> Result<(), String> {
    let mut at = model.log_start;
    let mut i = 0;
    loop {
        let got = log.read(at, SCAN_MAX_BYTES).await.map_err(|e| format!("read({at}) while scanning: {e}"))?;
        if got.is_empty() {
            break;
        }
        for b in &got {
            let want = model.batches.get(i).ok_or_else(|| format!("log holds batch {:?} past the model", b.header))?;
            same_batch(b, want)?;
            i += 1;
        }
        at = got.last().expect("non-empty").header.next_offset();
    }
    ensure!(i == model.batches.len(), "scan ended at offset {at} after {i} of {} batches", model.batches.len());
    // After the last batch, the rest of the log (if any) is a gap compaction left.
    let last_end = model.batches.last().map_or(model.log_start, ModelBatch::next_offset);
    ensure!(at == last_end, "scan ended at {at}, the model's last batch ends at {last_end}");
    ensure!(last_end <= model.next_offset, "the model's batches end past its end offset");
    Ok(())
}

fn same_ends(log: &Log, model: &Model) -> Result<(), String> {
    ensure!(log.next_offset() == model.next_offset, "next_offset {} != model {}", log.next_offset(), model.next_offset);
    ensure!(
        log.log_start_offset() == model.log_start,
        "log_start_offset {} != model {}",
        log.log_start_offset(),
        model.log_start
    );
    let bases = log.segment_bases();
    ensure!(bases.windows(2).all(|w| w[0] < w[1]), "segment bases not increasing: {bases:?}");
    ensure!(bases.first().is_some_and(|&b| b <= model.log_start), "first segment after log start: {bases:?}");
    ensure!(log.epochs() == model.epochs, "epochs {:?} != model {:?}", log.epochs(), model.epochs);
    Ok(())
}

fn append_batch(spec: &BatchSpec, seq: u64) -> AppendBatch {
    AppendBatch { record_count: spec.record_count, max_timestamp: spec.max_timestamp, payload: payload(seq, spec.len) }
}

async fn apply(log: &mut Log, model: &mut Model, config: &mut LogConfig, op: &Op, step: u64) -> Result<(), String> {
    // Payload seeds: unique per batch of the case.
    let seq = step * 64;
    match op {
        Op::Append(spec) => {
            let b = append_batch(spec, seq);
            let a = log.append(b.clone()).await.map_err(|e| e.to_string())?;
            let base = model.push(spec, b.payload);
            ensure!(a.base_offset == base, "append landed at {} where the model has {base}", a.base_offset);
            ensure!(a.last_offset == base + u64::from(spec.record_count) - 1, "last_offset {}", a.last_offset);
        }
        Op::AppendAt { gap, spec } => {
            let b = append_batch(spec, seq);
            if model.next_offset > 0 {
                let below = log.append_at(model.next_offset - 1, b.clone()).await;
                ensure!(matches!(below, Err(Error::InvalidBatch(_))), "append_at below the end: {below:?}");
            }
            let at = model.next_offset + gap;
            let a = log.append_at(at, b.clone()).await.map_err(|e| format!("append_at({at}): {e}"))?;
            model.next_offset = at;
            let base = model.push(spec, b.payload);
            ensure!(a.base_offset == base && base == at, "append_at({at}) landed at {}", a.base_offset);
        }
        Op::AppendBurst(specs) => {
            let tasks: Vec<_> = specs
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let log = log.clone();
                    let b = append_batch(spec, seq + i as u64);
                    glommio::spawn_local(async move { (log.append(b.clone()).await, b) })
                })
                .collect();
            let mut landed = Vec::new();
            for t in tasks {
                let (res, b) = t.await;
                landed.push((res.map_err(|e| e.to_string())?, b));
            }
            // Offsets follow call order, which the executor decides: apply to the model in offset order.
            landed.sort_by_key(|(a, _)| a.base_offset);
            for (a, b) in landed {
                let spec =
                    BatchSpec { len: b.payload.len(), record_count: b.record_count, max_timestamp: b.max_timestamp };
                let base = model.push(&spec, b.payload);
                ensure!(a.base_offset == base, "burst append landed at {} where the model has {base}", a.base_offset);
                ensure!(a.last_offset == base + u64::from(b.record_count) - 1, "last_offset {}", a.last_offset);
            }
        }
        Op::Read { pick, max_bytes } => {
            let offset = model.log_start + pick % (model.next_offset - model.log_start + 1);
            let got = log.read(offset, *max_bytes).await.map_err(|e| format!("read({offset}, {max_bytes}): {e}"))?;
            match model.index_of(offset) {
                None => ensure!(got.is_empty(), "read at the end {offset} returned {} batches", got.len()),
                Some(first) => {
                    ensure!(!got.is_empty(), "read({offset}) returned nothing");
                    let h = &got[0].header;
                    ensure!(offset <= h.last_offset(), "first batch {h:?} ends before {offset}");
                    let mut total = 0;
                    for (i, b) in got.iter().enumerate() {
                        let want = model.batches.get(first + i).ok_or("read returned batches past the end")?;
                        same_batch(b, want)?;
                        total += b.payload.len();
                        ensure!(i == 0 || total <= *max_bytes, "read({offset}, {max_bytes}) returned {total} bytes");
                    }
                }
            }
            let beyond = model.next_offset + 1;
            let past_end = log.read(beyond, *max_bytes).await;
            ensure!(
                matches!(past_end, Err(Error::OffsetOutOfRange { .. })),
                "read({beyond}) past the end: {past_end:?}"
            );
        }
        Op::Roll => log.roll().await.map_err(|e| e.to_string())?,
        Op::TruncateTo { pick } => {
            let target = pick % (model.next_offset + 3);
            log.truncate_to(target).await.map_err(|e| format!("truncate_to({target}): {e}"))?;
            model.truncate_to(target);
            same_ends(log, model).map_err(|e| format!("after truncate_to({target}): {e}"))?;
            same_contents(log, model).await.map_err(|e| format!("after truncate_to({target}): {e}"))?;
        }
        Op::Reopen { index_interval_bytes } => {
            log.close().await.map_err(|e| format!("close: {e}"))?;
            if let Some(interval) = index_interval_bytes {
                config.index_interval_bytes = *interval;
            }
            model.reopened();
            reopen(log, model, config).await?;
        }
        Op::Crash => {
            log.clone().abandon().await.map_err(|e| format!("abandon: {e}"))?;
            model.reopened();
            reopen(log, model, config).await?;
        }
        Op::Checkpoint => log.checkpoint().await.map_err(|e| e.to_string())?,
        Op::AssignEpoch { epoch } => {
            let changed = log.assign_epoch(*epoch, model.next_offset).await.map_err(|e| e.to_string())?;
            let expected = model.epochs.assign(*epoch, model.next_offset).map_err(|e| e.to_string())?;
            ensure!(changed == expected, "assign_epoch({epoch}) changed: {changed}, model: {expected}");
            let (latest, leo) = (model.epochs.latest_epoch(), model.next_offset);
            for e in [-1, 0, *epoch - 1, *epoch, *epoch + 1] {
                let want = model.epochs.end_offset_for(e, leo);
                ensure!(log.epoch_end_offset(e) == want, "epoch_end_offset({e}) with latest {latest:?}");
            }
        }
        Op::Flush => log.flush().await.map_err(|e| e.to_string())?,
        Op::Compact { pick, keep, commit } => {
            let sealed = log.sealed_segments();
            if sealed.is_empty() {
                return Ok(());
            }
            let seg = sealed[(*pick % sealed.len() as u64) as usize];
            let mut rw = log.rewrite_segment(seg.base).await.map_err(|e| format!("rewrite_segment: {e}"))?;
            let mut at = seg.base.max(log.log_start_offset());
            let mut position = 0u64;
            let mut kept = Vec::new();
            'segment: while at < seg.end_offset {
                let got = log.read(at, 4096).await.map_err(|e| format!("read({at}) for rewrite: {e}"))?;
                for b in &got {
                    if b.header.base_offset >= seg.end_offset {
                        break 'segment;
                    }
                    if keep & (1 << (position % 64)) != 0 {
                        let h = &b.header;
                        rw.push(h.base_offset, h.record_count, h.max_timestamp, &b.payload)
                            .await
                            .map_err(|e| format!("push: {e}"))?;
                        kept.push(h.base_offset);
                    }
                    position += 1;
                    at = b.header.next_offset();
                }
                if got.is_empty() {
                    break;
                }
                if !*commit && position > 2 {
                    // Abandoned half way: nothing changes.
                    return Ok(());
                }
            }
            if !*commit {
                return Ok(());
            }
            let swapped = log.commit_rewrite(rw).await.map_err(|e| format!("commit_rewrite: {e}"))?;
            ensure!(swapped, "rewrite of an unchanged segment {seg:?} was refused");
            model.batches.retain(|b| {
                b.base_offset < seg.base || b.base_offset >= seg.end_offset || kept.contains(&b.base_offset)
            });
            same_contents(log, model).await.map_err(|e| format!("after compacting {seg:?}: {e}"))?;
        }
        Op::OffsetForTimestamp(ts) => {
            let got = log.offset_for_timestamp(*ts).await.map_err(|e| format!("offset_for_timestamp({ts}): {e}"))?;
            let want = model.offset_for_timestamp(*ts);
            ensure!(got == want, "offset_for_timestamp({ts}) = {got:?}, model says {want:?}");
        }
    }
    Ok(())
}

/// Opens the log again after `close` or `abandon`: nothing may be cut, lost or changed.
async fn reopen(log: &mut Log, model: &Model, config: &LogConfig) -> Result<(), String> {
    *log = Log::open(log.dir().to_path_buf(), *config).await.map_err(|e| format!("reopen: {e}"))?;
    let r = log.recovery_report();
    ensure!(r.truncation.is_none(), "reopen after a clean stop cut the log: {r:?}");
    ensure!(r.checkpoint_problem.is_none() && r.segments_deleted.is_empty(), "reopen: {r:?}");
    same_ends(log, model).map_err(|e| format!("after reopen: {e}"))?;
    same_contents(log, model).await.map_err(|e| format!("after reopen: {e}"))
}

/// Runs one case on its own executor in a fresh directory.
fn run_case(mut config: LogConfig, ops: Vec<Op>) -> Result<(), String> {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut log = Log::open(&path, config).await.map_err(|e| format!("open: {e}"))?;
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let fail = |e: String| format!("step {step} ({op:?}): {e}");
            apply(&mut log, &mut model, &mut config, op, step as u64).await.map_err(fail)?;
            same_ends(&log, &model).map_err(fail)?;
        }
        same_contents(&log, &model).await.map_err(|e| format!("at the end: {e}"))?;
        log.close().await.map_err(|e| format!("close: {e}"))
    })
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        30 => 0..10_000i64,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => -5..0i64,
    ]
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    // Mostly small batches, sometimes one larger than a whole segment.
    let len = prop_oneof![14 => 0..=6000usize, 1 => 60_000..=72_000usize];
    (len, 1..=5u32, timestamp()).prop_map(|(len, record_count, max_timestamp)| BatchSpec {
        len,
        record_count,
        max_timestamp,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let max_bytes = prop_oneof![0..=64usize, 0..=8192usize, 0..=200_000usize];
    prop_oneof![
        30 => batch_spec().prop_map(Op::Append),
        4 => (0..=3u64, batch_spec()).prop_map(|(gap, spec)| Op::AppendAt { gap, spec }),
        5 => prop::collection::vec(batch_spec(), 2..=12).prop_map(Op::AppendBurst),
        20 => (any::<u64>(), max_bytes).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        5 => Just(Op::Roll),
        6 => any::<u64>().prop_map(|pick| Op::TruncateTo { pick }),
        4 => prop::option::of(512..=2048u64).prop_map(|index_interval_bytes| Op::Reopen { index_interval_bytes }),
        2 => Just(Op::Crash),
        3 => Just(Op::Checkpoint),
        2 => Just(Op::Flush),
        6 => (0..8i32).prop_map(|epoch| Op::AssignEpoch { epoch }),
        10 => prop_oneof![9 => -100..10_100i64, 1 => any::<i64>()].prop_map(Op::OffsetForTimestamp),
        6 => (any::<u64>(), prop_oneof![1 => Just(0u64), 1 => Just(u64::MAX), 6 => any::<u64>()], prop::bool::weighted(0.85))
            .prop_map(|(pick, keep, commit)| Op::Compact { pick, keep, commit }),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        (1..20u64).prop_map(|ms| Durability::Interval(Duration::from_millis(ms))),
        Just(Durability::Never),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        16..=64u64,
        512..=2048u64,
        0..=8192usize,
        durability(),
        prop::option::of(100..=5000u64),
        1..=8usize,
        4096..=65536usize,
        prop::option::of(1..=50u64),
    )
        .prop_map(
            |(segment_kib, interval, tail_cache_bytes, durability, segment_ms, pending, write, checkpoint_ms)| {
                LogConfig {
                    segment_bytes: segment_kib * 1024,
                    segment_ms,
                    retention_bytes: None,
                    retention_ms: None,
                    index_interval_bytes: interval,
                    durability,
                    tail_cache_bytes,
                    max_pending_appends: pending,
                    max_write_bytes: write,
                    checkpoint_interval_ms: checkpoint_ms,
                    ..LogConfig::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Every shrink step replays a whole case: bound how long a failure takes to report.
        max_shrink_iters: 256,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(config in config(), ops in prop::collection::vec(op(), 1..MAX_OPS_PER_CASE)) {
        if let Err(e) = run_case(config, ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// Regressions found by the model, reduced by hand to their smallest form.

/// What happens between the large batch and the one read back.
#[derive(Debug, Clone, Copy)]
enum Between {
    /// Close and open: the loaded index forgets how many bytes followed its last entry.
    Reopen,
    /// Append one more batch (it gets an index entry) and truncate it away again.
    Truncate,
}

/// One small batch, one larger than `index_interval_bytes`, then `between`, then one more small
/// batch, read from disk with a small `max_bytes`. After `between` the offset index has no entry
/// between the first batch and the last, so the read starts at position 0 and has to skip the large
/// batch, which ends beyond the buffer it read first.
fn read_past_a_large_unindexed_batch(between: Between) {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { index_interval_bytes: 512, tail_cache_bytes: 0, ..LogConfig::default() };
        let mut log = Log::open(&path, cfg).await.unwrap();
        log.append(append_batch(&BatchSpec { len: 10, record_count: 1, max_timestamp: 0 }, 0)).await.unwrap();
        log.append(append_batch(&BatchSpec { len: 6000, record_count: 1, max_timestamp: 0 }, 1)).await.unwrap();
        match between {
            Between::Reopen => {
                log.close().await.unwrap();
                log = Log::open(&path, cfg).await.unwrap();
            }
            Between::Truncate => {
                log.append(append_batch(&BatchSpec { len: 10, record_count: 1, max_timestamp: 0 }, 2)).await.unwrap();
                log.truncate_to(2).await.unwrap();
            }
        }
        let last = append_batch(&BatchSpec { len: 10, record_count: 1, max_timestamp: 0 }, 3);
        assert_eq!(log.append(last.clone()).await.unwrap().base_offset, 2);
        let got = log.read(2, 1).await.expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header.base_offset, 2);
        assert_eq!(&got[0].payload[..], &last.payload[..]);
        log.close().await.unwrap();
    });
}

#[test]
fn read_after_reopen_skips_a_large_batch_beyond_the_read_buffer() {
    read_past_a_large_unindexed_batch(Between::Reopen);
}

#[test]
fn read_after_truncation_skips_a_large_batch_beyond_the_read_buffer() {
    read_past_a_large_unindexed_batch(Between::Truncate);
}
