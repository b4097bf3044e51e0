//! The read path of a log: whole batches from the tail cache or from a segment file (the active
//! one, or a sealed one through the per-core file cache), and lookups by timestamp. Reads never
//! go through the writer's queue; they see state only after a write completed.

use glommio::io::ReadResult;

use super::{BatchBytes, Log, StoredBatch};
use crate::batch::{BatchHeader, HEADER_LEN};
use crate::error::{Error, Result};
use crate::segment::Segment;

/// Attempts of one read whose sealed segment file was deleted or replaced while being opened (each
/// one follows a change of the log's state, so more than a few in a row mean a damaged directory).
const MAX_REPLACED_FILE_RETRIES: u32 = 8;

impl Log {
    /// Reads whole batches starting with the first one holding an offset >= `offset` (the one
    /// containing it, unless compaction removed it): the first batch always (even if larger than
    /// `max_bytes`), then following batches of the same segment while their payloads fit in
    /// `max_bytes`. Empty at the log end; `OffsetOutOfRange` outside `[start, end]`.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>> {
        let mut offset = offset;
        let mut replaced = 0;
        loop {
            let (out, segment_end) = match self.read_one_segment(offset, max_bytes).await {
                // The sealed segment was deleted or rewritten while its file was being opened: the
                // log's state has changed since, so the next attempt sees what replaced it (or
                // that the offset is now below the log start).
                Err(Error::SegmentFileReplaced { .. }) if replaced < MAX_REPLACED_FILE_RETRIES => {
                    replaced += 1;
                    continue;
                }
                other => other?,
            };
            match segment_end {
                // Everything from `offset` to the end of a sealed segment was compacted away: the
                // next batch is in a later segment. Terminates: `offset` < `end` (asserted below).
                Some(end) if out.is_empty() => offset = end,
                _ => return Ok(out),
            }
        }
    }

    /// Reads from the segment holding `offset`: the batches, and — when the segment is sealed and
    /// the read found nothing — the offset where the segment's range ends.
    async fn read_one_segment(&self, offset: u64, max_bytes: usize) -> Result<(Vec<StoredBatch>, Option<u64>)> {
        let sh = self.shared();
        if sh.writer_exited.get() {
            return Err(Error::Closed { path: sh.dir.clone() });
        }
        let (file, path, start_pos, limit, seg_base, sealed_end) = {
            let st = sh.state.borrow();
            if offset < st.log_start_offset || offset > st.next_offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    next_offset: st.next_offset,
                });
            }
            if offset == st.next_offset {
                return Ok((Vec::new(), None));
            }
            if st.cache.first_offset().is_some_and(|f| f <= offset) {
                let out = st
                    .cache
                    .read(offset, max_bytes)
                    .into_iter()
                    .map(|(header, p)| StoredBatch { header, payload: BatchBytes::Memory(p) })
                    .collect();
                return Ok((out, None));
            }
            let Some((_, seg)) = st.segments.range(..=offset).next_back() else {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    next_offset: st.next_offset,
                });
            };
            assert!(offset < seg.next_offset, "segments cover the offsets up to the next one");
            let rel = u32::try_from(offset - seg.base).unwrap_or(u32::MAX);
            let (_, pos) = seg.index.lookup_offset(rel);
            let sealed_end = (seg.next_offset < st.next_offset).then_some(seg.next_offset);
            (seg.file_ref(), seg.path.clone(), u64::from(pos), seg.size, seg.base, sealed_end)
        };
        if start_pos >= limit {
            // An empty sealed segment (everything in it was compacted away).
            return Ok((Vec::new(), sealed_end));
        }
        // Held until the read ends: an eviction meanwhile only drops the cache's reference.
        let key = file.key;
        let file = file.open().await?;
        if !sh.state.borrow().segments.get(&seg_base).is_some_and(|s| s.key == key) {
            // The segment went while its file was being opened (retention, truncation, a rewrite):
            // this read still uses it, but it must not stay in the cache.
            drop(crate::file_cache::take(key));
        }
        let interval = sh.config.get().index_interval_bytes as usize;
        let want = ((limit - start_pos) as usize).min(interval + max_bytes.max(1) + 2 * HEADER_LEN);
        let mut buf = Segment::read_exact(&file, &path, start_pos, want).await?;
        let mut buf_pos = start_pos;
        let mut at = 0usize;
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut expected = None::<u64>;
        while buf_pos + (at as u64) < limit {
            let abs = buf_pos + at as u64;
            // Skipped frames can end past the buffer (index entries are at most about two
            // intervals apart after a reopen or truncation, and a batch can be of any size).
            if buf.len().saturating_sub(at) < HEADER_LEN {
                if !out.is_empty() {
                    break;
                }
                buf = Segment::read_exact(&file, &path, abs, ((limit - abs) as usize).min(want)).await?;
                buf_pos = abs;
                at = 0;
            }
            let h = BatchHeader::decode(&buf[at..]).ok_or_else(|| Error::CorruptSegment {
                path: path.clone(),
                position: abs,
                reason: "bad frame magic on read".into(),
            })?;
            if expected.is_some_and(|e| h.base_offset < e) || h.base_offset < seg_base {
                return Err(Error::CorruptSegment {
                    path,
                    position: abs,
                    reason: "offsets not increasing on read".into(),
                });
            }
            expected = Some(h.next_offset());
            let frame = h.frame_len();
            if h.last_offset() < offset {
                at += frame;
                continue;
            }
            if !out.is_empty() && total + h.payload_len as usize > max_bytes {
                break;
            }
            if buf.len() - at < frame {
                if !out.is_empty() {
                    break;
                }
                // The first wanted batch is larger than what we read: read it (and what fits after).
                let more = ((limit - abs) as usize).min(frame.max(max_bytes + HEADER_LEN));
                buf = Segment::read_exact(&file, &path, abs, more).await?;
                buf_pos = abs;
                at = 0;
            }
            let payload = ReadResult::slice(&buf, at + HEADER_LEN, h.payload_len as usize).ok_or_else(|| {
                Error::CorruptSegment { path: path.clone(), position: abs, reason: "frame beyond read buffer".into() }
            })?;
            total += h.payload_len as usize;
            out.push(StoredBatch { header: h, payload: BatchBytes::Disk(payload) });
            at += frame;
            if at >= buf.len() {
                break;
            }
        }
        Ok((out, sealed_end))
    }

    /// The first batch whose max timestamp is >= `ts`: (its base offset, its max timestamp).
    /// `None` when every batch is older.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
        let start = self.log_start_offset();
        Ok(self.batch_for_timestamp(ts).await?.map(|b| (b.header.base_offset.max(start), b.header.max_timestamp)))
    }

    /// The first batch whose max timestamp is >= `ts`, whole (callers that understand the payload
    /// look inside it for the exact record without reading it again).
    pub async fn batch_for_timestamp(&self, ts: i64) -> Result<Option<StoredBatch>> {
        let (mut offset, end) = {
            let st = self.shared().state.borrow();
            let seg = st
                .segments
                .values()
                .find(|s| !s.is_empty() && s.max_timestamp >= ts && s.next_offset > st.log_start_offset);
            let Some(seg) = seg else { return Ok(None) };
            let rel = seg.index.lookup_time(ts);
            // A segment's max timestamp may be an upper bound (after truncation): when the first
            // candidate holds no match, the scan goes on into later segments.
            ((seg.base + u64::from(rel)).max(st.log_start_offset), st.next_offset)
        };
        while offset < end {
            // The time index lands within about an interval of the match: read that much at a time.
            let step = (2 * self.shared().config.get().index_interval_bytes) as usize;
            let batches = self.read(offset, step).await?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                if b.header.max_timestamp >= ts && b.header.last_offset() >= offset {
                    return Ok(Some(b));
                }
                offset = b.header.next_offset();
            }
        }
        Ok(None)
    }
}
