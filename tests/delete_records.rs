//! DeleteRecords through kafka-python: the low watermark moves forward durably (it survives a
//! kill -9), reads below it are out of range, and an offset past the high watermark is refused.

mod common;

use common::{run_python_json, unique_topic, Broker};

const SCRIPT: &str = r#"
import json, sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import OffsetOutOfRangeError
boot, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]
tp = TopicPartition(topic, 0)
admin = KafkaAdminClient(bootstrap_servers=boot)
out = {}
if mode == "write":
    admin.create_topics([NewTopic(topic, 1, 1)])
    p = KafkaProducer(bootstrap_servers=boot, acks="all")
    for i in range(20):
        p.send(topic, value=b"r%d" % i, partition=0)
    p.flush()
    out["deleted"] = admin.delete_records({tp: 12})[tp]["low_watermark"]
    try:
        admin.delete_records({tp: 999})
        out["past_end"] = "accepted"
    except OffsetOutOfRangeError:
        out["past_end"] = "OffsetOutOfRange"
c = KafkaConsumer(bootstrap_servers=boot, group_id=None, consumer_timeout_ms=5000, auto_offset_reset="earliest")
c.assign([tp])
out["begin"] = c.beginning_offsets([tp])[tp]
out["end"] = c.end_offsets([tp])[tp]
out["by_time"] = c.offsets_for_times({tp: 0})[tp].offset
c.seek_to_beginning(tp)
out["values"] = [m.value.decode() for m in c]
print(json.dumps(out))
"#;

#[test]
fn delete_records_moves_the_low_watermark_durably() {
    let mut broker = Broker::start();
    let topic = unique_topic("delrec");
    let out = run_python_json(SCRIPT, &[&broker.bootstrap(), &topic, "write"], b"");
    assert_eq!(out["deleted"], 12, "{out}");
    assert_eq!(out["past_end"], "OffsetOutOfRange", "{out}");
    assert_eq!((out["begin"].as_i64(), out["end"].as_i64()), (Some(12), Some(20)), "{out}");
    // A timestamp lookup never answers below the log start, even inside a batch that straddles it.
    assert_eq!(out["by_time"], 12, "{out}");
    let expected: Vec<String> = (12..20).map(|i| format!("r{i}")).collect();
    assert_eq!(out["values"], serde_json::json!(expected), "{out}");
    broker.kill9();
    broker.restart();
    let out = run_python_json(SCRIPT, &[&broker.bootstrap(), &topic, "read"], b"");
    assert_eq!((out["begin"].as_i64(), out["end"].as_i64()), (Some(12), Some(20)), "after kill -9: {out}");
    assert_eq!(out["by_time"], 12, "{out}");
    assert_eq!(out["values"], serde_json::json!(expected), "{out}");
}
