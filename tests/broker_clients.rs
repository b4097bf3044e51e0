//! The broker against real, independent Kafka clients (issue 3): librdkafka through the `rdkafka` crate,
//! kafka-python (`python3 -c`) and kcat, each talking to a real `sluice serve` process on 127.0.0.1.
//!
//! Covered: topic creation with N partitions (and listing/describing it back), every compression codec
//! with every acks level read back byte-identical (keys, values, headers, timestamps, per-partition order
//! and dense offsets), kafka-python → kcat and kcat → kafka-python, long-poll wake-up, ListOffsets
//! (earliest, latest, by timestamp), a clean restart, kill -9 during acks=all production with per-batch
//! fsync, malformed frames, and ApiVersions with an unsupported version.
//!
//! No consumer groups (a later issue): every consumer is manually assigned partitions at explicit
//! offsets and commits nothing. librdkafka still insists on a `group.id` for `assign()`; it is only a
//! placeholder here and no group API is used on purpose.
//!
//! Every assertion is meant to hold against a real Kafka broker too (none runs here to prove it). Each
//! test starts its own broker, uses its own topic names, and is bounded in record count and time.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use common::wire;
use common::{drop_within, hex, now_ms, run_kcat, run_python_json, unhex, unique_topic, Broker, BrokerOptions};

/// Limit of one librdkafka call that talks to the broker (metadata, watermarks, offsets lookup).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer may take to read what a test expects.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client's destructor may take.
const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// librdkafka's poll granularity in the consume loops.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Records per (codec, acks level) in the round-trip tests.
const RECORDS_PER_ACKS_LEVEL: usize = 150;
/// Partitions of the round-trip topics: more than one, so that with two cores some are forwarded.
const ROUND_TRIP_PARTITIONS: i32 = 3;
/// Records in the cross-client tests.
const CROSS_CLIENT_RECORDS: usize = 200;
/// The consumer's `fetch.wait.max.ms` in the long-poll test: the broker may hold a fetch this long.
const LONG_POLL_WAIT_MS: u64 = 10_000;
/// Records produced one by one while the consumer is parked in a long poll.
const LONG_POLL_ROUNDS: i64 = 3;
/// kill -9 test: records the producer may send in total, acks counted before the kill, and the producer's
/// bound on unacknowledged records.
const KILL_TEST_MAX_RECORDS: u64 = 3_000;
const KILL_AFTER_ACKS: usize = 300;
const KILL_TEST_IN_FLIGHT: usize = 64;
/// kill -9 test: librdkafka gives up on a record this long after it was sent (the broker is dead).
const KILL_TEST_MESSAGE_TIMEOUT_MS: u64 = 5_000;
/// Restart test: records before and after the restart.
const RESTART_RECORDS_BEFORE: usize = 400;
const RESTART_RECORDS_AFTER: usize = 100;

// ---------------------------------------------------------------------------------------------------
// Records: generated deterministically, compared field by field.

/// One record as produced and as it must be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// In order; duplicates allowed (Kafka keeps both).
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// CreateTime, milliseconds.
    timestamp: i64,
}

/// A record as a consumer saw it.
#[derive(Clone, Debug)]
struct Consumed {
    offset: i64,
    rec: Rec,
    timestamp_kind: Timestamp,
}

fn mix(seq: u64) -> u64 {
    let mut x = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| mix(seed ^ (i << 20)) as u8).collect()
}

