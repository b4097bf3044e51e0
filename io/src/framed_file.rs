//! Small metadata files (checkpoints, persisted indexes) written atomically:
//! temp file → write → fdatasync → rename over the target → fsync of the directory.
//! Layout: `magic u32 | version u32 | payload_len u32 | crc32c(payload) u32 | payload`.
//! A reader either sees the old complete file or the new complete file, and any damage is caught
//! by the length and checksum.

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, Directory, OpenOptions};

use crate::error::{Error, GlommioResultExt, Result};

const PREFIX_LEN: usize = 16;
/// Upper bound on a metadata file; a larger length field is corruption, not a reason to allocate.
pub const MAX_FRAMED_PAYLOAD: usize = 256 << 20;

/// Why a framed file could not be read.
#[derive(Debug)]
pub enum FramedReadError {
    /// The file exists but its content is not a valid framed file.
    Invalid(String),
    /// The file could not be read.
    Io(Error),
}

/// Encodes payload with the framed prefix.
pub fn encode(magic: u32, version: u32, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_FRAMED_PAYLOAD, "framed payload over its limit");
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the prefix and returns the payload.
pub fn decode(magic: u32, version: u32, bytes: &[u8]) -> std::result::Result<&[u8], String> {
    if bytes.len() < PREFIX_LEN {
        return Err(format!("{} bytes, shorter than the {PREFIX_LEN}-byte prefix", bytes.len()));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != magic {
        return Err("wrong magic".into());
    }
    if word(4) != version {
        return Err(format!("unsupported version {}", word(4)));
    }
    let len = word(8) as usize;
    if len > MAX_FRAMED_PAYLOAD || bytes.len() != PREFIX_LEN + len {
        return Err(format!("length field {len} does not match file size {}", bytes.len()));
    }
    let payload = &bytes[PREFIX_LEN..];
    if crc32c::crc32c(payload) != word(12) {
        return Err("CRC32C mismatch".into());
    }
    Ok(payload)
}

/// Atomically replaces `path` with a framed file holding `payload`.
pub async fn write_atomic(path: &Path, magic: u32, version: u32, payload: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let bytes = encode(magic, version, payload);
    let len = bytes.len();
    let file: BufferedFile =
        OpenOptions::new().write(true).create(true).truncate(true).buffered_open(&tmp).await.ctx(&tmp, "creating")?;
    let written = file.write_at(bytes, 0).await.ctx(&tmp, "writing")?;
    if written != len {
        return Err(Error::DiskFull { path: tmp, op: "writing" });
    }
    file.fdatasync().await.ctx(&tmp, "syncing")?;
    file.close().await.ctx(&tmp, "closing")?;
    glommio::io::rename(&tmp, path).await.ctx(path, "renaming into place")?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).await
}

/// Reads a framed file; `Ok(None)` when it does not exist.
pub async fn read(path: &Path, magic: u32, version: u32) -> std::result::Result<Option<Vec<u8>>, FramedReadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FramedReadError::Io(Error::from_io(path, "reading", &e))),
    };
    decode(magic, version, &bytes).map(|p| Some(p.to_vec())).map_err(FramedReadError::Invalid)
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let d = Directory::open(dir).await.ctx(dir, "opening directory")?;
    d.sync().await.ctx(dir, "syncing directory")?;
    d.close().await.ctx(dir, "closing directory")
}

/// Name of the temp file used while replacing `path`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_damage() {
        let bytes = encode(7, 1, b"payload");
        assert_eq!(decode(7, 1, &bytes).unwrap(), b"payload");
        assert!(decode(8, 1, &bytes).is_err());
        assert!(decode(7, 2, &bytes).is_err());
        assert!(decode(7, 1, &bytes[..bytes.len() - 1]).is_err());
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        assert!(decode(7, 1, &flipped).is_err());
    }
}
