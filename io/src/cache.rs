//! In-memory copy of the most recent batches, so tail readers (consumers that keep up) are served
//! without touching the disk. Always a suffix of the log (contiguous but for offsets a follower's
//! `append_at` skipped), bounded in bytes.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::batch::{BatchHeader, HEADER_LEN};

pub(crate) struct TailCache {
    batches: VecDeque<(BatchHeader, Bytes)>,
    bytes: usize,
    limit_bytes: usize,
}

impl TailCache {
    pub fn new(limit_bytes: usize) -> Self {
        TailCache { batches: VecDeque::new(), bytes: 0, limit_bytes }
    }

    /// Adds the batch that follows the cached ones.
    pub fn push(&mut self, h: BatchHeader, payload: Bytes) {
        if let Some((last, _)) = self.batches.back() {
            assert!(last.next_offset() <= h.base_offset, "tail cache offsets must increase");
        }
        let size = HEADER_LEN + payload.len();
        if size > self.limit_bytes {
            self.clear();
            return;
        }
        self.batches.push_back((h, payload));
        self.bytes += size;
        while self.bytes > self.limit_bytes {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((h, _)) = self.batches.pop_front() {
            self.bytes -= h.frame_len();
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// First offset served from memory, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.batches.front().map(|(h, _)| h.base_offset)
    }

    /// Drops every batch holding an offset >= `offset`.
    pub fn truncate(&mut self, offset: u64) {
        while self.batches.back().is_some_and(|(h, _)| h.last_offset() >= offset) {
            if let Some((h, _)) = self.batches.pop_back() {
                self.bytes -= h.frame_len();
            }
        }
    }

    /// Drops every batch entirely below `offset`.
    pub fn drop_before(&mut self, offset: u64) {
        while self.batches.front().is_some_and(|(h, _)| h.last_offset() < offset) {
            self.pop_front();
        }
    }

    /// Whole batches from the one containing `offset`: the first one always, the next ones while
    /// they fit in `max_bytes` (payload bytes).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Vec<(BatchHeader, Bytes)> {
        let start = self.batches.partition_point(|(h, _)| h.last_offset() < offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        for (h, p) in self.batches.range(start..) {
            if !out.is_empty() && total + p.len() > max_bytes {
                break;
            }
            total += p.len();
            out.push((*h, p.clone()));
        }
        out
    }
}
