//! The log's checkpoint: the recovery point (everything before it is on disk and was verified, so
//! recovery only scans what follows) and the log start offset. Stored as an `rkyv` archive inside a
//! framed, checksummed file that is replaced atomically.

use std::path::Path;

use crate::error::{Error, Result};
use crate::framed_file::{self, FramedReadError};

const MAGIC: u32 = u32::from_le_bytes(*b"SCKP");
const VERSION: u32 = 1;
/// File name of the log checkpoint inside a log directory.
pub const CHECKPOINT_FILE: &str = "log.checkpoint";

/// What the log persists about itself besides segments and indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogCheckpoint {
    /// Every batch below this offset was fdatasync'ed and verified.
    pub recovery_offset: u64,
    /// Base offset of the segment holding `recovery_offset`.
    pub recovery_segment: u64,
    /// File position of `recovery_offset` in that segment.
    pub recovery_position: u64,
    /// First offset visible to readers (moves forward with retention and record deletion).
    pub log_start_offset: u64,
}

impl LogCheckpoint {
    pub(crate) async fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| Error::CorruptCheckpoint { path: path.clone(), reason: format!("encoding: {e}") })?;
        framed_file::write_atomic(&path, MAGIC, VERSION, &bytes).await
    }

    /// Reads the checkpoint; `Ok(None)` when there is none.
    pub(crate) async fn read(dir: &Path) -> Result<Option<LogCheckpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        let payload = match framed_file::read(&path, MAGIC, VERSION).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(FramedReadError::Io(e)) => return Err(e),
            Err(FramedReadError::Invalid(reason)) => return Err(Error::CorruptCheckpoint { path, reason }),
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(&payload);
        rkyv::from_bytes::<LogCheckpoint, rkyv::rancor::Error>(&aligned)
            .map(Some)
            .map_err(|e| Error::CorruptCheckpoint { path, reason: format!("decoding: {e}") })
    }
}
