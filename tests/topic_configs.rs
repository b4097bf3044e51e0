//! Topic configs changed after creation (kafka-python's alter_configs): validated, visible in
//! DescribeConfigs as dynamic topic configs, kept across a restart, and applied to the open
//! partition at once (a smaller segment.bytes makes the log roll on the next appends).

mod common;

use common::{run_python_json, unique_topic, Broker};

const SCRIPT: &str = r#"
import json, sys
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
boot, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]
admin = KafkaAdminClient(bootstrap_servers=boot)
res = ConfigResource(ConfigResourceType.TOPIC, topic)
out = {}
if mode == "alter":
    admin.create_topics([NewTopic(topic, 1, 1)])
    p = KafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=0)
    for i in range(5):
        p.send(topic, value=b"x" * 1000, partition=0).get(timeout=10)
    out["bad"] = str(admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.bytes": "-5"})])["topic"][topic])
    out["ok"] = str(admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.bytes": "4096", "flush.messages": "1"})])["topic"][topic])
    for i in range(20):
        p.send(topic, value=b"y" * 1000, partition=0).get(timeout=10)
    p.close()
d = admin.describe_configs([res], config_filter="all")["topic"][topic]
out["segment.bytes"] = [d["segment.bytes"]["value"], d["segment.bytes"]["config_source"]]
out["retention.ms"] = [d["retention.ms"]["value"], d["retention.ms"]["config_source"]]
print(json.dumps(out))
"#;

fn segment_files(broker: &Broker, topic: &str) -> usize {
    std::fs::read_dir(broker.data_dir().join(format!("{topic}-0")))
        .expect("partition dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log")))
        .count()
}

#[test]
fn altered_topic_configs_apply_at_once_and_persist() {
    let mut broker = Broker::start();
    let topic = unique_topic("cfg");
    let out = run_python_json(SCRIPT, &[&broker.bootstrap(), &topic, "alter"], b"");
    assert!(out["bad"].as_str().is_some_and(|s| s.contains("InvalidConfiguration")), "{out}");
    assert_eq!(out["ok"], "OK", "{out}");
    assert_eq!(out["segment.bytes"], serde_json::json!(["4096", "DYNAMIC_TOPIC_CONFIG"]), "{out}");
    assert_eq!(out["retention.ms"][1], "DEFAULT_CONFIG", "{out}");
    // 20 records of 1 KB after the change with 4 KiB segments: the open log rolled many times.
    assert!(segment_files(&broker, &topic) >= 5, "segments: {}", segment_files(&broker, &topic));
    broker.terminate();
    broker.restart();
    let out = run_python_json(SCRIPT, &[&broker.bootstrap(), &topic, "describe"], b"");
    assert_eq!(out["segment.bytes"], serde_json::json!(["4096", "DYNAMIC_TOPIC_CONFIG"]), "after restart: {out}");
}
