//! Broker metrics, exposed in Prometheus text format on `--metrics HOST:PORT` (`exporter`).
//!
//! Each core writes only its own `CoreMetrics`: counters are relaxed atomics, latency histograms
//! (HDR, microseconds) sit behind a mutex that only the scraper ever contends for. What lives in a
//! core's `!Send` state — partitions' offsets, groups' committed offsets, storage latencies,
//! executor busy time — is copied into the core's `CoreMetrics` by a task on that core every
//! `metrics_publish_interval_ms` (`Shard::publish_metrics`), so a scrape never waits for a core.

pub mod exporter;
pub mod families;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

/// API keys with their own counters and histogram (Kafka's keys are below this).
pub const MAX_API_KEY: usize = 96;
/// A latency histogram in microseconds with 3 significant digits (the engine's, so they merge).
pub use sluice_io::latency::histogram as latency_histogram;
/// Longest latency recorded exactly (longer ones are clamped): one minute, in microseconds.
pub use sluice_io::latency::MAX_LATENCY_US;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a histogram or snapshot half-updated
    // in a way that matters for metrics: keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A partition's replication state for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationSample {
    pub leader: bool,
    pub leader_epoch: i32,
    /// Leader side only (0 on a follower).
    pub replicas: usize,
    pub in_sync_replicas: usize,
    pub max_follower_lag: u64,
}

/// Requests of one API on one core.
#[derive(Default)]
pub struct ApiStats {
    pub requests: AtomicU64,
    /// Requests that closed the connection (undecodable, unsupported version).
    pub failed: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

/// One partition as last published by its core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: i32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    /// Records and bytes of produced batches appended since the broker started.
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// Replication as this broker sees it.
    pub replication: ReplicationSample,
}

/// A group's committed offset as last published by the coordinator's core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSample {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a core copies out of its own state periodically.
#[derive(Debug, Clone, Default)]
pub struct CoreSnapshot {
    pub partitions: Vec<PartitionSample>,
    pub commits: Vec<CommitSample>,
}

/// One core's metrics.
pub struct CoreMetrics {
    pub core: usize,
    apis: Vec<ApiStats>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connections_open: AtomicI64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Requests this core sent to other cores, and requests it served for them.
    pub cross_core_sent: AtomicU64,
    pub cross_core_served: AtomicU64,
    /// Time the executor spent running tasks and polling I/O, in nanoseconds.
    pub busy_ns: AtomicU64,
    storage_write_us: Mutex<Histogram<u64>>,
    storage_sync_us: Mutex<Histogram<u64>>,
    snapshot: Mutex<CoreSnapshot>,
}

impl CoreMetrics {
    pub fn new(core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            apis: (0..MAX_API_KEY).map(|_| ApiStats::default()).collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            cross_core_sent: AtomicU64::new(0),
            cross_core_served: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            storage_write_us: Mutex::new(latency_histogram()),
            storage_sync_us: Mutex::new(latency_histogram()),
            snapshot: Mutex::new(CoreSnapshot::default()),
        }
    }

    /// A request of `api_key` took `elapsed` (decode to response ready).
    pub fn record_request(&self, api_key: i16, elapsed: Duration, failed: bool) {
        let Some(stats) = usize::try_from(api_key).ok().and_then(|k| self.apis.get(k)) else { return };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        let us = (elapsed.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        lock(&stats.latency_us).get_or_insert_with(latency_histogram).saturating_record(us);
    }

    /// Per API key with traffic: (key, requests, failed, latency histogram).
    pub fn api_stats(&self) -> Vec<(i16, u64, u64, Histogram<u64>)> {
        self.apis
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                let h = lock(&s.latency_us).clone()?;
                Some((k as i16, s.requests.load(Ordering::Relaxed), s.failed.load(Ordering::Relaxed), h))
            })
            .collect()
    }

    /// Adds this core's storage latencies since the last call (`sluice_io::latency::take`).
    pub fn add_storage_latency(&self, io: &sluice_io::latency::IoLatency) {
        let _ = lock(&self.storage_write_us).add(&io.write_us);
        let _ = lock(&self.storage_sync_us).add(&io.sync_us);
    }

    pub fn storage_latency(&self) -> (Histogram<u64>, Histogram<u64>) {
        (lock(&self.storage_write_us).clone(), lock(&self.storage_sync_us).clone())
    }

    /// The core's partitions, as of now (published by the core's metrics job).
    pub fn publish_partitions(&self, partitions: Vec<PartitionSample>) {
        lock(&self.snapshot).partitions = partitions;
    }

    /// The committed offsets of the groups this core coordinates (published by the groups' job).
    pub fn publish_commits(&self, commits: Vec<CommitSample>) {
        lock(&self.snapshot).commits = commits;
    }

    pub fn snapshot(&self) -> CoreSnapshot {
        lock(&self.snapshot).clone()
    }
}

/// Every core's metrics (shared with the exporter thread).
#[derive(Clone)]
pub struct BrokerMetrics {
    pub cores: Arc<Vec<Arc<CoreMetrics>>>,
}

impl BrokerMetrics {
    pub fn new(cores: usize) -> BrokerMetrics {
        BrokerMetrics { cores: Arc::new((0..cores).map(|c| Arc::new(CoreMetrics::new(c))).collect()) }
    }

    pub fn core(&self, id: usize) -> Arc<CoreMetrics> {
        self.cores[id].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_api_with_latency() {
        let m = CoreMetrics::new(0);
        m.record_request(0, Duration::from_micros(250), false);
        m.record_request(0, Duration::from_millis(3), true);
        m.record_request(-1, Duration::from_micros(1), false);
        m.record_request(i16::MAX, Duration::from_micros(1), false);
        let stats = m.api_stats();
        assert_eq!(stats.len(), 1);
        let (key, n, failed, h) = &stats[0];
        assert_eq!((*key, *n, *failed, h.len()), (0, 2, 1, 2));
        assert!(h.max() >= 2_990 && h.min() <= 251, "{} {}", h.min(), h.max());
    }
}
