//! Log compaction with a real client (kafka-python): a topic with `cleanup.policy=compact` and small
//! segments gets many updates of a few keys (plain and gzip batches), some keys end in tombstones;
//! the background cleaner leaves the latest record per key at its original offset (tombstones while
//! `delete.retention.ms` lasts), survives kill -9, drops tombstones once `delete.retention.ms` is 0,
//! and a record without a key is refused with INVALID_RECORD. `__consumer_offsets` is compacted too:
//! after many commits its partition shrinks and the latest commit survives a restart.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_python_json, unique_topic, Broker, BrokerOptions};
use serde_json::Value;

const SCRIPT: &str = r#"
import json, sys, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic, ConfigResource, ConfigResourceType
from kafka.errors import KafkaError
mode, boot, topic = sys.argv[1], sys.argv[2], sys.argv[3]
KEYS, ROUNDS, TOMBSTONED = 20, 15, 4
CONFIGS = {"cleanup.policy": "compact", "segment.bytes": "4096", "min.cleanable.dirty.ratio": "0.01"}

def read_all():
    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=boot, group_id=None, enable_auto_commit=False)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    out = []
    deadline = time.time() + 20
    while c.position(tp) < end and time.time() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out += [[r.offset, r.key.decode() if r.key is not None else None,
                     r.value.decode() if r.value is not None else None] for r in recs]
    c.close()
    return out

def updates(records):
    return [r for r in records if r[1] is not None and r[1].startswith("k")]

def filler(p, prefix, n):
    for i in range(n):
        p.send(topic, key=b"%s%04d" % (prefix, i), value=b"f" * 100, partition=0)
    p.flush()

def wait_for(pred):
    deadline = time.time() + 30
    while True:
        got = read_all()
        if pred(got) or time.time() > deadline:
            return got
        time.sleep(0.2)

if mode == "produce":
    KafkaAdminClient(bootstrap_servers=boot).create_topics([NewTopic(topic, 1, 1, topic_configs=CONFIGS)])
    plain = KafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=0)
    gz = KafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=20, compression_type="gzip")
    last = {}
    for r in range(ROUNDS):
        p = gz if r % 2 else plain
        futs = []
        for k in range(KEYS):
            key = b"k%02d" % k
            tomb = r == ROUNDS - 1 and k < TOMBSTONED
            value = None if tomb else (b"%02d-%02d-" % (k, r)) + b"v" * 80
            futs.append((key, value, p.send(topic, key=key, value=value, partition=0)))
        p.flush()
        for key, value, f in futs:
            last[key.decode()] = [f.get(timeout=10).offset, key.decode(), value.decode() if value else None]
    # Push every update out of the active segment, so all of them are compactable.
    filler(plain, b"f", 80)
    try:
        plain.send(topic, value=b"no key", partition=0).get(timeout=10)
        keyless = "accepted"
    except KafkaError as e:
        keyless = type(e).__name__
    got = wait_for(lambda got: len(updates(got)) == KEYS)
    print(json.dumps({"last": last, "records": got, "keyless": keyless}))
elif mode == "read":
    print(json.dumps({"records": read_all()}))
elif mode == "drop-tombstones":
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict(CONFIGS, **{"delete.retention.ms": "0"}))])
    # New dirty data so that a pass runs (and sees the tombstones' segments old enough to drop them).
    filler(KafkaProducer(bootstrap_servers=boot, acks="all"), b"g", 80)
    got = wait_for(lambda got: all(r[2] is not None for r in updates(got)))
    print(json.dumps({"records": got}))
"#;

