//! Idempotent producers (issue 5) against the real `sluice serve` binary.
//!
//! Raw protocol first (sluice-client at explicit versions, so every field is ours to choose): a
//! retried batch is acknowledged with its original base offset and written once, also while the
//! original is still in flight; a sequence gap answers OUT_OF_ORDER_SEQUENCE_NUMBER (45) and an older
//! epoch INVALID_PRODUCER_EPOCH (47), both writing nothing; a new epoch starts at sequence 0; sequences
//! are per partition and pipelined batches keep their order; the producer state survives a clean
//! restart, a kill -9, and a kill -9 after a clean restart (snapshot plus the batches after it); and
//! what InitProducerId and CreateTopics answer while the broker is still starting is kept (no producer
//! id handed out twice, no topic lost). Then librdkafka's idempotent producer
//! (`enable.idempotence=true`, five requests in flight, acks=all) while the broker is killed with
//! SIGKILL and restarted three times: every acknowledged record is in the log exactly once at the
//! offset it was acknowledged with, no record is there twice, and each partition holds its records in
//! send order.
//!
//! Each test starts its own broker and uses its own topic, and (except the start-up test) sends its
//! first request once every core of the broker is ready; waits poll for a condition up to a deadline.
//! The whole file takes about ten seconds.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_executor::block_on;
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use common::wire::RawClient;
use common::{drop_within, now_ms, unique_topic, wire, Broker, BrokerOptions};
use sluice_client::requests::{self, NewTopic};
use sluice_client::BatchBuilder;

/// Read/write timeout of a raw connection: one request's answer must come within it.
const RAW_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// `timeout_ms` of the raw Produce requests (acks=all).
const PRODUCE_TIMEOUT_MS: i32 = 10_000;
/// Largest Fetch answer the raw reader asks for, per request and per partition.
const FETCH_MAX_BYTES: i32 = 1 << 20;
/// Kafka error codes asserted here.
const ERROR_NONE: i16 = 0;
const ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const ERROR_INVALID_PRODUCER_EPOCH: i16 = 47;
/// Produce, ListOffsets, Fetch, CreateTopics and InitProducerId versions the raw client speaks.
const PRODUCE_VERSION: i16 = 9;
const LIST_OFFSETS_VERSION: i16 = 7;
const FETCH_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// Start-up test: partitions on core 0 (slow to open at start-up, so core 1 answers first) and rounds.
const STARTUP_CORE0_PARTITIONS: i32 = 200;
const STARTUP_ROUNDS: usize = 6;
/// Batches a producer may have in flight per partition (Kafka's limit with idempotence), and rounds of
/// them in the pipelining test.
const MAX_IN_FLIGHT_BATCHES: usize = 5;
const PIPELINE_ROUNDS: usize = 20;
/// Records per batch in the raw tests.
const RAW_BATCH_RECORDS: usize = 3;

/// librdkafka test: partitions of the topic, records in total, kills while producing.
const CHAOS_PARTITIONS: i32 = 3;
const CHAOS_RECORDS: u64 = 4_000;
const CHAOS_KILLS: u64 = 3;
/// Records the producer thread lets librdkafka hold unacknowledged at once.
const CHAOS_WINDOW_RECORDS: usize = 200;
/// librdkafka batch size: small, so that many requests are in flight when the broker dies.
const CHAOS_BATCH_RECORDS: &str = "20";
/// librdkafka gives up on a record this long after it was enqueued: far longer than a restart.
const CHAOS_MESSAGE_TIMEOUT_MS: &str = "30000";
/// How often librdkafka reports statistics (producer id and epoch changes) to the test.
const CHAOS_STATISTICS_INTERVAL_MS: &str = "100";
/// The whole produce-and-kill phase of the librdkafka test must end within this.
const CHAOS_PRODUCE_DEADLINE: Duration = Duration::from_secs(45);
/// How long a consumer may take to read the whole topic back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);
/// librdkafka's poll granularity while reading back.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Limit of one librdkafka metadata call (watermarks).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a librdkafka client's destructor may take.
const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------------
// Raw protocol client.

/// The raw client (common::wire::RawClient: sluice-client at explicit versions) and what these tests
/// do with it.
impl RawClient {
    fn connect(broker: &Broker) -> RawClient {
        RawClient::open(broker.addr(), "sluice-idempotence-test", RAW_IO_TIMEOUT, wire::MAX_RESPONSE_FRAME_BYTES)
    }

    fn create_topic(&mut self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let spec = NewTopic { name: topic, partitions, replication_factor: -1, configs };
        let response = self.call(&requests::create_topics(&[spec], PRODUCE_TIMEOUT_MS), CREATE_TOPICS_VERSION);
        for t in response.topics {
            assert_eq!(t.error_code, ERROR_NONE, "create {topic}: {:?}", t.error_message);
        }
    }

    /// A fresh producer id (InitProducerId without a transactional id), with its epoch.
    fn init_producer_id(&mut self) -> (i64, i16) {
        let request = requests::init_producer_id(60_000);
        let response = self.call(&request, INIT_PRODUCER_ID_VERSION);
        assert_eq!(response.error_code, ERROR_NONE, "InitProducerId: {response:?}");
        assert!(response.producer_id.0 >= 0, "InitProducerId handed out {response:?}");
        (response.producer_id.0, response.producer_epoch)
    }