/// `count` records over `partitions` partitions: some null keys and null values (tombstones), binary
/// keys, values from a few bytes to 4 KiB (random and compressible), 0–3 headers with a duplicate name
/// and a null value, and CreateTime timestamps `base_timestamp + i`.
fn make_records(seed: u64, count: usize, partitions: i32, base_timestamp: i64) -> Vec<Rec> {
    (0..count)
        .map(|i| {
            let h = mix(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            // One key in ten is null.
            let key = match h % 10 {
                0 => None,
                _ => {
                    let mut key = format!("key-{seed}-{i}-").into_bytes();
                    key.extend_from_slice(&[0x00, 0xff, (h >> 8) as u8]);
                    Some(key)
                }
            };
            let value = match h % 7 {
                0 => None,
                1..=3 => Some(pseudo_random_bytes(h, 1 + (h >> 16) as usize % 200)),
                4 | 5 => Some(format!("value {i} of seed {seed}; ").repeat(1 + (h >> 16) as usize % 150).into_bytes()),
                _ => Some(pseudo_random_bytes(h, 1 + (h >> 16) as usize % 4096)),
            };
            let headers = (0..(h >> 32) % 4)
                .map(|j| {
                    let name = if j == 2 { "h0".to_string() } else { format!("h{j}") };
                    let value = (j != 1 || (h >> 40) & 1 == 0).then(|| pseudo_random_bytes(h ^ j, 1 + j as usize * 7));
                    (name, value)
                })
                .collect();
            let partition = i32::try_from(i).expect("record index fits i32") % partitions;
            Rec { partition, key, value, headers, timestamp: base_timestamp + i as i64 }
        })
        .collect()
}

/// A timestamp an hour back, on a whole second: valid under any broker's timestamp-skew limits.
fn base_timestamp() -> i64 {
    (now_ms() - 3_600_000) / 1000 * 1000
}

// ---------------------------------------------------------------------------------------------------
// librdkafka helpers.

fn rdkafka_producer(bootstrap: &str, settings: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-test-rdkafka")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "20000")
        .set("enable.idempotence", "false");
    for (name, value) in settings {
        config.set(*name, *value);
    }
    config.create().expect("create rdkafka producer")
}

/// A consumer for manual assignment only. `group.id` is required by librdkafka's `assign()`; nothing
/// joins, commits or fetches offsets for that group.
fn rdkafka_consumer(bootstrap: &str, topic: &str, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-test-rdkafka")
        .set("group.id", format!("sluice-test-unused-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Out-of-range must be an error, not a silent jump.
        .set("auto.offset.reset", "error")
        // librdkafka verifies each batch's CRC32C: the broker's offset patching must keep it valid.
        .set("check.crcs", "true");
    for (name, value) in settings {
        config.set(*name, *value);
    }
    config.create().expect("create rdkafka consumer")
}

fn enqueue(producer: &FutureProducer, topic: &str, rec: &Rec) -> DeliveryFuture {
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).partition(rec.partition).timestamp(rec.timestamp);
    if !rec.headers.is_empty() {
        let headers = rec.headers.iter().fold(OwnedHeaders::new_with_capacity(rec.headers.len()), |hs, (name, v)| {
            hs.insert(Header { key: name.as_str(), value: v.as_deref() })
        });
        record = record.headers(headers);
    }
    if let Some(key) = &rec.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &rec.value {
        record = record.payload(value.as_slice());
    }
    producer.send_result(record).map_err(|(e, _)| e).expect("enqueue a record in librdkafka")
}

/// The broker's answer for one record: its (partition, offset), or the delivery error.
fn settle(delivery: DeliveryFuture) -> Result<(i32, i64), String> {
    match block_on(delivery) {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("delivery future cancelled".to_string()),
    }
}

/// Enqueues all of `records` at once (so they batch), then waits for every delivery report.
fn produce(producer: &FutureProducer, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
    let deliveries: Vec<DeliveryFuture> = records.iter().map(|r| enqueue(producer, topic, r)).collect();
    deliveries
        .into_iter()
        .enumerate()
        .map(|(i, d)| settle(d).unwrap_or_else(|e| panic!("record {i} to {topic} not delivered: {e}")))
        .collect()
}

/// `(partition, first offset, how many records)` for a consumer to read.
type Want = (i32, i64, usize);

/// Reads exactly the wanted ranges with a manually assigned consumer. Panics at `CONSUME_TIMEOUT`
/// with what it had and the errors it saw.
fn consume(bootstrap: &str, topic: &str, wanted: &[Want]) -> BTreeMap<i32, Vec<Consumed>> {
    let consumer = rdkafka_consumer(bootstrap, topic, &[]);
    let mut assignment = TopicPartitionList::new();
    for &(partition, start, _) in wanted {
        assignment.add_partition_offset(topic, partition, Offset::Offset(start)).expect("assignment entry");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let goal: BTreeMap<i32, usize> = wanted.iter().map(|&(p, _, n)| (p, n)).collect();
    let mut got: BTreeMap<i32, Vec<Consumed>> = goal.keys().map(|&p| (p, Vec::new())).collect();
    let mut errors: Vec<String> = Vec::new();
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while goal.iter().any(|(p, n)| got[p].len() < *n) {
        if Instant::now() >= deadline {
            let counts: Vec<(i32, usize, usize)> = goal.iter().map(|(p, n)| (*p, got[p].len(), *n)).collect();
            panic!("consuming {topic}: (partition, got, wanted) = {counts:?} after {CONSUME_TIMEOUT:?}; errors: {errors:?}");
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(message)) => {
                let consumed = to_consumed(&message);
                got.entry(message.partition()).or_default().push(consumed);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => errors.push(e.to_string()),
        }
    }
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    got
}

fn to_consumed<M: Message>(message: &M) -> Consumed {
    let headers = message
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    let timestamp_kind = message.timestamp();
    let timestamp = match timestamp_kind {
        Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
        Timestamp::NotAvailable => -1,
    };
    Consumed {
        offset: message.offset(),
        rec: Rec {
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp,
        },
        timestamp_kind,
    }
}

fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer = rdkafka_consumer(bootstrap, topic, &[]);
    let marks = consumer
        .fetch_watermarks(topic, partition, CLIENT_CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    marks
}

/// Checks that each partition read back exactly the records produced to it, in order, at dense offsets
/// starting at `first_offset[partition]`, byte for byte, with CreateTime timestamps; and, where the
/// producer was told offsets, that each record sits at the offset it was acknowledged with.
fn assert_read_back(
    topic: &str,
    produced: &[Rec],
    acked: Option<&[(i32, i64)]>,
    first_offset: &BTreeMap<i32, i64>,
    consumed: &BTreeMap<i32, Vec<Consumed>>,
) {
    for (&partition, records) in consumed {
        let expected: Vec<&Rec> = produced.iter().filter(|r| r.partition == partition).collect();
        assert_eq!(records.len(), expected.len(), "{topic}/{partition}: record count");
        let first = first_offset.get(&partition).copied().unwrap_or(0);
        for (j, (got, want)) in records.iter().zip(&expected).enumerate() {
            assert_eq!(got.offset, first + j as i64, "{topic}/{partition}: offsets must be dense and in order");
            assert!(
                matches!(got.timestamp_kind, Timestamp::CreateTime(_)),
                "{topic}/{partition} offset {}: timestamp type {:?}, want CreateTime",
                got.offset,
                got.timestamp_kind
            );
            assert!(
                &got.rec == *want,
                "{topic}/{partition} offset {}: read back\n{:?}\nproduced\n{want:?}",
                got.offset,
                got.rec
            );
        }
    }
    if let Some(acked) = acked {
        assert_eq!(acked.len(), produced.len());
        for (rec, &(partition, offset)) in produced.iter().zip(acked) {
            assert_eq!(partition, rec.partition, "{topic}: acknowledged on another partition");
            let first = first_offset.get(&partition).copied().unwrap_or(0);
            let got = usize::try_from(offset - first)
                .ok()
                .and_then(|i| consumed[&partition].get(i))
                .unwrap_or_else(|| panic!("{topic}/{partition}: acknowledged offset {offset} was not read back"));
            assert_eq!(got.offset, offset);
            assert!(got.rec == *rec, "{topic}/{partition} offset {offset}: not the record acknowledged there");
        }
    }
}

/// Per-partition `(partition, first offset, count)` for reading `records` back from `first_offset`.
fn wanted_for(records: &[Rec], partitions: i32, first_offset: &BTreeMap<i32, i64>) -> Vec<Want> {
    (0..partitions)
        .map(|p| {
            let first = first_offset.get(&p).copied().unwrap_or(0);
            (p, first, records.iter().filter(|r| r.partition == p).count())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// kafka-python scripts. Each reads its bulk input as JSON on stdin and prints one JSON line.

/// argv: bootstrap. stdin: [{"name", "partitions", "configs": {..}}]. Creates the topics and waits
/// until the broker's metadata shows a leader for every partition.
const PY_CREATE_TOPICS: &str = r#"
import json, sys
from kafka.admin import KafkaAdminClient
bootstrap = sys.argv[1]
spec = json.load(sys.stdin)
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id='sluice-test-admin', request_timeout_ms=20000)
try:
    admin.create_topics(
        {t['name']: {'num_partitions': t['partitions'], 'replication_factor': 1, 'configs': t['configs']} for t in spec},
        timeout_ms=20000, wait_for_metadata=True)
finally:
    admin.close()
print(json.dumps({'created': [t['name'] for t in spec]}))
"#;

/// argv: bootstrap, topic with N partitions, N, topic with flush.messages=1. Creates both, then reports
/// list_topics, describe_topics, describe_configs and the result of creating the first one again.
const PY_ADMIN_ROUND_TRIP: &str = r#"
import json, sys
from kafka.admin import KafkaAdminClient, ConfigResource, ConfigResourceType
bootstrap, many, partitions, durable = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id='sluice-test-admin', request_timeout_ms=20000)
out = {}
try:
    created = admin.create_topics({
        many: {'num_partitions': partitions, 'replication_factor': 1},
        durable: {'num_partitions': 1, 'replication_factor': 1, 'configs': {'flush.messages': '1'}},
    }, timeout_ms=20000, wait_for_metadata=True)
    out['created'] = sorted([t['name'], t['error_code']] for t in created['topics'])
    out['listed'] = sorted(admin.list_topics())
    out['described'] = sorted(
        ({'name': t['name'], 'error_code': t['error_code'],
          'partitions': sorted([p['partition_index'], p['error_code'], p['leader_id']] for p in t['partitions'])}
         for t in admin.describe_topics([many, durable])),
        key=lambda t: t['name'])
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, durable)], config_filter='all')
    out['durable_configs'] = {k: v.get('value') for k, v in configs.get('topic', {}).get(durable, {}).items()}
    again = admin.create_topics({many: {'num_partitions': partitions, 'replication_factor': 1}},
                                timeout_ms=20000, raise_errors=False)
    out['again'] = [[t['name'], t['error_code']] for t in again['topics']]
finally:
    admin.close()
print(json.dumps(out, sort_keys=True))
"#;

/// argv: bootstrap. stdin: {"topic", "compression", "records": [{"partition", "key", "value", "headers":
/// [[name, hex]], "timestamp"}]} with hex keys/values (or null). Idempotent producer (kafka-python 3.x's
/// default), acks=all. Prints the acknowledged [partition, offset] of each record.
const PY_PRODUCE: &str = r#"
import json, sys
from kafka import KafkaProducer
bootstrap = sys.argv[1]
spec = json.load(sys.stdin)
unhex = lambda h: None if h is None else bytes.fromhex(h)
producer = KafkaProducer(bootstrap_servers=bootstrap, client_id='sluice-test-kafka-python', acks='all',
                         compression_type=spec['compression'], linger_ms=5, request_timeout_ms=20000)
futures = [producer.send(spec['topic'], key=unhex(r['key']), value=unhex(r['value']),
                         headers=[(h[0], unhex(h[1])) for h in r['headers']],
                         partition=r['partition'], timestamp_ms=r['timestamp'])
           for r in spec['records']]
producer.flush(timeout=30)
acks = [[m.partition, m.offset] for m in (f.get(timeout=30) for f in futures)]
producer.close(timeout=10)
print(json.dumps({'acks': acks}))
"#;

/// argv: bootstrap, topic, partition, count. No group: assign + seek_to_beginning, then poll until
/// `count` records (or 30 s). Prints them with hex keys/values/header values.
const PY_CONSUME: &str = r#"
import json, sys, time
from kafka import KafkaConsumer, TopicPartition
bootstrap, topic, partition, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hexof = lambda b: None if b is None else b.hex()
consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id='sluice-test-kafka-python', group_id=None,
                         enable_auto_commit=False, auto_offset_reset='earliest', fetch_max_wait_ms=200,
                         request_timeout_ms=20000)
