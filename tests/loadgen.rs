//! The load generator (issue 6) against a real `sluice serve`: a short scaled run of each bundled
//! scenario, checking that every output exists and parses and that the open-loop schedule was kept
//! (achieved rate within 5 % of the target), and a broker frozen with SIGSTOP for 500 ms, which must
//! show up in the max produce latency (latency is measured from the intended send time).
//!
//! The runs are serialized (one at a time): they measure rates on a 2-core machine shared with the
//! broker. Rates are modest (≤ 5k records/s) so that the 5 % bound holds on a noisy machine.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::Broker;
use sluice_loadgen::{run_and_write, RunOptions, RunReport, Scenario, Summary};

/// One run at a time: rates are measured.
static SERIAL: Mutex<()> = Mutex::new(());
/// Allowed shortfall of the achieved rate against the target.
const RATE_TOLERANCE: f64 = 0.05;
/// The injected stall.
const STALL: Duration = Duration::from_millis(500);

fn scenario(name: &str, scale: f64, overrides: &[String]) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadgen/scenarios").join(format!("{name}.toml"));
    let topic = common::unique_topic(name);
    let mut all = vec![format!("topic.name={topic:?}")];
    all.extend(overrides.iter().cloned());
    Scenario::from_file(&path)
        .expect("bundled scenario")
        .with_overrides(&all)
        .expect("overrides")
        .scaled(scale)
        .expect("scale")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("loadgen-{}", common::unique_topic(name)));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn run(broker: &Broker, scenario: &Scenario, options: RunOptions) -> RunReport {
    let options = RunOptions { bootstrap: vec![broker.bootstrap()], progress: false, ..options };
    let dir = out_dir(&scenario.name);
    run_and_write(scenario, &options, Some(&dir)).unwrap_or_else(|e| panic!("{} run failed: {e}", scenario.name))
}

/// Every output file exists and parses: the JSON summary round-trips, the `.hlog` has interval lines of
/// HdrHistogram's format, the `.hgrm` has the percentile columns, the SVGs are SVG, `index.html` shows them.
fn assert_outputs(report: &RunReport) {
    let dir = &report.out_dir;
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let summary: Summary = serde_json::from_str(&read("summary.json")).expect("summary.json parses");
    assert_eq!(summary.acked, report.summary.acked);
    assert!(!summary.timeseries.is_empty(), "no time series");

    let mut hlogs = vec!["produce.hlog".to_string()];
    let mut hgrms = vec!["produce.hgrm".to_string()];
    for g in &summary.groups {
        hlogs.push(format!("e2e-{}.hlog", g.name));
        hgrms.push(format!("e2e-{}.hgrm", g.name));
    }
    for name in &hlogs {
        let text = read(name);
        assert!(text.contains("#[StartTime: "), "{name}: no StartTime header");
        let intervals: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("\"StartTimestamp\"")).collect();
        assert!(!intervals.is_empty(), "{name}: no intervals");
        for line in intervals {
            // Tag=...,start,length,max,base64 histogram
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 5, "{name}: interval line {line:?}");
            for f in &fields[1..4] {
                f.parse::<f64>().unwrap_or_else(|_| panic!("{name}: {f:?} in {line:?}"));
            }
            assert!(fields[4].starts_with("HISTF"), "{name}: not a compressed V2 histogram: {line:?}");
        }
    }
    for name in &hgrms {
        let text = read(name);
        assert!(text.trim_start().starts_with("Value"), "{name}: header");
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace().map(|f| f.parse::<f64>().unwrap_or_else(|_| panic!("{name}: {l:?}"))).collect()
            })
            .collect();
        assert!(rows.len() > 5, "{name}: {} rows", rows.len());
        assert!(rows.windows(2).all(|w| w[0][1] <= w[1][1]), "{name}: percentiles not increasing");
        assert!(text.contains("#[Max     ="), "{name}: footer");
    }
    let html = read("index.html");
    let mut svgs = vec!["latency.svg", "percentiles.svg", "throughput.svg"];
    if !summary.groups.is_empty() {
        svgs.push("backlog.svg");
    }
    for name in svgs {
        let svg = read(name);
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{name}: not an SVG");
        assert!(svg.contains("<text"), "{name}: no text (font)");
        assert!(html.contains(&format!("src=\"{name}\"")), "index.html does not show {name}");
    }
}

fn assert_rate_kept(summary: &Summary) {
    assert_eq!(summary.errors, 0, "errors: {:?}", summary.errors_by_code);
    assert_eq!(summary.acked, summary.scheduled_records, "every scheduled record is acked");
    let shortfall = 1.0 - summary.achieved_rate / summary.target_rate;
    assert!(
        shortfall.abs() <= RATE_TOLERANCE,
        "achieved {:.0} records/s for a target of {:.0}/s",
        summary.achieved_rate,
        summary.target_rate
    );
}

#[test]
fn steady_1k_keeps_the_rate_and_writes_every_output() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let report = run(&broker, &scenario("steady-1k", 0.05, &[]), RunOptions::default());
    assert_outputs(&report);
    let s = &report.summary;
    assert_rate_kept(s);
    assert_eq!(s.groups[0].consumed, s.acked, "the group read every record");
    assert_eq!(s.groups[0].e2e_latency.count, s.acked);
    assert_eq!(s.groups[0].final_lag, 0);
}

