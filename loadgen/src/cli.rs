//! The command line: `run` one scenario, or `compare` it across several brokers. Flags override any
//! scenario field for quick ad-hoc runs (`--set producer.acks=-1`, or the shorthands below).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::error::{LoadgenError, Result};
use crate::run::RunOptions;
use crate::scenario::Scenario;
use crate::{run_and_write, RunReport, Summary};

#[derive(Debug, Parser)]
#[command(name = "sluice-loadgen", version, about = "Kafka-protocol load generator: open-loop latency, backlog, plots")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario against one broker (cluster).
    Run {
        #[command(flatten)]
        common: CommonArgs,
        /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
        #[arg(long)]
        bootstrap: String,
    },
    /// Run the same scenario against several brokers in turn and print the ratios.
    Compare {
        #[command(flatten)]
        common: CommonArgs,
        /// `NAME=HOST:PORT[,HOST:PORT...]`, at least two; ratios are to the first.
        #[arg(long = "target", required = true, num_args = 1)]
        targets: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Multiply every duration by this (0.1: a tenth as long).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Output directory (default `./loadgen-out/<scenario>-<time>/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override any scenario field: `--set producer.acks=-1 --set phases.1.rate=8000`.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<String>,
    /// Set the rate of every phase (records/s).
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub partitions: Option<i32>,
    #[arg(long, allow_hyphen_values = true)]
    pub acks: Option<i16>,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long)]
    pub compression: Option<String>,
    #[arg(long)]
    pub record_bytes: Option<usize>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub linger_ms: Option<f64>,
    #[arg(long)]
    pub batch_records: Option<usize>,
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// open-loop or max (closed loop: as fast as the in-flight window allows).
    #[arg(long)]
    pub mode: Option<String>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    /// The scenario file with `--scale` and every override applied.
    pub fn scenario(&self) -> Result<Scenario> {
        let scenario = Scenario::from_file(&self.scenario)?;
        let mut overrides = Vec::new();
        if let Some(rate) = self.rate {
            for i in 0..scenario.phases.len() {
                overrides.push(format!("phases.{i}.rate={rate}"));
            }
        }
        let quoted = |s: &str| format!("{:?}", s);
        let mut add = |field: &str, value: Option<String>| {
            if let Some(v) = value {
                overrides.push(format!("{field}={v}"));
            }
        };
        add("topic.name", self.topic.as_deref().map(quoted));
        add("topic.partitions", self.partitions.map(|v| v.to_string()));
        add("producer.acks", self.acks.map(|v| v.to_string()));
        add("producer.compression", self.compression.as_deref().map(quoted));
        add("producer.record_bytes", self.record_bytes.map(|v| v.to_string()));
        add("producer.threads", self.threads.map(|v| v.to_string()));
        add("producer.linger_ms", self.linger_ms.map(|v| format!("{v:?}")));
        add("producer.batch_max_records", self.batch_records.map(|v| v.to_string()));
        add("producer.max_in_flight", self.max_in_flight.map(|v| v.to_string()));
        add("producer.mode", self.mode.as_deref().map(quoted));
        overrides.extend(self.set.iter().cloned());
        scenario.with_overrides(&overrides)?.scaled(self.scale)
    }
}

/// Parses a command line (the first item is the program name).
pub fn parse<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// What a command produced.
#[derive(Debug)]
pub enum Outcome {
    Run(Box<RunReport>),
    Compare { runs: Vec<(String, RunReport)>, table: String },
}

fn bootstrap_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Runs a parsed command; `progress` shows the live line.
pub fn execute(cli: &Cli, progress: bool) -> Result<Outcome> {
    match &cli.command {
        Command::Run { common, bootstrap } => {
            let scenario = common.scenario()?;
            let options = RunOptions {
                bootstrap: bootstrap_list(bootstrap),
                progress: progress && !common.quiet,
                on_sample: None,
            };
            Ok(Outcome::Run(Box::new(run_and_write(&scenario, &options, common.out.as_deref())?)))
        }
        Command::Compare { common, targets } => {
            let scenario = common.scenario()?;
            let parsed: Vec<(String, String)> = targets
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(n, b)| (n.trim().to_string(), b.trim().to_string()))
                        .ok_or_else(|| LoadgenError::Invalid(format!("--target {t:?}: want NAME=HOST:PORT")))
                })
                .collect::<Result<_>>()?;
            if parsed.len() < 2 {
                return Err(LoadgenError::Invalid("compare needs at least two --target".into()));
            }
            let base = common.out.clone().unwrap_or_else(|| PathBuf::from("loadgen-out"));
            let mut runs = Vec::new();
            for (name, bootstrap) in parsed {
                let options = RunOptions {
                    bootstrap: bootstrap_list(&bootstrap),
                    progress: progress && !common.quiet,
                    on_sample: None,
                };
                let dir = base.join(format!(
                    "{}-{}",
                    crate::report::file_safe(&scenario.name),
                    crate::report::file_safe(&name)
                ));
                let report = run_and_write(&scenario, &options, Some(Path::new(&dir)))?;
                runs.push((name, report));
            }
            let table = ratio_table(&runs.iter().map(|(n, r)| (n.clone(), r.summary.clone())).collect::<Vec<_>>());
            Ok(Outcome::Compare { runs, table })
        }
    }
}

/// The figures of each target side by side, with each one's ratio to the first target.
pub fn ratio_table(runs: &[(String, Summary)]) -> String {
    type Metric = (&'static str, fn(&Summary) -> Option<f64>);
    let metrics: [Metric; 10] = [
        ("achieved rate (records/s)", |s| Some(s.achieved_rate)),
        ("throughput (MiB/s)", |s| Some(s.achieved_mib_per_s)),
        ("produce p50 (ms)", |s| Some(s.produce_latency.p50_ms)),
        ("produce p99 (ms)", |s| Some(s.produce_latency.p99_ms)),
        ("produce p99.9 (ms)", |s| Some(s.produce_latency.p999_ms)),
        ("produce max (ms)", |s| Some(s.produce_latency.max_ms)),
        ("end-to-end p99 (ms)", |s| s.groups.first().map(|g| g.e2e_latency.p99_ms)),
        ("backlog peak (records)", |s| s.groups.first().map(|g| g.backlog_peak_records as f64)),
        ("drain after burst (s)", |s| s.groups.first().and_then(|g| g.drain_time_after_burst_s)),
        ("errors (records)", |s| Some(s.errors as f64)),
    ];
    let mut out = String::new();
    let _ = write!(out, "{:<28}", "metric");
    for (i, (name, _)) in runs.iter().enumerate() {
        let _ = write!(out, " {name:>12}");
        if i > 0 {
            let _ = write!(out, " {:>10}", format!("{name}/{}", runs[0].0));
        }
    }
    out.push('\n');
    for (label, get) in metrics {
        let _ = write!(out, "{label:<28}");
        let base = get(&runs[0].1);
        for (i, (_, summary)) in runs.iter().enumerate() {
            let v = get(summary);
            let _ = write!(out, " {:>12}", v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()));
            if i > 0 {
                let ratio = match (v, base) {
                    (Some(v), Some(b)) if b != 0.0 => format!("{:.2}", v / b),
                    _ => "-".into(),
                };
                let _ = write!(out, " {ratio:>10}");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_scenario() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/steady-1k.toml");
        let cli = parse([
            "sluice-loadgen",
            "run",
            path.to_str().unwrap(),
            "--bootstrap",
            "127.0.0.1:1",
            "--scale",
            "0.5",
            "--acks",
            "-1",
            "--rate",
            "250",
            "--compression",
            "zstd",
            "--set",
            "producer.linger_ms=7",
        ])
        .unwrap();
        let Command::Run { common, bootstrap } = &cli.command else { panic!("run expected") };
        assert_eq!(bootstrap_list(bootstrap), vec!["127.0.0.1:1"]);
        let s = common.scenario().unwrap();
        assert_eq!(s.producer.acks, -1);
        assert_eq!(s.producer.linger_ms, 7.0);
        assert_eq!(s.producer.compression, crate::scenario::CompressionSpec::Zstd);
        assert!(s.phases.iter().all(|p| p.rate == 250.0));
        assert!(parse(["sluice-loadgen", "compare", "x.toml"]).is_err());
    }

    #[test]
    fn ratio_table_divides_by_the_first_target() {
        // The summary of the run documented in README.md.
        let a: Summary = serde_json::from_str(include_str!("../docs/peak-shaving/summary.json")).unwrap();
        let mut b = a.clone();
        b.produce_latency.p99_ms = a.produce_latency.p99_ms * 2.0;
        b.groups[0].drain_time_after_burst_s = None;
        let table = ratio_table(&[("a".into(), a), ("b".into(), b)]);
        let row = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(table.lines().next().unwrap().contains("b/a"));
        assert!(row("produce p99 (ms)").trim_end().ends_with("2.00"), "{table}");
        assert!(row("produce p50 (ms)").trim_end().ends_with("1.00"), "{table}");
        assert!(row("drain after burst (s)").trim_end().ends_with('-'), "{table}");
    }
}