tp = TopicPartition(topic, partition)
consumer.assign([tp])
consumer.seek_to_beginning(tp)
records = []
deadline = time.monotonic() + 30
while len(records) < count and time.monotonic() < deadline:
    for batch in consumer.poll(timeout_ms=500).values():
        records.extend(batch)
consumer.close()
print(json.dumps({'records': [
    {'partition': r.partition, 'offset': r.offset, 'key': hexof(r.key), 'value': hexof(r.value),
     'headers': [[k, hexof(v)] for k, v in r.headers], 'timestamp': r.timestamp,
     'timestamp_type': r.timestamp_type}
    for r in records]}))
"#;

/// argv: bootstrap, topic. stdin: [timestamp, ...]. Partition 0's beginning and end offsets, and for each
/// timestamp the offset offsets_for_times returns (null when no record is that late).
const PY_LIST_OFFSETS: &str = r#"
import json, sys
from kafka import KafkaConsumer, TopicPartition
bootstrap, topic = sys.argv[1], sys.argv[2]
targets = json.load(sys.stdin)
consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id='sluice-test-kafka-python', group_id=None,
                         enable_auto_commit=False, request_timeout_ms=20000)
tp = TopicPartition(topic, 0)
out = {'beginning': consumer.beginning_offsets([tp])[tp], 'end': consumer.end_offsets([tp])[tp], 'by_time': []}
for t in targets:
    found = consumer.offsets_for_times({tp: t})[tp]
    out['by_time'].append(None if found is None else found.offset)
consumer.close()
print(json.dumps(out))
"#;

struct TopicSpec<'a> {
    name: &'a str,
    partitions: i32,
    configs: &'a [(&'a str, &'a str)],
}

fn create_topics(broker: &Broker, topics: &[TopicSpec<'_>]) {
    let spec: Vec<Value> = topics
        .iter()
        .map(|t| {
            let configs: serde_json::Map<String, Value> =
                t.configs.iter().map(|(k, v)| ((*k).to_string(), Value::from(*v))).collect();
            json!({"name": t.name, "partitions": t.partitions, "configs": configs})
        })
        .collect();
    let out = run_python_json(PY_CREATE_TOPICS, &[&broker.bootstrap()], spec_bytes(&Value::from(spec)).as_slice());
    assert_eq!(out["created"].as_array().map(Vec::len), Some(topics.len()), "create_topics: {out}");
}

fn spec_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize JSON")
}

fn rec_to_json(rec: &Rec) -> Value {
    json!({
        "partition": rec.partition,
        "key": rec.key.as_deref().map(hex),
        "value": rec.value.as_deref().map(hex),
        "headers": rec.headers.iter().map(|(k, v)| json!([k, v.as_deref().map(hex)])).collect::<Vec<_>>(),
        "timestamp": rec.timestamp,
    })
}

fn opt_unhex(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(unhex)
}

