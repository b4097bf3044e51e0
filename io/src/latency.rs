//! Write and fdatasync latencies of this thread's logs (one glommio executor per thread, so one
//! set per core), in HDR histograms. Recording costs a histogram increment; whoever publishes
//! metrics drains them with `take` periodically. Nothing here allocates after the first use.

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded exactly (longer ones are clamped): one minute, in microseconds.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// An empty latency histogram: microseconds, 1 µs to `MAX_LATENCY_US`, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Latencies recorded since the last `take`.
#[derive(Debug, Clone)]
pub struct IoLatency {
    /// DMA segment writes (one per group of batches), microseconds.
    pub write_us: Histogram<u64>,
    /// fdatasync of segment files, microseconds.
    pub sync_us: Histogram<u64>,
}

impl IoLatency {
    fn new() -> Self {
        IoLatency { write_us: histogram(), sync_us: histogram() }
    }
}

thread_local! {
    static LATENCY: RefCell<Option<IoLatency>> = const { RefCell::new(None) };
}

fn record(d: Duration, pick: impl FnOnce(&mut IoLatency) -> &mut Histogram<u64>) {
    let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    LATENCY.with(|l| {
        let mut l = l.borrow_mut();
        let h = pick(l.get_or_insert_with(IoLatency::new));
        h.saturating_record(us);
    });
}

pub(crate) fn record_write(d: Duration) {
    record(d, |l| &mut l.write_us);
}

pub(crate) fn record_sync(d: Duration) {
    record(d, |l| &mut l.sync_us);
}

/// This thread's latencies since the previous call (empty histograms when nothing happened).
pub fn take() -> IoLatency {
    LATENCY.with(|l| l.borrow_mut().take()).unwrap_or_else(IoLatency::new)
}
