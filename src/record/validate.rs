//! What a produced batch must be before it is stored: Kafka's LogValidator rules for client
//! batches, plus a walk over every record inside (decompressed as a bounded stream), so that a
//! batch no consumer could read is refused instead of stored as a poison pill.
//!
//! Batch rules (the header, before any record is read): record count >= 1 and equal to
//! lastOffsetDelta + 1; no control batch from a client; a producer id needs a base sequence;
//! a transactional batch needs a producer id and an ongoing transaction (Sluice has none yet);
//! a known codec. Record rules: exactly `records count` records, each with offset delta equal to
//! its index (Kafka rewrites wrong inner offsets of compressed batches by recompressing; Sluice
//! refuses them: no v2 client writes them, and the stored bytes are served as they are), every
//! length inside its record, well-formed varints, header keys present, the record's length prefix
//! equal to what it holds, nothing after the last record; on a compacted topic every record keyed.
//!
//! The walk is resumable (`BatchCheck::advance` reads about a given number of bytes per call) so
//! the caller can yield to other tasks between steps: a large or highly compressed batch never
//! holds a core for long. Memory is bounded: keys and values are skipped, never copied.

use std::io::BufRead;

use bytes::Bytes;

use super::batch::{zigzag_varint, BatchError, BatchInfo, VarintError, HEADER_LEN, MAX_VARLONG_BYTES};
use super::codec::{self, Codec, MAX_DECOMPRESSED_BATCH_BYTES};

/// Attributes bits of a batch.
pub const TRANSACTIONAL_BIT: i16 = 0x10;
pub const CONTROL_BIT: i16 = 0x20;
/// Bytes of a record's fields Kafka reads as a 32-bit varint (5 bytes at most).
const MAX_VARINT_BYTES: usize = 5;

/// What the topic asks of its records beyond the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `cleanup.policy` includes compact: every record needs a key.
    pub keys_required: bool,
    /// Cap on the decompressed records section.
    pub max_decompressed_bytes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { keys_required: false, max_decompressed_bytes: MAX_DECOMPRESSED_BATCH_BYTES }
    }
}

fn invalid(m: impl Into<String>) -> BatchError {
    BatchError::InvalidRecord(m.into())
}

/// The header rules of a batch a client produced.
pub fn check_header(info: &BatchInfo) -> Result<Codec, BatchError> {
    let codec = Codec::from_attributes(info.attributes)?;
    if info.last_offset_delta < 0 {
        return Err(invalid(format!(
            "Batch has an invalid offset range: last offset delta {}",
            info.last_offset_delta
        )));
    }
    if info.records_count <= 0 {
        return Err(invalid(format!("Invalid reported count for record batch: {}", info.records_count)));
    }
    if i64::from(info.last_offset_delta) + 1 != i64::from(info.records_count) {
        return Err(invalid(format!(
            "Inconsistent batch offset range [0, {}] and count of records {}",
            info.last_offset_delta, info.records_count
        )));
    }
    if info.attributes & CONTROL_BIT != 0 {
        return Err(invalid("Clients are not allowed to write control records"));
    }
    if info.producer_id >= 0 && info.base_sequence < 0 {
        return Err(invalid(format!(
            "Invalid sequence number {} in record batch with producerId {}",
            info.base_sequence, info.producer_id
        )));
    }
    if info.attributes & TRANSACTIONAL_BIT != 0 {
        if info.producer_id < 0 {
            return Err(invalid("Transactional batch without a producer id"));
        }
        return Err(BatchError::InvalidTxnState(
            "transactional batch for a partition not in an ongoing transaction (transactions are not supported yet)"
                .into(),
        ));
    }
    Ok(codec)
}

/// The records section being walked: in place when uncompressed (the hot path: plain slice reads),
/// else a bounded decoder stream.
enum Source {
    InPlace { bytes: Bytes, at: usize },
    Stream(Box<dyn BufRead>),
}

impl Source {
    /// The next byte; `None` at the end of the section.
    #[inline]
    fn byte(&mut self) -> std::io::Result<Option<u8>> {
        match self {
            Source::InPlace { bytes, at } => {
                let b = bytes.get(*at).copied();
                *at += usize::from(b.is_some());
                Ok(b)
            }
            Source::Stream(r) => {
                let b = match r.fill_buf()? {
                    [] => return Ok(None),
                    buf => buf[0],
                };
                r.consume(1);
                Ok(Some(b))
            }
        }
    }