fn as_i64(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

// ---------------------------------------------------------------------------------------------------
// Tests.

/// CreateTopics with N partitions through kafka-python, then the same topic seen by kafka-python
/// (list_topics, describe_topics, describe_configs) and by librdkafka (Metadata, with the advertised
/// address being the one we listen on); a second create answers TOPIC_ALREADY_EXISTS; a topic named in
/// a producer's Metadata request is auto-created with the default partition count (1).
#[test]
fn topics_created_listed_described_and_auto_created() {
    const PARTITIONS: i32 = 4;
    const TOPIC_ALREADY_EXISTS: i64 = 36;
    let broker = Broker::start();
    let many = unique_topic("admin-many");
    let durable = unique_topic("admin-durable");
    let out =
        run_python_json(PY_ADMIN_ROUND_TRIP, &[&broker.bootstrap(), &many, &PARTITIONS.to_string(), &durable], b"");

    let created: Vec<(String, i64)> = out["created"]
        .as_array()
        .expect("created")
        .iter()
        .map(|t| (t[0].as_str().expect("name").to_string(), as_i64(&t[1])))
        .collect();
    let mut expected_created = vec![(many.clone(), 0), (durable.clone(), 0)];
    expected_created.sort();
    assert_eq!(created, expected_created, "CreateTopics result");

    let listed: Vec<&str> = out["listed"].as_array().expect("listed").iter().filter_map(Value::as_str).collect();
    assert!(listed.contains(&many.as_str()) && listed.contains(&durable.as_str()), "list_topics: {listed:?}");

    for topic in out["described"].as_array().expect("described") {
        let name = topic["name"].as_str().expect("topic name");
        let want_partitions = if name == many { PARTITIONS } else { 1 };
        assert_eq!(as_i64(&topic["error_code"]), 0, "describe {name}: {topic}");
        let partitions = topic["partitions"].as_array().expect("partitions");
        let indexes: Vec<i64> = partitions.iter().map(|p| as_i64(&p[0])).collect();
        assert_eq!(indexes, (0..i64::from(want_partitions)).collect::<Vec<_>>(), "describe {name}: partition ids");
        for p in partitions {
            assert_eq!(as_i64(&p[1]), 0, "describe {name}: partition error in {p}");
            assert!(as_i64(&p[2]) >= 0, "describe {name}: partition without leader: {p}");
        }
    }
    assert_eq!(out["described"].as_array().map(Vec::len), Some(2), "describe_topics: {}", out["described"]);

    assert_eq!(
        out["durable_configs"]["flush.messages"],
        json!("1"),
        "describe_configs of {durable}: {}",
        out["durable_configs"]
    );
    assert_eq!(out["again"], json!([[many, TOPIC_ALREADY_EXISTS]]), "creating {many} twice");

    // librdkafka's view of the same topic, and auto-creation through a producer's Metadata request.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "sluice-test-rdkafka")
        .create()
        .expect("create rdkafka producer");
    let metadata = producer.client().fetch_metadata(Some(many.as_str()), CLIENT_CALL_TIMEOUT).expect("Metadata");
    let brokers: Vec<(i32, String, i32)> =
        metadata.brokers().iter().map(|b| (b.id(), b.host().to_string(), b.port())).collect();
    assert_eq!(brokers.len(), 1, "one broker advertised: {brokers:?}");
    assert_eq!(
        (brokers[0].1.as_str(), brokers[0].2),
        ("127.0.0.1", i32::from(broker.addr().port())),
        "advertised address"
    );
    let topic = metadata.topics().iter().find(|t| t.name() == many).expect("topic in Metadata");
    assert!(topic.error().is_none(), "Metadata error for {many}: {:?}", topic.error());
    let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..PARTITIONS).collect::<Vec<_>>());
    assert!(topic.partitions().iter().all(|p| p.leader() == brokers[0].0), "leaders are the one broker");

    let auto = unique_topic("admin-auto");
    let deadline = Instant::now() + CLIENT_CALL_TIMEOUT;
    // Kafka may answer the first Metadata for a new topic with LEADER_NOT_AVAILABLE; ask until settled.
    let auto_partitions = loop {
        let metadata = producer.client().fetch_metadata(Some(auto.as_str()), CLIENT_CALL_TIMEOUT).expect("Metadata");
        let settled = metadata
            .topics()
            .iter()
            .find(|t| t.name() == auto && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len());
        if let Some(n) = settled {
            break n;
        }
        assert!(Instant::now() < deadline, "{auto} not auto-created within {CLIENT_CALL_TIMEOUT:?}");
        thread::sleep(POLL_INTERVAL);
    };
    assert_eq!(auto_partitions, 1, "auto-created topics get default_partitions (1)");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
}

/// One codec, each acks level on its own topic: librdkafka produces (batched, compressed), a
/// manually-assigned librdkafka consumer reads every record back byte-identical, in order, at the
/// offsets the broker acknowledged; the high watermark is exactly the count (nothing extra stored).
fn codec_round_trip(codec: &str, seed: u64) {
    let broker = Broker::start();
    let base = base_timestamp();
    let levels = ["0", "1", "all"];
    let topics: Vec<String> = levels.iter().map(|acks| unique_topic(&format!("codec-{codec}-acks-{acks}"))).collect();
    let specs: Vec<TopicSpec<'_>> =
        topics.iter().map(|t| TopicSpec { name: t, partitions: ROUND_TRIP_PARTITIONS, configs: &[] }).collect();
    create_topics(&broker, &specs);

    for (i, (acks, topic)) in levels.iter().zip(&topics).enumerate() {
        let records = make_records(seed * 10 + i as u64, RECORDS_PER_ACKS_LEVEL, ROUND_TRIP_PARTITIONS, base);
        let producer = rdkafka_producer(&broker.bootstrap(), &[("compression.codec", codec), ("acks", *acks)]);
        let acked = produce(&producer, topic, &records);
        producer.flush(CLIENT_CALL_TIMEOUT).expect("flush");
        drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

        let first = BTreeMap::new();
        let consumed = consume(&broker.bootstrap(), topic, &wanted_for(&records, ROUND_TRIP_PARTITIONS, &first));
        // With acks=0 the producer learns no offsets; with 1 and all it must have been told the true ones.
        let acked = (*acks != "0").then_some(acked.as_slice());
        assert_read_back(topic, &records, acked, &first, &consumed);
        for p in 0..ROUND_TRIP_PARTITIONS {
            let count = records.iter().filter(|r| r.partition == p).count() as i64;
            assert_eq!(watermarks(&broker.bootstrap(), topic, p), (0, count), "{topic}/{p}: watermarks");
        }
    }
}

#[test]
fn rdkafka_round_trip_uncompressed_all_acks_levels() {
    codec_round_trip("none", 1);
}

#[test]
fn rdkafka_round_trip_gzip_all_acks_levels() {
    codec_round_trip("gzip", 2);
}

#[test]
fn rdkafka_round_trip_snappy_all_acks_levels() {
    codec_round_trip("snappy", 3);
}

#[test]
fn rdkafka_round_trip_lz4_all_acks_levels() {
    codec_round_trip("lz4", 4);
}

#[test]
fn rdkafka_round_trip_zstd_all_acks_levels() {
    codec_round_trip("zstd", 5);
}