    fn send_produce(&mut self, topic: &str, partition: i32, records: &Bytes) -> i32 {
        let request = requests::produce(topic, partition, records.clone(), -1, PRODUCE_TIMEOUT_MS);
        self.send(&request, PRODUCE_VERSION)
    }

    fn receive_produce(&mut self, correlation_id: i32) -> ProduceAnswer {
        let response = self.receive::<ProduceRequest>(correlation_id, PRODUCE_VERSION);
        let [topic] = response.responses.as_slice() else { panic!("Produce answered {response:?}") };
        let [p] = topic.partition_responses.as_slice() else { panic!("Produce answered {response:?}") };
        ProduceAnswer {
            error_code: p.error_code,
            base_offset: p.base_offset,
            message: p.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        }
    }

    /// Produce (acks=all) one batch to one partition and return the answer for that partition.
    fn produce(&mut self, topic: &str, partition: i32, records: &Bytes) -> ProduceAnswer {
        let correlation_id = self.send_produce(topic, partition, records);
        self.receive_produce(correlation_id)
    }

    /// ListOffsets latest (timestamp -1) for one partition.
    fn list_offsets_latest(&mut self, topic: &str, partition: i32) -> ListOffsetsPartitionResponse {
        let request = requests::list_offsets(topic, &[partition], requests::LATEST_TIMESTAMP);
        let response = self.call(&request, LIST_OFFSETS_VERSION);
        let [t] = response.topics.as_slice() else { panic!("ListOffsets answered {response:?}") };
        let [p] = t.partitions.as_slice() else { panic!("ListOffsets answered {response:?}") };
        p.clone()
    }

    /// The high watermark (ListOffsets latest).
    fn high_watermark(&mut self, topic: &str, partition: i32) -> i64 {
        let p = self.list_offsets_latest(topic, partition);
        assert_eq!(p.error_code, ERROR_NONE, "ListOffsets {topic}/{partition}: {p:?}");
        p.offset
    }

    /// Every record of the partition below the high watermark, by Fetch from offset 0.
    fn fetch_all(&mut self, topic: &str, partition: i32) -> Vec<StoredRecord> {
        let mut out: Vec<StoredRecord> = Vec::new();
        loop {
            let from = out.last().map_or(0, |r| r.offset + 1);
            let request = requests::fetch(topic, &[(partition, from)], FETCH_MAX_BYTES)
                .with_max_wait_ms(0)
                .with_min_bytes(0)
                .with_max_bytes(FETCH_MAX_BYTES);
            let response = self.call(&request, FETCH_VERSION);
            assert_eq!(response.error_code, ERROR_NONE, "Fetch {topic}/{partition}: {response:?}");
            let [t] = response.responses.as_slice() else { panic!("Fetch answered {response:?}") };
            let [p] = t.partitions.as_slice() else { panic!("Fetch answered {response:?}") };
            assert_eq!(p.error_code, ERROR_NONE, "Fetch {topic}/{partition} from {from}: {p:?}");
            let before = out.len();
            let mut records = p.records.clone().unwrap_or_default();
            while records.has_remaining() {
                let set = RecordBatchDecoder::decode(&mut records)
                    .unwrap_or_else(|e| panic!("decode fetched batch of {topic}/{partition}: {e:#}"));
                for r in set.records.into_iter().filter(|r| r.offset >= from) {
                    out.push(StoredRecord {
                        offset: r.offset,
                        producer_id: r.producer_id,
                        producer_epoch: r.producer_epoch,
                        sequence: r.sequence,
                        value: r.value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default(),
                    });
                }
            }
            if out.last().is_none_or(|r| r.offset + 1 >= p.high_watermark) {
                return out;
            }
            assert!(
                out.len() > before,
                "Fetch {topic}/{partition} from {from} returned nothing below {}",
                p.high_watermark
            );
        }
    }
}

/// A Produce answer for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProduceAnswer {
    error_code: i16,
    base_offset: i64,
    message: String,
}

/// A record as read back, with the producer fields of its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredRecord {
    offset: i64,
    producer_id: i64,
    producer_epoch: i16,
    sequence: i32,
    value: String,
}

/// An idempotent producer id with the epoch its batches carry.
#[derive(Debug, Clone, Copy)]
struct IdempotentProducer {
    id: i64,
    epoch: i16,
}

impl IdempotentProducer {
    /// A RecordBatch v2 of `RAW_BATCH_RECORDS` records with sequences `base_sequence..`, each record's
    /// value naming its producer, epoch and sequence (so a read-back shows where it came from).
    fn batch(&self, base_sequence: i32) -> Bytes {
        let epoch = self.epoch;
        let timestamp = now_ms();
        let mut builder = BatchBuilder::new(Compression::None).idempotent(self.id, epoch, base_sequence);
        for i in 0..RAW_BATCH_RECORDS {
            let sequence = base_sequence + i32::try_from(i).expect("small batch");
            builder.push(timestamp, None, Some(Bytes::from(record_value(self.id, epoch, sequence))));
        }
        let batch = builder.build().expect("encode record batch");
        let infos = RecordBatchDecoder::decode_batch_info(&mut batch.clone()).expect("decode own batch header");
        assert!(
            infos.len() == 1 && infos[0].base_sequence == base_sequence && infos[0].producer_epoch == epoch,
            "the encoder made {infos:?}, not one batch at sequence {base_sequence}"
        );
        batch
    }
}

