//! Encoding frames: the head (header, CRC32C, metadata archive) of a message, the whole frame as
//! pieces for a vectored write, and the raw section of a fetch response built from stored batches
//! without copying them.

use bytes::{Bytes, BytesMut};

use super::codec::encode_metadata;
use super::{
    check_raw, WireError, CRC_COVERED_HEADER_BYTES, HEADER_BYTES, MAGIC, MAX_FRAME_BYTES, MAX_METADATA_BYTES,
    PROTOCOL_VERSION,
};
use crate::replication::messages::{Message, RawRange};

/// Encodes the head of a frame (header + metadata) for `msg` followed by the raw section `raw`
/// (its pieces in order). Send the head, then the pieces unchanged. The CRC covers the pieces, and
/// every range of `msg` is checked against them.
pub fn encode_head<B: AsRef<[u8]>>(correlation_id: u32, msg: &Message, raw: &[B]) -> Result<Bytes, WireError> {
    let kind = msg.kind();
    let raw_len: u64 = raw.iter().map(|p| p.as_ref().len() as u64).sum();
    check_raw(kind, msg, raw_len)?;
    let meta = encode_metadata(msg)?;
    if meta.len() > MAX_METADATA_BYTES {
        return Err(WireError::MetadataTooLarge { len: meta.len(), limit: MAX_METADATA_BYTES });
    }
    let frame_len = (HEADER_BYTES + meta.len()) as u64 + raw_len;
    if frame_len > MAX_FRAME_BYTES as u64 {
        return Err(WireError::FrameTooLarge { len: frame_len, limit: MAX_FRAME_BYTES });
    }
    let mut head = BytesMut::with_capacity(HEADER_BYTES + meta.len());
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    head.extend_from_slice(&(kind as u16).to_le_bytes());
    head.extend_from_slice(&correlation_id.to_le_bytes());
    // Both fit: bounded by the limits checked above, which are below u32::MAX.
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&(raw_len as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&head[..CRC_COVERED_HEADER_BYTES]);
    crc = crc32c::crc32c_append(crc, &meta);
    for piece in raw {
        crc = crc32c::crc32c_append(crc, piece.as_ref());
    }
    head.extend_from_slice(&crc.to_le_bytes());
    head.extend_from_slice(&meta);
    Ok(head.freeze())
}

/// The whole frame as pieces to write in order (vectored): the head, then `raw` as given (cheap
/// `Bytes` clones, no copy).
pub fn encode(correlation_id: u32, msg: &Message, raw: &[Bytes]) -> Result<Vec<Bytes>, WireError> {
    let head = encode_head(correlation_id, msg, raw)?;
    let mut pieces = Vec::with_capacity(1 + raw.len());
    pieces.push(head);
    pieces.extend(raw.iter().filter(|p| !p.is_empty()).cloned());
    Ok(pieces)
}

/// Builds the raw section of a fetch response: each partition's batches are appended and the
/// partition gets the [`RawRange`] covering them. Generic over the piece type so the leader can
/// keep its DMA read results as they are.
#[derive(Debug)]
pub struct RawSection<B> {
    pieces: Vec<B>,
    len: u64,
}

impl<B: AsRef<[u8]>> Default for RawSection<B> {
    fn default() -> Self {
        RawSection { pieces: Vec::new(), len: 0 }
    }
}

impl<B: AsRef<[u8]>> RawSection<B> {
    /// Appends one partition's batches; returns their range. Fails (appending nothing) when the
    /// section would outgrow a frame.
    pub fn push_partition(&mut self, batches: impl IntoIterator<Item = B>) -> Result<RawRange, WireError> {
        let start = self.len;
        let before = self.pieces.len();
        let mut len = 0u64;
        for b in batches {
            len += b.as_ref().len() as u64;
            self.pieces.push(b);
        }
        let end = start + len;
        if end > MAX_FRAME_BYTES as u64 {
            self.pieces.truncate(before);
            return Err(WireError::FrameTooLarge { len: end, limit: MAX_FRAME_BYTES });
        }
        self.len = end;
        // Both fit in u32: bounded by MAX_FRAME_BYTES.
        Ok(RawRange { offset: start as u32, len: len as u32 })
    }

    /// Bytes in the section so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[B] {
        &self.pieces
    }

    /// The pieces, in order.
    pub fn into_pieces(self) -> Vec<B> {
        self.pieces
    }
}
