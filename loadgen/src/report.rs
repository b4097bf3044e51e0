//! Outputs of a run: the live progress line, the percentile table, `summary.json`, HDR interval logs
//! (`.hlog`, HdrHistogram's log format), percentile distributions (`.hgrm`, the text the HdrHistogram
//! plotter reads), and `index.html` showing the plots (`plot`) with the table.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{LoadgenError, Result};
use crate::run::{RunHistograms, Summary};
use crate::scenario::Scenario;
use crate::stats::{Percentiles, TimePoint};

/// Histogram values are microseconds; the logs and distributions show milliseconds.
const US_PER_MS: f64 = 1000.0;
/// Percentile ticks per half distance in the `.hgrm` file (HdrHistogram's default is 5).
const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The live progress line (hidden when not wanted, e.g. in tests).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(visible: bool, scenario: &Scenario) -> Progress {
        let bar = if visible {
            ProgressBar::new(scenario.scheduled_duration_s().ceil() as u64)
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(scenario.name.clone());
        Progress { bar }
    }

    pub fn update(&self, point: &TimePoint, _scenario: &Scenario) {
        let lag: u64 = point.groups.iter().map(|g| g.lag).sum();
        self.bar.set_position(point.t_s as u64);
        self.bar.set_message(format!(
            "rate {:>6}/s  p99 {:>8.2} ms  max {:>8.2} ms  lag {lag}{}",
            point.acked,
            point.produce_p99_ms,
            point.produce_max_ms,
            if point.errors > 0 { format!("  errors {}", point.errors) } else { String::new() }
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `<scenario>-<UTC time>` under `base` (`./loadgen-out` by default).
pub fn default_out_dir(base: &Path, scenario: &str, unix_s: i64) -> PathBuf {
    base.join(format!("{scenario}-{}", utc_stamp(unix_s)))
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time.
pub fn utc_stamp(unix_s: i64) -> String {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The percentile table printed at the end of a run.
pub fn percentile_table(summary: &Summary) -> String {
    let mut out = String::new();
    let row = |out: &mut String, what: &str, p: &Percentiles| {
        let _ = writeln!(
            out,
            "{what:<34} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            p.count, p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms, p.mean_ms
        );
    };
    if summary.mode == crate::scenario::Mode::Max {
        let _ = writeln!(
            out,
            "{} against {} (closed loop: as fast as the in-flight windows allow): {} records acked, {:.0} records/s ({:.2} MiB/s), {} errors",
            summary.scenario,
            summary.bootstrap,
            summary.acked,
            summary.achieved_rate,
            summary.achieved_mib_per_s,
            summary.errors
        );
    } else {
        let _ = writeln!(
        out,
        "{} against {}: {} records acked of {} scheduled, {:.0} records/s ({:.2} MiB/s) for a target of {:.0}/s, {} errors",
        summary.scenario,
        summary.bootstrap,
        summary.acked,
        summary.scheduled_records,
        summary.achieved_rate,
        summary.achieved_mib_per_s,
        summary.target_rate,
        summary.errors
    );
    }
    let _ = writeln!(
        out,
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p99", "p99.9", "max", "mean"
    );
    row(&mut out, "produce (send → ack), all", &summary.produce_latency);
    for phase in &summary.phases {
        row(&mut out, &format!("  phase {} @ {:.0}/s", phase.name, phase.target_rate), &phase.produce_latency);
    }
    for g in &summary.groups {
        row(&mut out, &format!("end-to-end, group {}", g.name), &g.e2e_latency);
        for (phase, p) in summary.phases.iter().zip(&g.e2e_latency_by_phase) {
            row(&mut out, &format!("  records of phase {}", phase.name), p);
        }
    }
    for g in &summary.groups {
        let _ = writeln!(
            out,
            "group {}: consumed {}, backlog peak {} records at {:.0} s, drained {} after the busiest phase, final lag {}",
            g.name,
            g.consumed,
            g.backlog_peak_records,
            g.backlog_peak_at_s,
            g.drain_time_after_burst_s.map(|s| format!("{s:.0} s")).unwrap_or_else(|| "never".into()),
            g.final_lag
        );
    }
    if let Some(s) = &summary.saturation {
        let _ = writeln!(
            out,
            "saturation: highest rate with produce p99 <= {} ms: {}",
            s.p99_bound_ms,
            s.max_rate_within_bound.map(|r| format!("{r:.0} records/s")).unwrap_or_else(|| "none".into())
        );
    }
    out
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format (values in milliseconds).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / US_PER_MS;
            if q < 1.0 {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let mean = if h.is_empty() { 0.0 } else { h.mean() / US_PER_MS };
    let stdev = if h.is_empty() { 0.0 } else { h.stdev() / US_PER_MS };
    let _ = writeln!(out, "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]");
    let _ = writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / US_PER_MS, h.len());
    // HdrHistogram's sub-bucket count: 2 × 10^sigfig rounded up to a power of two.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets);
    out
}

/// An HDR interval log (`.hlog`) of `intervals` (start and length in seconds after `start_unix_s`).
pub fn interval_log(intervals: &[(f64, f64, Histogram<u64>)], start_unix_s: f64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let start = std::time::UNIX_EPOCH + Duration::from_secs_f64(start_unix_s);
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!("sluice-loadgen {what} latency, microseconds (MaxValueDivisor shows ms)"))
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(US_PER_MS)
        .begin_log_with(&mut buf, &mut serializer)
        .map_err(|e| LoadgenError::Output(format!("{what}.hlog: {e}")))?;
    let tag = Tag::new(what);
    for (t, len, h) in intervals {
        writer
            .write_histogram(h, Duration::from_secs_f64(*t), Duration::from_secs_f64(*len), tag)
            .map_err(|e| LoadgenError::Output(format!("{what}.hlog: {e}")))?;
    }
    drop(writer);
    Ok(buf)
}

fn write(dir: &Path, name: &str, bytes: &[u8], files: &mut Vec<String>) -> Result<()> {
    fs::write(dir.join(name), bytes)
        .map_err(|e| LoadgenError::io(format!("writing {}", dir.join(name).display()), e))?;
    files.push(name.to_string());
    Ok(())
}

/// Writes every output of a run into `dir` (created if missing); returns the file names.
pub fn write_outputs(dir: &Path, summary: &Summary, histograms: &RunHistograms) -> Result<Vec<String>> {
    fs::create_dir_all(dir).map_err(|e| LoadgenError::io(format!("creating {}", dir.display()), e))?;
    let mut files = Vec::new();
    let json = serde_json::to_vec_pretty(summary).map_err(|e| LoadgenError::Output(format!("summary.json: {e}")))?;
    write(dir, "summary.json", &json, &mut files)?;
    write(dir, "table.txt", percentile_table(summary).as_bytes(), &mut files)?;
    write(
        dir,
        "produce.hlog",
        &interval_log(&histograms.produce_intervals, histograms.start_unix_s, "produce")?,
        &mut files,
    )?;
    write(dir, "produce.hgrm", percentile_distribution(&histograms.produce_total).as_bytes(), &mut files)?;
    for (gi, g) in summary.groups.iter().enumerate() {
        let name = file_safe(&g.name);
        let what = format!("e2e-{name}");
        write(
            dir,
            &format!("{what}.hlog"),
            &interval_log(&histograms.e2e_intervals[gi], histograms.start_unix_s, &what)?,
            &mut files,
        )?;
        write(
            dir,
            &format!("{what}.hgrm"),
            percentile_distribution(&histograms.e2e_totals[gi]).as_bytes(),
            &mut files,
        )?;
    }
    for (name, svg) in crate::plot::all_plots(summary, histograms)? {
        write(dir, &name, svg.as_bytes(), &mut files)?;
    }
    write(dir, "index.html", index_html(summary, &files).as_bytes(), &mut files)?;
    Ok(files)
}

/// A name usable in a file name (letters, digits, `-`, `_`).
pub fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn index_html(summary: &Summary, files: &[String]) -> String {
    let mut html = String::new();
    let title = html_escape(&format!("sluice-loadgen: {} against {}", summary.scenario, summary.bootstrap));
    let _ = writeln!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}img{{max-width:100%;display:block;margin:1em 0}}</style></head><body>\n<h1>{title}</h1>"
    );
    let _ = writeln!(html, "<h2>Percentiles</h2>\n<pre>{}</pre>", html_escape(&percentile_table(summary)));
    let _ = writeln!(html, "<h2>Plots</h2>");
    for f in files.iter().filter(|f| f.ends_with(".svg")) {
        let _ = writeln!(html, "<img src=\"{0}\" alt=\"{0}\">", html_escape(f));
    }
    let _ = writeln!(html, "<h2>Files</h2>\n<ul>");
    for f in files {
        let _ = writeln!(html, "<li><a href=\"{0}\">{0}</a></li>", html_escape(f));
    }
    let _ = writeln!(html, "<li><a href=\"index.html\">index.html</a></li>\n</ul>\n</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_782_225), "20261127T122345Z");
    }

    #[test]
    fn hlog_round_trip_and_hgrm_shape() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let log = interval_log(&[(0.0, 1.0, h.clone()), (1.0, 1.0, h.clone())], 1_700_000_000.0, "produce").unwrap();
        let mut seen = 0;
        for entry in IntervalLogIterator::new(&log) {
            if let LogEntry::Interval(i) = entry.unwrap() {
                let bytes = base64_decode(i.encoded_histogram());
                let back: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                assert_eq!(back.len(), 1000);
                seen += 1;
            }
        }
        assert_eq!(seen, 2);
        let hgrm = percentile_distribution(&h);
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(hgrm.contains("Total count    =         1000]"), "{hgrm}");
        assert!(hgrm.lines().filter(|l| !l.starts_with('#')).count() > 20);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}
