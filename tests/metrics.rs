//! The Prometheus endpoint (`metrics_listen`): scraped repeatedly while kafka-python produces to a
//! 4-partition topic (fsync per batch) and a group commits offsets. Every scrape must parse with an
//! independent parser (`prometheus-parse`) and request counters never go down; at the end the
//! partition counters and gauges match what was produced exactly, the group lag is high watermark
//! minus commit, and the storage and per-API latency summaries have samples.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, run_python_json, unique_topic, Broker, BrokerOptions};
use prometheus_parse::{Scrape, Value};

const RECORDS_PER_PARTITION: i64 = 500;
const VALUE_BYTES: usize = 100;

const SCRIPT: &str = r#"
import json, sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata
boot, topic, per_partition, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
KafkaAdminClient(bootstrap_servers=boot).create_topics([NewTopic(topic, 4, 1, topic_configs={"flush.messages": "1"})])
p = KafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=2)
for i in range(per_partition * 4):
    p.send(topic, value=b"x" * size, partition=i % 4)
p.flush()
commits = {0: 100, 1: 250, 2: 500, 3: 0}
c = KafkaConsumer(bootstrap_servers=boot, group_id="metrics-group", enable_auto_commit=False)
c.commit({TopicPartition(topic, tp): OffsetAndMetadata(o, "", -1) for tp, o in commits.items()})
print(json.dumps(commits))
"#;

/// GET /metrics over a plain socket; the body.
fn scrape(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no header/body separator")?;
    if !head.starts_with("HTTP/1.1 200") || !head.to_ascii_lowercase().contains("content-type: text/plain") {
        return Err(format!("unexpected response head: {head}"));
    }
    Ok(body.to_string())
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("unparseable scrape: {e}\n{body}"))
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Samples of `metric` whose labels include all of `labels`: (their labels, value).
fn samples<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(&'a prometheus_parse::Labels, f64)> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .filter(|x| !matches!(x.value, Value::Summary(_) | Value::Histogram(_)))
        .map(|x| (&x.labels, value(&x.value)))
        .collect()
}

fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(s, metric, labels).iter().map(|(_, v)| v).sum()
}

#[test]
fn metrics_match_what_was_produced_and_committed() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!("metrics_listen = \"{metrics_addr}\"\nmetrics_publish_interval_ms = 100\n");
    let broker = Broker::start_with(BrokerOptions { config_toml: Some(toml), ..Default::default() });
    let topic = unique_topic("metrics");

    // Scrape continuously while the client runs.
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (done, addr) = (done.clone(), metrics_addr.clone());
        std::thread::spawn(move || {
            let mut scrapes = 0;
            let mut last_requests = 0.0;
            while !done.load(Ordering::SeqCst) {
                let body = scrape(&addr).expect("scrape during the run");
                let s = parse(&body);
                let requests = sum(&s, "sluice_requests_total", &[]);
                assert!(requests >= last_requests, "sluice_requests_total went down: {last_requests} -> {requests}");
                last_requests = requests;
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    };
    let commits = run_python_json(
        SCRIPT,
        &[&broker.bootstrap(), &topic, &RECORDS_PER_PARTITION.to_string(), &VALUE_BYTES.to_string()],
        b"",
    );
    done.store(true, Ordering::SeqCst);
    let scrapes = scraper.join().expect("scraper thread");
    assert!(scrapes >= 2, "only {scrapes} scrapes during the run");

    // Cores publish partition and group state every 100 ms: wait for the final state to show.
    let want_records = (4 * RECORDS_PER_PARTITION) as f64;
    let t = [("topic", topic.as_str())];
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = parse(&scrape(&metrics_addr).expect("final scrape"));
        let appended = sum(&s, "sluice_partition_records_appended_total", &t);
        let lags = samples(&s, "sluice_group_lag", &[("group", "metrics-group"), ("topic", &topic)]).len();
        if (appended == want_records && lags == 4) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    assert_eq!(sum(&s, "sluice_partition_records_appended_total", &t), want_records);
    let appended_bytes = sum(&s, "sluice_partition_bytes_appended_total", &t);
    assert!(appended_bytes >= want_records * VALUE_BYTES as f64, "bytes appended {appended_bytes}");
    assert!(sum(&s, "sluice_network_received_bytes_total", &[]) >= appended_bytes);
    assert!(sum(&s, "sluice_network_sent_bytes_total", &[]) > 0.0);
    let mut hw = BTreeMap::new();
    for (labels, v) in samples(&s, "sluice_partition_high_watermark", &t) {
        hw.insert(labels.get("partition").expect("partition label").to_string(), v);
    }
    assert_eq!(hw.len(), 4, "{hw:?}");
    assert!(hw.values().all(|&v| v == RECORDS_PER_PARTITION as f64), "{hw:?}");
    assert_eq!(sum(&s, "sluice_partition_log_end_offset", &t), want_records);
    assert_eq!(sum(&s, "sluice_partition_log_start_offset", &t), 0.0);
    assert!(sum(&s, "sluice_partition_size_bytes", &t) >= appended_bytes);

    for p in 0..4 {
        let committed = commits[p.to_string()].as_i64().expect("commit") as f64;
        let labels = [("group", "metrics-group"), ("topic", topic.as_str()), ("partition", &p.to_string())];
        assert_eq!(sum(&s, "sluice_group_committed_offset", &labels), committed, "partition {p}");
        assert_eq!(sum(&s, "sluice_group_lag", &labels), RECORDS_PER_PARTITION as f64 - committed, "partition {p}");
    }

    assert!(sum(&s, "sluice_requests_total", &[("api", "Produce")]) >= 1.0);
    assert!(sum(&s, "sluice_requests_total", &[("api", "OffsetCommit")]) >= 1.0);
    assert_eq!(sum(&s, "sluice_request_failures_total", &[]), 0.0);
    assert!(sum(&s, "sluice_connections_accepted_total", &[]) >= 1.0);
    assert!(sum(&s, "sluice_core_busy_seconds_total", &[]) > 0.0);
    assert_eq!(samples(&s, "sluice_cross_core_requests_sent_total", &[]).len(), 2, "one per core");

    // Latency summaries: quantiles in seconds, ordered, with as many samples as requests.
    let summary = |metric: &str, labels: &[(&str, &str)]| {
        s.samples
            .iter()
            .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .find_map(|x| match &x.value {
                Value::Summary(q) => Some(q.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no summary {metric} {labels:?}"))
    };
    let produce = summary("sluice_request_latency_seconds", &[("api", "Produce")]);
    assert!(produce.windows(2).all(|w| w[0].count <= w[1].count), "quantiles ordered: {produce:?}");
    assert!(produce.iter().all(|q| q.count > 0.0 && q.count < 60.0), "{produce:?}");
    let synced: f64 = (0..2)
        .map(|c| {
            s.samples
                .iter()
                .filter(|x| x.metric == "sluice_storage_sync_latency_seconds_count")
                .filter(|x| x.labels.get("core") == Some(c.to_string().as_str()))
                .map(|x| value(&x.value))
                .sum::<f64>()
        })
        .sum();
    assert!(synced >= 1.0, "flush.messages=1 fsyncs are measured");
}
