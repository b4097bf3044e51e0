//! Framing of the replication protocol: encoding a message (plus raw batch bytes) into a frame and
//! decoding frames from a byte stream. Pure byte handling: no sockets, no runtime, so it serves
//! glommio connections and tests alike. Nothing here trusts its input: every length is checked
//! against a named limit before anything is allocated for it, every frame's CRC32C is verified,
//! the metadata archive is validated by rkyv's bytecheck, and every raw range is checked against
//! the raw section. A decode error means the stream lost its framing: close the connection.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     4  magic           "SLRP"
//!      4     2  version         PROTOCOL_VERSION; any other is refused (UnsupportedVersion)
//!      6     2  kind            MessageKind
//!      8     4  correlation id  echoed by the answer
//!     12     4  metadata length <= MAX_METADATA_BYTES
//!     16     4  raw length      header + metadata + raw <= the decoder's max_frame_bytes
//!     20     4  CRC32C          over bytes 0..20, then the metadata, then the raw section
//!     24     m  metadata        rkyv archive of the kind's message struct
//!   24+m     r  raw section     concatenated stored batches (fetch responses only)
//! ```
//!
//! The raw section is outside the archive so the leader writes its stored buffers (DMA read
//! results, tail-cache `Bytes`) as they are, after the head, with vectored writes; the follower
//! slices each partition's [`RawRange`] out of the frame's `Bytes` without copying. Only the small
//! metadata is copied (into an aligned buffer for validation and deserialisation).
//!
//! Submodules: `encode` (heads, vectored frames, raw sections), `decode` (the stream decoder and
//! [`Frame`]), `codec` (the rkyv metadata archive). This file keeps the layout's constants, the
//! limits, the error and the raw-range check both sides apply.

mod codec;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

use super::messages::*;

pub use decode::{Frame, FrameDecoder};
pub use encode::{encode, encode_head, RawSection};

/// Frame magic, "SLRP" (Sluice replication protocol).
pub const MAGIC: u32 = u32::from_le_bytes(*b"SLRP");
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of the fixed frame header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of the header covered by the CRC (everything before the CRC field).
const CRC_COVERED_HEADER_BYTES: usize = 20;
/// Limit on one frame's metadata archive (about 100k partitions of a fetch).
pub const MAX_METADATA_BYTES: usize = 4 << 20;
/// Default limit on a whole frame, and the limit the encoder enforces. A follower asks for at most
/// this much per fetch (the sum of its partitions' `max_bytes` plus one batch each).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Why a frame cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported replication protocol version {0} (this broker speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: usize },
    #[error("metadata of {len} bytes exceeds the limit of {limit} bytes")]
    MetadataTooLarge { len: usize, limit: usize },
    #[error("frame CRC32C mismatch: header says {expected:#010x}, content has {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("invalid {kind:?} metadata: {reason}")]
    InvalidMetadata { kind: MessageKind, reason: String },
    #[error("raw range [{offset}, +{len}) is outside the raw section of {raw_len} bytes")]
    RangeOutOfBounds { offset: u32, len: u32, raw_len: u64 },
    #[error("{kind:?} carries {len} raw bytes; only fetch responses have a raw section")]
    UnexpectedRaw { kind: MessageKind, len: u64 },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Every range of `msg` must lie inside the raw section, and only fetch responses may have one.
fn check_raw(kind: MessageKind, msg: &Message, raw_len: u64) -> Result<(), WireError> {
    if kind != MessageKind::ReplicaFetchResponse && raw_len != 0 {
        return Err(WireError::UnexpectedRaw { kind, len: raw_len });
    }
    match msg.raw_ranges().find(|r| r.end() > raw_len) {
        Some(r) => Err(WireError::RangeOutOfBounds { offset: r.offset, len: r.len, raw_len }),
        None => Ok(()),
    }
}
