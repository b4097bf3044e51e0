//! The scenario runner: prepares the topic, starts consumers then producers, samples every second
//! (counters, interval histograms, consumer lag from ListOffsets), waits for the consumers to drain,
//! and builds the `Summary`. Output files are written by `report` and `plot`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{connect_any, ensure_topic, latest_offsets, Connection};
use crate::consume::run_consumer;
use crate::error::{LoadgenError, Result};
use crate::produce::run_producer;
use crate::scenario::{Mode, Scenario};
use crate::stats::{GroupPoint, Percentiles, Shared, TimePoint};

/// How long a new topic's leaders may take to answer ListOffsets.
const START_OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the collector samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A callback given each per-second sample.
pub type SampleObserver = Arc<dyn Fn(&TimePoint) + Send + Sync>;

/// How to run a scenario (what is not in the scenario file).
#[derive(Clone, Default)]
pub struct RunOptions {
    /// `host:port` of one or more brokers of the cluster.
    pub bootstrap: Vec<String>,
    /// Show the live progress line on the terminal.
    pub progress: bool,
    /// Called after every sample, on the collector thread (tests use it to know the run is under way).
    pub on_sample: Option<SampleObserver>,
}

/// A phase's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    pub target_rate: f64,
    pub duration_s: f64,
    pub acked: u64,
    /// Acked records of the phase ÷ the time from its start to its last ack (at least its duration).
    pub achieved_rate: f64,
    pub produce_latency: Percentiles,
}

/// A consumer group's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupSummary {
    pub name: String,
    pub consumers: usize,
    pub max_records_per_sec: f64,
    pub consumed: u64,
    pub e2e_latency: Percentiles,
    /// End-to-end latency of the records produced in each phase (same order as `phases`).
    pub e2e_latency_by_phase: Vec<Percentiles>,
    pub backlog_peak_records: u64,
    /// When the peak was sampled, seconds after the start.
    pub backlog_peak_at_s: f64,
    /// Seconds from the end of the busiest phase until the lag fell to `drained_lag_records` (none
    /// if it never did within the run).
    pub drain_time_after_burst_s: Option<f64>,
    pub final_lag: u64,
}

/// `ramp-to-saturation`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saturation {
    pub p99_bound_ms: f64,
    /// The highest phase rate whose produce p99 stayed under the bound and whose achieved rate was
    /// within 5 % of its target.
    pub max_rate_within_bound: Option<f64>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub bootstrap: String,
    pub mode: Mode,
    pub started_unix_ms: i64,
    pub partitions: i32,
    pub scheduled_duration_s: f64,
    pub scheduled_records: u64,
    /// Scheduled records ÷ scheduled duration (open loop).
    pub target_rate: f64,
    pub sent: u64,
    pub acked: u64,
    pub acked_bytes: u64,
    pub errors: u64,
    pub errors_by_code: Vec<(i16, u64)>,
    /// Acked records ÷ the time from the start to the last send (the schedule's own length when the
    /// generator kept up; longer if it fell behind).
    pub achieved_rate: f64,
    pub achieved_mib_per_s: f64,
    /// Start to the end of the run (producing, draining), seconds.
    pub elapsed_s: f64,
    pub produce_latency: Percentiles,
    pub phases: Vec<PhaseSummary>,
    pub groups: Vec<GroupSummary>,
    pub saturation: Option<Saturation>,
    pub timeseries: Vec<TimePoint>,
}

/// The histograms of a run, kept for the output files.
pub struct RunHistograms {
    /// (interval start s, length s, histogram) per sample.
    pub produce_intervals: Vec<(f64, f64, Histogram<u64>)>,
    pub produce_total: Histogram<u64>,
    pub e2e_intervals: Vec<Vec<(f64, f64, Histogram<u64>)>>,
    pub e2e_totals: Vec<Histogram<u64>>,
    pub start_unix_s: f64,
}

