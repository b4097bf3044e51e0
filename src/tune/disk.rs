//! The data directory's device and filesystem: I/O scheduler, request queue depth, filesystem type
//! and O_DIRECT. The directory may not exist yet (`serve` creates it): then its nearest existing
//! parent is checked, which is where it will be created.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::sysfs::selected;
use super::{absolute_data_dir, Action, Check, Status, TuneTarget};

/// NVMe drives schedule in hardware across deep queues; a kernel scheduler only adds latency.
const RECOMMENDED_SCHEDULER_NVME: &str = "none";
/// Other devices: mq-deadline bounds how long a read can starve behind a stream of writes.
const RECOMMENDED_SCHEDULER_OTHER: &str = "mq-deadline";
/// Requests the block layer queues per device: room for every partition's writes and catch-up reads.
const RECOMMENDED_NR_REQUESTS: u64 = 256;
/// Sluice's storage engine writes and reads in 4 KiB blocks: the DIO alignment must divide this.
const SLUICE_BLOCK_BYTES: u32 = 4096;
/// The file the broker keeps in each data directory to prime glommio's O_DIRECT probe.
const BROKER_PROBE_FILE: &str = ".sluice-dio-probe";
/// Filesystems Sluice is tested on.
const TESTED_FILESYSTEMS: &[&str] = &["ext4", "xfs"];

pub(super) fn checks(target: &TuneTarget) -> Vec<Check> {
    let dir = absolute_data_dir(&target.config);
    let Some(existing) = nearest_existing(&dir) else {
        let why = format!("no part of {} exists", dir.display());
        return ["disk.scheduler", "disk.nr_requests", "filesystem", "o_direct"]
            .into_iter()
            .map(|n| Check::unknown(n, &why, "?"))
            .collect();
    };
    let dev = std::fs::metadata(&existing).map(|m| m.dev()).map_err(|e| format!("{}: {e}", existing.display()));
    let mount = dev.clone().and_then(|d| find_mount(target, d, &existing));
    let disk = dev.and_then(|d| block_device(target, d, mount.as_ref().ok()));
    let mut out = scheduler_checks(target, disk);
    out.push(filesystem(&dir, &existing, mount));
    out.push(o_direct(target, &dir));
    out
}

fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

/// The block device (whole disk) under the data directory.
struct Disk {
    /// Kernel name, e.g. `nvme0n1`, `vda`, `dm-0`.
    name: String,
    /// Its `/sys/block/NAME` directory (host path).
    sys: String,
    /// How the report names it (`vda`, or `vda via dm-0` for a stacked device).
    shown: String,
}

/// A line of /proc/self/mountinfo.
struct Mount {
    mount_point: String,
    fs_type: String,
    source: String,
}

fn find_mount(target: &TuneTarget, dev: u64, path: &Path) -> Result<Mount, String> {
    let text = target.host.read("/proc/self/mountinfo")?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let path = path.to_string_lossy();
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        if f.len() < sep + 3 || f.len() < 5 || f[2] != want {
            continue;
        }
        let mount_point = f[4].replace("\\040", " ");
        let covers = path.starts_with(&mount_point);
        let better = match &best {
            None => true,
            Some(b) => covers && mount_point.len() >= b.mount_point.len(),
        };
        if better {
            best = Some(Mount { mount_point, fs_type: f[sep + 1].into(), source: f[sep + 2].into() });
        }
    }
    best.ok_or_else(|| format!("device {want} not in mountinfo"))
}

/// Resolves a device number to its whole disk in /sys; filesystems with anonymous device numbers
/// (btrfs, overlay) are resolved through the mount's source device.
fn block_device(target: &TuneTarget, dev: u64, mount: Option<&Mount>) -> Result<Disk, String> {
    let mut dev = dev;
    if libc::major(dev) == 0 {
        let m = mount.ok_or("no block device (anonymous device number)")?;
        let meta =
            std::fs::metadata(&m.source).map_err(|_| format!("{} on {} is not a block device", m.fs_type, m.source))?;
        dev = meta.rdev();
    }
    let link = target.host.path(&format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)));
    let sys = whole_disk(std::fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))?)?;
    let name = dir_name(&sys)?;
    // Device-mapper and md devices queue nothing themselves: the first disk below them decides.
    let below = std::fs::read_dir(sys.join("slaves"))
        .ok()
        .and_then(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).min());
    if let Some(slave) = below {
        let link = target.host.path(&format!("/sys/class/block/{slave}"));
        if let Ok(sys) = std::fs::canonicalize(&link) {
            let disk = dir_name(&whole_disk(sys)?)?;
            return Ok(Disk { sys: format!("/sys/block/{disk}"), shown: format!("{disk} via {name}"), name: disk });
        }
    }
    Ok(Disk { sys: format!("/sys/block/{name}"), shown: name.clone(), name })
}