/// kafka-python (idempotent producer, gzip, explicit partitions and timestamps, headers) → kcat's
/// consumer (a different librdkafka, no group): every record at the offset kafka-python was told, with
/// its key, value, headers and CreateTime.
#[test]
fn kafka_python_producer_to_kcat_consumer() {
    const PARTITIONS: i32 = 2;
    let broker = Broker::start();
    let topic = unique_topic("py-to-kcat");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: PARTITIONS, configs: &[] }]);
    let base = base_timestamp();
    // kcat prints keys and values as JSON strings: keep them text.
    let records: Vec<Rec> = (0..CROSS_CLIENT_RECORDS)
        .map(|i| Rec {
            partition: i as i32 % PARTITIONS,
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(format!("value {i} {}", "x".repeat(i % 50)).into_bytes()),
            headers: vec![
                ("seq".into(), Some(i.to_string().into_bytes())),
                ("origin".into(), Some(b"kafka-python".to_vec())),
            ],
            timestamp: base + i as i64,
        })
        .collect();
    let spec =
        json!({"topic": topic, "compression": "gzip", "records": records.iter().map(rec_to_json).collect::<Vec<_>>()});
    let out = run_python_json(PY_PRODUCE, &[&broker.bootstrap()], &spec_bytes(&spec));
    let acks: Vec<(i32, i64)> = out["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|a| (i32::try_from(as_i64(&a[0])).expect("partition"), as_i64(&a[1])))
        .collect();
    assert_eq!(acks.len(), records.len());

    let bootstrap = broker.bootstrap();
    let stdout = run_kcat(
        &["-b", &bootstrap, "-C", "-t", &topic, "-o", "beginning", "-e", "-J", "-q", "-X", "check.crcs=true"],
        b"",
    );
    let mut by_position: BTreeMap<(i32, i64), Value> = BTreeMap::new();
    for line in String::from_utf8(stdout).expect("kcat output is UTF-8").lines().filter(|l| !l.trim().is_empty()) {
        let message: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("kcat JSON ({e}): {line}"));
        let position = (i32::try_from(as_i64(&message["partition"])).expect("partition"), as_i64(&message["offset"]));
        assert!(by_position.insert(position, message).is_none(), "kcat printed {position:?} twice");
    }
    assert_eq!(by_position.len(), records.len(), "kcat read every record once");
    for (rec, position) in records.iter().zip(&acks) {
        assert_eq!(position.0, rec.partition);
        let message = by_position.get(position).unwrap_or_else(|| panic!("{position:?} missing from kcat's output"));
        let text = |b: &Option<Vec<u8>>| json!(String::from_utf8(b.clone().expect("set")).expect("text"));
        assert_eq!(message["key"], text(&rec.key), "{position:?}: key");
        assert_eq!(message["payload"], text(&rec.value), "{position:?}: value");
        let headers: Vec<Value> = rec.headers.iter().flat_map(|(k, v)| [json!(k), text(v)]).collect();
        assert_eq!(message["headers"], Value::from(headers), "{position:?}: headers");
        assert_eq!(message["tstype"], json!("create"), "{position:?}: timestamp type");
        assert_eq!(as_i64(&message["ts"]), rec.timestamp, "{position:?}: timestamp");
    }
    // Per partition, kafka-python's send order is offset order.
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = acks.iter().filter(|a| a.0 == p).map(|a| a.1).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {p}: dense, in send order");
    }
}

/// kcat's producer (gzip, headers, a topic auto-created by its Metadata request) → kafka-python's
/// consumer (no group: assign + seek_to_beginning): same keys, values, headers, dense offsets, and a
/// CreateTime stamped by the producer while it ran.
#[test]
fn kcat_producer_to_kafka_python_consumer() {
    let broker = Broker::start();
    let topic = unique_topic("kcat-to-py");
    let lines: Vec<(String, String)> =
        (0..CROSS_CLIENT_RECORDS).map(|i| (format!("key-{i}"), format!("value {i} {}", "y".repeat(i % 40)))).collect();
    let stdin: String = lines.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let bootstrap = broker.bootstrap();
    let before = now_ms();
    run_kcat(
        &[
            "-b",
            &bootstrap,
            "-P",
            "-t",
            &topic,
            "-p",
            "0",
            "-K",
            ":",
            "-H",
            "origin=kcat",
            "-H",
            "run=1",
            "-z",
            "gzip",
            "-X",
            "linger.ms=5",
        ],
        stdin.as_bytes(),
    );
    let after = now_ms();

    let out = run_python_json(PY_CONSUME, &[&bootstrap, &topic, "0", &lines.len().to_string()], b"");
    let records = out["records"].as_array().expect("records");
    assert_eq!(records.len(), lines.len(), "kafka-python read every record");
    let headers = json!([["origin", hex(b"kcat")], ["run", hex(b"1")]]);
    for (i, (record, (key, value))) in records.iter().zip(&lines).enumerate() {
        assert_eq!(as_i64(&record["partition"]), 0);
        assert_eq!(as_i64(&record["offset"]), i as i64, "offsets dense and in order");
        assert_eq!(opt_unhex(&record["key"]).as_deref(), Some(key.as_bytes()), "offset {i}: key");
        assert_eq!(opt_unhex(&record["value"]).as_deref(), Some(value.as_bytes()), "offset {i}: value");
        assert_eq!(record["headers"], headers, "offset {i}: headers");
        assert_eq!(as_i64(&record["timestamp_type"]), 0, "offset {i}: CreateTime");
        let ts = as_i64(&record["timestamp"]);
        // One second of slack either side for clock granularity.
        assert!((before - 1000..=after + 1000).contains(&ts), "offset {i}: timestamp {ts} not in [{before}, {after}]");
    }
}

