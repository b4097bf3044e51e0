//! What a run measures, shared between the worker threads and the collector: latency histograms
//! (microseconds, HDR), counters, consumer positions, and the per-second time series the collector
//! builds from them. Workers only record; the collector (the thread that runs the scenario) reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds (1 hour, in microseconds); larger values are clamped to it.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits of every histogram.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// An empty latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_SIGFIG).expect("constant histogram bounds are valid")
}

/// Latencies of one kind (produce, or one group's end-to-end): the current interval, each phase and
/// the whole run.
pub struct LatencyRecorder {
    interval: Histogram<u64>,
    per_phase: Vec<Histogram<u64>>,
    total: Histogram<u64>,
}

impl LatencyRecorder {
    pub fn new(phases: usize) -> LatencyRecorder {
        LatencyRecorder {
            interval: new_histogram(),
            per_phase: (0..phases).map(|_| new_histogram()).collect(),
            total: new_histogram(),
        }
    }

    pub fn record(&mut self, latency_us: u64, phase: usize) {
        let v = latency_us.clamp(1, MAX_LATENCY_US);
        self.interval.saturating_record(v);
        self.total.saturating_record(v);
        if let Some(h) = self.per_phase.get_mut(phase) {
            h.saturating_record(v);
        }
    }

    /// The interval's histogram, leaving an empty one in its place.
    pub fn take_interval(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.interval, new_histogram())
    }

    pub fn total(&self) -> &Histogram<u64> {
        &self.total
    }

    pub fn phase(&self, phase: usize) -> Option<&Histogram<u64>> {
        self.per_phase.get(phase)
    }
}

/// One consumer group's shared state.
pub struct GroupState {
    pub name: String,
    pub e2e: Mutex<LatencyRecorder>,
    pub consumed: AtomicU64,
    /// Next offset to process, per partition (index = partition).
    pub positions: Vec<AtomicI64>,
}

/// Everything the workers of one run share.
pub struct Shared {
    pub start: Instant,
    /// `start` as microseconds since the Unix epoch: intended send times in records are on this clock.
    pub start_unix_us: i64,
    pub produce: Mutex<LatencyRecorder>,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub errors_by_code: Mutex<BTreeMap<i16, u64>>,
    /// Acked records per phase.
    pub acked_per_phase: Vec<AtomicU64>,
    /// When the last record of each phase was acked, microseconds after `start`.
    pub last_ack_us_per_phase: Vec<AtomicU64>,
    /// When the last record was handed to the socket, microseconds after `start`.
    pub last_send_us: AtomicU64,
    /// When the last ack arrived, microseconds after `start`.
    pub last_ack_us: AtomicU64,
    pub groups: Vec<GroupState>,
    /// Set by the collector: consumers stop; set on a failure: everyone stops.
    pub stop: AtomicBool,
    /// The first worker failure.
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(phases: usize, groups: &[(String, usize)]) -> Shared {
        let start = Instant::now();
        let start_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Shared {
            start,
            start_unix_us,
            produce: Mutex::new(LatencyRecorder::new(phases)),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_by_code: Mutex::new(BTreeMap::new()),
            acked_per_phase: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            last_ack_us_per_phase: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            last_send_us: AtomicU64::new(0),
            last_ack_us: AtomicU64::new(0),
            groups: groups
                .iter()
                .map(|(name, partitions)| GroupState {
                    name: name.clone(),
                    e2e: Mutex::new(LatencyRecorder::new(phases)),
                    consumed: AtomicU64::new(0),
                    positions: (0..*partitions).map(|_| AtomicI64::new(-1)).collect(),
                })
                .collect(),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// Microseconds since `start` of `at`.
    pub fn us_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Now on the records' clock (microseconds since the Unix epoch, derived from the monotonic clock).
    pub fn now_unix_us(&self) -> i64 {
        self.start_unix_us + i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX / 2)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn record_errors(&self, code: i16, records: u64) {
        self.errors.fetch_add(records, Ordering::Relaxed);
        let mut by_code = self.errors_by_code.lock().unwrap_or_else(|p| p.into_inner());
        *by_code.entry(code).or_default() += records;
    }

    /// Records the first failure and tells every worker to stop.
    pub fn fail(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(message);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One group's figures for one second.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupPoint {
    pub consumed: u64,
    /// Records produced but not yet processed by the group (sampled at the end of the second).
    pub lag: u64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimePoint {
    /// End of the interval, seconds after the start.
    pub t_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub produce_p50_ms: f64,
    pub produce_p99_ms: f64,
    pub produce_p999_ms: f64,
    pub produce_max_ms: f64,
    pub groups: Vec<GroupPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_intervals_and_phases() {
        let mut r = LatencyRecorder::new(2);
        r.record(1000, 0);
        r.record(2000, 1);
        r.record(0, 1); // clamped to 1 µs
        let interval = r.take_interval();
        assert_eq!(interval.len(), 3);
        assert!(r.take_interval().is_empty());
        assert_eq!(r.total().len(), 3);
        assert_eq!(r.phase(1).map(|h| h.len()), Some(2));
        let p = Percentiles::of(r.total());
        assert!((p.max_ms - 2.0).abs() < 0.01, "{p:?}");
    }
}
