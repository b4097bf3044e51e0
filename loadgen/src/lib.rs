//! `sluice-loadgen`: a Kafka-protocol load generator for Sluice or any Kafka-compatible broker.
//!
//! Open loop by default: records are due at the scenario's rate and their latency is measured from
//! the intended send time, so a stalled broker shows up in the percentiles (no coordinated
//! omission). Scenarios are TOML files (`loadgen/scenarios/`); a run writes a JSON summary, HDR
//! interval logs, percentile distributions, SVG plots and an `index.html` into its output directory.
//!
//! The library is what the binary and the integration tests drive: [`run_scenario`] measures,
//! [`write_outputs`] writes the files, [`cli`] parses and executes a command line.

pub mod cli;
pub mod client;
pub mod consume;
pub mod error;
pub mod plot;
pub mod produce;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;

pub use error::{LoadgenError, Result};
pub use report::{percentile_table, write_outputs};
pub use run::{run_scenario, GroupSummary, PhaseSummary, RunHistograms, RunOptions, Saturation, Summary};
pub use scenario::Scenario;
pub use stats::{Percentiles, TimePoint};

use std::path::{Path, PathBuf};

/// A finished run and where its outputs are.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub summary: Summary,
    pub out_dir: PathBuf,
    pub files: Vec<String>,
}

/// Runs `scenario` and writes its outputs into `out_dir` (or `./loadgen-out/<scenario>-<time>/`).
pub fn run_and_write(scenario: &Scenario, options: &RunOptions, out_dir: Option<&Path>) -> Result<RunReport> {
    let (summary, histograms) = run_scenario(scenario, options)?;
    let out_dir = match out_dir {
        Some(dir) => dir.to_path_buf(),
        None => report::default_out_dir(
            Path::new("loadgen-out"),
            &report::file_safe(&scenario.name),
            summary.started_unix_ms / 1000,
        ),
    };
    let files = write_outputs(&out_dir, &summary, &histograms)?;
    Ok(RunReport { summary, out_dir, files })
}