/// A partition's disk (the directory above it), or the device itself.
fn whole_disk(sys: PathBuf) -> Result<PathBuf, String> {
    if sys.join("partition").exists() {
        return sys.parent().map(Path::to_path_buf).ok_or_else(|| "partition without a parent disk".into());
    }
    Ok(sys)
}

fn dir_name(p: &Path) -> Result<String, String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| format!("{}: unnamed device", p.display()))
}

fn scheduler_checks(target: &TuneTarget, disk: Result<Disk, String>) -> Vec<Check> {
    let sched_why_nvme = "NVMe schedules in hardware across deep queues; a kernel scheduler only adds latency";
    let sched_why = "mq-deadline bounds how long a fetch's read can starve behind a stream of appends";
    let nr_why = "requests queued per device: room for every partition's appends and catch-up reads at once";
    let nr_rec = format!(">= {RECOMMENDED_NR_REQUESTS}");
    let disk = match disk {
        Ok(d) => d,
        Err(e) => {
            return vec![
                Check::unknown("disk.scheduler", &e, "none (NVMe) / mq-deadline").why(sched_why),
                Check::unknown("disk.nr_requests", &e, nr_rec).why(nr_why),
            ]
        }
    };
    let nvme = disk.name.starts_with("nvme");
    let (rec, why) =
        if nvme { (RECOMMENDED_SCHEDULER_NVME, sched_why_nvme) } else { (RECOMMENDED_SCHEDULER_OTHER, sched_why) };
    let sched_file = format!("{}/queue/scheduler", disk.sys);
    let sched = match target.host.read(&sched_file) {
        Err(e) => Check::unknown("disk.scheduler", &e, rec),
        Ok(text) => {
            // Stacked devices (device-mapper) show only "none": their disks below are what counts.
            let current = selected(&text).unwrap_or(text.as_str()).to_string();
            let shown = format!("{current} ({})", disk.shown);
            if current == rec {
                Check::new("disk.scheduler", shown, rec, Status::Ok)
            } else if text.split_whitespace().any(|s| s.trim_matches(['[', ']']) == rec) {
                Check::new("disk.scheduler", shown, rec, Status::Change)
                    .action(Action::Write { path: sched_file, value: rec.into() })
                    .fix(
                        "persist: a udev rule (ACTION==\"add|change\", KERNEL==\"...\", ATTR{queue/scheduler}=\"...\")",
                    )
            } else {
                Check::new("disk.scheduler", shown, rec, Status::Change)
                    .fix(format!("{rec} is not offered by this device (stacked device? check its disks)"))
            }
        }
    }
    .why(why);
    let nr_file = format!("{}/queue/nr_requests", disk.sys);
    let nr = match target.host.read(&nr_file) {
        Err(e) => Check::unknown("disk.nr_requests", &e, nr_rec),
        Ok(text) => match text.parse::<u64>() {
            Err(_) => Check::unknown("disk.nr_requests", &format!("'{text}' is not a number"), nr_rec),
            Ok(n) if n >= RECOMMENDED_NR_REQUESTS => {
                Check::new("disk.nr_requests", format!("{n} ({})", disk.shown), nr_rec, Status::Ok)
            }
            Ok(n) => Check::new("disk.nr_requests", format!("{n} ({})", disk.shown), nr_rec, Status::Change)
                .action(Action::Write { path: nr_file, value: RECOMMENDED_NR_REQUESTS.to_string() }),
        },
    }
    .why(nr_why);
    vec![sched, nr]
}

fn filesystem(dir: &Path, existing: &Path, mount: Result<Mount, String>) -> Check {
    let why = "Sluice writes with O_DIRECT and is tested on ext4 and xfs; tmpfs ignores alignment and durability";
    let rec = TESTED_FILESYSTEMS.join(" or ");
    let m = match mount {
        Ok(m) => m,
        Err(e) => return Check::unknown("filesystem", &e, rec).why(why),
    };
    let current = format!("{} ({} on {})", m.fs_type, m.source, m.mount_point);
    let why = if existing == dir {
        why.to_string()
    } else {
        format!("{why}; {} does not exist yet: checked {}", dir.display(), existing.display())
    };
    let c = if TESTED_FILESYSTEMS.contains(&m.fs_type.as_str()) {
        Check::new("filesystem", current, rec, Status::Ok)
    } else if matches!(m.fs_type.as_str(), "tmpfs" | "ramfs") {
        Check::new("filesystem", current, rec, Status::Change)
            .fix("sluice serve refuses tmpfs: put data_dir on a disk-backed filesystem")
    } else {
        Check::new("filesystem", current, rec, Status::Change)
            .fix("untested filesystem: run with --probe-io, prefer ext4/xfs")
    };
    c.why(why)
}

