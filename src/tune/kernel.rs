//! Kernel-wide checks: io_uring, sysctls, transparent huge pages, CPU frequency governor and the
//! clock source.

use super::sysfs::{selected, Host};
use super::{Action, Check, Status, TuneTarget};

/// Swap only to dodge the OOM killer: a swapped-out page stalls every partition of a core.
const RECOMMENDED_SWAPPINESS: u64 = 1;
/// Kafka's usual value; many mappings (allocator arenas, thread stacks, rings) and it costs nothing.
const RECOMMENDED_MAX_MAP_COUNT: u64 = 262_144;
/// glommio listens with a backlog of 1024, which the kernel silently caps at somaxconn.
const RECOMMENDED_SOMAXCONN: u64 = 1024;
/// Half-open connections while thousands of clients reconnect at once (after a restart).
const RECOMMENDED_TCP_MAX_SYN_BACKLOG: u64 = 4096;
/// 16 MiB: lets clients and followers that set SO_RCVBUF/SO_SNDBUF fill 1 Gbit/s × 100 ms paths.
const RECOMMENDED_SOCKET_BUFFER_MAX_BYTES: u64 = 16 << 20;
/// THP mode: `always` lets khugepaged compact memory behind the broker (ms stalls at p99.9).
const RECOMMENDED_THP: &str = "madvise";
/// Frequency governor: no ramp-up delay after an idle moment (that delay shows as tail latency).
const RECOMMENDED_GOVERNOR: &str = "performance";
/// Clock source: read in user space (vDSO) with no system call; timers and histograms read it often.
const RECOMMENDED_CLOCKSOURCE: &str = "tsc";

/// `struct io_uring_params` is 120 bytes: 30 u32 words.
const IO_URING_PARAMS_WORDS: usize = 30;
/// Index of `features` among those words.
const IO_URING_PARAMS_FEATURES: usize = 5;

/// io_uring: a real `io_uring_setup` (what glommio does first), and the sysctl that can forbid it.
pub(super) fn io_uring(target: &TuneTarget) -> Vec<Check> {
    let why = "glommio does all its I/O through io_uring: without it the broker cannot start";
    let probe = match probe_io_uring() {
        Ok(features) => Check::new("io_uring", format!("available (features {features:#x})"), "available", Status::Ok),
        Err(e) => Check::new("io_uring", format!("unavailable: {e}"), "available", Status::Change)
            .fix("kernel >= 5.8 with io_uring; no seccomp filter blocking it (Docker's default profile does)"),
    };
    let key = "kernel.io_uring_disabled";
    let disabled = match target.host.sysctl_u64(key) {
        Ok(0) => Check::new(key, "0", "0", Status::Ok),
        Ok(v) => Check::new(key, v.to_string(), "0", Status::Change)
            .action(Action::Sysctl { key: key.into(), value: "0".into() }),
        Err(e) if e.ends_with("not found") => {
            Check::new(key, "absent (kernel before 6.6: io_uring is not restricted)", "0", Status::NotAvailable)
        }
        Err(e) => Check::unknown(key, &e, "0"),
    }
    .why("1 limits io_uring to kernel.io_uring_group, 2 forbids it to everyone");
    vec![probe.why(why), disabled]
}

/// Creates and closes a one-entry ring; returns the kernel's feature bits or why it failed.
fn probe_io_uring() -> Result<u32, String> {
    let mut params = [0u32; IO_URING_PARAMS_WORDS];
    // SAFETY: io_uring_setup(entries, params) writes at most sizeof(struct io_uring_params) = 120
    // bytes into `params`, which we own and zeroed (the kernel requires the reserved fields zero).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "not in this kernel (ENOSYS)".into(),
            Some(libc::EPERM) => "not permitted (EPERM: kernel.io_uring_disabled or a seccomp filter)".into(),
            _ => e.to_string(),
        });
    }
    // SAFETY: `fd` is the ring's descriptor, ours to close.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(params[IO_URING_PARAMS_FEATURES])
}

/// Which way a numeric sysctl should go.
#[derive(Clone, Copy)]
enum Want {
    AtLeast(u64),
    AtMost(u64),
}