#[test]
fn peak_shaving_builds_a_backlog_and_drains_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    // 0.6 s at 1k/s, 1.2 s at 5k/s, 4 s at 1k/s; the group drains at most 2k/s.
    let report = run(&broker, &scenario("peak-shaving", 0.02, &[]), RunOptions::default());
    assert_outputs(&report);
    let s = &report.summary;
    assert_rate_kept(s);
    let g = &s.groups[0];
    // The burst leaves (5k - 2k) × 1.2 s = 3600 records behind at its end.
    assert!(g.backlog_peak_records >= 1500, "backlog peak {}", g.backlog_peak_records);
    assert!(g.drain_time_after_burst_s.is_some(), "the backlog never drained: {g:?}");
    assert_eq!(g.consumed, s.acked);
    // The group's pace holds from the first second of the burst (no credit saved up while it kept up):
    // records processed per second of each sample interval.
    let mut previous_t = 0.0;
    for point in &s.timeseries {
        let rate = point.groups[0].consumed as f64 / (point.t_s - previous_t);
        previous_t = point.t_s;
        assert!(
            rate <= 1.15 * g.max_records_per_sec,
            "{rate:.0} records/s processed at {:.1} s by a group paced at {}/s",
            point.t_s,
            g.max_records_per_sec
        );
    }
    let burst = &s.phases[1];
    assert_eq!(burst.name, "burst");
    assert!(burst.produce_latency.count > 0);
    // The consumer's pace shows: records of the burst waited longer end to end than those before it.
    assert!(g.e2e_latency_by_phase[1].p99_ms > g.e2e_latency_by_phase[0].p99_ms, "{:?}", g.e2e_latency_by_phase);
}

#[test]
fn ramp_to_saturation_names_a_sustained_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    // Five 1-second steps at test-sized rates; a lenient bound for a shared machine.
    let overrides: Vec<String> = [500, 1000, 2000, 3000, 4000]
        .iter()
        .enumerate()
        .map(|(i, r)| format!("phases.{i}.rate={r}"))
        .chain(["p99_bound_ms=250".to_string()])
        .collect();
    let report = run(&broker, &scenario("ramp-to-saturation", 0.05, &overrides), RunOptions::default());
    assert_outputs(&report);
    let s = &report.summary;
    assert_rate_kept(s);
    let saturation = s.saturation.as_ref().expect("a p99 bound gives a saturation answer");
    assert!(saturation.max_rate_within_bound.is_some(), "no step within the bound: {:?}", s.phases);
}

#[test]
fn fanout_delivers_every_record_to_every_group() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let report = run(&broker, &scenario("fanout", 0.05, &[]), RunOptions::default());
    assert_outputs(&report);
    let s = &report.summary;
    assert_rate_kept(s);
    assert_eq!(s.groups.len(), 3);
    for g in &s.groups {
        assert_eq!(g.consumed, s.acked, "group {}", g.name);
        assert_eq!(g.e2e_latency.count, s.acked, "group {}", g.name);
    }
}

#[test]
fn closed_loop_and_compressed_acks_all_runs_deliver_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    // Closed loop, kept small: one request in flight, 100-record batches, 1.2 s.
    let max = ["producer.mode=\"max\"", "producer.max_in_flight=1", "producer.batch_max_records=100"];
    let report = run(&broker, &scenario("steady-1k", 0.02, &max.map(String::from)), RunOptions::default());
    assert_outputs(&report);
    let s = &report.summary;
    assert_eq!(s.errors, 0, "errors: {:?}", s.errors_by_code);
    assert!(s.acked > s.scheduled_records, "closed loop acked only {} records", s.acked);
    assert_eq!(s.groups[0].consumed, s.acked);
    // Open loop with zstd, keyed records of random sizes, acks=all.
    let zstd = [
        "producer.compression=\"zstd\"",
        "producer.acks=-1",
        "producer.key_distribution=\"uniform\"",
        "producer.size_distribution=\"uniform\"",
    ];
    let report = run(&broker, &scenario("steady-1k", 0.03, &zstd.map(String::from)), RunOptions::default());
    let s = &report.summary;
    assert_rate_kept(s);
    assert_eq!(s.groups[0].consumed, s.acked);
    assert_eq!(s.groups[0].e2e_latency.count, s.acked);
}

#[test]
fn a_stalled_broker_shows_in_the_max_latency() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Arc::new(Broker::start());
    let scenario = scenario("steady-1k", 0.08, &[]);
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let on_sample = Arc::new(move |point: &sluice_loadgen::TimePoint| {
        if point.acked > 0 {
            let _ = started_tx.try_send(());
        }
    });
    let staller = {
        let broker = broker.clone();
        thread::spawn(move || {
            // The first sample with acks: the run is under way.
            if started_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                return false;
            }
            broker.signal(libc::SIGSTOP);
            thread::sleep(STALL); // the injected fault itself
            broker.signal(libc::SIGCONT);
            true
        })
    };
    let report = run(&broker, &scenario, RunOptions { on_sample: Some(on_sample), ..RunOptions::default() });
    assert!(staller.join().expect("staller thread"), "the run never reported acks");
    assert_outputs(&report);
    let s = &report.summary;
    assert_eq!(s.errors, 0);
    assert_eq!(s.acked, s.scheduled_records);
    assert!(
        s.produce_latency.max_ms >= STALL.as_secs_f64() * 1000.0,
        "max produce latency {} ms after a {STALL:?} stall",
        s.produce_latency.max_ms
    );
    assert!(s.timeseries.iter().any(|p| p.produce_max_ms >= 500.0), "no second shows the stall");
}
