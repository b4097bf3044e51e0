//! Resource limits of this process (`ulimit -l`, `ulimit -n`) against what the configured broker
//! needs. Under systemd the unit's `LimitMEMLOCK=`/`LimitNOFILE=` decide instead: this reports the
//! shell `sluice tune` runs in, which is what `sluice serve` started from it would get.

use super::{Check, Status, TuneTarget};

/// Locked memory per executor beyond io_memory_bytes: io_uring rings (charged to memlock before
/// Linux 5.12) and glommio's small registered buffers.
const MEMLOCK_MARGIN_PER_CORE_BYTES: u64 = 2 << 20;
/// Descriptors for logs: every segment file stays open, plus a lock file per partition and brief
/// ones for indexes and checkpoints; 100 000 covers e.g. 2 000 partitions of 40 segments.
const FD_ALLOWANCE_FOR_LOGS: u64 = 100_000;
/// CAP_IPC_LOCK's bit in /proc/self/status CapEff: lets a process lock memory beyond RLIMIT_MEMLOCK.
const CAP_IPC_LOCK_BIT: u32 = 14;

pub(super) fn checks(target: &TuneTarget) -> Vec<Check> {
    let cores = match target.broker_cores() {
        Ok(c) => c.len() as u64,
        Err(e) => {
            return vec![Check::unknown("memlock", &e, "?"), Check::unknown("nofile", &e, "?")];
        }
    };
    vec![memlock(target, cores), nofile(target, cores)]
}

fn memlock(target: &TuneTarget, cores: u64) -> Check {
    let per_core = target.config.io_memory_bytes as u64 + MEMLOCK_MARGIN_PER_CORE_BYTES;
    let needed = cores.saturating_mul(per_core);
    let recommended = format!(">= {}", mib(needed));
    let why = format!(
        "glommio locks io_memory_bytes of DMA buffers per core ({cores} x ({} + {} margin)); above the \
         limit an executor fails to start",
        mib(target.config.io_memory_bytes as u64),
        mib(MEMLOCK_MARGIN_PER_CORE_BYTES)
    );
    let c = match getrlimit(libc::RLIMIT_MEMLOCK) {
        Err(e) => return Check::unknown("memlock", &e, recommended).why(why.as_str()),
        Ok(None) => Check::new("memlock", "unlimited", recommended, Status::Ok),
        Ok(Some(soft)) if soft >= needed => Check::new("memlock", mib(soft), recommended, Status::Ok),
        Ok(Some(soft)) => {
            let current = match has_cap_ipc_lock() {
                Some(true) => format!("{} (root: CAP_IPC_LOCK)", mib(soft)),
                _ => mib(soft),
            };
            Check::new("memlock", current, recommended, Status::Change)
                .fix("LimitMEMLOCK= in tuning/systemd/sluice.service, or ulimit -l / limits.d")
        }
    };
    c.why(why.as_str())
}

fn nofile(target: &TuneTarget, cores: u64) -> Check {
    let conns = cores.saturating_mul(target.config.max_connections_per_core as u64);
    let needed = conns.saturating_add(FD_ALLOWANCE_FOR_LOGS);
    let recommended = format!(">= {needed}");
    let why = format!(
        "one descriptor per client connection ({cores} x {} max_connections_per_core) plus \
         {FD_ALLOWANCE_FOR_LOGS} for logs (every segment stays open, plus one lock per partition)",
        target.config.max_connections_per_core
    );
    let c = match getrlimit(libc::RLIMIT_NOFILE) {
        Err(e) => return Check::unknown("nofile", &e, recommended).why(why.as_str()),
        Ok(None) => Check::new("nofile", "unlimited", recommended, Status::Ok),
        Ok(Some(soft)) if soft >= needed => Check::new("nofile", soft.to_string(), recommended, Status::Ok),
        Ok(Some(soft)) => Check::new("nofile", soft.to_string(), recommended, Status::Change)
            .fix("LimitNOFILE= in tuning/systemd/sluice.service, or ulimit -n / limits.d"),
    };
    c.why(why.as_str())
}

/// The soft limit; `None` when unlimited.
fn getrlimit(resource: libc::__rlimit_resource_t) -> Result<Option<u64>, String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY { None } else { Some(lim.rlim_cur) })
}

/// Whether this process holds CAP_IPC_LOCK (root usually does); `None` if unreadable. Always the
/// real /proc, like the limits themselves (not the `--root` tree).
fn has_cap_ipc_lock() -> Option<bool> {
    let status = super::sysfs::read_path(std::path::Path::new("/proc/self/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// Bytes as MiB for people (exact when it divides).
pub(super) fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
