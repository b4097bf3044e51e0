//! SVG plots of a run, drawn with plotters: latency over time (p50/p99/p99.9/max per second),
//! the percentile curve (HdrHistogram style, x = 1/(1-percentile) on a log axis), backlog over time
//! and throughput over time. Text is laid out with the bundled DejaVu Sans (no system fonts).

use std::sync::Once;

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{LoadgenError, Result};
use crate::run::{RunHistograms, Summary};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER_FONT: Once = Once::new();

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 500;
/// Smallest latency drawn on log axes (milliseconds): zero has no place on them.
const MIN_PLOTTED_MS: f64 = 0.01;

fn register_font() {
    REGISTER_FONT.call_once(|| {
        // The bundled font is a valid TTF; a failure here would only cost the plots their text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err(what: &str, e: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Output(format!("{what}: {e}"))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Every plot of a run as (file name, SVG text).
pub fn all_plots(summary: &Summary, histograms: &RunHistograms) -> Result<Vec<(String, String)>> {
    register_font();
    let mut out = vec![
        ("latency.svg".to_string(), latency_over_time(summary)?),
        ("percentiles.svg".to_string(), percentile_curves(summary, histograms)?),
        ("throughput.svg".to_string(), throughput_over_time(summary)?),
    ];
    if !summary.groups.is_empty() {
        out.push(("backlog.svg".to_string(), backlog_over_time(summary)?));
    }
    Ok(out)
}

/// The lower end of a log latency axis: the power of ten at or below the smallest positive value.
fn log_floor<'a>(values: impl Iterator<Item = &'a f64>) -> f64 {
    let min = values.copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    if min.is_finite() {
        10f64.powf(min.log10().floor()).max(MIN_PLOTTED_MS)
    } else {
        MIN_PLOTTED_MS
    }
}

fn end_time(summary: &Summary) -> f64 {
    summary.timeseries.last().map(|p| p.t_s).unwrap_or(1.0).max(1.0)
}

fn latency_over_time(summary: &Summary) -> Result<String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = [
        ("p50", summary.timeseries.iter().map(|p| (p.t_s, p.produce_p50_ms)).collect::<Vec<_>>()),
        ("p99", summary.timeseries.iter().map(|p| (p.t_s, p.produce_p99_ms)).collect()),
        ("p99.9", summary.timeseries.iter().map(|p| (p.t_s, p.produce_p999_ms)).collect()),
        ("max", summary.timeseries.iter().map(|p| (p.t_s, p.produce_max_ms)).collect()),
    ]
    .into_iter()
    // Seconds without a sample (no acks) have no latency: they are left out, not drawn as zero.
    .map(|(name, points)| (name.to_string(), points.into_iter().filter(|p| p.1 > 0.0).collect()))
    .collect();
    let (ymin, ymax) = log_bounds(&series);
    line_chart(
        "latency.svg",
        &format!("{}: produce latency (send → ack) per second", summary.scenario),
        0f64..end_time(summary),
        (ymin..ymax).log_scale(),
        ("seconds since start", "latency (ms, log)"),
        (None, None),
        SeriesLabelPosition::UpperRight,
        series,
    )
}

/// (1/(1-q), value ms) points of a histogram's percentile curve.
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1000.0))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| (1.0 / (1.0 - q), v.max(MIN_PLOTTED_MS)))
        .collect()
}

fn percentile_curves(summary: &Summary, histograms: &RunHistograms) -> Result<String> {
    let mut series = vec![("produce".to_string(), curve(&histograms.produce_total))];
    for (g, h) in summary.groups.iter().zip(&histograms.e2e_totals) {
        series.push((format!("end-to-end, group {}", g.name), curve(h)));
    }
    let xmax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(100.0, f64::max) * 2.0;
    let (ymin, ymax) = log_bounds(&series);
    line_chart(
        "percentiles.svg",
        &format!("{}: latency by percentile", summary.scenario),
        (1f64..xmax).log_scale(),
        (ymin..ymax).log_scale(),
        ("percentile (log scale of 1/(1-p))", "latency (ms, log)"),
        (Some(&|x: &f64| percentile_label(*x)), None),
        SeriesLabelPosition::LowerRight,
        series,
    )
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        let digits = ((-(1.0 - p / 100.0).log10()).round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

fn backlog_over_time(summary: &Summary) -> Result<String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = summary
        .groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let points = summary.timeseries.iter().map(|p| (p.t_s, p.groups[gi].lag as f64)).collect();
            (format!("lag, group {}", g.name), points)
        })
        .collect();
    linear_time_chart("backlog.svg", &format!("{}: consumer backlog", summary.scenario), "records", summary, series)
}

fn throughput_over_time(summary: &Summary) -> Result<String> {
    let mut series =
        vec![("acked".to_string(), summary.timeseries.iter().map(|p| (p.t_s, p.acked as f64)).collect::<Vec<_>>())];
    for (gi, g) in summary.groups.iter().enumerate() {
        let points = summary.timeseries.iter().map(|p| (p.t_s, p.groups[gi].consumed as f64)).collect();
        series.push((format!("consumed, group {}", g.name), points));
    }
    let caption = format!("{}: throughput per second", summary.scenario);
    linear_time_chart("throughput.svg", &caption, "records/s", summary, series)
}

fn linear_time_chart(
    what: &str,
    caption: &str,
    y_desc: &str,
    summary: &Summary,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Result<String> {
    let ymax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    line_chart(
        what,
        caption,
        0f64..end_time(summary),
        0f64..ymax,
        ("seconds since start", y_desc),
        (None, Some(&|y: &f64| format!("{y:.0}"))),
        SeriesLabelPosition::UpperRight,
        series,
    )
}

/// The y range of a log latency axis: from the power of ten at or below the smallest value to 1.5 ×
/// the largest.
fn log_bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64) {
    let ymax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.5;
    (log_floor(series.iter().flat_map(|(_, s)| s.iter().map(|p| &p.1))), ymax)
}

/// How an axis writes its labels (`None`: plotters' default).
type LabelFormat<'a> = Option<&'a dyn Fn(&f64) -> String>;

/// One chart of lines with a legend, as SVG text.
#[allow(clippy::too_many_arguments)] // one call per plot, every argument named at the call site
fn line_chart<X, Y>(
    what: &str,
    caption: &str,
    x: X,
    y: Y,
    (x_desc, y_desc): (&str, &str),
    (x_labels, y_labels): (LabelFormat, LabelFormat),
    legend: SeriesLabelPosition,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Result<String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(what, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x, y)
            .map_err(|e| err(what, e))?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(y_desc);
        if let Some(format) = x_labels {
            mesh.x_label_formatter(format);
        }
        if let Some(format) = y_labels {
            mesh.y_label_formatter(format);
        }
        mesh.draw().map_err(|e| err(what, e))?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(what, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(legend)
            .draw()
            .map_err(|e| err(what, e))?;
        root.present().map_err(|e| err(what, e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }
}
