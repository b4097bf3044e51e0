//! Storage engine benchmarks: append throughput per batch size and durability policy, reads from the
//! tail cache and from disk, a read from a sealed segment whose file is cached vs. one that must be
//! opened first, index lookups, the CRC32C cost, and a raw O_DIRECT baseline of the same
//! disk measured in the same run, so engine figures can be read as ratios to the hardware.
//!
//! Each log gets its own glommio executor, driven on the bench thread by `iter_custom`; only the
//! operation under test is inside the timed region (retention and file recycling are not). Data lives
//! under the workspace `target/` directory, on the real disk: tmpfs would hide O_DIRECT and fdatasync
//! costs. Disk use stays bounded: append logs apply retention between samples, raw files are recycled.

use std::cell::{Cell, OnceCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use sluice_io::{
    segment_file_stats, set_segment_file_limits, AppendBatch, BatchBytes, BatchHeader, Durability, Log, LogConfig,
    SegmentFileLimits,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// DMA buffer pool of each executor: room for two of the writer's largest group writes (8 MiB).
const IO_MEMORY_BYTES: usize = 32 * MIB;
/// Concurrent appenders of the throughput benchmarks (enough for group commit to show).
const APPENDERS: u64 = 16;
/// Concurrent appenders used to build the read logs quickly (many batches per DMA write).
const FILL_APPENDERS: u64 = 64;
/// Segment size of the append logs: large enough that rolling is rare, small enough that it happens.
const APPEND_SEGMENT_BYTES: u64 = 256 << 20;
/// Retention limit of the append logs, applied between samples once they grow past it.
const APPEND_RETENTION_BYTES: u64 = 512 << 20;
/// Segment size of the read logs: one segment, so every read returns exactly `READ_MAX_BYTES`.
const READ_SEGMENT_BYTES: u64 = 1 << 30;
/// Payload of the read benchmarks' batches.
const READ_BATCH_BYTES: usize = 16 * KIB;
/// `max_bytes` of every `read` in the read benchmarks (a Kafka fetch's default partition limit).
const READ_MAX_BYTES: usize = MIB;
/// Payload bytes of the log read from the tail cache (it must fit in the cache).
const CACHE_LOG_BYTES: usize = 64 * MIB;
/// Tail cache of that log: its payloads plus frame headers, with room to spare.
const CACHE_LOG_TAIL_CACHE_BYTES: usize = 80 * MIB;
/// Payload bytes of the log read from disk and of the log used for index lookups.
const DISK_LOG_BYTES: usize = 256 * MIB;
/// Small batches for index lookups, so the sparse index has many entries (one per ~4 batches).
const INDEX_BATCH_BYTES: usize = KIB;
const INDEX_RECORDS_PER_BATCH: u32 = 10;
/// Raw baseline files are recycled (untimed) once they reach this size, like segments rolling.
const RAW_FILE_BYTES: u64 = 256 << 20;
/// Timestamp of the first batch written by the benchmarks; each fill batch is 1 ms later.
const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;

fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(15);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY_BYTES).make().expect("glommio executor")
}

/// A fresh directory under the workspace target directory (on the real disk, not tmpfs).
fn bench_dir(name: &str) -> tempfile::TempDir {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).expect("create target dir");
    tempfile::Builder::new().prefix(&format!("bench-{name}-")).tempdir_in(target).expect("create bench dir")
}

