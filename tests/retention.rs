//! Per-topic retention runs in the background on each core: with `retention.bytes` or
//! `retention.ms` set on a topic (small `segment.bytes`), old segments go, ListOffsets earliest
//! moves forward, and what remains is intact; a topic without limits keeps everything.

mod common;

use common::{run_python_json, unique_topic, Broker, BrokerOptions};

const SCRIPT: &str = r#"
import json, sys, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
boot, by_bytes, by_time, keep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
admin = KafkaAdminClient(bootstrap_servers=boot)
admin.create_topics([
    NewTopic(by_bytes, 1, 1, topic_configs={"segment.bytes": "4096", "retention.bytes": "8192"}),
    NewTopic(by_time, 1, 1, topic_configs={"segment.bytes": "4096", "retention.ms": "1"}),
    NewTopic(keep, 1, 1, topic_configs={"segment.bytes": "4096"}),
])
p = KafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=0)
for t in (by_bytes, by_time, keep):
    for i in range(40):
        p.send(t, value=(b"%04d" % i) * 250, partition=0).get(timeout=10)
c = KafkaConsumer(bootstrap_servers=boot, group_id=None, consumer_timeout_ms=3000)
tps = [TopicPartition(t, 0) for t in (by_bytes, by_time, keep)]
deadline = time.time() + 20
while time.time() < deadline:
    begin = c.beginning_offsets(tps)
    if begin[tps[0]] > 0 and begin[tps[1]] > 0:
        break
    time.sleep(0.1)
out = {"begin": [begin[tp] for tp in tps], "end": [c.end_offsets(tps)[tp] for tp in tps]}
c.assign([tps[0]])
c.seek_to_beginning(tps[0])
out["first_value"] = [m.value[:4].decode() for m in c][:1]
print(json.dumps(out))
"#;

#[test]
fn retention_by_bytes_and_by_time_moves_the_log_start() {
    let options =
        BrokerOptions { config_toml: Some("retention_check_interval_ms = 200\n".into()), ..Default::default() };
    let broker = Broker::start_with(options);
    let (a, b, k) = (unique_topic("ret-bytes"), unique_topic("ret-time"), unique_topic("ret-keep"));
    let out = run_python_json(SCRIPT, &[&broker.bootstrap(), &a, &b, &k], b"");
    let begin: Vec<i64> = out["begin"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let end: Vec<i64> = out["end"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(end, vec![40, 40, 40], "{out}");
    // 1 KB records, 4 KiB segments: retention.bytes 8192 keeps a few segments; retention.ms keeps
    // only the active one; the topic without limits keeps all.
    assert!(begin[0] > 0 && begin[0] < 40 - 4, "retention.bytes: {out}");
    assert!(begin[1] > begin[0], "retention.ms deletes more: {out}");
    assert_eq!(begin[2], 0, "{out}");
    // The first record still readable is the one at the new log start.
    assert_eq!(out["first_value"], serde_json::json!([format!("{:04}", begin[0])]), "{out}");
}