fn records(out: &Value) -> Vec<(i64, Option<String>, Option<String>)> {
    out["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().map(str::to_owned), r[2].as_str().map(str::to_owned)))
        .collect()
}

fn update_records(all: &[(i64, Option<String>, Option<String>)]) -> Vec<(i64, Option<String>, Option<String>)> {
    all.iter().filter(|r| r.1.as_deref().is_some_and(|k| k.starts_with('k'))).cloned().collect()
}

#[test]
fn compaction_keeps_the_latest_record_per_key() {
    let options =
        BrokerOptions { config_toml: Some("retention_check_interval_ms = 100\n".into()), ..Default::default() };
    let mut broker = Broker::start_with(options);
    let topic = unique_topic("compact");
    let out = run_python_json(SCRIPT, &["produce", &broker.bootstrap(), &topic], b"");
    assert_eq!(out["keyless"], "InvalidRecordError", "a record without a key is refused");

    // Exactly the latest record of each key, at the offset it was acknowledged at.
    let all = records(&out);
    let mut want: Vec<(i64, Option<String>, Option<String>)> = out["last"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| (v[0].as_i64().unwrap(), v[1].as_str().map(str::to_owned), v[2].as_str().map(str::to_owned)))
        .collect();
    want.sort();
    assert_eq!(update_records(&all), want, "after compaction: {}", broker.log_tail());
    assert_eq!(want.iter().filter(|r| r.2.is_none()).count(), 4, "tombstones stay within delete.retention.ms");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
    let fillers = all.iter().filter(|r| r.1.as_deref().is_some_and(|k| k.starts_with('f'))).count();
    assert_eq!(fillers, 80, "records with unique keys all stay");

    // The compacted log (gaps and all) survives a crash.
    broker.kill9();
    broker.restart();
    let again = records(&run_python_json(SCRIPT, &["read", &broker.bootstrap(), &topic], b""));
    assert_eq!(again[..all.len()], all[..], "after kill -9 and restart");

    // With delete.retention.ms=0 the next pass removes the tombstones, and nothing else.
    let out = run_python_json(SCRIPT, &["drop-tombstones", &broker.bootstrap(), &topic], b"");
    let live: Vec<_> = want.iter().filter(|r| r.2.is_some()).cloned().collect();
    assert_eq!(update_records(&records(&out)), live, "tombstones dropped: {}", broker.log_tail());
}

const COMMITS: &str = r#"
import json, sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata
mode, boot, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tps = [TopicPartition(topic, p) for p in range(4)]
c = KafkaConsumer(bootstrap_servers=boot, group_id="compacted-commits", enable_auto_commit=False)
if mode == "commit":
    KafkaAdminClient(bootstrap_servers=boot).alter_configs([ConfigResource(
        ConfigResourceType.TOPIC, "__consumer_offsets",
        configs={"cleanup.policy": "compact", "segment.bytes": "4096", "flush.messages": "1",
                 "retention.ms": "-1", "min.cleanable.dirty.ratio": "0.01"})])
    for i in range(n):
        c.commit({tp: OffsetAndMetadata(i * 10 + tp.partition, "m%d" % i, -1) for tp in tps})
print(json.dumps({str(tp.partition): [c.committed(tp), c.committed(tp, metadata=True).metadata] for tp in tps}))
"#;

/// Bytes of segment files in every `__consumer_offsets` partition directory.
fn offsets_topic_bytes(data_dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(data_dir).expect("data dir").flatten() {
        if !entry.file_name().to_string_lossy().starts_with("__consumer_offsets") {
            continue;
        }
        for f in std::fs::read_dir(entry.path()).expect("partition dir").flatten() {
            if f.file_name().to_string_lossy().ends_with(".log") {
                total += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn consumer_offsets_are_compacted_and_the_latest_commit_survives() {
    // The script below shrinks `__consumer_offsets` segments so that compaction shows: clients may
    // only reconfigure it once it is no longer protected.
    let config = "retention_check_interval_ms = 100\nprotected_topics = []\n";
    let options = BrokerOptions { config_toml: Some(config.into()), ..Default::default() };
    let mut broker = Broker::start_with(options);
    let topic = unique_topic("commits");
    run_python_json("import sys\nfrom kafka.admin import KafkaAdminClient, NewTopic\nKafkaAdminClient(bootstrap_servers=sys.argv[1]).create_topics([NewTopic(sys.argv[2], 4, 1)])\nprint('{}')", &[&broker.bootstrap(), &topic], b"");
    let commits = 400;
    let out = run_python_json(COMMITS, &["commit", &broker.bootstrap(), &topic, &commits.to_string()], b"");
    let want: BTreeMap<String, Value> = (0..4)
        .map(|p| (p.to_string(), serde_json::json!([(commits - 1) * 10 + p, format!("m{}", commits - 1)])))
        .collect();
    assert_eq!(serde_json::to_value(&want).unwrap(), out);

    // 400 commits of 4 partitions are ~100 KB of records: compaction brings them down to the last
    // segments' worth. Polled: the cleaner runs on its own schedule.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut size = offsets_topic_bytes(broker.data_dir());
    while size > 24 << 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        size = offsets_topic_bytes(broker.data_dir());
    }
    assert!(size <= 24 << 10, "__consumer_offsets still holds {size} bytes: {}", broker.log_tail());

    broker.kill9();
    broker.restart();
    let out = run_python_json(COMMITS, &["read", &broker.bootstrap(), &topic, "0"], b"");
    assert_eq!(serde_json::to_value(&want).unwrap(), out, "latest commits after compaction and restart");
}