/// Deterministic, incompressible payload bytes (xorshift), so nothing below us can shortcut zeros.
fn payload(len: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    Bytes::from((0..len).map(|_| xorshift(&mut x) as u8).collect::<Vec<u8>>())
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn size_name(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{}MiB", bytes / MIB)
    } else {
        format!("{}KiB", bytes / KIB)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How many of `total` operations appender `index` of `appenders` performs.
fn share(total: u64, appenders: u64, index: u64) -> u64 {
    total / appenders + u64::from(index < total % appenders)
}

async fn open(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, config).await.expect("open log")
}

async fn close(log: Log) {
    log.close().await.expect("close log");
}

/// DMA reads and writes an executor issued since the last call (glommio resets its counters when
/// read). Printed after each benchmark, warm-up included, so a figure can be explained by the I/O
/// behind it: bytes actually written per append, reads per lookup.
#[derive(Debug, Clone, Copy)]
struct DiskIo {
    reads: u64,
    bytes_read: u64,
    bytes_written: u64,
}

fn take_disk_io(ex: &LocalExecutor) -> DiskIo {
    ex.run(async {
        let rings = glommio::executor().io_stats().all_rings();
        let ((reads, bytes_read), (_, bytes_written)) = (rings.file_reads(), rings.file_writes());
        DiskIo { reads, bytes_read, bytes_written }
    })
}

fn per_op(total: u64, ops: u64) -> f64 {
    total as f64 / ops.max(1) as f64
}

/// A log in its own directory, on its own executor. Benchmarks create theirs on first use (in a
/// `OnceCell`), so a benchmark filtered out on the command line costs no setup.
struct LogFixture {
    // Field order is drop order: the log's handle goes before its executor.
    log: Log,
    config: LogConfig,
    ex: LocalExecutor,
    _dir: tempfile::TempDir,
}

impl LogFixture {
    fn open(name: &str, config: LogConfig) -> LogFixture {
        let ex = executor();
        let dir = bench_dir(name);
        let log = ex.run(open(dir.path(), config));
        LogFixture { log, config, ex, _dir: dir }
    }

    /// Closes and reopens the log: the tail cache starts empty, recovery starts from the checkpoint.
    fn reopen(self) -> LogFixture {
        let LogFixture { log, config, ex, _dir } = self;
        let log = ex.run(async {
            close(log).await;
            open(_dir.path(), config).await
        });
        LogFixture { log, config, ex, _dir }
    }

    fn close(self) {
        let LogFixture { log, ex, .. } = self;
        ex.run(close(log));
    }
}

// ---------------------------------------------------------------------------------------------
// CRC32C

/// The checksum the writer computes per batch (header fields + payload), without any I/O.
fn bench_crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    configure(&mut g);
    for size in [KIB, 16 * KIB, MIB] {
        let data = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(size_name(size), |b| b.iter(|| BatchHeader::new(0, 1, 0, black_box(&data)).crc));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Raw disk baseline

/// A file written sequentially (always extending it, as segments are) through a glommio DMA file.
struct RawFile {
    file: DmaFile,
    position: u64,
}

impl RawFile {
    async fn create(path: &Path) -> RawFile {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .expect("create raw file");
        RawFile { file, position: 0 }
    }

    /// Writes `len` bytes (a multiple of 4096) at the end of the file; fdatasyncs if asked.
    async fn append(&mut self, len: usize, sync: bool) {
        // Contents do not matter to the device; the buffer comes from the executor's DMA pool as
        // the engine's write buffers do.
        let buf = self.file.alloc_dma_buffer(len);
        let written = self.file.write_at(buf, self.position).await.expect("raw write");
        assert_eq!(written, len, "short O_DIRECT write");
        if sync {
            self.file.fdatasync().await.expect("raw fdatasync");
        }
        self.position += len as u64;
    }

    /// Starts over with an empty file once this one is full (outside the timed region).
    async fn recycle_if_full(&mut self) {
        if self.position >= RAW_FILE_BYTES {
            self.file.truncate(0).await.expect("truncate raw file");
            self.file.fdatasync().await.expect("sync truncated raw file");
            self.position = 0;
        }
    }

    async fn timed_appends(&mut self, iters: u64, len: usize, sync: bool) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.append(len, sync).await;
        }
        let elapsed = start.elapsed();
        self.recycle_if_full().await;
        elapsed
    }

    /// `iters` times: rewrite the file's first 4 KiB in place and fdatasync. This is what the engine
    /// does for small appends: it rewrites the partial last block, which the file already holds, so
    /// most of its syncs do not change the file size (no journal commit on ext4).
    async fn timed_rewrites_synced(&mut self, iters: u64) -> Duration {
        if self.position == 0 {
            self.append(4096, true).await;
        }
        let start = Instant::now();
        for _ in 0..iters {
            let buf = self.file.alloc_dma_buffer(4096);
            let written = self.file.write_at(buf, 0).await.expect("raw rewrite");
            assert_eq!(written, 4096, "short O_DIRECT write");
            self.file.fdatasync().await.expect("raw fdatasync");
        }
        start.elapsed()
    }
}

/// glommio decides per device whether I/O is polled from the first DMA file opened on it; an empty
/// file makes it answer wrongly (see DESIGN.md). The engine guards itself in `Log::open`; the raw
/// benchmarks open files themselves, so they open a non-empty one first.
async fn prime_dio_probe(dir: &Path) {
    let probe = dir.join("dio-probe");
    std::fs::write(&probe, [0x5a_u8; 4096]).expect("write probe file");
    let file = DmaFile::open(&probe).await.expect("open probe file");
    let read = file.read_at_aligned(0, 4096).await.expect("read probe file");
    assert_eq!(read.len(), 4096);
    drop(read);
    file.close().await.expect("close probe file");
}

