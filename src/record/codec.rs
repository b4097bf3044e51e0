//! Compression codecs of a RecordBatch's records section, decoded as a stream with a hard cap.
//!
//! A compressed batch is attacker-controlled input: 131 KB of zstd can claim 4 GiB. Nothing here
//! ever allocates in proportion to what the data claims: decoders are streaming readers whose
//! output is cut at `limit` bytes (reading past it is an error, not a truncation), zstd's window is
//! capped, and a snappy block's declared length is checked against the cap and against the most
//! snappy can expand its input before a buffer is made for it.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use bytes::{Buf, Bytes};

use super::batch::BatchError;

/// Largest records section a batch may expand to. Kafka has no such cap; its producers' batches
/// are limited by `max.message.bytes` (1 MiB by default) compressed, and real data rarely
/// compresses more than 20:1. A batch beyond this is refused as corrupt.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 128 << 20;
/// zstd frames may ask for windows up to 2 GiB; the decoder allocates what a frame asks for.
/// 2^24 = 16 MiB covers every level up to 19 and any frame whose content is smaller (a batch's).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Read-ahead of the buffered reader over a decoder.
const DECODE_BUFFER_BYTES: usize = 64 << 10;
/// The most snappy can expand its input: a 3-byte copy element emits at most 64 bytes.
const SNAPPY_MAX_EXPANSION: usize = 22;
/// Snappy's xerial framing (Java clients): magic, then (u32 length, raw block) pairs.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// A batch's compression codec (attributes bits 0..2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec named by a batch's attributes; ids 5..7 are undefined in Kafka.
    pub fn from_attributes(attributes: i16) -> Result<Codec, BatchError> {
        match attributes & 0x7 {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            c => Err(BatchError::Corrupt(format!("unknown compression codec {c}"))),
        }
    }
}

/// A buffered reader over the decompressed form of `compressed` (a batch's records section).
/// Reading more than `limit` bytes from it fails with `InvalidData`.
pub fn decoder(codec: Codec, compressed: Bytes, limit: usize) -> Result<Box<dyn BufRead>, BatchError> {
    let corrupt = |what: &str, e: io::Error| BatchError::Corrupt(format!("{what}: {e}"));
    let mut leftover = None;
    let inner: Box<dyn Read> = match codec {
        Codec::None => Box::new(compressed.reader()),
        // One gzip member, as every producer writes: librdkafka decompresses only the first, so
        // bytes after it (a second member included, which Java would read) make a batch its
        // consumers can never get past.
        Codec::Gzip => {
            let input = Tracked::new(compressed);
            leftover = Some(input.left.clone());
            Box::new(flate2::bufread::GzDecoder::new(input))
        }
        Codec::Snappy => Box::new(SnappyReader::new(compressed, limit)?),
        // One lz4 frame filling the section exactly (librdkafka refuses bytes after it).
        Codec::Lz4 => {
            let frame = lz4_frame_len(&compressed)?;
            if frame != compressed.len() {
                return Err(BatchError::Corrupt(format!(
                    "{} bytes after the lz4 frame of {frame} bytes",
                    compressed.len() - frame
                )));
            }
            Box::new(lz4::Decoder::new(compressed.reader()).map_err(|e| corrupt("lz4 frame", e))?)
        }
        Codec::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(compressed.reader()).map_err(|e| corrupt("zstd", e))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| corrupt("zstd", e))?;
            Box::new(d)
        }
    };
    Ok(Box::new(BufReader::with_capacity(DECODE_BUFFER_BYTES, Capped { inner, left: limit, leftover })))
}

/// Decompresses a whole records section, up to `limit` bytes (the cleaner rebuilds batches from it).
pub fn decompress(codec: Codec, compressed: Bytes, limit: usize) -> Result<Bytes, BatchError> {
    if codec == Codec::None {
        return Ok(compressed);
    }
    let mut out = Vec::new();
    decoder(codec, compressed, limit)?
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Corrupt(format!("decompressing records: {e}")))?;
    Ok(Bytes::from(out))
}

/// Fails a read that would go past `left` more bytes, and an end of stream that left compressed
/// input unread (`leftover`, where the decoder reports it).
struct Capped {
    inner: Box<dyn Read>,
    left: usize,
    leftover: Option<Rc<Cell<usize>>>,
}