/// A consumer parked in a long poll (fetch.wait.max.ms = 10 s) at the end of the log gets a record
/// produced afterwards long before its wait expires: each round, the produce is sent only after the
/// previous record was consumed (so the next fetch is the one waiting), and the record arrives in well
/// under half the configured wait.
#[test]
fn long_poll_fetch_wakes_up_when_data_arrives() {
    let broker = Broker::start();
    let topic = unique_topic("long-poll");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: 1, configs: &[] }]);
    let bootstrap = broker.bootstrap();
    let producer = rdkafka_producer(&bootstrap, &[("acks", "1"), ("linger.ms", "0")]);
    let base = base_timestamp();
    let record = |seq: i64| Rec {
        partition: 0,
        key: Some(format!("long-poll-{seq}").into_bytes()),
        value: Some(vec![b'v'; 100]),
        headers: Vec::new(),
        timestamp: base + seq,
    };
    // Offset 0 exists before the consumer starts, so its first fetch returns at once.
    produce(&producer, &topic, &[record(0)]);

    let wait_ms = LONG_POLL_WAIT_MS.to_string();
    let consumer =
        rdkafka_consumer(&bootstrap, &topic, &[("fetch.wait.max.ms", wait_ms.as_str()), ("fetch.min.bytes", "1")]);
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Offset(0)).expect("assignment entry");
    consumer.assign(&assignment).expect("assign");
    let long_wait = Duration::from_millis(LONG_POLL_WAIT_MS);
    let next_record = |expected_offset: i64, deadline: Instant| -> Consumed {
        loop {
            assert!(Instant::now() < deadline, "offset {expected_offset} not consumed in time");
            match consumer.poll(POLL_INTERVAL) {
                Some(Ok(m)) => {
                    let c = to_consumed(&m);
                    assert_eq!(c.offset, expected_offset, "records in order");
                    return c;
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => eprintln!("consumer error (continuing): {e}"),
            }
        }
    };
    let first = next_record(0, Instant::now() + CONSUME_TIMEOUT);
    assert_eq!(first.rec, record(0));

    for seq in 1..=LONG_POLL_ROUNDS {
        // The consumer holds every record before `seq`: its fetch for `seq` is parked in the broker.
        let sent_at = Instant::now();
        let acked = produce(&producer, &topic, &[record(seq)]);
        assert_eq!(acked, vec![(0, seq)]);
        let got = next_record(seq, sent_at + 2 * long_wait);
        let elapsed = sent_at.elapsed();
        assert_eq!(got.rec, record(seq));
        assert!(
            elapsed < long_wait / 2,
            "record {seq} reached the parked consumer after {elapsed:?}: the fetch was not woken by the produce \
             (fetch.wait.max.ms = {LONG_POLL_WAIT_MS})"
        );
    }
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
}

/// ListOffsets: earliest and latest (librdkafka's watermarks, kafka-python's beginning/end offsets) and
/// by timestamp (librdkafka's offsets_for_times, kafka-python's offsets_for_times): the earliest offset
/// whose timestamp is at or after the target, also inside a multi-record batch, and "none" past the end.
#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    const SINGLES: i64 = 10;
    const BATCHED: i64 = 10;
    const BATCH_TIME_OFFSET_MS: i64 = 100_000;
    let broker = Broker::start();
    let topic = unique_topic("list-offsets");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: 1, configs: &[] }]);
    let bootstrap = broker.bootstrap();
    let base = base_timestamp();
    let record = |seq: i64, timestamp: i64| Rec {
        partition: 0,
        key: Some(format!("ts-{seq}").into_bytes()),
        value: Some(format!("at {timestamp}").into_bytes()),
        headers: Vec::new(),
        timestamp,
    };
    // Offsets 0..10, one batch each (each awaited before the next is sent), a second apart.
    let producer = rdkafka_producer(&bootstrap, &[("acks", "all"), ("linger.ms", "0")]);
    for seq in 0..SINGLES {
        assert_eq!(produce(&producer, &topic, &[record(seq, base + seq * 1000)]), vec![(0, seq)]);
    }
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    // Offsets 10..20, sent together (librdkafka batches them), a second apart, 100 s later.
    let producer = rdkafka_producer(&bootstrap, &[("acks", "all"), ("linger.ms", "50")]);
    let batched: Vec<Rec> = (0..BATCHED).map(|i| record(SINGLES + i, base + BATCH_TIME_OFFSET_MS + i * 1000)).collect();
    let acked = produce(&producer, &topic, &batched);
    assert_eq!(acked, (SINGLES..SINGLES + BATCHED).map(|o| (0, o)).collect::<Vec<_>>());
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

    let total = SINGLES + BATCHED;
    let b = base + BATCH_TIME_OFFSET_MS;
    let cases: Vec<(i64, Option<i64>)> = vec![
        (base - 60_000, Some(0)),
        (base, Some(0)),
        (base + 1, Some(1)),
        (base + 5_000, Some(5)),
        (base + 9_000, Some(9)),
        (base + 9_001, Some(SINGLES)),
        (b, Some(SINGLES)),
        (b + 4_000, Some(SINGLES + 4)),
        (b + 4_001, Some(SINGLES + 5)),
        (b + 9_000, Some(total - 1)),
        (b + 9_001, None),
    ];

    let consumer = rdkafka_consumer(&bootstrap, &topic, &[]);
    assert_eq!(consumer.fetch_watermarks(&topic, 0, CLIENT_CALL_TIMEOUT).expect("watermarks"), (0, total));
    for &(timestamp, want) in &cases {
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(&topic, 0, Offset::Offset(timestamp)).expect("query entry");
        let answer = consumer.offsets_for_times(query, CLIENT_CALL_TIMEOUT).expect("offsets_for_times");
        let elem = answer.find_partition(&topic, 0).expect("partition in answer");
        elem.error().unwrap_or_else(|e| panic!("offsets_for_times({timestamp}): {e}"));
        let got = match elem.offset() {
            Offset::Offset(o) => Some(o),
            Offset::End => None,
            other => panic!("offsets_for_times({timestamp}) = {other:?}"),
        };
        assert_eq!(got, want, "librdkafka offsets_for_times({timestamp}) (base {base})");
    }
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");

    let targets: Vec<i64> = cases.iter().map(|c| c.0).collect();
    let out = run_python_json(PY_LIST_OFFSETS, &[&bootstrap, &topic], &spec_bytes(&json!(targets)));
    assert_eq!(as_i64(&out["beginning"]), 0, "kafka-python beginning_offsets");
    assert_eq!(as_i64(&out["end"]), total, "kafka-python end_offsets");
    let by_time: Vec<Option<i64>> = out["by_time"].as_array().expect("by_time").iter().map(Value::as_i64).collect();
    assert_eq!(by_time, cases.iter().map(|c| c.1).collect::<Vec<_>>(), "kafka-python offsets_for_times (base {base})");
}