fn record_value(producer_id: i64, epoch: i16, sequence: i32) -> String {
    format!("pid {producer_id} epoch {epoch} seq {sequence}")
}

/// Sequence of the first record of batch `index` of a producer that sends `RAW_BATCH_RECORDS` a batch.
fn batch_sequence(index: usize) -> i32 {
    i32::try_from(index * RAW_BATCH_RECORDS).expect("small sequence")
}

/// Asserts that `answer` is a success at `expected_offset` (for a first write: any offset if `None`) and
/// returns its base offset.
fn assert_written(answer: &ProduceAnswer, expected_offset: Option<i64>, what: &str) -> i64 {
    assert_eq!(answer.error_code, ERROR_NONE, "{what}: {answer:?}");
    if let Some(offset) = expected_offset {
        assert_eq!(answer.base_offset, offset, "{what}: base offset");
    }
    answer.base_offset
}

/// Asserts that the partition holds exactly `expected` (producer and epoch, first sequence) batches, in
/// that order, at dense offsets from 0: nothing written twice, nothing refused written.
fn assert_log(client: &mut RawClient, topic: &str, partition: i32, expected: &[(IdempotentProducer, i32)]) {
    let want: Vec<(i64, i16, i32, String)> = expected
        .iter()
        .flat_map(|&(producer, base_sequence)| {
            (0..RAW_BATCH_RECORDS).map(move |i| {
                let sequence = base_sequence + i32::try_from(i).expect("small batch");
                (producer.id, producer.epoch, sequence, record_value(producer.id, producer.epoch, sequence))
            })
        })
        .collect();
    let hw = client.high_watermark(topic, partition);
    assert_eq!(hw, i64::try_from(want.len()).expect("count"), "{topic}/{partition}: high watermark");
    let stored = client.fetch_all(topic, partition);
    let got: Vec<(i64, i16, i32, String)> =
        stored.iter().map(|r| (r.producer_id, r.producer_epoch, r.sequence, r.value.clone())).collect();
    assert_eq!(got, want, "{topic}/{partition}: records in the log");
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.offset, i64::try_from(i).expect("index"), "{topic}/{partition}: offsets dense from 0");
    }
}

/// A broker with a one-partition topic (with `configs`) and a connection to it.
fn raw_setup(prefix: &str, configs: &[(&str, &str)]) -> (Broker, RawClient, String) {
    let mut broker = Broker::start();
    broker.wait_until_all_cores_listening();
    let mut client = RawClient::connect(&broker);
    let topic = unique_topic(prefix);
    client.create_topic(&topic, 1, configs);
    (broker, client, topic)
}

// ---------------------------------------------------------------------------------------------------
// Raw protocol tests.

/// (a) The same batch (same producer id, epoch, base sequence and count) sent again is acknowledged
/// with the base offset of the first write and not written again: as a retry after the answer, as a
/// retry of an older batch still among the last five, and pipelined right behind the original on the
/// same connection (the topic fsyncs each batch before answering, so the duplicate most likely arrives
/// while the original is still being written and must wait for its outcome).
#[test]
fn retried_batch_gets_its_original_offset_and_is_written_once() {
    let (_broker, mut client, topic) = raw_setup("idem-dup", &[("flush.messages", "1")]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };

    let first = assert_written(&client.produce(&topic, 0, &producer.batch(0)), Some(0), "batch 0");
    let hw = client.high_watermark(&topic, 0);
    assert_eq!(hw, first + RAW_BATCH_RECORDS as i64, "high watermark after batch 0");
    let again = client.produce(&topic, 0, &producer.batch(0));
    assert_written(&again, Some(first), "batch 0 retried");
    assert_eq!(client.high_watermark(&topic, 0), hw, "a retried batch must not move the high watermark");

    // Four more batches: batch 1 is then the oldest of the last five and must still be recognised.
    let mut offsets = vec![first];
    for index in 1..5 {
        let answer = client.produce(&topic, 0, &producer.batch(batch_sequence(index)));
        offsets.push(assert_written(&answer, Some(first + (index * RAW_BATCH_RECORDS) as i64), "next batch"));
    }
    for index in [1, 3, 4] {
        let answer = client.produce(&topic, 0, &producer.batch(batch_sequence(index)));
        assert_written(&answer, Some(offsets[index]), &format!("retry of batch {index} (among the last five)"));
    }

    // Original and duplicate pipelined: both answered with the same offset, one write.
    let next = producer.batch(batch_sequence(5));
    let original = client.send_produce(&topic, 0, &next);
    let duplicate = client.send_produce(&topic, 0, &next);
    let original = client.receive_produce(original);
    let duplicate = client.receive_produce(duplicate);
    let offset = assert_written(&original, Some(first + (5 * RAW_BATCH_RECORDS) as i64), "batch 5");
    assert_written(&duplicate, Some(offset), "batch 5 duplicated while in flight");

    // Batch 0 is now six batches back: no longer remembered, so its retry is out of sequence (as in Kafka).
    let forgotten = client.produce(&topic, 0, &producer.batch(0));
    assert_eq!(forgotten.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "retry of batch 0 after six: {forgotten:?}");

    let expected: Vec<_> = (0..6).map(|index| (producer, batch_sequence(index))).collect();
    assert_log(&mut client, &topic, 0, &expected);
}

