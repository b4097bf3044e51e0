//! Producer threads. Open loop: record `j` of a phase is due at `phase_start + j / rate` (thread `t`
//! of `n` takes the records with `j % n == t`); a due record joins its partition's batch, which is
//! sent when full or when its oldest record has lingered `linger_ms`. Late records are never skipped:
//! if the connection's in-flight window is full the thread waits, records keep falling due, and their
//! latency — always measured from the intended send time — grows. That is how a stalled broker shows
//! up in the percentiles instead of hiding in a slower send rate (coordinated omission).
//! Closed loop (`max`): a full batch is built whenever the window has room; latency from the send.
//!
//! Each connection has one writer (this thread) and one reader thread; responses on a connection come
//! in request order, so the reader pairs each with the oldest in-flight request.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest};
use kafka_protocol::records::Compression;
use sluice_client::{requests, BatchBuilder};

use crate::client::{decode_response, encode_request, read_frame, TopicLayout};
use crate::error::{LoadgenError, Result};
use crate::scenario::{CompressionSpec, KeyDistribution, Mode, Scenario, SizeDistribution};
use crate::stats::Shared;

/// How long the broker may take to answer a Produce before it reports a timeout (milliseconds).
pub const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Longest single sleep of a producer waiting for the next due record (it re-checks after).
const MAX_IDLE_SLEEP: Duration = Duration::from_millis(20);

/// Bytes at the start of every record value: intended send time (µs since the Unix epoch, big-endian
/// i64), then the phase index (u16) and the producer thread's record number (48 bits).
pub const VALUE_HEADER_BYTES: usize = 16;

/// Writes the value header.
pub fn encode_value_header(buf: &mut BytesMut, intended_unix_us: i64, phase: u16, number: u64) {
    buf.put_i64(intended_unix_us);
    buf.put_u64((u64::from(phase) << 48) | (number & 0xffff_ffff_ffff));
}