    /// Skips up to `n` bytes; how many there were.
    #[inline]
    fn skip(&mut self, n: usize) -> std::io::Result<usize> {
        match self {
            Source::InPlace { bytes, at } => {
                let got = n.min(bytes.len() - *at);
                *at += got;
                Ok(got)
            }
            Source::Stream(r) => {
                let mut left = n;
                while left > 0 {
                    let got = match r.fill_buf()? {
                        [] => break,
                        buf => buf.len().min(left),
                    };
                    r.consume(got);
                    left -= got;
                }
                Ok(n - left)
            }
        }
    }

    fn at_end(&mut self) -> std::io::Result<bool> {
        match self {
            Source::InPlace { bytes, at } => Ok(*at == bytes.len()),
            Source::Stream(r) => Ok(r.fill_buf()?.is_empty()),
        }
    }
}

/// A batch being checked record by record.
pub struct BatchCheck {
    records: Source,
    rules: Rules,
    count: i32,
    next: i32,
    /// Bytes of the records section read so far.
    read: usize,
}

impl BatchCheck {
    /// Checks the header of `batch` (whose parsed header is `info`) and prepares the record walk.
    pub fn new(batch: &Bytes, info: &BatchInfo, rules: Rules) -> Result<BatchCheck, BatchError> {
        let codec = check_header(info)?;
        if batch.len() < info.size || info.size < HEADER_LEN {
            return Err(BatchError::Corrupt(format!("batch of {} bytes claims {}", batch.len(), info.size)));
        }
        let section = batch.slice(HEADER_LEN..info.size);
        let records = match codec {
            Codec::None => Source::InPlace { bytes: section, at: 0 },
            _ => Source::Stream(codec::decoder(codec, section, rules.max_decompressed_bytes)?),
        };
        Ok(BatchCheck { records, rules, count: info.records_count, next: 0, read: 0 })
    }