/// Sequences are per (producer, partition), and pipelined batches keep their request order: one producer
/// sends `MAX_IN_FLIGHT_BATCHES` batches to each of two partitions (one of them owned by the other core)
/// without waiting for answers, round after round; every batch is accepted at the next offset of its
/// partition. Then the last round is sent again, pipelined: every batch is a duplicate with its offset.
#[test]
fn pipelined_batches_keep_request_order_per_partition() {
    let mut broker = Broker::start();
    broker.wait_until_all_cores_listening();
    let mut client = RawClient::connect(&broker);
    let topic = unique_topic("idem-pipeline");
    client.create_topic(&topic, 2, &[]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };

    let mut offsets: BTreeMap<(i32, usize), i64> = BTreeMap::new();
    let send_round = |client: &mut RawClient, round: usize| -> Vec<(i32, usize, ProduceAnswer)> {
        let batches: Vec<(i32, usize)> = (0..MAX_IN_FLIGHT_BATCHES)
            .flat_map(|i| [0, 1].map(|partition| (partition, round * MAX_IN_FLIGHT_BATCHES + i)))
            .collect();
        let sent: Vec<(i32, usize, i32)> = batches
            .iter()
            .map(|&(partition, index)| {
                (partition, index, client.send_produce(&topic, partition, &producer.batch(batch_sequence(index))))
            })
            .collect();
        sent.into_iter()
            .map(|(partition, index, correlation_id)| (partition, index, client.receive_produce(correlation_id)))
            .collect()
    };
    for round in 0..PIPELINE_ROUNDS {
        for (partition, index, answer) in send_round(&mut client, round) {
            let expected = (index * RAW_BATCH_RECORDS) as i64;
            assert_written(&answer, Some(expected), &format!("{topic}/{partition} pipelined batch {index}"));
            offsets.insert((partition, index), expected);
        }
    }
    for (partition, index, answer) in send_round(&mut client, PIPELINE_ROUNDS - 1) {
        assert_written(
            &answer,
            Some(offsets[&(partition, index)]),
            &format!("{topic}/{partition} batch {index} again"),
        );
    }
    let expected: Vec<_> =
        (0..PIPELINE_ROUNDS * MAX_IN_FLIGHT_BATCHES).map(|index| (producer, batch_sequence(index))).collect();
    for partition in [0, 1] {
        assert_log(&mut client, &topic, partition, &expected);
    }
}