/// Runs `scenario` against the brokers of `options` and returns what it measured.
pub fn run_scenario(scenario: &Scenario, options: &RunOptions) -> Result<(Summary, RunHistograms)> {
    scenario.validate()?;
    let scenario = Arc::new(scenario.clone());
    let mut admin = connect_any(&options.bootstrap)?;
    let layout = Arc::new(ensure_topic(&mut admin, &scenario.topic)?);
    let partitions = layout.partitions();
    let groups: Vec<(String, usize)> = scenario.groups.iter().map(|g| (g.name.clone(), partitions as usize)).collect();

    // Consumers start at the current end of the log (an earlier run's records are not this run's).
    let mut lag_connections = Vec::new();
    for (address, ps) in layout.by_leader(&(0..partitions).collect::<Vec<_>>())? {
        lag_connections.push((crate::client::connect(&address)?, ps));
    }
    // A just-created topic's leaders may still be taking up their role (a cluster's metadata
    // propagates): NOT_LEADER_OR_FOLLOWER and LEADER_NOT_AVAILABLE are retried for a while.
    let ready_deadline = Instant::now() + START_OFFSETS_TIMEOUT;
    let start_offsets = loop {
        match sample_end_offsets(&mut lag_connections, &layout.topic, partitions) {
            Err(e) if matches!(e.broker_code(), Some(5 | 6)) && Instant::now() < ready_deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => break other?,
        }
    };

    let shared = Arc::new(Shared::new(scenario.phases.len(), &groups));
    for g in &shared.groups {
        for (p, position) in g.positions.iter().enumerate() {
            position.store(start_offsets[p], Ordering::Relaxed);
        }
    }
    let cores =
        if scenario.producer.pin_cores { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
    let mut next_core = 0usize;
    let mut pin = move || -> Option<core_affinity::CoreId> {
        let core = cores.get(next_core % cores.len().max(1)).copied();
        next_core += 1;
        core
    };

    let mut consumers: Vec<JoinHandle<()>> = Vec::new();
    for (gi, group) in scenario.groups.iter().enumerate() {
        for ci in 0..group.consumers {
            let (group, layout, shared) = (group.clone(), layout.clone(), shared.clone());
            let core = pin();
            consumers.push(spawn(format!("consume-{gi}-{ci}"), move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                if let Err(e) = run_consumer(gi, ci, group.clone(), layout, shared.clone()) {
                    shared.fail(format!("consumer {ci} of group {}: {e}", group.name));
                }
            })?);
        }
    }
    let mut producers: Vec<JoinHandle<()>> = Vec::new();
    for t in 0..scenario.producer.threads {
        let (scenario, layout, shared) = (scenario.clone(), layout.clone(), shared.clone());
        let core = pin();
        producers.push(spawn(format!("produce-{t}"), move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            if let Err(e) = run_producer(t, scenario, layout, shared.clone()) {
                shared.fail(format!("producer {t}: {e}"));
            }
        })?);
    }

    let progress = crate::report::Progress::new(options.progress, &scenario);
    let mut collector = Collector::new(&scenario, shared.clone());
    let drain_timeout = Duration::from_secs_f64(scenario.drain_timeout_s);
    let mut producers_done_at: Option<Instant> = None;
    let mut next_sample = shared.start + SAMPLE_INTERVAL;
    let outcome = loop {
        thread::sleep(next_sample.saturating_duration_since(Instant::now()));
        next_sample += SAMPLE_INTERVAL;
        let lag_offsets = sample_end_offsets(&mut lag_connections, &layout.topic, partitions);
        let ends = match lag_offsets {
            Ok(ends) => ends,
            Err(e) => {
                shared.fail(format!("sampling the log end offsets: {e}"));
                break Err(e);
            }
        };
        let point = collector.sample(&ends);
        progress.update(&point, &scenario);
        if let Some(callback) = &options.on_sample {
            callback(&point);
        }
        if let Some(failure) = shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            break Err(LoadgenError::Worker(failure));
        }
        if producers_done_at.is_none() && producers.iter().all(|p| p.is_finished()) {
            producers_done_at = Some(Instant::now());
        }
        if let Some(done_at) = producers_done_at {
            let drained = point.groups.iter().all(|g| g.lag == 0);
            if drained || done_at.elapsed() >= drain_timeout {
                break Ok(());
            }
        }
    };
    shared.stop.store(true, Ordering::SeqCst);
    for handle in producers.into_iter().chain(consumers) {
        if handle.join().is_err() {
            shared.fail("a worker thread panicked".into());
        }
    }
    progress.finish();
    outcome?;
    if let Some(failure) = shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        return Err(LoadgenError::Worker(failure));
    }
    Ok(collector.finish(&options.bootstrap.join(","), partitions))
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(f).map_err(|e| LoadgenError::io("spawning a worker thread", e))
}

