//! Decoding frames from a byte stream: the header checked against the limits before any room is
//! reserved, the CRC32C verified, the metadata validated, and the decoded [`Frame`] whose raw
//! section stays a zero-copy view of the received buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::codec::decode_metadata;
use super::{
    check_raw, WireError, CRC_COVERED_HEADER_BYTES, HEADER_BYTES, MAGIC, MAX_METADATA_BYTES, PROTOCOL_VERSION,
};
use crate::replication::messages::{FetchedPartition, Message, MessageKind, RawRange};

/// A decoded frame. The message is owned; the raw section is a view of the received buffer.
#[derive(Debug, Clone)]
pub struct Frame {
    pub correlation_id: u32,
    pub message: Message,
    /// The whole frame as received.
    bytes: Bytes,
    /// Where the raw section starts in `bytes`.
    raw_start: usize,
}

impl Frame {
    /// The whole raw section (zero-copy).
    pub fn raw(&self) -> Bytes {
        self.bytes.slice(self.raw_start..)
    }

    /// One range of the raw section (zero-copy); `None` when it is outside the section.
    pub fn raw_slice(&self, range: RawRange) -> Option<Bytes> {
        let raw_len = (self.bytes.len() - self.raw_start) as u64;
        if range.end() > raw_len {
            return None;
        }
        let start = self.raw_start + range.offset as usize;
        Some(self.bytes.slice(start..start + range.len as usize))
    }

    /// Each partition of a fetch response with its stored batches (zero-copy); empty for other
    /// kinds. The ranges were checked when the frame was decoded.
    pub fn fetched(&self) -> Vec<(FetchedPartition, Bytes)> {
        match &self.message {
            Message::ReplicaFetchResponse(r) => {
                r.partitions.iter().map(|p| (*p, self.raw_slice(p.records).unwrap_or_default())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The frame exactly as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Splits a byte stream into frames. Feed it what the connection reads (`push`, or read straight
/// into `buffer_mut`), then take frames with `next_frame` until it returns `Ok(None)`. It buffers at
/// most what it was given; room for a frame is reserved only after its header passed the limits.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

/// What the header of the next frame says.
struct Header {
    kind_code: u16,
    correlation_id: u32,
    meta_len: usize,
    frame_len: usize,
    crc: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max_frame_bytes`, which bounds the memory one connection
    /// can pin. Senders never exceed [`MAX_FRAME_BYTES`], so a larger limit buys nothing.
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder { buf: BytesMut::new(), max_frame_bytes }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, to read into directly (append only).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still missing before `next_frame` can return the next frame (at least 1 when a frame
    /// is incomplete, 0 when one is complete). An error when the header buffered so far is invalid.
    pub fn missing(&self) -> Result<usize, WireError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(HEADER_BYTES - self.buf.len());
        }
        let h = self.header()?;
        Ok(h.frame_len.saturating_sub(self.buf.len()))
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let h = self.header()?;
        if self.buf.len() < h.frame_len {
            // Limits passed: reserving the rest of this frame is bounded.
            self.buf.reserve(h.frame_len - self.buf.len());
            return Ok(None);
        }
        let bytes = self.buf.split_to(h.frame_len).freeze();
        let meta_end = HEADER_BYTES + h.meta_len;
        let mut crc = crc32c::crc32c(&bytes[..CRC_COVERED_HEADER_BYTES]);
        crc = crc32c::crc32c_append(crc, &bytes[HEADER_BYTES..]);
        if crc != h.crc {
            return Err(WireError::ChecksumMismatch { expected: h.crc, actual: crc });
        }
        let kind = MessageKind::from_code(h.kind_code).ok_or(WireError::UnknownKind(h.kind_code))?;
        let message = decode_metadata(kind, &bytes[HEADER_BYTES..meta_end])?;
        check_raw(kind, &message, (h.frame_len - meta_end) as u64)?;
        Ok(Some(Frame { correlation_id: h.correlation_id, message, bytes, raw_start: meta_end }))
    }

    /// At the end of the stream: an error when a frame was left incomplete.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated { buffered: self.buf.len() })
        }
    }

    /// Parses and checks the buffered header (needs `HEADER_BYTES` buffered).
    fn header(&self) -> Result<Header, WireError> {
        let mut b = &self.buf[..HEADER_BYTES];
        let magic = b.get_u32_le();
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = b.get_u16_le();
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind_code = b.get_u16_le();
        let correlation_id = b.get_u32_le();
        let meta_len = b.get_u32_le() as usize;
        let raw_len = b.get_u32_le() as u64;
        let crc = b.get_u32_le();
        if meta_len > MAX_METADATA_BYTES {
            return Err(WireError::MetadataTooLarge { len: meta_len, limit: MAX_METADATA_BYTES });
        }
        let frame_len = (HEADER_BYTES + meta_len) as u64 + raw_len;
        if frame_len > self.max_frame_bytes as u64 {
            return Err(WireError::FrameTooLarge { len: frame_len, limit: self.max_frame_bytes });
        }
        // Fits in usize: at most max_frame_bytes.
        Ok(Header { kind_code, correlation_id, meta_len, frame_len: frame_len as usize, crc })
    }
}