/// SIGTERM → exit code 0; started again on the same directory and port, the broker serves every
/// record byte-identical with the same watermarks, and new records continue the offsets.
#[test]
fn restart_after_sigterm_keeps_data() {
    const PARTITIONS: i32 = 2;
    let mut broker = Broker::start();
    let topic = unique_topic("restart");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: PARTITIONS, configs: &[] }]);
    let base = base_timestamp();
    let before = make_records(60, RESTART_RECORDS_BEFORE, PARTITIONS, base);
    let producer = rdkafka_producer(&broker.bootstrap(), &[("acks", "all"), ("compression.codec", "lz4")]);
    let acked = produce(&producer, &topic, &before);
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    let marks_before: Vec<(i64, i64)> = (0..PARTITIONS).map(|p| watermarks(&broker.bootstrap(), &topic, p)).collect();

    broker.terminate();
    broker.restart();

    let marks_after: Vec<(i64, i64)> = (0..PARTITIONS).map(|p| watermarks(&broker.bootstrap(), &topic, p)).collect();
    assert_eq!(marks_after, marks_before, "watermarks survive the restart");
    let start = BTreeMap::new();
    let consumed = consume(&broker.bootstrap(), &topic, &wanted_for(&before, PARTITIONS, &start));
    assert_read_back(&topic, &before, Some(&acked), &start, &consumed);

    // Appends continue at the old high watermark.
    let after = make_records(61, RESTART_RECORDS_AFTER, PARTITIONS, base + RESTART_RECORDS_BEFORE as i64);
    let producer = rdkafka_producer(&broker.bootstrap(), &[("acks", "all")]);
    let acked_after = produce(&producer, &topic, &after);
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    let continue_at: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, marks_before[p as usize].1)).collect();
    let consumed = consume(&broker.bootstrap(), &topic, &wanted_for(&after, PARTITIONS, &continue_at));
    assert_read_back(&topic, &after, Some(&acked_after), &continue_at, &consumed);

    broker.terminate();
}

/// The record with sequence number `seq` in the kill -9 test: its content follows from `seq`, which its
/// key carries, so any record read back can be checked, acknowledged or not.
fn kill_test_record(seq: u64, base: i64) -> Rec {
    Rec {
        partition: (seq % 2) as i32,
        key: Some(format!("kill-{seq:06}").into_bytes()),
        value: Some(pseudo_random_bytes(seq, 64 + (mix(seq) % 1024) as usize)),
        headers: vec![("seq".into(), Some(seq.to_be_bytes().to_vec()))],
        timestamp: base + seq as i64,
    }
}

/// kill -9 while a librdkafka producer sends with acks=all to a topic with `flush.messages=1` (fsync per
/// batch): after a restart every acknowledged record is at the offset it was acknowledged with, byte
/// for byte; offsets are dense; anything else read back is a real record of the test (sent but not yet
/// acknowledged when the broker died), never garbage. A process kill leaves the page cache intact, so
/// this proves "nothing acknowledged before it was written"; only a power cut would test the fsync itself.
#[test]
fn kill_9_during_acks_all_loses_nothing_acknowledged() {
    let mut broker = Broker::start();
    let topic = unique_topic("kill9");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: 2, configs: &[("flush.messages", "1")] }]);
    let base = base_timestamp();

    let acked: Arc<Mutex<Vec<(u64, i32, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (threshold_tx, threshold_rx) = mpsc::sync_channel::<()>(1);
    let producer_thread = {
        let (bootstrap, topic, acked, stop) = (broker.bootstrap(), topic.clone(), acked.clone(), stop.clone());
        thread::spawn(move || {
            let timeout_ms = KILL_TEST_MESSAGE_TIMEOUT_MS.to_string();
            let producer = rdkafka_producer(
                &bootstrap,
                &[("acks", "all"), ("linger.ms", "1"), ("message.timeout.ms", timeout_ms.as_str())],
            );
            let mut in_flight: VecDeque<(u64, DeliveryFuture)> = VecDeque::new();
            let mut sent = 0u64;
            let settle_one = |in_flight: &mut VecDeque<(u64, DeliveryFuture)>| {
                let (seq, delivery) = in_flight.pop_front().expect("something in flight");
                if let Ok((partition, offset)) = settle(delivery) {
                    let mut acked = acked.lock().expect("acked list");
                    acked.push((seq, partition, offset));
                    if acked.len() == KILL_AFTER_ACKS {
                        let _ = threshold_tx.try_send(());
                    }
                }
            };
            while sent < KILL_TEST_MAX_RECORDS && !stop.load(Ordering::SeqCst) {
                in_flight.push_back((sent, enqueue(&producer, &topic, &kill_test_record(sent, base))));
                sent += 1;
                while in_flight.len() >= KILL_TEST_IN_FLIGHT {
                    settle_one(&mut in_flight);
                }
            }
            while !in_flight.is_empty() {
                settle_one(&mut in_flight);
            }
            drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
            sent
        })
    };

    // Kill once enough records are acknowledged; the producer keeps sending meanwhile. If it ends first
    // (channel disconnected), kill anyway: the check below stays valid, only weaker.
    match threshold_rx.recv_timeout(CONSUME_TIMEOUT) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("fewer than {KILL_AFTER_ACKS} records acknowledged within {CONSUME_TIMEOUT:?}")
        }
    }
    broker.kill9();
    stop.store(true, Ordering::SeqCst);
    let sent = producer_thread.join().expect("producer thread");
    let acked = std::mem::take(&mut *acked.lock().expect("acked list"));
    assert!(acked.len() >= KILL_AFTER_ACKS.min(sent as usize), "acknowledged {} of {sent}", acked.len());
    assert!((acked.len() as u64) < sent, "every record was acknowledged before the kill: the kill came too late");

    broker.restart();
    let mut high = BTreeMap::new();
    for p in 0..2 {
        let (low, hw) = watermarks(&broker.bootstrap(), &topic, p);
        assert_eq!(low, 0, "{topic}/{p}: log start");
        high.insert(p, hw);
    }
    let wanted: Vec<Want> = high.iter().map(|(&p, &hw)| (p, 0, usize::try_from(hw).expect("hw"))).collect();
    let consumed = consume(&broker.bootstrap(), &topic, &wanted);
    for (&p, records) in &consumed {
        for (i, c) in records.iter().enumerate() {
            assert_eq!(c.offset, i as i64, "{topic}/{p}: offsets dense after recovery");
            let key = c.rec.key.as_deref().unwrap_or_else(|| panic!("{topic}/{p}@{}: null key", c.offset));
            let seq: u64 = std::str::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix("kill-"))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{topic}/{p}@{}: key {key:?} is no record of this test", c.offset));
            assert!(c.rec == kill_test_record(seq, base), "{topic}/{p}@{}: record {seq} corrupted", c.offset);
        }
    }
    for &(seq, p, offset) in &acked {
        let hw = high[&p];
        assert!(offset < hw, "record {seq} acknowledged at {p}/{offset} but the high watermark is {hw} after kill -9");
        let c = &consumed[&p][usize::try_from(offset).expect("offset")];
        assert!(
            c.rec == kill_test_record(seq, base),
            "{p}/{offset}: acknowledged record {seq} not there after kill -9"
        );
    }
    eprintln!(
        "kill -9: {} of {sent} records acknowledged before the kill; {} records in the log after restart",
        acked.len(),
        high.values().sum::<i64>()
    );
}