impl Read for Capped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than allowed so that going past the cap is seen, not hidden.
        let want = buf.len().min(self.left.saturating_add(1));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            if let Some(left) = self.leftover.as_ref().map(|l| l.get()).filter(|&l| l > 0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{left} bytes after the end of the compressed stream"),
                ));
            }
        }
        if n > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("records expand beyond the {MAX_DECOMPRESSED_BATCH_BYTES_MIB} MiB limit"),
            ));
        }
        self.left -= n;
        Ok(n)
    }
}

const MAX_DECOMPRESSED_BATCH_BYTES_MIB: usize = MAX_DECOMPRESSED_BATCH_BYTES >> 20;

/// Compressed input read through `BufRead`, so a decoder consumes exactly what its stream holds;
/// `left` tells what it did not consume.
struct Tracked {
    input: Bytes,
    left: Rc<Cell<usize>>,
}

impl Tracked {
    fn new(input: Bytes) -> Tracked {
        let left = Rc::new(Cell::new(input.len()));
        Tracked { input, left }
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Tracked {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.input)
    }

    fn consume(&mut self, amt: usize) {
        self.input.advance(amt.min(self.input.len()));
        self.left.set(self.input.len());
    }
}

/// LZ4 frame format (lz4_Frame_format.md): magic, FLG, BD, optional content size and dictionary
/// id, header checksum, then blocks (u32 LE size, high bit = stored; 0 ends them) each with an
/// optional checksum, then an optional content checksum.
const LZ4_MAGIC: u32 = 0x184D_2204;
const LZ4_FLG_BLOCK_CHECKSUM: u8 = 0x10;
const LZ4_FLG_CONTENT_SIZE: u8 = 0x08;
const LZ4_FLG_CONTENT_CHECKSUM: u8 = 0x04;
const LZ4_FLG_DICT_ID: u8 = 0x01;

/// The length of the one lz4 frame at the start of `b`, from its block sizes alone (nothing is
/// decompressed): what follows it is not part of any frame librdkafka reads.
fn lz4_frame_len(b: &[u8]) -> Result<usize, BatchError> {
    let cut = || BatchError::Corrupt("lz4 frame cut short".into());
    let u32_at = |at: usize| -> Result<u32, BatchError> {
        let bytes = b.get(at..at + 4).ok_or_else(cut)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    if u32_at(0)? != LZ4_MAGIC {
        return Err(BatchError::Corrupt("not an lz4 frame".into()));
    }
    let flg = *b.get(4).ok_or_else(cut)?;
    let mut at = 6; // magic, FLG, BD
    if flg & LZ4_FLG_CONTENT_SIZE != 0 {
        at += 8;
    }
    if flg & LZ4_FLG_DICT_ID != 0 {
        at += 4;
    }
    at += 1; // header checksum
    let block_checksum = if flg & LZ4_FLG_BLOCK_CHECKSUM != 0 { 4 } else { 0 };
    loop {
        let size = u32_at(at)?;
        at += 4;
        if size == 0 {
            break;
        }
        at =
            at.checked_add((size & 0x7fff_ffff) as usize + block_checksum).filter(|&e| e <= b.len()).ok_or_else(cut)?;
    }
    if flg & LZ4_FLG_CONTENT_CHECKSUM != 0 {
        at += 4;
    }
    if at > b.len() {
        return Err(cut());
    }
    Ok(at)
}

/// Snappy as Kafka clients write it: xerial-framed blocks (Java) or one raw block (librdkafka).
/// Snappy has no streaming decoder, so each block is decoded whole, after its declared length
/// was checked against the cap and against what its compressed size can possibly produce.
struct SnappyReader {
    input: Bytes,
    framed: bool,
    block: Bytes,
    left: usize,
}

impl SnappyReader {
    fn new(mut input: Bytes, limit: usize) -> Result<SnappyReader, BatchError> {
        let framed = input.len() >= XERIAL_HEADER_LEN && input.starts_with(XERIAL_MAGIC);
        if framed {
            input.advance(XERIAL_HEADER_LEN);
        }
        Ok(SnappyReader { input, framed, block: Bytes::new(), left: limit })
    }

    fn next_block(&mut self) -> io::Result<bool> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if self.input.is_empty() {
            return Ok(false);
        }
        let raw = if self.framed {
            if self.input.len() < 4 {
                return Err(bad("snappy block length cut short".into()));
            }
            let len = self.input.get_u32() as usize;
            if len > self.input.len() {
                return Err(bad(format!("snappy block of {len} bytes, {} left", self.input.len())));
            }
            self.input.split_to(len)
        } else {
            std::mem::take(&mut self.input)
        };
        let declared = snap::raw::decompress_len(&raw).map_err(|e| bad(format!("snappy: {e}")))?;
        if declared > self.left {
            return Err(bad(format!("records expand beyond the {MAX_DECOMPRESSED_BATCH_BYTES_MIB} MiB limit")));
        }
        if declared > raw.len().saturating_mul(SNAPPY_MAX_EXPANSION).saturating_add(64) {
            return Err(bad(format!("snappy block of {} bytes claims {declared}", raw.len())));
        }
        let mut out = vec![0u8; declared];
        let n = snap::raw::Decoder::new().decompress(&raw, &mut out).map_err(|e| bad(format!("snappy: {e}")))?;
        out.truncate(n);
        self.left -= n;
        self.block = Bytes::from(out);
        Ok(true)
    }
}