fn bench_raw(c: &mut Criterion) {
    let ex = executor();
    let dir = bench_dir("raw");
    let mut g = c.benchmark_group("raw");
    configure(&mut g);
    let mut file = ex.run(async {
        prime_dio_probe(dir.path()).await;
        RawFile::create(&dir.path().join("raw.data")).await
    });
    for size in [MIB, 8 * MIB] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("dma_write_{}", size_name(size)), |b| {
            b.iter_custom(|iters| ex.run(file.timed_appends(iters, size, false)))
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("write4k_fdatasync", |b| b.iter_custom(|iters| ex.run(file.timed_appends(iters, 4096, true))));
    g.bench_function("rewrite4k_fdatasync", |b| b.iter_custom(|iters| ex.run(file.timed_rewrites_synced(iters))));
    g.finish();
    ex.run(async move { file.file.close().await.expect("close raw file") });
}

// ---------------------------------------------------------------------------------------------
// Append

/// `iters` appends of `payload` shared among `appenders` concurrent tasks; only the appends are
/// timed, retention runs after.
async fn timed_appends(log: &Log, payload: &Bytes, iters: u64, appenders: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|index| {
            let (log, payload) = (log.clone(), payload.clone());
            let n = share(iters, appenders, index);
            glommio::spawn_local(async move {
                for _ in 0..n {
                    let batch =
                        AppendBatch { record_count: 1, max_timestamp: TIMESTAMP_BASE_MS, payload: payload.clone() };
                    log.append(batch).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = start.elapsed();
    if log.size_bytes() > APPEND_RETENTION_BYTES {
        log.apply_retention(now_ms()).await.expect("apply retention");
    }
    elapsed
}

fn bench_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    configure(&mut g);
    let policies = [
        ("always", Durability::Always, APPENDERS),
        ("always_seq", Durability::Always, 1),
        ("interval_10ms", Durability::Interval(Duration::from_millis(10)), APPENDERS),
        ("never", Durability::Never, APPENDERS),
    ];
    for size in [KIB, 16 * KIB, MIB] {
        let data = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        for (name, durability, appenders) in policies {
            let config = LogConfig {
                segment_bytes: APPEND_SEGMENT_BYTES,
                segment_ms: None,
                retention_bytes: Some(APPEND_RETENTION_BYTES),
                retention_ms: None,
                durability,
                ..LogConfig::default()
            };
            let fixture = OnceCell::new();
            let appends = Cell::new(0);
            let id = format!("{}/{name}", size_name(size));
            g.bench_function(&id, |b| {
                let f = fixture.get_or_init(|| {
                    let f = LogFixture::open("append", config);
                    take_disk_io(&f.ex);
                    f
                });
                b.iter_custom(|iters| {
                    appends.set(appends.get() + iters);
                    f.ex.run(timed_appends(&f.log, &data, iters, appenders))
                })
            });
            let Some(f) = fixture.into_inner() else { continue };
            let (io, stats, n) = (take_disk_io(&f.ex), f.log.stats(), appends.get());
            eprintln!(
                "append/{id}: {n} appends, {:.1} batches per DMA write, {:.1} KiB written per append, \
                 {:.1} appends per fdatasync",
                per_op(stats.batches_written, stats.writes),
                per_op(io.bytes_written, n) / KIB as f64,
                per_op(n, stats.syncs),
            );
            f.close();
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Read

/// Appends `batches` batches of `batch_bytes` with many concurrent appenders (the writer packs them
/// into few DMA writes). Timestamps rise by 1 ms per batch in offset order: offsets are assigned
/// synchronously in call order, and each task takes its timestamp right before calling `append`.
async fn fill(log: &Log, batches: u64, batch_bytes: usize, records_per_batch: u32) {
    let data = payload(batch_bytes);
    let next_ts = Rc::new(Cell::new(TIMESTAMP_BASE_MS));
    let tasks: Vec<_> = (0..FILL_APPENDERS)
        .map(|index| {
            let (log, data, next_ts) = (log.clone(), data.clone(), next_ts.clone());
            let n = share(batches, FILL_APPENDERS, index);
            glommio::spawn_local(async move {
                for _ in 0..n {
                    let ts = next_ts.get();
                    next_ts.set(ts + 1);
                    let batch =
                        AppendBatch { record_count: records_per_batch, max_timestamp: ts, payload: data.clone() };
                    log.append(batch).await.expect("fill append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

fn read_config(tail_cache_bytes: usize) -> LogConfig {
    LogConfig {
        segment_bytes: READ_SEGMENT_BYTES,
        segment_ms: None,
        retention_ms: None,
        tail_cache_bytes,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

/// A log of `bytes` of 16 KiB batches (one offset each). With `reopen`, it is closed and opened
/// again so that nothing is left in the tail cache.
fn read_fixture(bytes: usize, tail_cache_bytes: usize, reopen: bool) -> LogFixture {
    let f = LogFixture::open("read", read_config(tail_cache_bytes));
    f.ex.run(fill(&f.log, (bytes / READ_BATCH_BYTES) as u64, READ_BATCH_BYTES, 1));
    let f = if reopen { f.reopen() } else { f };
    take_disk_io(&f.ex);
    f
}

/// `iters` reads of `READ_MAX_BYTES` walking the log from `cursor`, wrapping at its end. Every read
/// returns exactly `READ_MAX_BYTES` of payload (whole batches; the log is a multiple of that).
async fn timed_reads(log: &Log, cursor: &Cell<u64>, iters: u64, from_disk: bool) -> Duration {
    let end = log.next_offset();
    let mut at = cursor.get();
    let start = Instant::now();
    for _ in 0..iters {
        let batches = log.read(at, READ_MAX_BYTES).await.expect("read");
        let bytes: usize = batches.iter().map(|b| b.payload.len()).sum();
        assert_eq!(bytes, READ_MAX_BYTES, "a read returns max_bytes of whole batches");
        assert_eq!(matches!(batches[0].payload, BatchBytes::Disk(_)), from_disk, "served from the expected place");
        at = batches[batches.len() - 1].header.next_offset();
        if at == end {
            at = 0;
        }
        black_box(batches);
    }
    let elapsed = start.elapsed();
    cursor.set(at);
    elapsed
}

fn bench_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    configure(&mut g);
    g.throughput(Throughput::Bytes(READ_MAX_BYTES as u64));
    for (name, bytes, tail_cache_bytes, from_disk) in
        [("cache", CACHE_LOG_BYTES, CACHE_LOG_TAIL_CACHE_BYTES, false), ("disk", DISK_LOG_BYTES, 0, true)]
    {
        let fixture = OnceCell::new();
        let cursor = Cell::new(0);
        let reads = Cell::new(0);
        g.bench_function(name, |b| {
            let f = fixture.get_or_init(|| read_fixture(bytes, tail_cache_bytes, from_disk));
            b.iter_custom(|iters| {
                reads.set(reads.get() + iters);
                f.ex.run(timed_reads(&f.log, &cursor, iters, from_disk))
            })
        });
        if let Some(f) = fixture.into_inner() {
            print_reads(&format!("read/{name}"), take_disk_io(&f.ex), reads.get());
            f.close();
        }
    }
    g.finish();
}

fn print_reads(name: &str, io: DiskIo, ops: u64) {
    eprintln!(
        "{name}: {ops} operations, {:.2} DMA reads and {:.1} KiB read from disk per operation",
        per_op(io.reads, ops),
        per_op(io.bytes_read, ops) / KIB as f64,
    );
}

// ---------------------------------------------------------------------------------------------
// Index lookups

/// `iters` reads of the single batch holding a random offset (`max_bytes` 1), from disk.
async fn timed_offset_lookups(log: &Log, rng: &Cell<u64>, iters: u64) -> Duration {
    let end = log.next_offset();
    let mut x = rng.get();
    let start = Instant::now();
    for _ in 0..iters {
        let offset = xorshift(&mut x) % end;
        let batches = log.read(offset, 1).await.expect("read one batch");
        assert_eq!(batches.len(), 1, "max_bytes 1 returns only the first batch");
        let h = &batches[0].header;
        assert!(h.base_offset <= offset && offset <= h.last_offset(), "the batch holds the offset");
        black_box(batches);
    }
    let elapsed = start.elapsed();
    rng.set(x);
    elapsed
}

/// `iters` `offset_for_timestamp` calls at random timestamps (each batch has its own, 1 ms apart).
async fn timed_timestamp_lookups(log: &Log, batches: u64, rng: &Cell<u64>, iters: u64) -> Duration {
    let mut x = rng.get();
    let start = Instant::now();
    for _ in 0..iters {
        let ts = TIMESTAMP_BASE_MS + (xorshift(&mut x) % batches) as i64;
        let found = log.offset_for_timestamp(ts).await.expect("offset for timestamp");
        let (offset, max_ts) = found.expect("every timestamp in range has a batch");
        assert_eq!(max_ts, ts, "the batch stamped with exactly that time is found");
        black_box(offset);
    }
    let elapsed = start.elapsed();
    rng.set(x);
    elapsed
}

/// One large segment of 1 KiB batches (10 offsets each, 1 ms apart), reopened so reads go to disk.
fn index_fixture(batches: u64) -> LogFixture {
    let f = LogFixture::open("index", read_config(0));
    f.ex.run(fill(&f.log, batches, INDEX_BATCH_BYTES, INDEX_RECORDS_PER_BATCH));
    let f = f.reopen();
    assert_eq!(f.log.segment_bases().len(), 1, "one large segment");
    take_disk_io(&f.ex);
    f
}

fn bench_index(c: &mut Criterion) {
    let batches = (DISK_LOG_BYTES / INDEX_BATCH_BYTES) as u64;
    let fixture = OnceCell::new();
    let mut g = c.benchmark_group("index");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    let rng = Cell::new(0x2545_F491_4F6C_DD1D);
    let lookups = Cell::new(0);
    g.bench_function("lookup_offset", |b| {
        let f = fixture.get_or_init(|| index_fixture(batches));
        b.iter_custom(|iters| {
            lookups.set(lookups.get() + iters);
            f.ex.run(timed_offset_lookups(&f.log, &rng, iters))
        })
    });
    if let Some(f) = fixture.get() {
        print_reads("index/lookup_offset", take_disk_io(&f.ex), lookups.replace(0));
    }
    g.bench_function("lookup_timestamp", |b| {
        let f = fixture.get_or_init(|| index_fixture(batches));
        b.iter_custom(|iters| {
            lookups.set(lookups.get() + iters);
            f.ex.run(timed_timestamp_lookups(&f.log, batches, &rng, iters))
        })
    });
    g.finish();
    if let Some(f) = fixture.into_inner() {
        if lookups.get() > 0 {
            print_reads("index/lookup_timestamp", take_disk_io(&f.ex), lookups.get());
        }
        f.close();
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed segment reads: file cached vs. opened

/// Segment size of the sealed-read log: 64 batches of `READ_BATCH_BYTES` per segment.
const SEALED_SEGMENT_BYTES: u64 = MIB as u64;
/// Sealed segments the reads cycle through (all fit in the cache of the `cached` case).
const SEALED_SEGMENTS_READ: u64 = 8;

/// A log of `SEALED_SEGMENTS_READ` + 1 segments of 16 KiB batches, reopened (tail cache empty,
/// sealed files closed by recovery).
fn sealed_fixture() -> LogFixture {
    let config = LogConfig { segment_bytes: SEALED_SEGMENT_BYTES, ..read_config(0) };
    let f = LogFixture::open("sealed", config);
    let batches = (SEALED_SEGMENTS_READ + 1) * SEALED_SEGMENT_BYTES / READ_BATCH_BYTES as u64;
    f.ex.run(fill(&f.log, batches, READ_BATCH_BYTES, 1));
    let f = f.reopen();
    assert!(f.log.segment_bases().len() as u64 > SEALED_SEGMENTS_READ, "enough sealed segments");
    f
}

/// `iters` reads of one batch, each from the next of the first `SEALED_SEGMENTS_READ` segments
/// (so with a cache of one file every read opens one). Checks how many files were opened.
async fn timed_sealed_reads(log: &Log, turn: &Cell<u64>, iters: u64, opens_each: bool) -> Duration {
    let bases = log.segment_bases();
    let opens_before = segment_file_stats().opens;
    let mut t = turn.get();
    let start = Instant::now();
    for _ in 0..iters {
        let base = bases[(t % SEALED_SEGMENTS_READ) as usize];
        let batches = log.read(base, 1).await.expect("read");
        assert!(matches!(batches[0].payload, BatchBytes::Disk(_)), "from disk");
        black_box(batches);
        t += 1;
    }
    let elapsed = start.elapsed();
    turn.set(t);
    let opens = segment_file_stats().opens - opens_before;
    if opens_each {
        assert_eq!(opens, iters, "every read opened its segment's file");
    } else {
        assert!(opens <= SEALED_SEGMENTS_READ, "{opens} files opened: reads should hit the cache");
    }
    elapsed
}

fn bench_sealed_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealed_read");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    let fixture = OnceCell::new();
    let turn = Cell::new(0);
    for (name, max_open_files) in [("cached", 64), ("open", 1)] {
        g.bench_function(name, |b| {
            let f = fixture.get_or_init(sealed_fixture);
            set_segment_file_limits(SegmentFileLimits { max_open_files, idle_close_ms: 600_000 }).expect("limits");
            b.iter_custom(|iters| f.ex.run(timed_sealed_reads(&f.log, &turn, iters, max_open_files == 1)))
        });
    }
    g.finish();
    if let Some(f) = fixture.into_inner() {
        f.close();
    }
}

criterion_group!(benches, bench_crc32c, bench_raw, bench_append, bench_read, bench_sealed_read, bench_index);
criterion_main!(benches);