/// O_DIRECT of the data directory: DIO alignment from statx and an aligned O_DIRECT read of a file
/// already there (the broker's probe file); an O_DIRECT write of a new file only with `--probe-io`.
fn o_direct(target: &TuneTarget, dir: &Path) -> Check {
    let rec = format!("works, alignment divides {SLUICE_BLOCK_BYTES}");
    let why = "every segment is written and read with O_DIRECT in 4 KiB blocks";
    if !dir.is_dir() {
        let why = format!("{why}; {} does not exist yet: sluice serve checks it at start", dir.display());
        return Check::unknown("o_direct", "no data dir yet", rec).why(why);
    }
    let result = if target.probe_io {
        write_probe(dir)
    } else {
        match existing_file(dir) {
            Some(f) => read_probe(&f),
            None => Err("no file in the data directory to read; --probe-io writes a temporary one".into()),
        }
    };
    match result {
        Err(e) => Check::unknown("o_direct", &e, rec),
        Ok(p) => {
            let align = match p.dio_align {
                Some((mem, off)) => format!("mem {mem} / offset {off}"),
                None => "alignment not reported (statx DIOALIGN)".into(),
            };
            let current = format!("{} ok, {align}", p.what);
            let fits = p.dio_align.is_none_or(|(m, o)| {
                m != 0 && o != 0 && SLUICE_BLOCK_BYTES.is_multiple_of(m) && SLUICE_BLOCK_BYTES.is_multiple_of(o)
            });
            Check::new("o_direct", current, rec, if fits { Status::Ok } else { Status::Change })
        }
    }
    .why(why)
}

struct DioProbe {
    /// "read" or "write".
    what: &'static str,
    /// statx's (memory, offset) alignment, when the kernel and filesystem report it.
    dio_align: Option<(u32, u32)>,
}

/// The broker's own probe file, else the first regular file in the directory or one level down.
fn existing_file(dir: &Path) -> Option<PathBuf> {
    let probe = dir.join(BROKER_PROBE_FILE);
    if probe.metadata().is_ok_and(|m| m.is_file() && m.len() >= SLUICE_BLOCK_BYTES as u64) {
        return Some(probe);
    }
    let big_enough = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.len() >= SLUICE_BLOCK_BYTES as u64);
    let entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    if let Some(f) = entries.iter().find(|p| big_enough(p)) {
        return Some(f.clone());
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .find(|p| big_enough(p))
}

/// A 4 KiB-aligned buffer (O_DIRECT needs aligned memory).
struct AlignedBlock {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new() -> Result<Self, String> {
        let size = SLUICE_BLOCK_BYTES as usize;
        let layout = std::alloc::Layout::from_size_align(size, size).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(AlignedBlock { ptr, layout })
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| format!("{}: path contains NUL", p.display()))
}

/// Opens `path` with extra flags plus O_DIRECT; returns the descriptor.
fn open_direct(path: &Path, flags: libc::c_int) -> Result<libc::c_int, String> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_DIRECT | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => format!("O_DIRECT refused by this filesystem ({e})"),
            _ => format!("opening {} with O_DIRECT: {e}", path.display()),
        });
    }
    Ok(fd)
}

/// Reads the first block of an existing file with O_DIRECT (changes nothing).
fn read_probe(path: &Path) -> Result<DioProbe, String> {
    let fd = open_direct(path, libc::O_RDONLY)?;
    let buf = AlignedBlock::new();
    let res = buf.and_then(|b| {
        // SAFETY: `b` owns SLUICE_BLOCK_BYTES writable bytes; `fd` is open.
        let n = unsafe { libc::pread(fd, b.ptr.cast(), SLUICE_BLOCK_BYTES as usize, 0) };
        if n < 0 {
            Err(format!("O_DIRECT read of {}: {}", path.display(), std::io::Error::last_os_error()))
        } else {
            Ok(DioProbe { what: "read", dio_align: dio_align(fd) })
        }
    });
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    res
}

/// Creates a temporary file, writes and syncs one aligned block with O_DIRECT, removes it.
fn write_probe(dir: &Path) -> Result<DioProbe, String> {
    let path = dir.join(format!(".sluice-tune-probe-{}", std::process::id()));
    let fd = open_direct(&path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
    let res = AlignedBlock::new().and_then(|b| {
        // SAFETY: `b` owns SLUICE_BLOCK_BYTES readable bytes; `fd` is open.
        let n = unsafe { libc::pwrite(fd, b.ptr.cast(), SLUICE_BLOCK_BYTES as usize, 0) };
        // SAFETY: `fd` is open.
        if n != SLUICE_BLOCK_BYTES as isize || unsafe { libc::fdatasync(fd) } != 0 {
            Err(format!("O_DIRECT write: {}", std::io::Error::last_os_error()))
        } else {
            Ok(DioProbe { what: "write", dio_align: dio_align(fd) })
        }
    });
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    let removed = std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()));
    let probe = res?;
    removed?;
    Ok(probe)
}

/// statx(STATX_DIOALIGN) of an open file: (memory, offset) alignment; `None` if not reported.
fn dio_align(fd: libc::c_int) -> Option<(u32, u32)> {
    // SAFETY: statx writes into the zeroed struct we own; an empty path with AT_EMPTY_PATH means `fd`.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut st) };
    if rc != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((st.stx_dio_mem_align, st.stx_dio_offset_align))
}
