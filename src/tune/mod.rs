//! `sluice tune`: checks the Linux settings a broker wants, says why for each, and with `--apply`
//! changes what can be changed at run time (sysctls and sysfs files, as root).
//!
//! Check mode only reads: `/proc`, `/sys`, resource limits, `statx` and a read-only O_DIRECT read of
//! the probe file the broker itself keeps in its data directory. The one writing check, an O_DIRECT
//! write of a temporary file, runs only with `--probe-io`, so that checking a production host can
//! never change it. Every read failure becomes an "unknown (why)" row, never an error.

mod disk;
mod irq;
mod kernel;
mod limits;
pub mod report;
pub mod sysfs;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::BrokerConfig;
pub use sysfs::Host;

/// What `sluice tune` checks against.
#[derive(Debug, Clone)]
pub struct TuneTarget {
    /// The broker's configuration (cores, io_memory_bytes, data_dir, connection limits).
    pub config: BrokerConfig,
    /// Where `/proc` and `/sys` are (`/` except in tests).
    pub host: Host,
    /// Allow the O_DIRECT write probe (creates and removes a file in the data directory).
    pub probe_io: bool,
}

impl TuneTarget {
    /// Cores the broker would pin its executors to (as `server::run` picks them).
    pub fn broker_cores(&self) -> Result<Vec<usize>, String> {
        let ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
        let available = ids.len().max(1);
        let n = self.config.cores.unwrap_or(available);
        if n == 0 || n > available {
            return Err(format!("--cores {n}: this machine has {available} cores"));
        }
        Ok(if ids.is_empty() { vec![0] } else { ids[..n].to_vec() })
    }
}

/// How a setting compares with the recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// As recommended (or better).
    Ok,
    /// Below the recommendation: see `why`, `fix` and the commands.
    Change,
    /// The setting does not exist here (e.g. no cpufreq in a VM); nothing to do.
    NotAvailable,
    /// Could not be read; `current` says why.
    Unknown,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Change => "CHANGE",
            Status::NotAvailable => "n/a",
            Status::Unknown => "unknown",
        }
    }
}

/// One change `--apply` can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `sysctl -w KEY=VALUE` (written to `/proc/sys/...`).
    Sysctl { key: String, value: String },
    /// `echo VALUE > PATH` for a `/sys` or `/proc/irq` file.
    Write { path: String, value: String },
}

impl Action {
    /// The shell command this action is equivalent to (what `--dry-run` prints).
    pub fn command(&self) -> String {
        match self {
            Action::Sysctl { key, value } => format!("sysctl -w {key}={value}"),
            Action::Write { path, value } => format!("echo {value} > {path}"),
        }
    }

    /// Performs the change (needs root on a real host).
    pub fn apply(&self, host: &Host) -> Result<(), String> {
        match self {
            Action::Sysctl { key, value } => host.write(&Host::sysctl_path(key), value),
            Action::Write { path, value } => host.write(path, value),
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name (a sysctl key where there is one).
    pub name: &'static str,
    pub current: String,
    pub recommended: String,
    pub status: Status,
    /// Why the recommendation matters for Sluice.
    pub why: String,
    /// What to do by hand when `--apply` cannot (limits, filesystems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What `--apply` would run (in JSON: `commands`, as shell commands).
    #[serde(rename = "commands", serialize_with = "serialize_commands")]
    pub actions: Vec<Action>,
}

fn serialize_commands<S: serde::Serializer>(actions: &[Action], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(actions.iter().map(Action::command))
}

impl Check {
    fn new(name: &'static str, current: impl Into<String>, recommended: impl Into<String>, status: Status) -> Self {
        Check {
            name,
            current: current.into(),
            recommended: recommended.into(),
            status,
            why: String::new(),
            fix: None,
            actions: Vec::new(),
        }
    }

    fn why(mut self, why: impl Into<String>) -> Self {
        self.why = why.into();
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    fn action(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }

    /// A setting that could not be read.
    fn unknown(name: &'static str, reason: &str, recommended: impl Into<String>) -> Self {
        Check::new(name, format!("unknown ({reason})"), recommended, Status::Unknown)
    }
}

/// Names of every check, in report order (the tests assert this list).
pub const CHECK_NAMES: &[&str] = &[
    "io_uring",
    "kernel.io_uring_disabled",
    "memlock",
    "nofile",
    "vm.swappiness",
    "vm.max_map_count",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "transparent_hugepage",
    "cpufreq.governor",
    "clocksource",
    "irq_affinity",
    "disk.scheduler",
    "disk.nr_requests",
    "filesystem",
    "o_direct",
];

/// Runs every check; never fails (unreadable settings are `Status::Unknown`).
pub fn run_checks(target: &TuneTarget) -> Vec<Check> {
    let mut checks = Vec::with_capacity(CHECK_NAMES.len());
    checks.extend(kernel::io_uring(target));
    checks.extend(limits::checks(target));
    checks.extend(kernel::sysctls(target));
    checks.extend(kernel::sysfs_checks(target));
    checks.push(irq::affinity(target));
    checks.extend(disk::checks(target));
    debug_assert_eq!(checks.iter().map(|c| c.name).collect::<Vec<_>>(), CHECK_NAMES);
    checks
}

/// What happened to one action under `--apply` / `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub check: &'static str,
    pub command: String,
    /// The check's value before the change.
    pub was: String,
    /// `dry-run`, `applied`, or `failed: why`.
    pub outcome: String,
}

/// Runs (or with `dry_run` only lists) the actions of every check below its recommendation.
pub fn apply(target: &TuneTarget, checks: &[Check], dry_run: bool) -> Vec<Applied> {
    let mut out = Vec::new();
    for c in checks.iter().filter(|c| c.status == Status::Change) {
        for a in &c.actions {
            let outcome = if dry_run {
                "dry-run".to_string()
            } else {
                match a.apply(&target.host) {
                    Ok(()) => "applied".to_string(),
                    Err(e) => format!("failed: {e}"),
                }
            };
            out.push(Applied { check: c.name, command: a.command(), was: c.current.clone(), outcome });
        }
    }
    out
}

/// The data directory as an absolute path (relative paths are taken from the current directory, as
/// `sluice serve` does).
fn absolute_data_dir(config: &BrokerConfig) -> PathBuf {
    let joined = if config.data_dir.is_absolute() {
        config.data_dir.clone()
    } else {
        std::env::current_dir().map(|d| d.join(&config.data_dir)).unwrap_or_else(|_| config.data_dir.clone())
    };
    // `./data` → `/cwd/data`: drop the `.` components (`..` is left alone: symlinks).
    joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}
