//! Scenarios: what to run, as read from a TOML file under `loadgen/scenarios/`, with `--scale`
//! applied to every duration and `--set`-style overrides applied to any field.
//!
//! A scenario is a topic, a producer profile, a list of rate phases (open loop: record i of a phase
//! is due at `phase_start + i / rate`) and zero or more consumer groups.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LoadgenError, Result};

/// Largest record value the generator builds (a guard against a typo in a scenario).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Smallest record value: the intended send time (8 bytes) and the producer's record number (8 bytes).
pub const MIN_RECORD_BYTES: usize = 16;
/// Largest in-flight window per connection.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1024;
/// Largest number of producer threads, consumers per group, partitions.
pub const MAX_THREADS: usize = 256;
pub const MAX_PARTITIONS: i32 = 10_000;

/// One scenario file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Used in the output directory's name and the reports.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub topic: TopicSpec,
    pub producer: ProducerSpec,
    /// The rate schedule, run in order.
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// After the last phase, how long consumers may take to reach the end of the log before the run
    /// stops anyway (seconds; scaled).
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: f64,
    /// The backlog (records) at or below which the consumers count as caught up, for "time to drain".
    #[serde(default = "default_drained_lag_records")]
    pub drained_lag_records: u64,
    /// For `ramp-to-saturation`: the bound on a phase's produce p99 (milliseconds) under which its rate
    /// counts as sustained.
    #[serde(default)]
    pub p99_bound_ms: Option<f64>,
}

fn default_drain_timeout_s() -> f64 {
    30.0
}
fn default_drained_lag_records() -> u64 {
    100
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor when the scenario creates the topic (-1: the broker's default).
    #[serde(default = "default_replication")]
    pub replication_factor: i16,
}

fn default_partitions() -> i32 {
    4
}
fn default_replication() -> i16 {
    -1
}

/// Open loop (the default): records are due at the scheduled rate whatever the broker does.
/// Closed loop ("max"): each connection sends as fast as its in-flight window allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    OpenLoop,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionSpec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Record value sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeDistribution {
    /// Every value is `record_bytes` long.
    Fixed,
    /// Uniform in `[record_bytes_min, record_bytes]`.
    Uniform,
}

/// Record keys (which decide the partition, with Kafka's murmur2 partitioner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// No key: the sticky partitioner (one partition until its batch is sent).
    None,
    /// Keys drawn uniformly from `key_count` distinct keys.
    Uniform,
    /// Keys 0, 1, 2, ... modulo `key_count`.
    Sequential,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerSpec {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Producer threads; each has its own connection to each partition leader and a share of the rate.
    #[serde(default = "one")]
    pub threads: usize,
    #[serde(default = "default_record_bytes")]
    pub record_bytes: usize,
    #[serde(default = "default_record_bytes_min")]
    pub record_bytes_min: usize,
    #[serde(default = "default_size_distribution")]
    pub size_distribution: SizeDistribution,
    #[serde(default = "default_key_distribution")]
    pub key_distribution: KeyDistribution,
    #[serde(default = "default_key_count")]
    pub key_count: u64,
    /// Records per batch (per partition) at most.
    #[serde(default = "default_batch_records")]
    pub batch_max_records: usize,
    /// How long a due record may wait for its batch to fill (milliseconds).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: f64,
    /// 0, 1 or -1 (all).
    #[serde(default = "one_i16")]
    pub acks: i16,
    #[serde(default = "default_compression")]
    pub compression: CompressionSpec,
    /// Produce requests in flight per connection; when full, due records wait (and their latency grows).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Pin producer and consumer threads to cores (round robin over the cores `core_affinity` sees).
    #[serde(default)]
    pub pin_cores: bool,
}