/// (b) A batch whose first sequence skips ahead of the next expected one answers
/// OUT_OF_ORDER_SEQUENCE_NUMBER and nothing of it is written; the expected sequence still works after.
#[test]
fn sequence_gap_is_out_of_order_and_writes_nothing() {
    let (_broker, mut client, topic) = raw_setup("idem-gap", &[]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };

    assert_written(&client.produce(&topic, 0, &producer.batch(0)), Some(0), "batch 0");
    let skipping = client.produce(&topic, 0, &producer.batch(batch_sequence(1) + 1));
    assert_eq!(skipping.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence gap: {skipping:?}");
    let far = client.produce(&topic, 0, &producer.batch(batch_sequence(7)));
    assert_eq!(far.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence far ahead: {far:?}");
    // Overlapping the last batch without being it (a different range) is no duplicate either.
    let overlapping = client.produce(&topic, 0, &producer.batch(1));
    assert_eq!(overlapping.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "overlapping range: {overlapping:?}");
    assert_eq!(client.high_watermark(&topic, 0), RAW_BATCH_RECORDS as i64, "refused batches moved the high watermark");

    let next = client.produce(&topic, 0, &producer.batch(batch_sequence(1)));
    assert_written(&next, Some(RAW_BATCH_RECORDS as i64), "the expected sequence after the refusals");
    assert_log(&mut client, &topic, 0, &[(producer, 0), (producer, batch_sequence(1))]);
}

/// (c) Once a producer id wrote with epoch 1, a batch with epoch 0 answers INVALID_PRODUCER_EPOCH and
/// writes nothing, whether it is a new sequence or a retry of a batch epoch 0 wrote before.
#[test]
fn older_epoch_is_invalid_producer_epoch_and_writes_nothing() {
    let (_broker, mut client, topic) = raw_setup("idem-epoch", &[]);
    let (id, epoch) = client.init_producer_id();
    assert_eq!(epoch, 0, "InitProducerId for a new idempotent producer");
    let producer = IdempotentProducer { id, epoch: 0 };
    let bumped = IdempotentProducer { id, epoch: 1 };

    assert_written(&client.produce(&topic, 0, &producer.batch(0)), Some(0), "epoch 0 batch 0");
    assert_written(&client.produce(&topic, 0, &bumped.batch(0)), Some(RAW_BATCH_RECORDS as i64), "epoch 1 batch 0");
    let stale_next = client.produce(&topic, 0, &producer.batch(batch_sequence(1)));
    assert_eq!(stale_next.error_code, ERROR_INVALID_PRODUCER_EPOCH, "epoch 0 after epoch 1: {stale_next:?}");
    let stale_retry = client.produce(&topic, 0, &producer.batch(0));
    assert_eq!(stale_retry.error_code, ERROR_INVALID_PRODUCER_EPOCH, "epoch 0 retry after epoch 1: {stale_retry:?}");
    assert_eq!(client.high_watermark(&topic, 0), 2 * RAW_BATCH_RECORDS as i64, "fenced batches were written");

    assert_written(
        &client.produce(&topic, 0, &bumped.batch(batch_sequence(1))),
        Some(2 * RAW_BATCH_RECORDS as i64),
        "epoch 1 goes on",
    );
    assert_log(&mut client, &topic, 0, &[(producer, 0), (bumped, 0), (bumped, batch_sequence(1))]);
}

/// (d) A new epoch must start at sequence 0: continuing the old epoch's sequence under the new epoch
/// answers OUT_OF_ORDER_SEQUENCE_NUMBER and writes nothing, and the refusal leaves the old epoch
/// current (the old epoch still continues; the new one then starts at 0).
#[test]
fn new_epoch_must_start_at_sequence_zero() {
    let (_broker, mut client, topic) = raw_setup("idem-epoch-seq", &[]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };
    let bumped = IdempotentProducer { id, epoch: epoch + 1 };

    assert_written(&client.produce(&topic, 0, &producer.batch(0)), Some(0), "batch 0");
    let continued = client.produce(&topic, 0, &bumped.batch(batch_sequence(1)));
    assert_eq!(continued.error_code, ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, "new epoch at sequence 3: {continued:?}");
    assert_eq!(client.high_watermark(&topic, 0), RAW_BATCH_RECORDS as i64, "a refused batch was written");

    // Kafka never changes producer state for a refused batch: epoch 0 is still the current one.
    let old_goes_on = client.produce(&topic, 0, &producer.batch(batch_sequence(1)));
    assert_written(&old_goes_on, Some(RAW_BATCH_RECORDS as i64), "the old epoch after a refused bump");
    let restart = client.produce(&topic, 0, &bumped.batch(0));
    assert_written(&restart, Some(2 * RAW_BATCH_RECORDS as i64), "new epoch at sequence 0");
    assert_log(&mut client, &topic, 0, &[(producer, 0), (producer, batch_sequence(1)), (bumped, 0)]);
}

/// Starts the broker again and connects once all its cores are ready (see
/// `producer_ids_and_topics_created_during_startup_are_kept` for what happens before).
fn restart_and_connect(broker: &mut Broker) -> RawClient {
    broker.restart();
    broker.wait_until_all_cores_listening();
    RawClient::connect(broker)
}

/// Writes batches `from..to` of `producer` and returns their base offsets.
fn write_batches(
    client: &mut RawClient,
    topic: &str,
    producer: IdempotentProducer,
    batches: std::ops::Range<usize>,
) -> Vec<i64> {
    batches
        .map(|index| {
            let answer = client.produce(topic, 0, &producer.batch(batch_sequence(index)));
            assert_written(&answer, None, &format!("batch {index}"))
        })
        .collect()
}

/// After the broker came back: the last batch and an older one still among the last five are
/// recognised (original offsets, high watermark unchanged), and the next sequence is accepted.
fn assert_state_survived(
    client: &mut RawClient,
    topic: &str,
    producer: IdempotentProducer,
    offsets: &[i64],
    how: &str,
) -> i64 {
    let hw = client.high_watermark(topic, 0);
    let last = offsets.len() - 1;
    assert_eq!(hw, offsets[last] + RAW_BATCH_RECORDS as i64, "{how}: high watermark after the restart");
    for index in [last, last - 3] {
        let retry = client.produce(topic, 0, &producer.batch(batch_sequence(index)));
        assert_written(&retry, Some(offsets[index]), &format!("{how}: retry of batch {index}"));
    }
    assert_eq!(client.high_watermark(topic, 0), hw, "{how}: a retry was written again");
    let next = client.produce(topic, 0, &producer.batch(batch_sequence(offsets.len())));
    assert_written(&next, Some(hw), &format!("{how}: the next sequence"))
}

/// (e) Producer state survives a clean restart (SIGTERM; rebuilt from the snapshot written on close)
/// and then a kill -9 (rebuilt from that snapshot plus the batches written after it): each time, a retry
/// of the last batch is still a duplicate and the next sequence is accepted.
#[test]
fn producer_state_survives_clean_restart_then_kill_9() {
    let (mut broker, mut client, topic) = raw_setup("idem-restart", &[]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };

    let mut offsets = write_batches(&mut client, &topic, producer, 0..6);
    drop(client);
    broker.terminate();
    let mut client = restart_and_connect(&mut broker);
    offsets.push(assert_state_survived(&mut client, &topic, producer, &offsets, "SIGTERM + start"));

    let more = offsets.len();
    offsets.extend(write_batches(&mut client, &topic, producer, more..more + 2));
    drop(client);
    broker.kill9();
    let mut client = restart_and_connect(&mut broker);
    let how = "clean restart, more batches, kill -9";
    offsets.push(assert_state_survived(&mut client, &topic, producer, &offsets, how));

    let expected: Vec<_> = (0..offsets.len()).map(|index| (producer, batch_sequence(index))).collect();
    assert_log(&mut client, &topic, 0, &expected);
}

/// (e) Producer state survives kill -9 without any snapshot (rebuilt from the log alone), twice in a
/// row: a retry of the last batch is still a duplicate and the next sequence is accepted.
#[test]
fn producer_state_survives_kill_9_from_the_log_alone() {
    let (mut broker, mut client, topic) = raw_setup("idem-kill9", &[]);
    let (id, epoch) = client.init_producer_id();
    let producer = IdempotentProducer { id, epoch };

    let mut offsets = write_batches(&mut client, &topic, producer, 0..7);
    for round in 1..=2 {
        drop(client);
        broker.kill9();
        client = restart_and_connect(&mut broker);
        offsets.push(assert_state_survived(&mut client, &topic, producer, &offsets, &format!("kill -9 #{round}")));
    }
    let expected: Vec<_> = (0..offsets.len()).map(|index| (producer, batch_sequence(index))).collect();
    assert_log(&mut client, &topic, 0, &expected);
}

/// InitProducerId reserves its blocks of ids in the catalog, as CreateTopics records topics there; both
/// must hold for requests that arrive while the broker is still starting. The broker grows from one
/// core to two, so core 0 (the catalog core) still opens its many partitions at each start while core 1
/// already answers. Each round: restart, then at once InitProducerId, CreateTopics, InitProducerId and an
/// idempotent produce to the new topic. No producer id is handed out twice, the produce is accepted,
/// and after a last restart every topic is still there with its records.
#[test]
fn producer_ids_and_topics_created_during_startup_are_kept() {
    let mut broker = Broker::start_with(BrokerOptions { cores: 1, config_toml: None });
    broker.wait_until_all_cores_listening();
    let mut client = RawClient::connect(&broker);
    client.create_topic(&unique_topic("idem-core0"), STARTUP_CORE0_PARTITIONS, &[]);
    let mut handed_out: BTreeMap<i64, String> = BTreeMap::new();
    let mut new_id = |client: &mut RawClient, when: String| -> IdempotentProducer {
        let (id, epoch) = client.init_producer_id();
        if let Some(before) = handed_out.insert(id, when.clone()) {
            panic!("InitProducerId handed out producer id {id} twice: {before}, and {when}");
        }
        IdempotentProducer { id, epoch }
    };
    new_id(&mut client, "before the restarts".into());
    drop(client);
    broker.terminate();
    broker.set_cores_for_restart(2);

    let mut topics = Vec::new();
    for round in 0..STARTUP_ROUNDS {
        broker.restart(); // Returns once any one core answers.
        let mut client = RawClient::connect(&broker);
        new_id(&mut client, format!("first InitProducerId after restart {round}"));
        let topic = unique_topic("idem-startup");
        client.create_topic(&topic, 1, &[]);
        let producer = new_id(&mut client, format!("InitProducerId after CreateTopics, restart {round}"));
        let answer = client.produce(&topic, 0, &producer.batch(0));
        assert_written(&answer, Some(0), &format!("first batch to {topic}, created right after restart {round}"));
        topics.push((topic, producer));
        drop(client);
        broker.terminate();
    }
    let mut client = restart_and_connect(&mut broker);
    for (topic, producer) in &topics {
        assert_log(&mut client, topic, 0, &[(*producer, 0)]);
    }
}

// ---------------------------------------------------------------------------------------------------
// librdkafka's idempotent producer while the broker is killed.

/// Keeps what librdkafka reports: errors (transport errors while the broker is down are expected), the
/// batches it retries because they were in flight when the broker died (its `msg` debug log: "...
/// encountered error: ... MsgPossiblyPersisted"), and the latest idempotence statistics (did it have to
/// get a new producer id or epoch?).
#[derive(Clone, Default)]
struct RecordingContext {
    errors: Arc<Mutex<Vec<String>>>,
    possibly_persisted: Arc<Mutex<Vec<String>>>,
    idempotence: Arc<Mutex<Option<IdempotenceStats>>>,
}

/// The idempotence part of librdkafka's statistics.
#[derive(Clone, Debug)]
struct IdempotenceStats {
    producer_id_assignments: i64,
    producer_id: i64,
    producer_epoch: i64,
}

impl ClientContext for RecordingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.lock().expect("error list").push(format!("{error}: {reason}"));
    }

    fn log(&self, _level: RDKafkaLogLevel, _facility: &str, message: &str) {
        if message.contains("encountered error") && message.contains("MsgPossiblyPersisted") {
            self.possibly_persisted.lock().expect("retried batches").push(message.to_string());
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(eos) = statistics.eos else { return };
        *self.idempotence.lock().expect("idempotence stats") = Some(IdempotenceStats {
            producer_id_assignments: eos.epoch_cnt,
            producer_id: eos.producer_id,
            producer_epoch: eos.producer_epoch,
        });
    }
}

/// Counters the producer thread updates and the killing thread reads.
#[derive(Default)]
struct ChaosProgress {
    /// Records handed to librdkafka.
    sent: AtomicU64,
    /// Records acknowledged.
    acked: AtomicU64,
}

/// Record `n` of the chaos test: partition `n % CHAOS_PARTITIONS`, value and key naming `n`.
fn chaos_partition(n: u64) -> i32 {
    i32::try_from(n % CHAOS_PARTITIONS as u64).expect("partition")
}

fn chaos_value(n: u64) -> String {
    format!("chaos-{n:08}")
}

fn parse_chaos_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.strip_prefix("chaos-")?.parse().ok()
}

