//! Cost of checking a produced batch before it is stored (issue 13): the header, size and CRC32C
//! pass (`produced_batch`, what produce did before) against that pass plus the walk over every
//! record (`validate::check_batch`), for an uncompressed 1 MB batch (1000 records of 1000 bytes), a
//! small one (16 × 1 KiB) and the 1 MB batch compressed with lz4 and zstd (values are
//! half-random text, so the codecs have work to do). Throughput is in batch bytes as sent.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice::record::batch::{produced_batch, HEADER_LEN};
use sluice::record::codec::{self, Codec, MAX_DECOMPRESSED_BATCH_BYTES};
use sluice::record::validate::{check_batch, Rules};

const MAX_BATCH_BYTES: usize = 16 << 20;

fn batch(records: usize, value_bytes: usize, compression: Compression) -> Bytes {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let recs: Vec<Record> = (0..records)
        .map(|i| {
            let value: Vec<u8> = (0..value_bytes)
                .map(|j| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if j % 2 == 0 {
                        b'a' + (seed % 26) as u8
                    } else {
                        b'x'
                    }
                })
                .collect();
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(value)),
                headers: Default::default(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &recs, &RecordEncodeOptions { version: 2, compression }).expect("encode");
    buf.freeze()
}

fn validate(c: &mut Criterion) {
    let cases = [
        ("plain-1000x1000B", batch(1000, 1000, Compression::None)),
        ("plain-16x1KiB", batch(16, 1024, Compression::None)),
        ("lz4-1000x1000B", batch(1000, 1000, Compression::Lz4)),
        ("zstd-1000x1000B", batch(1000, 1000, Compression::Zstd)),
    ];
    let mut g = c.benchmark_group("validate");
    for (name, b) in &cases {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("{name}/header+crc"), |bench| {
            bench.iter(|| produced_batch(b, MAX_BATCH_BYTES).expect("valid"))
        });
        let codec = Codec::from_attributes(i16::from(b[22])).expect("codec");
        if codec != Codec::None {
            g.bench_function(format!("{name}/decompress-only"), |bench| {
                bench
                    .iter(|| codec::decompress(codec, b.slice(HEADER_LEN..), MAX_DECOMPRESSED_BATCH_BYTES).expect("ok"))
            });
        }
        g.bench_function(format!("{name}/header+crc+records"), |bench| {
            bench.iter(|| {
                let (info, bytes) = produced_batch(b, MAX_BATCH_BYTES).expect("valid");
                check_batch(&bytes, &info, Rules::default()).expect("valid records");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