    /// Checks records until about `budget_bytes` more of the records section were read, or all
    /// were. `Ok(true)` when the whole batch is valid.
    pub fn advance(&mut self, budget_bytes: usize) -> Result<bool, BatchError> {
        let stop_at = self.read.saturating_add(budget_bytes);
        while self.next < self.count {
            self.record()?;
            self.next += 1;
            if self.read >= stop_at && self.next < self.count {
                return Ok(false);
            }
        }
        match self.records.at_end() {
            Ok(true) => Ok(true),
            Ok(false) => Err(invalid(format!("bytes after the last of {} records", self.count))),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// Reads and checks record `self.next`.
    fn record(&mut self) -> Result<(), BatchError> {
        let i = self.next;
        let size = self.varint(MAX_VARINT_BYTES)?;
        if size <= 0 {
            return Err(invalid(format!("record {i}: invalid record size {size}")));
        }
        let start = self.read;
        let end = start + size as usize;
        self.skip(1)?; // attributes
        self.varint(MAX_VARLONG_BYTES)?; // timestamp delta
        let offset_delta = self.varint(MAX_VARINT_BYTES)?;
        if offset_delta != i64::from(i) {
            return Err(invalid(format!("record {i} has offset delta {offset_delta}, expected {i}")));
        }
        let key_len = self.varint(MAX_VARINT_BYTES)?;
        if key_len < -1 {
            return Err(invalid(format!("record {i}: invalid key length {key_len}")));
        }
        if key_len == -1 && self.rules.keys_required {
            return Err(invalid(format!(
                "Compacted topic cannot accept message without key (record {i} of the batch)"
            )));
        }
        self.skip_within(key_len.max(0) as usize, end, i, "key")?;
        let value_len = self.varint(MAX_VARINT_BYTES)?;
        if value_len < -1 {
            return Err(invalid(format!("record {i}: invalid value length {value_len}")));
        }
        self.skip_within(value_len.max(0) as usize, end, i, "value")?;
        let headers = self.varint(MAX_VARINT_BYTES)?;
        if headers < 0 || headers as usize > end.saturating_sub(self.read) {
            return Err(invalid(format!("record {i}: invalid number of headers {headers}")));
        }
        for _ in 0..headers {
            let key_len = self.varint(MAX_VARINT_BYTES)?;
            if key_len < 0 {
                return Err(invalid(format!("record {i}: invalid negative header key size {key_len}")));
            }
            self.skip_within(key_len as usize, end, i, "header key")?;
            let value_len = self.varint(MAX_VARINT_BYTES)?;
            if value_len < -1 {
                return Err(invalid(format!("record {i}: invalid header value length {value_len}")));
            }
            self.skip_within(value_len.max(0) as usize, end, i, "header value")?;
        }
        if self.read != end {
            return Err(invalid(format!(
                "record {i}: invalid record size: expected to read {size} bytes in record payload, but read {}",
                self.read - start
            )));
        }
        Ok(())
    }

    fn read_error(&self, e: std::io::Error) -> BatchError {
        BatchError::Corrupt(format!("record {} of {}: {e}", self.next, self.count))
    }

    fn premature_end(&self) -> BatchError {
        invalid(format!("records end inside record {} of the {} the header counts", self.next, self.count))
    }

    /// A zigzag varint of at most `max_bytes` bytes.
    fn varint(&mut self, max_bytes: usize) -> Result<i64, BatchError> {
        // Hot path: an uncompressed section decodes straight from the slice.
        if let Source::InPlace { bytes, at } = &mut self.records {
            let start = *at;
            let read = zigzag_varint(bytes, at, max_bytes);
            self.read += *at - start;
            return match read {
                Ok(z) => self.fits(z, max_bytes),
                Err(VarintError::Cut) => Err(self.premature_end()),
                Err(VarintError::TooLong) => Err(self.too_long()),
            };
        }
        let mut v: u64 = 0;
        for n in 0..max_bytes {
            let byte = match self.records.byte() {
                Ok(Some(b)) => b,
                Ok(None) => return Err(self.premature_end()),
                Err(e) => return Err(self.read_error(e)),
            };
            self.read += 1;
            v |= u64::from(byte & 0x7f) << (7 * n);
            if byte & 0x80 == 0 {
                return self.fits(((v >> 1) as i64) ^ -((v & 1) as i64), max_bytes);
            }
        }
        Err(self.too_long())
    }

    /// A decoded varint; a 32-bit field must fit in an i32.
    #[inline]
    fn fits(&self, z: i64, max_bytes: usize) -> Result<i64, BatchError> {
        if max_bytes == MAX_VARINT_BYTES && i32::try_from(z).is_err() {
            return Err(self.too_long());
        }
        Ok(z)
    }

    fn too_long(&self) -> BatchError {
        invalid(format!("record {}: varint too long", self.next))
    }

    fn skip(&mut self, n: usize) -> Result<(), BatchError> {
        let got = self.records.skip(n).map_err(|e| self.read_error(e))?;
        self.read += got;
        if got < n {
            return Err(self.premature_end());
        }
        Ok(())
    }

    fn skip_within(&mut self, n: usize, end: usize, i: i32, what: &str) -> Result<(), BatchError> {
        if self.read.saturating_add(n) > end {
            return Err(invalid(format!("record {i}: {what} of {n} bytes overruns the record")));
        }
        self.skip(n)
    }
}

/// Checks a whole batch at once (tests, fuzzing, callers that need not yield).
pub fn check_batch(batch: &Bytes, info: &BatchInfo, rules: Rules) -> Result<(), BatchError> {
    let mut check = BatchCheck::new(batch, info, rules)?;
    while !check.advance(usize::MAX)? {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{parse_header, CRC_START};
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn records(n: usize, key: bool) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: key.then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: [(kafka_protocol::protocol::StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")))]
                    .into_iter()
                    .collect(),
                delete_horizon: false,
            })
            .collect()
    }

    fn encode(recs: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, recs, &RecordEncodeOptions { version: 2, compression }).unwrap();
        buf.freeze()
    }

    /// Sets header fields and recomputes the CRC, as a lying client would.
    fn forge(batch: &Bytes, edit: impl FnOnce(&mut [u8])) -> Bytes {
        let mut b = batch.to_vec();
        edit(&mut b);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn check(b: &Bytes, rules: Rules) -> Result<(), BatchError> {
        check_batch(b, &parse_header(b).unwrap(), rules)
    }

    #[test]
    fn honest_batches_of_every_codec_pass_in_small_steps() {
        for c in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let b = encode(&records(50, true), c);
            let info = parse_header(&b).unwrap();
            let mut check = BatchCheck::new(&b, &info, Rules { keys_required: true, ..Rules::default() }).unwrap();
            let mut steps = 1;
            while !check.advance(512).unwrap() {
                steps += 1;
            }
            assert!(steps > 5, "{c:?}: {steps} steps");
        }
    }

    #[test]
    fn a_header_counting_fewer_records_than_it_holds_is_refused() {
        let b = encode(&records(3, false), Compression::None);
        let lie = forge(&b, |h| {
            h[23..27].copy_from_slice(&0i32.to_be_bytes());
            h[57..61].copy_from_slice(&1i32.to_be_bytes());
        });
        let err = check(&lie, Rules::default()).unwrap_err();
        assert!(matches!(err, BatchError::InvalidRecord(ref m) if m.contains("after the last")), "{err}");
        let huge = forge(&b, |h| {
            h[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
            h[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        });
        let err = check(&huge, Rules::default()).unwrap_err();
        assert!(matches!(err, BatchError::InvalidRecord(ref m) if m.contains("end inside")), "{err}");
        let mismatch = forge(&b, |h| h[57..61].copy_from_slice(&2i32.to_be_bytes()));
        assert!(matches!(check(&mismatch, Rules::default()), Err(BatchError::InvalidRecord(_))));
    }

    #[test]
    fn poison_headers_are_refused() {
        let b = encode(&records(2, false), Compression::None);
        type Edit = Box<dyn Fn(&mut [u8])>;
        let cases: [(&str, Edit); 4] = [
            ("codec 7", Box::new(|h: &mut [u8]| h[22] |= 7)),
            ("control", Box::new(|h: &mut [u8]| h[22] |= 0x20)),
            ("transactional", Box::new(|h: &mut [u8]| h[22] |= 0x10)),
            ("pid without sequence", Box::new(|h: &mut [u8]| h[43..51].copy_from_slice(&7i64.to_be_bytes()))),
        ];
        for (what, edit) in cases {
            assert!(check(&forge(&b, edit), Rules::default()).is_err(), "{what}");
        }
        // gzip flag over plain records: not a gzip stream.
        let gz = forge(&b, |h| h[22] |= 1);
        assert!(matches!(check(&gz, Rules::default()), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn garbage_records_and_missing_keys_are_refused() {
        let b = encode(&records(2, false), Compression::None);
        assert!(matches!(
            check(&b, Rules { keys_required: true, ..Rules::default() }),
            Err(BatchError::InvalidRecord(ref m)) if m.contains("without key")
        ));
        for at in HEADER_LEN..b.len() {
            for v in [0x00u8, 0x7f, 0x80, 0xff] {
                let bad = forge(&b, |h| h[at] = v);
                let _ = check(&bad, Rules::default()); // never panics
            }
        }
        let varints = forge(&b, |h| h[HEADER_LEN..HEADER_LEN + 8].fill(0xff));
        assert!(check(&varints, Rules::default()).is_err());
        // Offset deltas out of order.
        let mut recs = records(2, false);
        recs[1].offset = 5;
        recs[1].sequence = 4;
        let mut gapped = encode(&recs, Compression::None);
        gapped = forge(&gapped, |h| {
            h[23..27].copy_from_slice(&1i32.to_be_bytes());
        });
        assert!(
            matches!(check(&gapped, Rules::default()), Err(BatchError::InvalidRecord(ref m)) if m.contains("offset delta"))
        );
    }

    #[test]
    fn a_zstd_bomb_is_refused_at_the_cap() {
        let mut recs = records(1, false);
        recs[0].value = Some(Bytes::from(vec![0u8; 32 << 20]));
        let b = encode(&recs, Compression::Zstd);
        assert!(b.len() < 64 << 10, "{}", b.len());
        let err = check(&b, Rules { keys_required: false, max_decompressed_bytes: 1 << 20 }).unwrap_err();
        assert!(matches!(err, BatchError::Corrupt(ref m) if m.contains("limit")), "{err}");
    }
}