/// What the producer thread saw.
struct ChaosOutcome {
    /// (record, partition, offset) of every acknowledged record.
    acked: Vec<(u64, i32, i64)>,
    /// (record, delivery error) of every record librdkafka gave up on.
    failed: Vec<(u64, String)>,
    /// Records handed to librdkafka.
    sent: u64,
    /// librdkafka's fatal error, if it raised one.
    fatal: Option<String>,
    /// What librdkafka reported through its error callback.
    errors: Vec<String>,
    /// librdkafka's log lines of batches it retried because they were in flight at a kill.
    possibly_persisted: Vec<String>,
    idempotence: Option<IdempotenceStats>,
}

fn settle(delivery: DeliveryFuture) -> Result<(i32, i64), String> {
    match block_on(delivery) {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("delivery future cancelled".to_string()),
    }
}

/// Produces `CHAOS_RECORDS` records with at most `CHAOS_WINDOW_RECORDS` unacknowledged, counting in
/// `progress` and sending a wake-up on `acked_tx` after each acknowledgement.
fn chaos_producer(
    bootstrap: String,
    topic: String,
    progress: Arc<ChaosProgress>,
    acked_tx: mpsc::Sender<()>,
) -> ChaosOutcome {
    let context = RecordingContext::default();
    let producer: FutureProducer<RecordingContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("client.id", "sluice-idempotence-test")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set("batch.num.messages", CHAOS_BATCH_RECORDS)
        .set("message.timeout.ms", CHAOS_MESSAGE_TIMEOUT_MS)
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("statistics.interval.ms", CHAOS_STATISTICS_INTERVAL_MS)
        // Per-batch outcomes, for the count of batches retried after a kill (see `RecordingContext`).
        .set("debug", "msg")
        .set_log_level(RDKafkaLogLevel::Debug)
        .create_with_context(context.clone())
        .expect("create idempotent rdkafka producer");
    let mut outcome = ChaosOutcome {
        acked: Vec::new(),
        failed: Vec::new(),
        sent: 0,
        fatal: None,
        errors: Vec::new(),
        possibly_persisted: Vec::new(),
        idempotence: None,
    };
    let mut in_flight: VecDeque<(u64, DeliveryFuture)> = VecDeque::new();
    let settle_oldest = |in_flight: &mut VecDeque<(u64, DeliveryFuture)>, outcome: &mut ChaosOutcome| {
        let (n, delivery) = in_flight.pop_front().expect("something in flight");
        match settle(delivery) {
            Ok((partition, offset)) => {
                outcome.acked.push((n, partition, offset));
                progress.acked.fetch_add(1, Ordering::SeqCst);
                let _ = acked_tx.send(());
            }
            Err(e) => outcome.failed.push((n, e)),
        }
    };
    for n in 0..CHAOS_RECORDS {
        if producer.client().fatal_error().is_some() {
            break;
        }
        let value = chaos_value(n);
        let record = FutureRecord::to(&topic).partition(chaos_partition(n)).key(&value).payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back((n, delivery)),
            Err((e, _)) => {
                outcome.failed.push((n, format!("enqueue: {e}")));
                break;
            }
        }
        outcome.sent = n + 1;
        progress.sent.store(outcome.sent, Ordering::SeqCst);
        while in_flight.len() >= CHAOS_WINDOW_RECORDS {
            settle_oldest(&mut in_flight, &mut outcome);
        }
    }
    while !in_flight.is_empty() {
        settle_oldest(&mut in_flight, &mut outcome);
    }
    outcome.fatal = producer.client().fatal_error().map(|(code, text)| format!("{code:?}: {text}"));
    outcome.errors = context.errors.lock().expect("error list").clone();
    outcome.possibly_persisted = context.possibly_persisted.lock().expect("retried batches").clone();
    outcome.idempotence = context.idempotence.lock().expect("idempotence stats").clone();
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "idempotent rdkafka producer");
    outcome
}