fn default_mode() -> Mode {
    Mode::OpenLoop
}
fn one() -> usize {
    1
}
fn one_i16() -> i16 {
    1
}
fn default_record_bytes() -> usize {
    512
}
fn default_record_bytes_min() -> usize {
    MIN_RECORD_BYTES
}
fn default_size_distribution() -> SizeDistribution {
    SizeDistribution::Fixed
}
fn default_key_distribution() -> KeyDistribution {
    KeyDistribution::None
}
fn default_key_count() -> u64 {
    1000
}
fn default_batch_records() -> usize {
    500
}
fn default_linger_ms() -> f64 {
    2.0
}
fn default_compression() -> CompressionSpec {
    CompressionSpec::None
}
fn default_in_flight() -> usize {
    8
}

/// One stretch of the schedule at one rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// Seconds (scaled by `--scale`).
    pub duration_s: f64,
    /// Records per second over all producer threads (open loop; ignored in `max` mode).
    #[serde(default)]
    pub rate: f64,
}

/// A consumer group: `consumers` threads, each statically owning partitions `p % consumers == i`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default = "one")]
    pub consumers: usize,
    /// Records per second the group processes at most (over all its consumers; 0: unlimited). Models
    /// a slow downstream, e.g. a database that takes ~2k writes/s.
    #[serde(default)]
    pub max_records_per_sec: f64,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadgenError::Scenario { path: path.to_path_buf(), message: e.to_string() })?;
        let scenario: Scenario = toml::from_str(&text)
            .map_err(|e| LoadgenError::Scenario { path: path.to_path_buf(), message: e.to_string() })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parses a scenario from TOML text (tests, embedded scenarios).
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| LoadgenError::Invalid(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Multiplies every duration by `factor` (for short test runs).
    pub fn scaled(mut self, factor: f64) -> Result<Scenario> {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(LoadgenError::Invalid(format!("scale {factor} must be a positive number")));
        }
        for phase in &mut self.phases {
            phase.duration_s *= factor;
        }
        self.drain_timeout_s *= factor;
        Ok(self)
    }

    /// Applies `field.path=value` overrides (TOML values; a bare word is taken as a string), e.g.
    /// `producer.acks=-1`, `phases.1.rate=8000`, `groups.0.max_records_per_sec=0`, `topic.name="t2"`.
    pub fn with_overrides(self, overrides: &[String]) -> Result<Scenario> {
        if overrides.is_empty() {
            return Ok(self);
        }
        let mut value = toml::Value::try_from(&self).map_err(|e| LoadgenError::Invalid(e.to_string()))?;
        for item in overrides {
            let (path, raw) = item
                .split_once('=')
                .ok_or_else(|| LoadgenError::Invalid(format!("override {item:?}: want KEY=VALUE")))?;
            let new_value = parse_override_value(raw.trim());
            set_path(&mut value, path.trim(), new_value)
                .map_err(|message| LoadgenError::Invalid(format!("override {item:?}: {message}")))?;
        }
        let scenario: Scenario = value.try_into().map_err(|e: toml::de::Error| LoadgenError::Invalid(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Total scheduled duration of the phases, seconds.
    pub fn scheduled_duration_s(&self) -> f64 {
        self.phases.iter().map(|p| p.duration_s).sum()
    }

    /// Records the open-loop schedule holds (all phases).
    pub fn scheduled_records(&self) -> u64 {
        self.phases.iter().map(|p| (p.duration_s * p.rate).floor() as u64).sum()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LoadgenError::Invalid(m));
        let p = &self.producer;
        if self.phases.is_empty() {
            return bad("at least one phase is needed".into());
        }
        for phase in &self.phases {
            if !(phase.duration_s >= 0.0 && phase.duration_s.is_finite()) {
                return bad(format!("phase {}: duration_s {} must be >= 0", phase.name, phase.duration_s));
            }
            if !(phase.rate >= 0.0 && phase.rate.is_finite()) {
                return bad(format!("phase {}: rate {} must be >= 0", phase.name, phase.rate));
            }
        }
        if !(1..=MAX_PARTITIONS).contains(&self.topic.partitions) {
            return bad(format!("topic.partitions {} not in 1..={MAX_PARTITIONS}", self.topic.partitions));
        }
        if !(1..=MAX_THREADS).contains(&p.threads) {
            return bad(format!("producer.threads {} not in 1..={MAX_THREADS}", p.threads));
        }
        if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&p.record_bytes)
            || !(MIN_RECORD_BYTES..=p.record_bytes).contains(&p.record_bytes_min)
        {
            return bad(format!(
                "record sizes: need {MIN_RECORD_BYTES} <= record_bytes_min ({}) <= record_bytes ({}) <= {MAX_RECORD_BYTES}",
                p.record_bytes_min, p.record_bytes
            ));
        }
        if p.batch_max_records == 0 || p.batch_max_records > 100_000 {
            return bad(format!("producer.batch_max_records {} not in 1..=100000", p.batch_max_records));
        }
        if !(p.linger_ms >= 0.0 && p.linger_ms <= 60_000.0) {
            return bad(format!("producer.linger_ms {} not in 0..=60000", p.linger_ms));
        }
        if ![0, 1, -1].contains(&p.acks) {
            return bad(format!("producer.acks {} must be 0, 1 or -1", p.acks));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&p.max_in_flight) {
            return bad(format!("producer.max_in_flight {} not in 1..={MAX_IN_FLIGHT_LIMIT}", p.max_in_flight));
        }
        if p.key_distribution != KeyDistribution::None && p.key_count == 0 {
            return bad("producer.key_count must be > 0 with keys".into());
        }
        for g in &self.groups {
            if !(1..=MAX_THREADS).contains(&g.consumers) {
                return bad(format!("group {}: consumers {} not in 1..={MAX_THREADS}", g.name, g.consumers));
            }
            if !(g.max_records_per_sec >= 0.0 && g.max_records_per_sec.is_finite()) {
                return bad(format!("group {}: max_records_per_sec must be >= 0", g.name));
            }
        }
        if !(self.drain_timeout_s >= 0.0 && self.drain_timeout_s.is_finite()) {
            return bad("drain_timeout_s must be >= 0".into());
        }
        Ok(())
    }
}

