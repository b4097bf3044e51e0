//! Files of the Raft store, with plain std I/O (the control-plane thread may block on its own
//! disk work; it never shares a thread with the data path). Small files (vote and log ids,
//! snapshot) reuse the framed layout of `sluice_io::framed_file` and are replaced atomically:
//! temp file → write → fdatasync → rename → fsync of the directory. The log is an append-only file
//! of records `len u32 | crc32c(payload) u32 | payload` (little-endian), cut at the first damaged
//! record on load.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_io::framed_file;

/// Bytes of a log record's prefix.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Upper bound on one log record; a larger length field is damage, not a reason to allocate.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// A failed disk operation of the Raft store.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {path}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("encoding for {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
}

/// Adds the path and operation to an I/O error.
pub fn io_ctx<T>(r: std::io::Result<T>, path: &Path, op: &'static str) -> Result<T, DiskError> {
    r.map_err(|source| DiskError::Io { path: path.to_owned(), op, source })
}

/// Serialises `value` with bincode (the Raft store's and RPCs' codec).
pub fn encode<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, DiskError> {
    bincode::serialize(value).map_err(|e| DiskError::Encode { path: path.to_owned(), reason: e.to_string() })
}

/// Deserialises bincode read from `path`; failure is damage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, DiskError> {
    bincode::deserialize(bytes).map_err(|e| DiskError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

/// Atomically replaces `path` with a framed file holding `value`.
pub fn write_atomic<T: Serialize>(path: &Path, magic: u32, version: u32, value: &T) -> Result<(), DiskError> {
    let payload = encode(value, path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = io_ctx(File::create(&tmp), &tmp, "creating")?;
    io_ctx(f.write_all(&framed_file::encode(magic, version, &payload)), &tmp, "writing")?;
    io_ctx(f.sync_data(), &tmp, "syncing")?;
    drop(f);
    io_ctx(std::fs::rename(&tmp, path), path, "renaming into place")?;
    sync_dir(path)
}

/// Reads a framed file written by [`write_atomic`]; `Ok(None)` when it does not exist.
pub fn read_framed<T: DeserializeOwned>(path: &Path, magic: u32, version: u32) -> Result<Option<T>, DiskError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DiskError::Io { path: path.to_owned(), op: "reading", source }),
    };
    let payload = framed_file::decode(magic, version, &bytes)
        .map_err(|reason| DiskError::Corrupt { path: path.to_owned(), reason })?;
    decode(payload, path).map(Some)
}

/// fsyncs the directory holding `path`, so creations, renames and truncations are durable.
pub fn sync_dir(path: &Path) -> Result<(), DiskError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let d = io_ctx(File::open(dir), dir, "opening directory")?;
    io_ctx(d.sync_all(), dir, "syncing directory")
}

/// Appends one record (prefix + payload) to `out`.
pub fn push_record(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(payload.len() <= MAX_RECORD_BYTES, "raft log record over its limit");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits `bytes` into records; stops at the first incomplete or damaged one and returns the
/// payloads with their start offsets, and the length of the valid prefix.
pub fn scan_records(bytes: &[u8]) -> (Vec<(u64, &[u8])>, u64) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while let Some(prefix) = bytes.get(pos..pos + RECORD_PREFIX_BYTES) {
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let crc = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if len > MAX_RECORD_BYTES {
            break;
        }
        let Some(payload) = bytes.get(pos + RECORD_PREFIX_BYTES..pos + RECORD_PREFIX_BYTES + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        records.push((pos as u64, payload));
        pos += RECORD_PREFIX_BYTES + len;
    }
    (records, pos as u64)
}

/// Opens `path` for appending, creating it.
pub fn open_append(path: &Path) -> Result<File, DiskError> {
    io_ctx(OpenOptions::new().create(true).append(true).open(path), path, "opening")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_cuts_at_the_first_damaged_record() {
        let mut bytes = Vec::new();
        push_record(&mut bytes, b"one");
        push_record(&mut bytes, b"two");
        let second = bytes.len();
        push_record(&mut bytes, b"three");
        let (recs, valid) = scan_records(&bytes);
        assert_eq!(recs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(valid, bytes.len() as u64);
        let (recs, valid) = scan_records(&bytes[..bytes.len() - 1]);
        assert_eq!((recs.len(), valid), (2, second as u64));
        let mut flipped = bytes.clone();
        flipped[second + RECORD_PREFIX_BYTES] ^= 1;
        let (recs, valid) = scan_records(&flipped);
        assert_eq!((recs.len(), valid), (2, second as u64));
    }
}
