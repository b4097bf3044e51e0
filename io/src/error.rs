//! Typed errors of the storage engine. Every failure reaching a caller names the file and the cause;
//! nothing on disk is allowed to cause a panic.

use std::io;
use std::path::{Path, PathBuf};

/// Result of storage engine operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the storage engine. `Clone` because one failed write fails every append that shared it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// ENOSPC (or EDQUOT): the append was not written; the log stays as it was before it.
    #[error("disk full: no space left on device while {op} {path}")]
    DiskFull { path: PathBuf, op: &'static str },

    /// The data directory is on a filesystem that cannot do O_DIRECT (tmpfs, some FUSE/overlay mounts).
    #[error(
        "data directory {path} is on {fs}, which does not support O_DIRECT; Sluice needs a block-device \
         filesystem such as ext4 or xfs: choose another directory with --data-dir (or `data_dir` in the config)"
    )]
    DirectIoUnsupported { path: PathBuf, fs: String },

    /// EACCES / EPERM / EROFS.
    #[error("permission denied while {op} {path}: {message}")]
    PermissionDenied { path: PathBuf, op: &'static str, message: String },

    /// An index file failed validation; recovery rebuilds it from the segment and reports this.
    #[error("corrupt index {path}: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },

    /// A checkpoint file failed validation (bad magic, length or checksum).
    #[error("corrupt checkpoint {path}: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },

    /// The leader-epoch cache file failed validation. The engine cannot rebuild it (epochs live
    /// inside the opaque batches): the caller decides, e.g. delete the file and re-assign epochs
    /// from its batches.
    #[error("corrupt leader-epoch cache {path}: {reason}")]
    CorruptEpochCache { path: PathBuf, reason: String },

    /// A leader epoch must be >= 0.
    #[error("invalid leader epoch {epoch}: epochs are >= 0")]
    InvalidEpoch { epoch: i32 },

    /// Data read back from a segment did not match what the index or log state promised.
    #[error("corrupt segment {path} at position {position}: {reason}")]
    CorruptSegment { path: PathBuf, position: u64, reason: String },

    /// Any other I/O failure, with the OS error code when there is one.
    #[error("I/O error while {op} {path}: {message}")]
    Io { path: PathBuf, op: &'static str, message: String, raw_os_error: Option<i32> },

    /// The requested offset is outside `[log_start_offset, next_offset]`.
    #[error("offset {offset} is out of range: the log holds [{log_start}, {next_offset})")]
    OffsetOutOfRange { offset: u64, log_start: u64, next_offset: u64 },

    /// The batch is larger than the configured limit.
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },

    /// The caller passed an invalid batch description (e.g. zero records).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),

    /// The configuration is inconsistent.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),

    /// An earlier write or fdatasync failed; the log refuses writes until it is reopened,
    /// because after a failed fdatasync the page state on disk is unknown (see PostgreSQL's fsyncgate).
    #[error("log {path} refuses writes after an earlier failure ({cause}); reopen it to recover")]
    Poisoned { path: PathBuf, cause: String },

    /// Another open `Log` (in this or another process) holds the directory.
    #[error("log directory {path} is already open (its .lock is held)")]
    InUse { path: PathBuf },

    /// The log was closed.
    #[error("log {path} is closed")]
    Closed { path: PathBuf },

    /// A sealed segment's file was deleted (retention, truncation) or replaced (compaction) while a
    /// read was opening it; the log retries the read against its new state.
    #[error("segment file {path} was deleted or replaced while being opened")]
    SegmentFileReplaced { path: PathBuf },
}

impl Error {
    /// Classifies an OS error for `path` during `op`.
    pub(crate) fn from_io(path: &Path, op: &'static str, err: &io::Error) -> Error {
        let path = path.to_path_buf();
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull { path, op },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                Error::PermissionDenied { path, op, message: err.to_string() }
            }
            raw => Error::Io { path, op, message: err.to_string(), raw_os_error: raw },
        }
    }

    /// Same as [`Error::from_io`] for glommio's error type, keeping the OS error code
    /// (glommio's own conversion to `io::Error` drops it).
    pub(crate) fn from_glommio<T>(path: &Path, op: &'static str, err: glommio::GlommioError<T>) -> Error {
        match err {
            glommio::GlommioError::IoError(e) => Error::from_io(path, op, &e),
            glommio::GlommioError::EnhancedIoError { source, .. } => Error::from_io(path, op, &source),
            other => {
                let e: io::Error = other.into();
                Error::from_io(path, op, &e)
            }
        }
    }

    /// True for `DiskFull`.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}

/// Shorthand used all over the crate: map a glommio result to ours.
pub(crate) trait GlommioResultExt<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T>;
}

impl<T, E> GlommioResultExt<T> for std::result::Result<T, glommio::GlommioError<E>> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::from_glommio(path, op, e))
    }
}

/// Same for std I/O results.
pub(crate) trait IoResultExt<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::from_io(path, op, &e))
    }
}
