//! Direct-I/O preconditions of a data directory, checked before any segment is opened:
//! - refuse filesystems that cannot do O_DIRECT (glommio silently falls back to buffered I/O on
//!   tmpfs, which would hide alignment bugs and void the durability model);
//! - work around glommio 0.9's polled-I/O probe: the first DMA file an executor opens on a device
//!   decides whether I/O on that device is polled, and an empty file makes the probe wrongly answer
//!   yes (later reads then fail with EOPNOTSUPP). So each executor first opens a non-empty file.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use glommio::io::DmaFile;

use crate::error::{Error, GlommioResultExt, IoResultExt, Result};

const PROBE_FILE: &str = ".sluice-dio-probe";
const PROBE_LEN: usize = 4096;

thread_local! {
    /// Devices on which this executor thread already ran the probe.
    static PROBED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Filesystems known not to support O_DIRECT, by statfs magic.
fn unsupported_fs_name(magic: i64) -> Option<&'static str> {
    match magic {
        0x0102_1994 => Some("tmpfs"),
        0x8584_58f6 => Some("ramfs"),
        0x6573_5546 => Some("a FUSE filesystem"),
        _ => None,
    }
}

/// Checks that `dir` (which must exist) supports O_DIRECT and primes glommio's probe for its device.
pub(crate) async fn prepare_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).ctx(dir, "inspecting data directory")?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidConfig(format!("path {} contains a NUL byte", dir.display())))?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::from_io(dir, "statfs of data directory", &std::io::Error::last_os_error()));
    }
    if let Some(fs) = unsupported_fs_name(st.f_type as i64) {
        return Err(Error::DirectIoUnsupported { path: dir.to_path_buf(), fs: fs.to_string() });
    }
    let dev = meta.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(PROBE_FILE);
    let needs_write = std::fs::metadata(&probe).map(|m| m.len() < PROBE_LEN as u64).unwrap_or(true);
    if needs_write {
        std::fs::write(&probe, [0x5a_u8; PROBE_LEN]).ctx(&probe, "writing the O_DIRECT probe file")?;
    }
    let file = match DmaFile::open(&probe).await {
        Ok(f) => f,
        Err(e) => {
            let err = Error::from_glommio(&probe, "opening with O_DIRECT", e);
            if let Error::Io { raw_os_error: Some(libc::EINVAL), .. } = err {
                return Err(Error::DirectIoUnsupported { path: dir.to_path_buf(), fs: "this filesystem".into() });
            }
            return Err(err);
        }
    };
    let read = file.read_at_aligned(0, PROBE_LEN).await.ctx(&probe, "reading with O_DIRECT")?;
    if read.len() != PROBE_LEN {
        return Err(Error::Io {
            path: probe,
            op: "reading with O_DIRECT",
            message: format!("short read of {} bytes", read.len()),
            raw_os_error: None,
        });
    }
    file.close().await.ctx(&probe, "closing")?;
    PROBED_DEVICES.with(|p| p.borrow_mut().insert(dev));
    Ok(())
}
