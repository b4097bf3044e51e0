//! On-disk batch framing. A segment is a sequence of frames; each frame is a fixed 32-byte header
//! followed by an opaque payload (the broker stores Kafka RecordBatch v2 bytes there).
//!
//! ```text
//! 0  u32 magic "SLB1"            4  u32 crc32c(bytes 8..32 ++ payload)
//! 8  u32 payload_len             12 u32 record_count (>= 1)
//! 16 u64 base_offset             24 i64 max_timestamp (ms)
//! ```
//! Little endian. The CRC covers the header fields after it and the payload, so a torn write, a
//! flipped bit or stale bytes from an earlier, longer file are all detected on recovery.
//! The zero-filled padding of the last aligned block reads as magic 0: "clean end of data".

/// Frame magic, "SLB1" little endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SLB1");
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// Hard ceiling on one payload, independent of configuration, so recovery never trusts a garbage
/// length (changing the configured limit later must not make old data unreadable).
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

/// Decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record in the batch.
    pub base_offset: u64,
    /// Number of offsets the batch occupies (>= 1).
    pub record_count: u32,
    /// Largest record timestamp in the batch, in ms (as given by the caller).
    pub max_timestamp: i64,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// CRC32C over header bytes 8..32 and the payload.
    pub crc: u32,
}

impl BatchHeader {
    /// Offset of the last record of the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// Offset following the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Header plus payload length.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// Builds the header of a new frame, computing the CRC over `payload`.
    pub fn new(base_offset: u64, record_count: u32, max_timestamp: i64, payload: &[u8]) -> Self {
        assert!(record_count >= 1, "a batch holds at least one record");
        assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload over the format limit");
        let mut h = BatchHeader { base_offset, record_count, max_timestamp, payload_len: payload.len() as u32, crc: 0 };
        h.crc = h.compute_crc(payload);
        h
    }

    /// Builds the header of a new frame from a payload CRC32C the caller already has (e.g. derived
    /// from a checksum it verified), combining it with the header fields' CRC instead of re-reading
    /// the payload.
    pub fn with_payload_crc(
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        payload_len: usize,
        payload_crc: u32,
    ) -> Self {
        assert!(record_count >= 1, "a batch holds at least one record");
        assert!(payload_len <= MAX_PAYLOAD_LEN, "payload over the format limit");
        let mut h = BatchHeader { base_offset, record_count, max_timestamp, payload_len: payload_len as u32, crc: 0 };
        h.crc = crc32c::crc32c_combine(crc32c::crc32c(&h.fields()), payload_crc, payload_len);
        h
    }

    fn fields(&self) -> [u8; HEADER_LEN - 8] {
        let mut f = [0u8; HEADER_LEN - 8];
        f[0..4].copy_from_slice(&self.payload_len.to_le_bytes());
        f[4..8].copy_from_slice(&self.record_count.to_le_bytes());
        f[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        f[16..24].copy_from_slice(&self.max_timestamp.to_le_bytes());
        f
    }

    /// CRC32C of the header fields and `payload`.
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let crc = crc32c::crc32c(&self.fields());
        crc32c::crc32c_append(crc, payload)
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.crc.to_le_bytes());
        out[8..].copy_from_slice(&self.fields());
        out
    }

    /// Decodes a header; `None` when the magic is wrong (including the all-zero padding).
    pub fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(0) != FRAME_MAGIC {
            return None;
        }
        Some(BatchHeader {
            crc: u32_at(4),
            payload_len: u32_at(8),
            record_count: u32_at(12),
            base_offset: u64_at(16),
            max_timestamp: u64_at(24) as i64,
        })
    }
}

/// Why a frame failed validation during a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameProblem {
    /// Zero bytes where a header would start: the clean end of the data.
    CleanEnd,
    /// Fewer bytes than a header or than the payload the header announces (a torn write).
    Torn,
    /// Anything else: bad magic, bad CRC, bad offsets, impossible length.
    Corrupt(String),
}

/// Checks the frame at the start of `buf` (which holds at least everything up to the end of the
/// file from that point, capped by the caller). `min_offset` is the lowest offset the frame may start
/// at: the offset after the previous frame. Appends are dense; only a compacted segment (rewritten by
/// `Log::rewrite_segment`) has gaps between frames, so a scan accepts any later start — the CRC covers
/// the base offset, files are cut physically on truncation and new segment files start empty, so a
/// valid frame at a position is always the frame written there.
pub(crate) fn check_frame(buf: &[u8], min_offset: u64) -> Result<BatchHeader, FrameProblem> {
    if buf.len() < HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) { Err(FrameProblem::CleanEnd) } else { Err(FrameProblem::Torn) };
    }
    let Some(h) = BatchHeader::decode(buf) else {
        return if buf[..HEADER_LEN].iter().all(|&b| b == 0) {
            Err(FrameProblem::CleanEnd)
        } else {
            Err(FrameProblem::Corrupt("bad frame magic".into()))
        };
    };
    if h.record_count == 0 {
        return Err(FrameProblem::Corrupt("record count 0".into()));
    }
    if h.payload_len as usize > MAX_PAYLOAD_LEN {
        return Err(FrameProblem::Corrupt(format!("payload length {} over the format limit", h.payload_len)));
    }
    if h.base_offset < min_offset {
        return Err(FrameProblem::Corrupt(format!(
            "base offset {} below {} (overlaps the previous batch)",
            h.base_offset, min_offset
        )));
    }
    if h.base_offset.checked_add(u64::from(h.record_count)).is_none() {
        return Err(FrameProblem::Corrupt("offset overflow".into()));
    }
    if buf.len() < h.frame_len() {
        return Err(FrameProblem::Torn);
    }
    let payload = &buf[HEADER_LEN..h.frame_len()];
    if h.compute_crc(payload) != h.crc {
        return Err(FrameProblem::Corrupt("CRC32C mismatch".into()));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_crc() {
        let payload = b"hello world";
        let h = BatchHeader::new(42, 3, 1_700_000_000_000, payload);
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(payload);
        assert_eq!(BatchHeader::decode(&frame), Some(h));
        assert_eq!(check_frame(&frame, 42), Ok(h));
        assert_eq!(h.last_offset(), 44);
        frame[HEADER_LEN + 3] ^= 1;
        assert!(matches!(check_frame(&frame, 42), Err(FrameProblem::Corrupt(_))));
    }

    #[test]
    fn zeros_are_a_clean_end_and_short_frames_are_torn() {
        assert_eq!(check_frame(&[0u8; 64], 0), Err(FrameProblem::CleanEnd));
        assert_eq!(check_frame(&[0u8; 10], 0), Err(FrameProblem::CleanEnd));
        let h = BatchHeader::new(0, 1, 0, &[7u8; 100]);
        let frame = h.encode();
        assert_eq!(check_frame(&frame, 0), Err(FrameProblem::Torn));
        assert!(matches!(check_frame(&frame, 1), Err(FrameProblem::Corrupt(_))));
        // A later start is a gap left by compaction, not damage.
        let full = [frame.as_slice(), &[7u8; 100]].concat();
        assert_eq!(check_frame(&full, 0).map(|h| h.base_offset), Ok(0));
        let later = BatchHeader::new(9, 1, 0, &[7u8; 100]);
        let full = [later.encode().as_slice(), &[7u8; 100]].concat();
        assert_eq!(check_frame(&full, 3), Ok(later));
    }
}
