//! The cleaner's key map: for each key seen in the dirty part of a log, the offset of its latest
//! record. Keys are stored as 128-bit hashes (as Kafka stores MD5 digests), so memory per key is
//! fixed and bounded by `capacity`; a collision would need two keys with equal 128-bit XXH3 hashes.

use std::collections::HashMap;

/// Bytes one entry costs, hash table overhead included (for sizing from a memory budget).
pub const BYTES_PER_ENTRY: usize = 40;

/// Key hash → offset of the latest record with that key.
pub struct OffsetMap {
    map: HashMap<u128, u64>,
    capacity: usize,
}

impl OffsetMap {
    /// A map using at most about `budget_bytes`.
    pub fn with_budget(budget_bytes: usize) -> OffsetMap {
        let capacity = (budget_bytes / BYTES_PER_ENTRY).max(1);
        OffsetMap { map: HashMap::new(), capacity }
    }

    pub fn hash(key: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(key)
    }

    /// Room for `n` more keys (callers add a batch's keys only when all of them fit).
    pub fn has_room_for(&self, n: usize) -> bool {
        self.map.len() + n <= self.capacity
    }

    /// Records `offset` as the latest for `key_hash` (offsets arrive in increasing order).
    pub fn put(&mut self, key_hash: u128, offset: u64) {
        let prev = self.map.insert(key_hash, offset);
        debug_assert!(prev.is_none_or(|p| p < offset), "offsets reach the map in order");
        assert!(self.map.len() <= self.capacity, "callers check has_room_for first");
    }

    /// Offset of the latest record with this key in the mapped range.
    pub fn latest(&self, key_hash: u128) -> Option<u64> {
        self.map.get(&key_hash).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_offset_per_key_within_the_budget() {
        let mut m = OffsetMap::with_budget(3 * BYTES_PER_ENTRY);
        let (a, b, c) = (OffsetMap::hash(b"a"), OffsetMap::hash(b"b"), OffsetMap::hash(b"c"));
        m.put(a, 1);
        m.put(b, 2);
        m.put(a, 5);
        assert_eq!((m.latest(a), m.latest(b), m.latest(c)), (Some(5), Some(2), None));
        assert!(m.has_room_for(1) && !m.has_room_for(2));
        assert_ne!(OffsetMap::hash(b""), OffsetMap::hash(b"\0"));
    }
}