pub(super) fn sysctls(target: &TuneTarget) -> Vec<Check> {
    let rules: [(&'static str, Want, &str); 6] = [
        (
            "vm.swappiness",
            Want::AtMost(RECOMMENDED_SWAPPINESS),
            "swap only to avoid the OOM killer: one swapped-out page stalls every partition of a core",
        ),
        (
            "vm.max_map_count",
            Want::AtLeast(RECOMMENDED_MAX_MAP_COUNT),
            "room for many mappings (allocator arenas, rings, stacks); free to raise",
        ),
        (
            "net.core.somaxconn",
            Want::AtLeast(RECOMMENDED_SOMAXCONN),
            "glommio listens with a backlog of 1024; the kernel caps it at this value",
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            Want::AtLeast(RECOMMENDED_TCP_MAX_SYN_BACKLOG),
            "half-open connections while clients reconnect at once after a restart",
        ),
        (
            "net.core.rmem_max",
            Want::AtLeast(RECOMMENDED_SOCKET_BUFFER_MAX_BYTES),
            "cap on SO_RCVBUF: 16 MiB fills 1 Gbit/s x 100 ms for producers and followers",
        ),
        (
            "net.core.wmem_max",
            Want::AtLeast(RECOMMENDED_SOCKET_BUFFER_MAX_BYTES),
            "cap on SO_SNDBUF: 16 MiB fills 1 Gbit/s x 100 ms for fetches",
        ),
    ];
    rules.iter().map(|&(key, want, why)| sysctl_check(&target.host, key, want).why(why)).collect()
}

fn sysctl_check(host: &Host, key: &'static str, want: Want) -> Check {
    let (recommended, target) = match want {
        Want::AtLeast(v) => (format!(">= {v}"), v),
        Want::AtMost(v) => (format!("<= {v}"), v),
    };
    match host.sysctl_u64(key) {
        Ok(v) => {
            let good = match want {
                Want::AtLeast(t) => v >= t,
                Want::AtMost(t) => v <= t,
            };
            if good {
                Check::new(key, v.to_string(), recommended, Status::Ok)
            } else {
                Check::new(key, v.to_string(), recommended, Status::Change)
                    .action(Action::Sysctl { key: key.into(), value: target.to_string() })
                    .fix("persist: tuning/sysctl.d/90-sluice.conf in /etc/sysctl.d/")
            }
        }
        Err(e) => Check::unknown(key, &e, recommended),
    }
}

/// Transparent huge pages, CPU frequency governor, clock source.
pub(super) fn sysfs_checks(target: &TuneTarget) -> Vec<Check> {
    vec![thp(&target.host), governor(target), clocksource(&target.host)]
}

fn thp(host: &Host) -> Check {
    const NAME: &str = "transparent_hugepage";
    const FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
    let why = "'always' lets khugepaged compact memory behind the broker: millisecond stalls at p99.9";
    let check = match host.read(FILE) {
        Ok(text) => match selected(&text) {
            Some(mode @ ("madvise" | "never")) => Check::new(NAME, mode, RECOMMENDED_THP, Status::Ok),
            Some(mode) => Check::new(NAME, mode, RECOMMENDED_THP, Status::Change)
                .action(Action::Write { path: FILE.into(), value: RECOMMENDED_THP.into() })
                .fix("persist: transparent_hugepage=madvise on the kernel command line"),
            None => Check::unknown(NAME, &format!("unexpected '{text}'"), RECOMMENDED_THP),
        },
        Err(e) if e.ends_with("not found") => {
            Check::new(NAME, "not available (kernel without THP)", RECOMMENDED_THP, Status::NotAvailable)
        }
        Err(e) => Check::unknown(NAME, &e, RECOMMENDED_THP),
    };
    check.why(why)
}

fn governor(target: &TuneTarget) -> Check {
    const NAME: &str = "cpufreq.governor";
    let why = "no frequency ramp-up after idle moments, which shows up as tail latency";
    let cores = match target.broker_cores() {
        Ok(c) => c,
        Err(e) => return Check::unknown(NAME, &e, RECOMMENDED_GOVERNOR).why(why),
    };
    let mut seen = Vec::new();
    let mut actions = Vec::new();
    let mut missing = 0;
    for cpu in &cores {
        let file = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        match target.host.read(&file) {
            Ok(g) => {
                if g != RECOMMENDED_GOVERNOR {
                    let avail = target
                        .host
                        .read(&format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_available_governors"))
                        .unwrap_or_default();
                    if avail.split_whitespace().any(|a| a == RECOMMENDED_GOVERNOR) {
                        actions.push(Action::Write { path: file, value: RECOMMENDED_GOVERNOR.into() });
                    }
                }
                if !seen.contains(&g) {
                    seen.push(g);
                }
            }
            Err(e) if e.ends_with("not found") => missing += 1,
            Err(e) => return Check::unknown(NAME, &e, RECOMMENDED_GOVERNOR).why(why),
        }
    }
    if seen.is_empty() && missing > 0 {
        return Check::new(
            NAME,
            "not available (no cpufreq: a VM or no driver)",
            RECOMMENDED_GOVERNOR,
            Status::NotAvailable,
        )
        .why(why);
    }
    let current = seen.join(",");
    let ok = seen.iter().all(|g| g == RECOMMENDED_GOVERNOR);
    let mut c = Check::new(NAME, current, RECOMMENDED_GOVERNOR, if ok { Status::Ok } else { Status::Change }).why(why);
    if !ok {
        c.actions = actions;
        c = c.fix("persist: cpupower frequency-set -g performance (or tuned's latency-performance profile)");
    }
    c
}

fn clocksource(host: &Host) -> Check {
    const NAME: &str = "clocksource";
    const FILE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    let why = "read in user space (vDSO) with no system call; timers and latency histograms read it often";
    let current = match host.read(FILE) {
        Ok(c) => c,
        Err(e) => return Check::unknown(NAME, &e, RECOMMENDED_CLOCKSOURCE).why(why),
    };
    let available = host.read("/sys/devices/system/clocksource/clocksource0/available_clocksource").unwrap_or_default();
    let tsc_available = available.split_whitespace().any(|a| a == RECOMMENDED_CLOCKSOURCE);
    let c = if current == RECOMMENDED_CLOCKSOURCE {
        Check::new(NAME, current, RECOMMENDED_CLOCKSOURCE, Status::Ok)
    } else if tsc_available {
        Check::new(NAME, current, RECOMMENDED_CLOCKSOURCE, Status::Change)
            .action(Action::Write { path: FILE.into(), value: RECOMMENDED_CLOCKSOURCE.into() })
            .fix("persist: clocksource=tsc on the kernel command line")
    } else if current == "kvm-clock" {
        // Without a usable TSC, kvm-clock is the next best: it is also read through the vDSO.
        Check::new(NAME, current, "tsc (kvm-clock is fine without it)", Status::Ok)
    } else {
        Check::new(NAME, current, RECOMMENDED_CLOCKSOURCE, Status::Change)
            .fix("the TSC is not usable here (unstable or hidden by the hypervisor)")
    };
    c.why(why)
}
