//! Rate-limited log lines: a log call a client can trigger at will (a bad frame, a refused
//! connection, a failing `accept`) writes at most `LOG_LINES_PER_INTERVAL` lines per
//! `LOG_INTERVAL_MS` per call site; the first line let through after some were dropped is
//! preceded by one line saying how many. Without it one client fills the disk (issue 13: 250k bad
//! requests wrote 39 MB of WARN lines, a failing `accept` loop 57 MB/s).
//!
//! Each call site has its own `LogLimit` (a `static` inside the macros), shared by every core: the
//! counters are atomics, and a race between cores at a window boundary lets a line or two more
//! through, never fewer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines one call site may write per interval.
pub const LOG_LINES_PER_INTERVAL: u32 = 10;
/// Length of a rate-limiting window.
pub const LOG_INTERVAL_MS: u64 = 5_000;

/// The budget of one call site.
#[derive(Debug)]
pub struct LogLimit {
    lines_per_interval: u32,
    interval_ms: u64,
    /// Start of the current window, in ms since `epoch()`.
    window_start_ms: AtomicU64,
    /// Lines asked for in the current window (let through or not).
    lines_in_window: AtomicU32,
    /// Lines dropped since the last line let through.
    suppressed: AtomicU64,
}

/// What a call site may do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` lines were dropped since the last one written (say so first if > 0).
    Log { suppressed: u64 },
    /// Drop it (counted).
    Drop,
}

impl LogLimit {
    /// The default budget (`LOG_LINES_PER_INTERVAL` per `LOG_INTERVAL_MS`).
    pub const fn per_call_site() -> LogLimit {
        LogLimit::new(LOG_LINES_PER_INTERVAL, LOG_INTERVAL_MS)
    }

    pub const fn new(lines_per_interval: u32, interval_ms: u64) -> LogLimit {
        LogLimit {
            lines_per_interval,
            interval_ms,
            window_start_ms: AtomicU64::new(0),
            lines_in_window: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Decides about one line, now.
    pub fn admit(&self) -> Admit {
        self.admit_at(elapsed_ms())
    }

    /// Decides about one line at `now_ms` (ms since an arbitrary fixed start, never decreasing).
    pub fn admit_at(&self, now_ms: u64) -> Admit {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= self.interval_ms
            && self.window_start_ms.compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.lines_in_window.store(0, Ordering::Relaxed);
        }
        // Saturating: a flood of 2^32 lines in one window must not wrap around into "log again".
        let asked = self
            .lines_in_window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)))
            .unwrap_or(u32::MAX);
        if asked < self.lines_per_interval {
            Admit::Log { suppressed: self.suppressed.swap(0, Ordering::Relaxed) }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Admit::Drop
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// The process-wide start of the millisecond clock the windows use.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn elapsed_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `tracing::event!` at `$level` through this call site's `LogLimit`.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::per_call_site();
        if let $crate::log_limit::Admit::Log { suppressed } = LIMIT.admit() {
            if suppressed > 0 {
                ::tracing::event!(
                    $level,
                    suppressed,
                    site = concat!(file!(), ":", line!()),
                    "similar log lines suppressed (at most {} per {:?} per call site)",
                    $crate::log_limit::LOG_LINES_PER_INTERVAL,
                    LIMIT.interval()
                );
            }
            ::tracing::event!($level, $($arg)+);
        }
    }};
}

/// `tracing::warn!`, at most `LOG_LINES_PER_INTERVAL` lines per `LOG_INTERVAL_MS` from this call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::tracing::Level::WARN, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_through_the_budget_then_counts_what_it_drops() {
        let limit = LogLimit::new(3, 1_000);
        let decisions: Vec<Admit> = (0..10).map(|_| limit.admit_at(5)).collect();
        assert_eq!(&decisions[..3], &[Admit::Log { suppressed: 0 }; 3]);
        assert!(decisions[3..].iter().all(|d| *d == Admit::Drop));
        // Still the same window: dropped.
        assert_eq!(limit.admit_at(999), Admit::Drop);
        // Next window: the first line carries the count of the 8 dropped ones, the next none.
        assert_eq!(limit.admit_at(1_005), Admit::Log { suppressed: 8 });
        assert_eq!(limit.admit_at(1_006), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn a_flood_writes_a_bounded_number_of_lines() {
        let limit = LogLimit::new(10, 5_000);
        // One million lines over 60 s: 12 windows of at most 10 lines.
        let written = (0..1_000_000u64).filter(|i| matches!(limit.admit_at(i * 60 / 1_000), Admit::Log { .. })).count();
        assert!(written <= 13 * 10, "{written} lines written");
        assert!(written >= 10, "{written} lines written");
    }

    #[test]
    fn macro_compiles_with_fields() {
        let n = 3;
        warn_limited!(peer = "x", n, "a line {}", n);
        crate::log_limited!(tracing::Level::DEBUG, "plain");
    }
}