fn sample_end_offsets(connections: &mut [(Connection, Vec<i32>)], topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let mut ends = vec![0i64; partitions as usize];
    for (conn, ps) in connections.iter_mut() {
        for (p, offset) in latest_offsets(conn, topic, ps)? {
            if let Some(slot) = usize::try_from(p).ok().and_then(|i| ends.get_mut(i)) {
                *slot = offset;
            }
        }
    }
    Ok(ends)
}

/// Turns the shared counters into per-second points and keeps the interval histograms.
struct Collector {
    scenario: Arc<Scenario>,
    shared: Arc<Shared>,
    last_t: f64,
    last_sent: u64,
    last_acked: u64,
    last_errors: u64,
    last_consumed: Vec<u64>,
    points: Vec<TimePoint>,
    produce_intervals: Vec<(f64, f64, Histogram<u64>)>,
    e2e_intervals: Vec<Vec<(f64, f64, Histogram<u64>)>>,
}

impl Collector {
    fn new(scenario: &Arc<Scenario>, shared: Arc<Shared>) -> Collector {
        let groups = scenario.groups.len();
        Collector {
            scenario: scenario.clone(),
            shared,
            last_t: 0.0,
            last_sent: 0,
            last_acked: 0,
            last_errors: 0,
            last_consumed: vec![0; groups],
            points: Vec::new(),
            produce_intervals: Vec::new(),
            e2e_intervals: vec![Vec::new(); groups],
        }
    }

    fn sample(&mut self, ends: &[i64]) -> TimePoint {
        let s = &self.shared;
        let t = s.elapsed().as_secs_f64();
        let produce = s.produce.lock().unwrap_or_else(|p| p.into_inner()).take_interval();
        let pp = Percentiles::of(&produce);
        let (sent, acked, errors) =
            (s.sent.load(Ordering::Relaxed), s.acked.load(Ordering::Relaxed), s.errors.load(Ordering::Relaxed));
        let mut groups = Vec::with_capacity(s.groups.len());
        for (gi, g) in s.groups.iter().enumerate() {
            let e2e = g.e2e.lock().unwrap_or_else(|p| p.into_inner()).take_interval();
            let ep = Percentiles::of(&e2e);
            let consumed = g.consumed.load(Ordering::Relaxed);
            let lag: i64 = g
                .positions
                .iter()
                .zip(ends)
                .map(|(position, end)| (end - position.load(Ordering::Relaxed)).max(0))
                .sum();
            groups.push(GroupPoint {
                consumed: consumed - self.last_consumed[gi],
                lag: lag as u64,
                e2e_p99_ms: ep.p99_ms,
                e2e_max_ms: ep.max_ms,
            });
            self.last_consumed[gi] = consumed;
            self.e2e_intervals[gi].push((self.last_t, t - self.last_t, e2e));
        }
        let point = TimePoint {
            t_s: t,
            sent: sent - self.last_sent,
            acked: acked - self.last_acked,
            errors: errors - self.last_errors,
            produce_p50_ms: pp.p50_ms,
            produce_p99_ms: pp.p99_ms,
            produce_p999_ms: pp.p999_ms,
            produce_max_ms: pp.max_ms,
            groups,
        };
        self.produce_intervals.push((self.last_t, t - self.last_t, produce));
        self.last_t = t;
        (self.last_sent, self.last_acked, self.last_errors) = (sent, acked, errors);
        self.points.push(point.clone());
        point
    }