fn parse_override_value(raw: &str) -> toml::Value {
    // Parse as a TOML value through a one-key document; a bare word that is no TOML value is a string.
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(root: &mut toml::Value, path: &str, new_value: toml::Value) -> std::result::Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut at = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        at = match at {
            toml::Value::Table(table) => {
                if last {
                    table.insert((*part).to_string(), new_value);
                    return Ok(());
                }
                table.get_mut(*part).ok_or_else(|| format!("no field {part:?}"))?
            }
            toml::Value::Array(items) => {
                let index: usize = part.parse().map_err(|_| format!("{part:?} is not an index"))?;
                let len = items.len();
                let item = items.get_mut(index).ok_or_else(|| format!("index {index} out of {len}"))?;
                if last {
                    *item = new_value;
                    return Ok(());
                }
                item
            }
            _ => return Err(format!("{part:?} is inside a plain value")),
        };
    }
    Err("empty path".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        [topic]
        name = "t"
        [producer]
        [[phases]]
        name = "steady"
        duration_s = 10
        rate = 100
    "#;

    #[test]
    fn defaults_scale_and_overrides() {
        let s = Scenario::from_toml(MINIMAL).unwrap().scaled(0.5).unwrap();
        assert_eq!(s.phases[0].duration_s, 5.0);
        assert_eq!(s.producer.acks, 1);
        assert_eq!(s.scheduled_records(), 500);
        let s = s
            .with_overrides(&["producer.acks=-1".into(), "phases.0.rate=2000".into(), "topic.name=other".into()])
            .unwrap();
        assert_eq!(s.producer.acks, -1);
        assert_eq!(s.phases[0].rate, 2000.0);
        assert_eq!(s.topic.name, "other");
        assert!(s.clone().with_overrides(&["producer.acks=3".into()]).is_err());
        assert!(s.with_overrides(&["nope.x=1".into()]).is_err());
    }

    #[test]
    fn bundled_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for name in ["peak-shaving", "steady-1k", "ramp-to-saturation", "fanout"] {
            let s = Scenario::from_file(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(s.name, name);
        }
    }
}
