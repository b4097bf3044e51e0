//! Reads and writes of kernel settings under `/proc` and `/sys`, relative to a root directory so
//! that tests can point `sluice tune` at a fake tree. Every failure is a readable reason, never a
//! panic: a missing file is common (VMs have no cpufreq, containers hide parts of /sys).

use std::path::{Path, PathBuf};

/// The filesystem `sluice tune` reads: `/` on a real host, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    /// The real path of an absolute host path such as `/proc/interrupts`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Contents of a host file, trimmed; the error is a short reason.
    pub fn read(&self, abs: &str) -> Result<String, String> {
        read_path(&self.path(abs))
    }

    /// The `/proc/sys` file of a sysctl key (`vm.swappiness` → `/proc/sys/vm/swappiness`).
    pub fn sysctl_path(key: &str) -> String {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }

    /// Current value of a sysctl, whitespace-normalised (`net.ipv4.tcp_rmem` has tabs).
    pub fn sysctl(&self, key: &str) -> Result<String, String> {
        self.read(&Self::sysctl_path(key)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// A sysctl as an integer.
    pub fn sysctl_u64(&self, key: &str) -> Result<u64, String> {
        let v = self.sysctl(key)?;
        v.parse().map_err(|_| format!("'{v}' is not a number"))
    }

    /// Writes a host file (an `echo VALUE > FILE`).
    pub fn write(&self, abs: &str, value: &str) -> Result<(), String> {
        let p = self.path(abs);
        std::fs::write(&p, format!("{value}\n")).map_err(|e| format!("writing {}: {e}", p.display()))
    }
}

/// Contents of a file, trimmed; the error names the file and the reason.
pub fn read_path(p: &Path) -> Result<String, String> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{} not found", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// The selected entry of a sysfs choice list: `always [madvise] never` → `madvise`; a list of one
/// (a stacked device's scheduler is just `none`) is that entry.
pub fn selected(choices: &str) -> Option<&str> {
    let mut words = choices.split_whitespace();
    if let (Some(only), None) = (words.next(), words.next()) {
        if !only.contains('[') {
            return Some(only);
        }
    }
    let start = choices.find('[')?;
    let end = choices[start..].find(']')? + start;
    Some(&choices[start + 1..end])
}

/// Parses a CPU list such as `0-3,8,10-11`; `None` if malformed.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > MAX_CPU_RANGE {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Largest CPU range accepted in a list (bounds the allocation on malformed input).
const MAX_CPU_RANGE: usize = 1 << 16;

/// Formats CPUs as a compact list (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_lists_and_cpu_lists() {
        assert_eq!(selected("always [madvise] never"), Some("madvise"));
        assert_eq!(selected("none [mq-deadline] kyber bfq"), Some("mq-deadline"));
        assert_eq!(selected("none"), Some("none"));
        assert_eq!(selected("a b"), None);
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 3, 10, 11]), "0-3,8,10-11");
        assert_eq!(Host::sysctl_path("net.core.somaxconn"), "/proc/sys/net/core/somaxconn");
    }
}