/// Reads every partition of `topic` from offset 0 up to its high watermark: partition → records by
/// offset, as (offset, record number or `None` for a value that is no record of this test).
fn read_back(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<(i64, Option<u64>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-idempotence-test")
        // Required by librdkafka's assign(); no group API is used.
        .set("group.id", format!("sluice-test-unused-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("check.crcs", "true")
        .create()
        .expect("create rdkafka consumer");
    let mut goal = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..CHAOS_PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, CLIENT_CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
        assert_eq!(low, 0, "{topic}/{p}: log start");
        goal.insert(p, high);
        assignment.add_partition_offset(topic, p, Offset::Offset(0)).expect("assignment entry");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut got: BTreeMap<i32, Vec<(i64, Option<u64>)>> = goal.keys().map(|&p| (p, Vec::new())).collect();
    let mut errors = Vec::new();
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let done = |got: &BTreeMap<i32, Vec<(i64, Option<u64>)>>| {
        goal.iter().all(|(p, &high)| got[p].last().map_or(0, |&(offset, _)| offset + 1) >= high)
    };
    while !done(&got) {
        assert!(Instant::now() < deadline, "reading {topic} back: watermarks {goal:?}, errors {errors:?}");
        match consumer.poll(POLL_INTERVAL) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => {
                let n = m.payload().and_then(parse_chaos_value);
                got.entry(m.partition()).or_default().push((m.offset(), n));
            }
            Some(Err(e)) => errors.push(e.to_string()),
        }
    }
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    got
}

/// librdkafka with `enable.idempotence=true`, five requests in flight and acks=all produces 4000
/// records (each with a unique number, to a fixed partition) while the broker is SIGKILLed and restarted
/// three times. Afterwards: librdkafka raised no fatal error; every record in the log is one of ours and
/// none is there twice; per partition the numbers strictly increase with the offset (send order); every
/// acknowledged record is at the offset it was acknowledged with; and every record was acknowledged.
#[test]
fn librdkafka_idempotent_producer_survives_repeated_kill_9() {
    let mut broker = Broker::start();
    broker.wait_until_all_cores_listening();
    let topic = unique_topic("idem-chaos");
    // fsync before each acknowledgement: a kill during the fsync leaves batches written but unanswered,
    // so librdkafka's retries of them must be recognised as duplicates.
    RawClient::connect(&broker).create_topic(&topic, CHAOS_PARTITIONS, &[("flush.messages", "1")]);

    let progress = Arc::new(ChaosProgress::default());
    let (acked_tx, acked_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<ChaosOutcome>();
    {
        let (bootstrap, topic, progress) = (broker.bootstrap(), topic.clone(), progress.clone());
        thread::spawn(move || {
            let _ = done_tx.send(chaos_producer(bootstrap, topic, progress, acked_tx));
        });
    }

    // Kill when a quarter, half, three quarters are acknowledged; (sent, acknowledged) at each kill.
    let deadline = Instant::now() + CHAOS_PRODUCE_DEADLINE;
    let mut at_kills: Vec<(u64, u64)> = Vec::new();
    for round in 1..=CHAOS_KILLS {
        let threshold = CHAOS_RECORDS * round / (CHAOS_KILLS + 1);
        let mut producer_ended = false;
        while progress.acked.load(Ordering::SeqCst) < threshold {
            match acked_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    producer_ended = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{} records acknowledged within {CHAOS_PRODUCE_DEADLINE:?}, waiting for {threshold}",
                    progress.acked.load(Ordering::SeqCst)
                ),
            }
        }
        if producer_ended {
            break; // Early end (a fatal error, say): reported below.
        }
        broker.kill9();
        at_kills.push((progress.sent.load(Ordering::SeqCst), progress.acked.load(Ordering::SeqCst)));
        broker.restart();
    }
    let outcome = done_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|_| panic!("the producer did not finish within {CHAOS_PRODUCE_DEADLINE:?}"));
    broker.assert_running();
    eprintln!(
        "librdkafka idempotent: {} sent, {} acknowledged, {} failed; (sent, acknowledged) at the kills: {at_kills:?}; \
         {} batches retried after a kill; {}",
        outcome.sent,
        outcome.acked.len(),
        outcome.failed.len(),
        outcome.possibly_persisted.len(),
        outcome.idempotence.as_ref().map_or("no idempotence statistics".to_string(), |s| format!(
            "last producer id {} epoch {}, {} producer id assignment(s)",
            s.producer_id, s.producer_epoch, s.producer_id_assignments
        ))
    );
    if let Some(fatal) = &outcome.fatal {
        panic!(
            "librdkafka raised a fatal error: {fatal}\n(sent, acknowledged) at the kills: {at_kills:?}; first failed \
             deliveries: {:?}\nclient errors: {:#?}",
            &outcome.failed[..outcome.failed.len().min(5)],
            outcome.errors
        );
    }
    assert_eq!(at_kills.len() as u64, CHAOS_KILLS, "the producer ended before every kill was done");
    for &(sent, acked) in &at_kills {
        assert!(sent > acked && acked < CHAOS_RECORDS, "a kill with nothing unacknowledged: {at_kills:?}");
    }

    let stored = read_back(&broker.bootstrap(), &topic);
    let mut seen: BTreeMap<u64, (i32, i64)> = BTreeMap::new();
    for (&p, records) in &stored {
        let mut previous: Option<u64> = None;
        for (i, &(offset, n)) in records.iter().enumerate() {
            assert_eq!(offset, i as i64, "{topic}/{p}: offsets dense from 0");
            let n = n.unwrap_or_else(|| panic!("{topic}/{p}@{offset}: a value that is no record of this test"));
            assert_eq!(chaos_partition(n), p, "{topic}/{p}@{offset}: record {n} belongs to another partition");
            if let Some((first_p, first_offset)) = seen.insert(n, (p, offset)) {
                panic!("record {n} is stored twice: {first_p}/{first_offset} and {p}/{offset}");
            }
            if let Some(previous) = previous {
                assert!(n > previous, "{topic}/{p}@{offset}: record {n} after record {previous}: out of send order");
            }
            previous = Some(n);
        }
    }
    for &(n, p, offset) in &outcome.acked {
        assert_eq!(p, chaos_partition(n), "record {n} acknowledged on partition {p}");
        assert_eq!(seen.get(&n), Some(&(p, offset)), "record {n} acknowledged at {p}/{offset}, stored at");
    }
    assert!(
        outcome.failed.is_empty(),
        "{} records not delivered (duplicates and order are fine), first: {:?}\nclient errors: {:#?}",
        outcome.failed.len(),
        &outcome.failed[..outcome.failed.len().min(5)],
        outcome.errors
    );
    assert_eq!(outcome.acked.len() as u64, CHAOS_RECORDS, "acknowledged records");
    assert_eq!(seen.len() as u64, CHAOS_RECORDS, "records stored");
    // Else the kills met no request in flight and no retry was exercised: the test proved little.
    assert!(!outcome.possibly_persisted.is_empty(), "no produce request was in flight at any of the kills");
}