/// Garbage, a header with an undecodable body, oversized / negative / zero length prefixes each close
/// their own connection; a truncated frame followed by a close is survived. Connections opened before
/// keep working, new ones work, and a real client produces and consumes afterwards.
#[test]
fn malformed_frames_close_only_their_connection() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let io_timeout = Duration::from_secs(10);
    // Several, so that with SO_REUSEPORT some share a core with each bad connection.
    let mut healthy: Vec<_> = (0..4).map(|_| wire::connect(addr, io_timeout).expect("connect")).collect();
    for (i, stream) in healthy.iter_mut().enumerate() {
        wire::api_versions_v0(stream, 100 + i as i32).expect("ApiVersions before the bad frames");
    }

    let frame_of = |payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    };
    // Metadata v1 whose topic array claims 2^31 - 1 entries and has none.
    let metadata_bad_body =
        wire::request_frame(wire::API_KEY_METADATA, 1, 7, "sluice-test", false, &[0x7f, 0xff, 0xff, 0xff]);
    // Produce v9 (flexible header) followed by bytes that are no valid varint.
    let produce_bad_body = wire::request_frame(wire::API_KEY_PRODUCE, 9, 8, "sluice-test", true, &[0xff; 32]);
    let mut oversized = 0x7fff_ffffu32.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 8]);
    let mut negative = (-1i32).to_be_bytes().to_vec();
    negative.extend_from_slice(&[0u8; 8]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage frame", frame_of(&[0xff; 16])),
        ("Metadata with an undecodable body", metadata_bad_body),
        ("Produce with an undecodable body", produce_bad_body),
        ("length prefix 0x7fffffff", oversized),
        ("negative length prefix", negative),
        ("zero-length frame", 0u32.to_be_bytes().to_vec()),
    ];
    for (what, bytes) in &cases {
        let mut bad = wire::connect(addr, io_timeout).expect("connect");
        // The broker may close while we write; what matters is that it closes.
        let _ = std::io::Write::write_all(&mut bad, bytes);
        wire::wait_for_close(&mut bad, io_timeout).unwrap_or_else(|e| panic!("{what}: {e}"));
        broker.assert_running();
    }
    {
        // A frame announcing 64 bytes, 10 sent, then the client goes away.
        let mut truncated = wire::connect(addr, io_timeout).expect("connect");
        let mut bytes = 64u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        std::io::Write::write_all(&mut truncated, &bytes).expect("write truncated frame");
    }

    for (i, stream) in healthy.iter_mut().enumerate() {
        wire::api_versions_v0(stream, 200 + i as i32)
            .unwrap_or_else(|e| panic!("connection {i} opened before the bad frames: {e}"));
    }
    wire::api_versions_v0_round_trip(addr, io_timeout).expect("a new connection after the bad frames");
    broker.assert_running();

    // And a real client still gets full service.
    let topic = unique_topic("after-malformed");
    create_topics(&broker, &[TopicSpec { name: &topic, partitions: 1, configs: &[] }]);
    let records = make_records(70, 20, 1, base_timestamp());
    let producer = rdkafka_producer(&broker.bootstrap(), &[("acks", "all")]);
    let acked = produce(&producer, &topic, &records);
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    let start = BTreeMap::new();
    let consumed = consume(&broker.bootstrap(), &topic, &wanted_for(&records, 1, &start));
    assert_read_back(&topic, &records, Some(&acked), &start, &consumed);
}

/// ApiVersions v127 (a version no broker has): the answer is a v0-encoded ApiVersionsResponse with
/// UNSUPPORTED_VERSION (35) and at least ApiVersions' own range, from v0, so the client can retry lower.
/// The connection stays usable: ApiVersions v0 on it then lists the data-path APIs with the ranges
/// librdkafka needs (Produce 3 and 7, Fetch 4 and 10 within range).
#[test]
fn api_versions_unsupported_version_answers_v0_error_with_ranges() {
    let broker = Broker::start_with(BrokerOptions { cores: 1, ..BrokerOptions::default() });
    let mut stream = wire::connect(broker.addr(), Duration::from_secs(10)).expect("connect");
    // Body as v3+ shapes it (compact client software name and version, no tags); a broker must not
    // need to parse it to answer.
    let mut body = Vec::new();
    for s in ["sluice-test", "0.1"] {
        body.push(u8::try_from(s.len() + 1).expect("short string"));
        body.extend_from_slice(s.as_bytes());
    }
    body.push(0);
    let request = wire::request_frame(wire::API_KEY_API_VERSIONS, 127, 4242, "sluice-test", true, &body);
    std::io::Write::write_all(&mut stream, &request).expect("send ApiVersions v127");
    let frame = wire::read_frame(&mut stream).expect("a response to ApiVersions v127");
    let response = wire::parse_api_versions_v0(&frame).expect("v0-encoded ApiVersions response");
    assert_eq!(response.correlation_id, 4242);
    assert_eq!(response.error_code, wire::ERROR_UNSUPPORTED_VERSION, "error code for ApiVersions v127");
    let (min, max) = response.range_of(wire::API_KEY_API_VERSIONS).expect("ApiVersions' own range is in the answer");
    assert_eq!(min, 0, "ApiVersions supported from v0");
    assert!((3..127).contains(&max), "ApiVersions max version {max}: clients use v3+");

    let full = wire::api_versions_v0(&mut stream, 4243).expect("ApiVersions v0 on the same connection");
    assert_eq!(full.error_code, 0);
    let covers = |key: i16, versions: &[i16]| {
        let (min, max) = full.range_of(key).unwrap_or_else(|| panic!("api key {key} not advertised: {full:?}"));
        versions.iter().all(|v| (min..=max).contains(v))
    };
    assert!(covers(wire::API_KEY_PRODUCE, &[3, 7]), "Produce range must cover 3 (MsgVer2) and 7 (zstd): {full:?}");
    assert!(covers(wire::API_KEY_FETCH, &[4, 10]), "Fetch range must cover 4 (MsgVer2) and 10 (zstd): {full:?}");
    assert!(covers(wire::API_KEY_METADATA, &[1]), "Metadata: {full:?}");
    assert!(covers(wire::API_KEY_API_VERSIONS, &[0, 3]), "ApiVersions: {full:?}");
    let mut keys: Vec<i16> = full.api_keys.iter().map(|k| k.0).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), full.api_keys.len(), "each API listed once");
}