    fn finish(self, bootstrap: &str, partitions: i32) -> (Summary, RunHistograms) {
        let s = &self.shared;
        let scenario = &self.scenario;
        let acked = s.acked.load(Ordering::Relaxed);
        let acked_bytes = s.acked_bytes.load(Ordering::Relaxed);
        let send_span_s = (s.last_send_us.load(Ordering::Relaxed) as f64 / 1e6).max(scenario.scheduled_duration_s());
        let produce = s.produce.lock().unwrap_or_else(|p| p.into_inner());
        let mut phase_start_s = 0.0;
        let phases: Vec<PhaseSummary> = scenario
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let acked = s.acked_per_phase[i].load(Ordering::Relaxed);
                // Acks that come after the phase's end stretch its span: a broker that falls behind
                // shows a lower achieved rate, not only a higher latency.
                let last_ack_s = s.last_ack_us_per_phase[i].load(Ordering::Relaxed) as f64 / 1e6;
                let span_s = p.duration_s.max(last_ack_s - phase_start_s);
                phase_start_s += p.duration_s;
                PhaseSummary {
                    name: p.name.clone(),
                    target_rate: p.rate,
                    duration_s: p.duration_s,
                    acked,
                    achieved_rate: if span_s > 0.0 { acked as f64 / span_s } else { 0.0 },
                    produce_latency: produce.phase(i).map(Percentiles::of).unwrap_or_default(),
                }
            })
            .collect();
        // The busiest phase and when it ended, for "time to drain after the burst".
        let mut burst_end_s = None;
        let mut t = 0.0;
        let mut best = f64::MIN;
        for p in &scenario.phases {
            t += p.duration_s;
            if p.rate > best {
                best = p.rate;
                burst_end_s = Some(t);
            }
        }
        let groups: Vec<GroupSummary> = scenario
            .groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                let e2e = s.groups[gi].e2e.lock().unwrap_or_else(|p| p.into_inner());
                let lags: Vec<(f64, u64)> = self.points.iter().map(|pt| (pt.t_s, pt.groups[gi].lag)).collect();
                let (peak_at, peak) =
                    lags.iter().copied().fold((0.0, 0u64), |best, (t, lag)| if lag > best.1 { (t, lag) } else { best });
                // Zero when the first sample after the burst already finds the group caught up.
                let drain = burst_end_s.and_then(|end| {
                    let mut after = lags.iter().filter(|&&(t, _)| t >= end).peekable();
                    match after.peek() {
                        Some(&&(_, lag)) if lag <= scenario.drained_lag_records => Some(0.0),
                        _ => after.find(|&&(_, lag)| lag <= scenario.drained_lag_records).map(|&(t, _)| t - end),
                    }
                });
                GroupSummary {
                    name: g.name.clone(),
                    consumers: g.consumers,
                    max_records_per_sec: g.max_records_per_sec,
                    consumed: s.groups[gi].consumed.load(Ordering::Relaxed),
                    e2e_latency: Percentiles::of(e2e.total()),
                    e2e_latency_by_phase: (0..scenario.phases.len())
                        .map(|i| e2e.phase(i).map(Percentiles::of).unwrap_or_default())
                        .collect(),
                    backlog_peak_records: peak,
                    backlog_peak_at_s: peak_at,
                    drain_time_after_burst_s: drain,
                    final_lag: lags.last().map(|l| l.1).unwrap_or(0),
                }
            })
            .collect();
        let saturation = scenario.p99_bound_ms.map(|bound| Saturation {
            p99_bound_ms: bound,
            max_rate_within_bound: phases
                .iter()
                .filter(|p| p.target_rate > 0.0 && p.produce_latency.count > 0)
                .filter(|p| p.produce_latency.p99_ms <= bound && p.achieved_rate >= 0.95 * p.target_rate)
                .map(|p| p.target_rate)
                .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r)))),
        });
        let summary = Summary {
            scenario: scenario.name.clone(),
            bootstrap: bootstrap.to_string(),
            mode: scenario.producer.mode,
            started_unix_ms: s.start_unix_us / 1000,
            partitions,
            scheduled_duration_s: scenario.scheduled_duration_s(),
            scheduled_records: scenario.scheduled_records(),
            target_rate: if scenario.scheduled_duration_s() > 0.0 {
                scenario.scheduled_records() as f64 / scenario.scheduled_duration_s()
            } else {
                0.0
            },
            sent: s.sent.load(Ordering::Relaxed),
            acked,
            acked_bytes,
            errors: s.errors.load(Ordering::Relaxed),
            errors_by_code: s
                .errors_by_code
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            achieved_rate: acked as f64 / send_span_s,
            achieved_mib_per_s: acked_bytes as f64 / send_span_s / (1024.0 * 1024.0),
            elapsed_s: s.elapsed().as_secs_f64(),
            produce_latency: Percentiles::of(produce.total()),
            phases,
            groups,
            saturation,
            timeseries: self.points.clone(),
        };
        let histograms = RunHistograms {
            produce_intervals: self.produce_intervals,
            produce_total: produce.total().clone(),
            e2e_intervals: self.e2e_intervals,
            e2e_totals: s
                .groups
                .iter()
                .map(|g| g.e2e.lock().unwrap_or_else(|p| p.into_inner()).total().clone())
                .collect(),
            start_unix_s: s.start_unix_us as f64 / 1e6,
        };
        (summary, histograms)
    }
}