/// Reads the value header: (intended send time µs since the epoch, phase index).
pub fn decode_value_header(value: &[u8]) -> Option<(i64, usize)> {
    let head: &[u8; VALUE_HEADER_BYTES] = value.get(..VALUE_HEADER_BYTES)?.try_into().ok()?;
    let intended = i64::from_be_bytes(head[..8].try_into().ok()?);
    let phase = u16::from_be_bytes(head[8..10].try_into().ok()?);
    Some((intended, usize::from(phase)))
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, made positive, modulo partitions.
pub fn kafka_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A small, fast, deterministic random source (xorshift64*) for sizes and keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The open-loop schedule of one producer thread: due times (seconds after the start) and phases.
pub struct Schedule {
    /// (start_s, rate, records in the phase)
    phases: Vec<(f64, f64, u64)>,
    phase: usize,
    thread: u64,
    next_index: u64,
    stride: u64,
}

impl Schedule {
    pub fn new(scenario: &Scenario, thread: usize, threads: usize) -> Schedule {
        let mut start = 0.0;
        let mut phases = Vec::with_capacity(scenario.phases.len());
        for p in &scenario.phases {
            phases.push((start, p.rate, (p.duration_s * p.rate).floor() as u64));
            start += p.duration_s;
        }
        Schedule { phases, phase: 0, thread: thread as u64, next_index: thread as u64, stride: threads.max(1) as u64 }
    }

    /// The next record's due time (seconds after the start) and phase, without taking it.
    pub fn peek(&mut self) -> Option<(f64, usize)> {
        loop {
            let &(start, rate, count) = self.phases.get(self.phase)?;
            if self.next_index < count && rate > 0.0 {
                return Some((start + self.next_index as f64 / rate, self.phase));
            }
            // Each phase numbers its records from 0; this thread takes those ≡ thread (mod threads).
            self.phase += 1;
            self.next_index = self.thread;
        }
    }

    pub fn advance(&mut self) {
        self.next_index += self.stride;
    }
}

/// A record waiting in a partition's batch.
struct Pending {
    intended_us: u64,
    phase: u16,
    key: Option<Bytes>,
    value_bytes: usize,
}

/// What the reader needs to account for one request.
struct InFlight {
    correlation_id: i32,
    partition: i32,
    /// (intended send time µs after start, phase) of each record.
    records: Vec<(u64, u16)>,
    bytes: u64,
}

struct ProducerConnection {
    writer: TcpStream,
    broker: String,
    version: i16,
    next_correlation_id: i32,
    in_flight: Option<SyncSender<InFlight>>,
    reader: Option<JoinHandle<()>>,
}

/// Runs one producer thread to the end of the schedule (or the duration, in `max` mode), then waits
/// for every answer.
pub fn run_producer(
    thread_index: usize,
    scenario: Arc<Scenario>,
    layout: Arc<TopicLayout>,
    shared: Arc<Shared>,
) -> Result<()> {
    let spec = &scenario.producer;
    let mut connections: Vec<ProducerConnection> = Vec::new();
    let mut partition_conn: Vec<usize> = Vec::with_capacity(layout.leaders.len());
    let mut by_address: HashMap<String, usize> = HashMap::new();
    for p in 0..layout.partitions() {
        let address = layout.leader_address(p)?.to_string();
        let index = match by_address.get(&address) {
            Some(&i) => i,
            None => {
                let conn = crate::client::connect(&address)?;
                let version = conn.version(ApiKey::Produce)?;
                let writer = conn.try_clone_stream()?;
                let (in_flight, reader) = if spec.acks == 0 {
                    (None, None)
                } else {
                    // A rendezvous channel for a window of 1: the reader holds the one in-flight request.
                    let (tx, rx) = sync_channel::<InFlight>(spec.max_in_flight - 1);
                    let stream = conn.try_clone_stream()?;
                    let shared = shared.clone();
                    let broker = address.clone();
                    let handle = thread::Builder::new()
                        .name(format!("produce-rx-{thread_index}"))
                        .spawn(move || {
                            if let Err(e) = read_responses(stream, &broker, version, rx, &shared) {
                                shared.fail(format!("producer {thread_index} reading from {broker}: {e}"));
                            }
                        })
                        .map_err(|e| LoadgenError::io("spawning a reader thread", e))?;
                    (Some(tx), Some(handle))
                };
                connections.push(ProducerConnection {
                    writer,
                    broker: address.clone(),
                    version,
                    next_correlation_id: 1,
                    in_flight,
                    reader,
                });
                by_address.insert(address, connections.len() - 1);
                connections.len() - 1
            }
        };
        partition_conn.push(index);
    }

    let mut producer = Producer {
        scenario: scenario.clone(),
        layout,
        shared: shared.clone(),
        connections,
        partition_conn,
        batches: (0..scenario.topic.partitions.max(1)).map(|_| Vec::new()).collect(),
        batch_first_due: vec![None; scenario.topic.partitions.max(1) as usize],
        sticky: thread_index as i32,
        rng: Rng::new(0x5eed + thread_index as u64),
        number: 0,
        filler: Bytes::from(vec![b'x'; spec.record_bytes]),
    };
    producer.batches.truncate(producer.layout.partitions() as usize);
    producer.batch_first_due.truncate(producer.layout.partitions() as usize);
    let result = match spec.mode {
        Mode::OpenLoop => producer.open_loop(thread_index),
        Mode::Max => producer.closed_loop(),
    };
    // Close the windows: readers end after the last answer.
    for conn in &mut producer.connections {
        conn.in_flight = None;
    }
    for conn in &mut producer.connections {
        if let Some(reader) = conn.reader.take() {
            if reader.join().is_err() {
                shared.fail(format!("a reader thread of {} panicked", conn.broker));
            }
        }
    }
    result
}

struct Producer {
    scenario: Arc<Scenario>,
    layout: Arc<TopicLayout>,
    shared: Arc<Shared>,
    connections: Vec<ProducerConnection>,
    partition_conn: Vec<usize>,
    batches: Vec<Vec<Pending>>,
    /// When the oldest record of each partition's batch fell due.
    batch_first_due: Vec<Option<Instant>>,
    /// The partition keyless records go to until its batch is sent.
    sticky: i32,
    rng: Rng,
    number: u64,
    filler: Bytes,
}

impl Producer {
    fn open_loop(&mut self, thread_index: usize) -> Result<()> {
        let spec = self.scenario.producer.clone();
        let threads = spec.threads;
        let linger = Duration::from_secs_f64(spec.linger_ms / 1000.0);
        let mut schedule = Schedule::new(&self.scenario, thread_index, threads);
        let start = self.shared.start;
        loop {
            if self.shared.stopping() {
                return Ok(());
            }
            let now = Instant::now();
            // Every record that is due joins its batch; full batches go at once.
            while let Some((due_s, phase)) = schedule.peek() {
                let due = start + Duration::from_secs_f64(due_s);
                if due > now {
                    break;
                }
                schedule.advance();
                let partition = self.add_record(self.shared.us_since_start(due), phase as u16, due);
                if self.batches[partition as usize].len() >= spec.batch_max_records {
                    self.send_batch(partition)?;
                }
            }
            // Batches whose oldest record has lingered long enough.
            let now = Instant::now();
            let mut next_linger_deadline: Option<Instant> = None;
            for p in 0..self.batches.len() {
                if let Some(first) = self.batch_first_due[p] {
                    let deadline = first + linger;
                    if deadline <= now {
                        self.send_batch(p as i32)?;
                    } else {
                        next_linger_deadline = Some(next_linger_deadline.map_or(deadline, |d| d.min(deadline)));
                    }
                }
            }
            let next_due = schedule.peek().map(|(s, _)| start + Duration::from_secs_f64(s));
            let wake = match (next_due, next_linger_deadline) {
                (None, None) => return Ok(()),
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
            };
            let now = Instant::now();
            if wake > now {
                thread::sleep((wake - now).min(MAX_IDLE_SLEEP));
            }
        }
    }

    fn closed_loop(&mut self) -> Result<()> {
        let spec = self.scenario.producer.clone();
        let mut phase_end = self.shared.start;
        for (phase_index, phase) in self.scenario.phases.clone().iter().enumerate() {
            phase_end += Duration::from_secs_f64(phase.duration_s);
            while Instant::now() < phase_end && !self.shared.stopping() {
                let now = Instant::now();
                let mut partition = 0;
                for _ in 0..spec.batch_max_records {
                    partition = self.add_record(self.shared.us_since_start(now), phase_index as u16, now);
                    if self.batches[partition as usize].len() >= spec.batch_max_records {
                        break;
                    }
                }
                // Blocks while the window is full: the closed loop's back-pressure.
                self.send_batch(partition)?;
            }
        }
        for p in 0..self.batches.len() {
            self.send_batch(p as i32)?;
        }
        Ok(())
    }

    /// Adds one due record to its partition's batch; returns the partition.
    fn add_record(&mut self, intended_us: u64, phase: u16, due: Instant) -> i32 {
        let spec = &self.scenario.producer;
        let partitions = self.layout.partitions();
        let key = match spec.key_distribution {
            KeyDistribution::None => None,
            KeyDistribution::Uniform => Some(self.rng.between(0, spec.key_count - 1)),
            KeyDistribution::Sequential => Some(self.number % spec.key_count),
        }
        .map(|k| Bytes::from(format!("key-{k}")));
        let partition = match &key {
            Some(k) => kafka_partition(k, partitions),
            None => self.sticky.rem_euclid(partitions),
        };
        let value_bytes = match spec.size_distribution {
            SizeDistribution::Fixed => spec.record_bytes,
            SizeDistribution::Uniform => {
                self.rng.between(spec.record_bytes_min as u64, spec.record_bytes as u64) as usize
            }
        };
        let batch = &mut self.batches[partition as usize];
        if batch.is_empty() {
            self.batch_first_due[partition as usize] = Some(due);
        }
        batch.push(Pending { intended_us, phase, key, value_bytes });
        self.number += 1;
        partition
    }

    /// Encodes and sends partition `p`'s batch (if any); blocks while the connection's window is full.
    fn send_batch(&mut self, partition: i32) -> Result<()> {
        let pending = std::mem::take(&mut self.batches[partition as usize]);
        self.batch_first_due[partition as usize] = None;
        if pending.is_empty() {
            return Ok(());
        }
        if self.scenario.producer.key_distribution == KeyDistribution::None {
            // Sticky partitioner: the next keyless records go to the next partition.
            self.sticky = (partition + 1).rem_euclid(self.layout.partitions());
        }
        let start_unix_us = self.shared.start_unix_us;
        let mut value_buf = BytesMut::new();
        let mut batch = BatchBuilder::new(compression(self.scenario.producer.compression)).with_capacity(pending.len());
        let mut bytes = 0u64;
        for (i, r) in pending.iter().enumerate() {
            let intended_unix_us = start_unix_us + r.intended_us as i64;
            value_buf.reserve(r.value_bytes);
            encode_value_header(&mut value_buf, intended_unix_us, r.phase, self.number + i as u64);
            value_buf.extend_from_slice(&self.filler[..r.value_bytes - VALUE_HEADER_BYTES]);
            let value = value_buf.split().freeze();
            bytes += (r.value_bytes + r.key.as_ref().map_or(0, |k| k.len())) as u64;
            batch.push(intended_unix_us / 1000, r.key.clone(), Some(value));
        }
        let request = requests::produce(
            &self.layout.topic,
            partition,
            batch.build()?,
            self.scenario.producer.acks,
            PRODUCE_TIMEOUT_MS,
        );
        let conn = &mut self.connections[self.partition_conn[partition as usize]];
        let correlation_id = conn.next_correlation_id;
        conn.next_correlation_id = conn.next_correlation_id.wrapping_add(1);
        let frame = encode_request(&request, conn.version, correlation_id)?;
        let count = pending.len() as u64;
        let in_flight = InFlight {
            correlation_id,
            partition,
            records: pending.iter().map(|r| (r.intended_us, r.phase)).collect(),
            bytes,
        };
        if let Some(window) = &conn.in_flight {
            // Before the write, so the reader always finds the request its answer belongs to.
            if window.send(in_flight).is_err() {
                return Err(LoadgenError::Worker(format!("the reader of {} stopped", conn.broker)));
            }
            conn.writer.write_all(&frame).map_err(|e| LoadgenError::io(format!("writing to {}", conn.broker), e))?;
            self.shared.sent.fetch_add(count, Ordering::Relaxed);
            self.shared.last_send_us.fetch_max(self.shared.us_since_start(Instant::now()), Ordering::Relaxed);
        } else {
            // acks=0: no answer; the "ack" is the write.
            conn.writer.write_all(&frame).map_err(|e| LoadgenError::io(format!("writing to {}", conn.broker), e))?;
            let now_us = self.shared.us_since_start(Instant::now());
            self.shared.sent.fetch_add(count, Ordering::Relaxed);
            self.shared.last_send_us.fetch_max(now_us, Ordering::Relaxed);
            account_acked(&self.shared, &in_flight, now_us);
        }
        Ok(())
    }
}

fn compression(spec: CompressionSpec) -> Compression {
    match spec {
        CompressionSpec::None => Compression::None,
        CompressionSpec::Gzip => Compression::Gzip,
        CompressionSpec::Snappy => Compression::Snappy,
        CompressionSpec::Lz4 => Compression::Lz4,
        CompressionSpec::Zstd => Compression::Zstd,
    }
}

fn account_acked(shared: &Shared, request: &InFlight, now_us: u64) {
    {
        let mut produce = shared.produce.lock().unwrap_or_else(|p| p.into_inner());
        for &(intended_us, phase) in &request.records {
            produce.record(now_us.saturating_sub(intended_us), usize::from(phase));
        }
    }
    for &(_, phase) in &request.records {
        if let Some(counter) = shared.acked_per_phase.get(usize::from(phase)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(last) = shared.last_ack_us_per_phase.get(usize::from(phase)) {
            last.fetch_max(now_us, Ordering::Relaxed);
        }
    }
    shared.acked.fetch_add(request.records.len() as u64, Ordering::Relaxed);
    shared.acked_bytes.fetch_add(request.bytes, Ordering::Relaxed);
    shared.last_ack_us.fetch_max(now_us, Ordering::Relaxed);
}

/// The reader of one producer connection: pairs answers with in-flight requests, in order.
fn read_responses(
    mut stream: TcpStream,
    broker: &str,
    version: i16,
    in_flight: Receiver<InFlight>,
    shared: &Shared,
) -> Result<()> {
    while let Ok(request) = in_flight.recv() {
        let frame = read_frame(&mut stream, broker)?;
        let now_us = shared.us_since_start(Instant::now());
        let response = decode_response::<ProduceRequest>(frame, version, request.correlation_id, broker)?;
        let code = response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == request.partition)
            .map(|p| p.error_code)
            .ok_or_else(|| LoadgenError::protocol(broker, format!("no answer for partition {}", request.partition)))?;
        if code == 0 {
            account_acked(shared, &request, now_us);
        } else {
            shared.record_errors(code, request.records.len() as u64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn value_header_round_trip() {
        let mut buf = BytesMut::new();
        encode_value_header(&mut buf, 1_700_000_000_123_456, 3, 42);
        assert_eq!(decode_value_header(&buf), Some((1_700_000_000_123_456, 3)));
        assert_eq!(decode_value_header(&buf[..10]), None);
    }

    #[test]
    fn schedule_splits_phases_between_threads() {
        let scenario = Scenario::from_toml(
            r#"
            name = "s"
            [topic]
            name = "s"
            [producer]
            [[phases]]
            name = "a"
            duration_s = 1
            rate = 10
            [[phases]]
            name = "idle"
            duration_s = 1
            [[phases]]
            name = "b"
            duration_s = 0.5
            rate = 4
        "#,
        )
        .unwrap();
        let mut all = Vec::new();
        for t in 0..3 {
            let mut s = Schedule::new(&scenario, t, 3);
            while let Some(x) = s.peek() {
                all.push(x);
                s.advance();
            }
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(all.len(), 12);
        assert!((all[1].0 - 0.1).abs() < 1e-9);
        assert_eq!(all[10], (2.0, 2));
        assert!((all[11].0 - 2.25).abs() < 1e-9);
    }
}