impl Read for SnappyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.block.is_empty() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block[..n]);
        self.block.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    fn compress(codec: Codec, plain: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        let fill = |b: &mut BytesMut| -> anyhow::Result<()> {
            b.extend_from_slice(plain);
            Ok(())
        };
        match codec {
            Codec::None => out.extend_from_slice(plain),
            Codec::Gzip => Gzip::compress(&mut out, fill).unwrap(),
            Codec::Snappy => Snappy::compress(&mut out, fill).unwrap(),
            Codec::Lz4 => Lz4::compress(&mut out, fill).unwrap(),
            Codec::Zstd => Zstd::compress(&mut out, fill).unwrap(),
        }
        out.freeze()
    }

    const ALL: [Codec; 5] = [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    #[test]
    fn every_codec_round_trips_within_the_cap_and_fails_past_it() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for codec in ALL {
            let packed = compress(codec, &plain);
            assert_eq!(&decompress(codec, packed.clone(), plain.len()).unwrap()[..], &plain[..], "{codec:?}");
            if codec != Codec::None {
                let err = decompress(codec, packed, plain.len() - 1).unwrap_err();
                assert!(matches!(err, BatchError::Corrupt(_)), "{codec:?}: {err}");
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap_without_allocating_its_claim() {
        // 64 MiB of zeros packs into a few KiB; a 1 MiB cap must stop it early.
        let zeros = vec![0u8; 64 << 20];
        for codec in [Codec::Gzip, Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &zeros);
            assert!(packed.len() < 1 << 20, "{codec:?}: {}", packed.len());
            let mut r = decoder(codec, packed, 1 << 20).unwrap();
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0usize;
            let err = loop {
                match r.read(&mut sink) {
                    Ok(0) => panic!("{codec:?}: ended at {total} bytes"),
                    Ok(n) => total += n,
                    Err(e) => break e,
                }
            };
            assert!(total <= 1 << 20, "{codec:?}: read {total}");
            assert!(err.to_string().contains("limit"), "{codec:?}: {err}");
        }
    }

    #[test]
    fn bytes_after_a_gzip_member_or_an_lz4_frame_are_refused() {
        let plain = b"some records".repeat(100);
        for codec in [Codec::Gzip, Codec::Lz4] {
            let one = compress(codec, &plain);
            assert_eq!(&decompress(codec, one.clone(), 1 << 20).unwrap()[..], &plain[..], "{codec:?}");
            let trailing = Bytes::from([&one[..], &[1, 2, 3, 4, 5]].concat());
            assert!(decompress(codec, trailing, 1 << 20).is_err(), "{codec:?}: trailing bytes");
            let two = Bytes::from([&one[..], &one[..]].concat());
            assert!(decompress(codec, two, 1 << 20).is_err(), "{codec:?}: two streams");
        }
    }

    #[test]
    fn garbage_and_lying_snappy_lengths_are_errors() {
        let junk = Bytes::from_static(&[0x1f, 0x8b, 8, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            assert!(decompress(codec, junk.clone(), 1 << 20).is_err(), "{codec:?}");
        }
        // A raw snappy block whose preamble claims 100 MB from 6 bytes.
        let liar = Bytes::from_static(&[0x80, 0xc2, 0xd7, 0x2f, 0x00, 0x00]);
        let err = decompress(Codec::Snappy, liar, MAX_DECOMPRESSED_BATCH_BYTES).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
        assert!(Codec::from_attributes(7).is_err());
        assert_eq!(Codec::from_attributes(0x14).unwrap(), Codec::Zstd);
    }
}
