//! The configuration reference (`sluice config-reference`, committed as docs/configuration.md),
//! generated so that it cannot drift from the code: defaults come from a serialized
//! `BrokerConfig::default()`, topic configs and their defaults from `TOPIC_CONFIGS` and
//! `TopicSettings`. What the code cannot say (unit, meaning) is in `BROKER_OPTIONS`, and a unit test
//! checks that it names every field of `BrokerConfig` and nothing else.

use std::collections::BTreeMap;

use crate::config::{BrokerConfig, TopicSettings, TOPIC_CONFIGS};

/// Documentation of one broker option (a TOML key; `log.x` is `x` in the `[log]` table).
pub struct OptionDoc {
    pub key: &'static str,
    pub unit: &'static str,
    pub doc: &'static str,
}

const fn opt(key: &'static str, unit: &'static str, doc: &'static str) -> OptionDoc {
    OptionDoc { key, unit, doc }
}

/// Every field of `BrokerConfig`, in the order of the reference.
pub const BROKER_OPTIONS: &[OptionDoc] = &[
    opt("data_dir", "path", "Where partitions and metadata live: a block-device filesystem (ext4, xfs) that supports O_DIRECT; tmpfs is refused."),
    opt("listen", "HOST:PORT", "Kafka listener. Every core listens on it (SO_REUSEPORT)."),
    opt("advertised_host", "host", "Host advertised to clients in Metadata. None: the listen host. Not allowed with `cluster.peers` (each peer's `kafka` address is advertised)."),
    opt("cores", "cores", "Executors, one pinned per core (the first N cores). None: every core."),
    opt("shutdown_timeout_ms", "ms", "From the first SIGTERM/SIGINT (or a core that failed), the process ends within this long (plus at most 1 s to sync the data directory's filesystem): the graceful path stops accepting, drains connections (up to 10 s), flushes and checkpoints every partition and exits 0; if it has not finished by then, the broker logs so and exits with code 3, like a kill -9 to recovery (nothing acknowledged is lost). A second signal exits at once with 128 + its number. The default covers a cluster broker's controlled shutdown (5 s) and the drain; a smaller value cuts the drain short."),
    opt("node_id", "id", "This broker's id in Metadata; `--node-id` overrides it. In a cluster it must be one of the `cluster.peers` ids."),
    opt("default_partitions", "count", "Partitions of an auto-created topic (Kafka `num.partitions`)."),
    opt("auto_create_topics", "bool", "Create unknown topics on Metadata requests that allow it (Kafka `auto.create.topics.enable`)."),
    opt("max_request_size_bytes", "bytes", "Largest request frame accepted (Kafka `socket.request.max.bytes`)."),
    opt("max_message_bytes", "bytes", "Largest record batch accepted (Kafka `message.max.bytes`); default of the topic config `max.message.bytes`."),
    opt("max_connections_per_core", "count", "Open client connections per core; further connections are closed at once."),
    opt("max_inflight_requests_per_connection", "count", "Requests read from one connection and not yet answered."),
    opt("max_queued_answer_bytes_per_connection", "bytes", "Bytes of answers computed and not yet written, per connection. While they exceed this the connection reads no further request (as Kafka mutes a channel until its answer is sent), and its Fetches, which run one at a time in request order, start only once the answers are within it or every earlier answer is written: one answer is always allowed however large, so a client that pipelines large Fetches and never reads holds about this plus one answer (until `connections_max_idle_ms` closes it), not `max_inflight_requests_per_connection` answers."),
    opt("connections_max_idle_ms", "ms", "A connection with no bytes moving in either direction and no request being handled for this long is closed (Kafka `connections.max.idle.ms`). A client that stops reading its answers or stops in the middle of a request counts as idle. At most a year."),
    opt("queued_max_request_bytes", "bytes", "Bytes of requests being received or handled per core (Kafka `queued.max.request.bytes`): a request's size is reserved before its body is read and given back when its handler is done; when none is left, connections stop reading (TCP backpressure) until bytes are given back. Must be at least `max_request_size_bytes`."),
    opt("max_fetch_wait_ms", "ms", "Upper bound applied to a Fetch's `max_wait_ms`."),
    opt("cross_core_channel_capacity", "messages", "Cross-core channel capacity per pair of cores."),
    opt("io_memory_bytes", "bytes", "glommio DMA memory per core, locked in RAM: size `LimitMEMLOCK` from it (`sluice tune` checks)."),
    opt("retention_check_interval_ms", "ms", "Retention, compaction and producer-state snapshots run this often on every core (Kafka `log.retention.check.interval.ms`)."),
    opt("offsets_topic_partitions", "count", "Partitions of `__consumer_offsets`, fixed when the topic is first created (Kafka `offsets.topic.num.partitions`)."),
    opt("protected_topics", "list", "Topics clients may not delete, reconfigure (AlterConfigs, IncrementalAlterConfigs) or give more partitions: refused with TOPIC_AUTHORIZATION_FAILED, as Redpanda's `kafka_nodelete_topics` (Kafka protects them only with ACLs). By default `__consumer_offsets`, whose loss would lose every committed offset; `[]` lets clients change it. Internal topics are never created by clients whatever this says."),
    opt("max_partitions_per_request", "count", "Most partitions one CreateTopics or CreatePartitions request may add, all its topics together (auto-creation included). A larger request is refused as a whole with POLICY_VIOLATION and nothing is created (Kafka's controller refuses requests over 10,000 metadata records the same way)."),
    opt("max_partitions_per_core", "count", "Most partitions (replicas, internal topics included) a broker hosts, per core: a creation that would take the broker past this x its cores is refused with INVALID_PARTITIONS before anything is created (Redpanda `topic_partitions_per_shard`). In a cluster every broker is assumed to have as many cores as the controller."),
    opt("descriptors_per_partition", "descriptors", "File descriptors budgeted per partition when admitting new ones: a partition holds its directory lock and its active segment's file open for as long as it is open (2), however many segments it has; sealed segments are opened through the per-core cache (`max_open_segment_files_per_core`). A creation whose partitions x this, plus the descriptors open now, would exceed RLIMIT_NOFILE less `reserved_descriptors` and the segment file caches is refused with INVALID_PARTITIONS (Redpanda `topic_fds_per_partition`). The broker raises its soft RLIMIT_NOFILE to the hard limit at start."),
    opt("max_open_segment_files_per_core", "files", "Most files of sealed (no longer written) segments each core keeps open for reads: a read of a segment not open opens it and, at the cap, closes the least recently used one (a read in flight keeps its own file until it ends). Set aside once per core in the descriptor budget (x cores), so the descriptors a broker needs do not grow with the number of segments its retention keeps (Kafka keeps every segment open). Under a low RLIMIT_NOFILE each core's cap is lowered (to at least 1) so that the caches take at most a quarter of the descriptors left after `reserved_descriptors`."),
    opt("segment_file_idle_close_ms", "ms", "A sealed segment's file no read used for this long is closed (between 1 and 1.25 times this after its last use)."),
    opt("reserved_descriptors", "descriptors", "File descriptors partitions may never use, kept for client and replication connections, listeners, io_uring rings and transient files. Creations that would use them are refused, and a partition that does not fit at start-up is left closed (logged) rather than leaving the listener without descriptors."),
    opt("metrics_listen", "HOST:PORT", "Prometheus metrics endpoint (`GET /metrics`); `--metrics` overrides it. None: no endpoint."),
    opt("metrics_publish_interval_ms", "ms", "How often each core copies partition offsets, group commits, storage latencies and busy time into what a scrape reads."),
    opt("cleaner_dedupe_buffer_bytes", "bytes", "Memory per core for the compaction key map (Kafka `log.cleaner.dedupe.buffer.size`): about 40 bytes per distinct key; more keys take several passes."),
    opt("log.segment_bytes", "bytes", "Default of the topic config `segment.bytes`."),
    opt("log.segment_ms", "ms", "Default of the topic config `segment.ms`."),
    opt("log.retention_ms", "ms", "Default of the topic config `retention.ms` (-1: forever)."),
    opt("log.retention_bytes", "bytes", "Default of the topic config `retention.bytes` (-1: unlimited)."),
    opt("log.flush_messages", "count", "Default of the topic config `flush.messages`: 1 fsyncs every batch (group commit); larger values leave it to `flush_ms`."),
    opt("log.flush_ms", "ms", "Default of the topic config `flush.ms`: fsync at least this often while there is unsynced data (the maximum: never)."),
    opt("cluster.peers", "list", "Every broker of the cluster, this one included, as `[[cluster.peers]]` tables `{ id, kafka, replication, raft }` (each address HOST:PORT; `kafka` is what Metadata advertises, `replication` is the listener followers fetch from, `raft` the cluster-metadata Raft listener). Ids and addresses unique, `node_id` present, at most 64. `--peer ID=KAFKA,REPLICATION,RAFT` (repeatable) replaces the list. Empty: a single node, every partition led here. With peers, topics, partition leaders and ISRs are cluster metadata replicated by Raft (`<data_dir>/__raft`), and the Raft leader is the controller."),
    opt("replication.default_replication_factor", "count", "Replicas of a topic created without a replication factor (Kafka `default.replication.factor`)."),
    opt("replication.min_insync_replicas", "count", "Default of the topic config `min.insync.replicas`."),
    opt("replication.replica_lag_time_max_ms", "ms", "A follower that has not caught up with the leader's log end for this long leaves the ISR (Kafka `replica.lag.time.max.ms`)."),
    opt("replication.broker_session_timeout_ms", "ms", "A broker the controller has not heard from (Raft heartbeats) for this long is dead: partitions it led get a new leader from their ISR, and it leaves every ISR (Kafka `broker.session.timeout.ms`)."),
    opt("replication.replica_fetch_wait_max_ms", "ms", "How long a leader holds a follower's fetch that finds no new data (Kafka `replica.fetch.wait.max.ms`)."),
    opt("replication.replica_fetch_max_bytes", "bytes", "Batch bytes per partition in one replica fetch (at least one batch is sent; Kafka `replica.fetch.max.bytes`)."),
    opt("replication.replica_fetch_backoff_ms", "ms", "Pause after a failed replica fetch (Kafka `replica.fetch.backoff.ms`)."),
];

/// The defaults, flattened to `key` / `table.key` with TOML-like values (`None` for unset options).
pub fn default_values() -> BTreeMap<String, Option<String>> {
    flatten(&BrokerConfig::default())
}

/// Any config flattened to `key` → value (nested tables as `table.key`).
pub fn flatten(config: &BrokerConfig) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    // Serializing a plain struct of strings, numbers and options cannot fail; an empty map would
    // make the reference test fail loudly rather than hide it.
    let value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    flatten_into("", &value, &mut out);
    out
}

fn flatten_into(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, Option<String>>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_object() {
                    flatten_into(&key, v, out);
                } else {
                    out.insert(key, (!v.is_null()).then(|| v.to_string()));
                }
            }
        }
        other => {
            out.insert(prefix.to_string(), Some(other.to_string()));
        }
    }
}

/// A value with its unit made readable: `8388608` bytes → `8388608 (8 MiB)`.
fn readable(value: &str, unit: &str) -> String {
    let Ok(n) = value.parse::<i64>() else { return format!("`{value}`") };
    let hint = match unit {
        _ if n == i64::MAX => Some("never".to_string()),
        "bytes" if n >= 1 << 10 => Some(bytes_text(n)),
        "ms" if n >= 1000 => Some(duration_text(n)),
        _ => None,
    };
    match hint {
        Some(h) => format!("`{value}` ({h})"),
        None => format!("`{value}`"),
    }
}

fn bytes_text(n: i64) -> String {
    const UNITS: [(&str, i64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{} {name}", n / size);
        }
    }
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn duration_text(ms: i64) -> String {
    const UNITS: [(&str, i64); 4] = [("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)];
    for (name, size) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{} {name}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// The broker option a topic config defaults to (`segment.bytes` → `log.segment_bytes`).
fn broker_default_of(topic_config: &str) -> Option<&'static str> {
    let underscored = topic_config.replace('.', "_");
    BROKER_OPTIONS
        .iter()
        .map(|o| o.key)
        .find(|k| *k == format!("log.{underscored}") || *k == format!("replication.{underscored}") || *k == underscored)
}

/// The Markdown reference.
pub fn markdown() -> String {
    let defaults = default_values();
    let mut s = String::new();
    s.push_str("# Configuration reference\n\n");
    s.push_str(
        "Generated by `sluice config-reference` from the code (`src/config_reference.rs`, `src/config/`); \
         a test fails when this file differs from its output. Regenerate with\n\
         `cargo run --release -- config-reference > docs/configuration.md`.\n\n",
    );
    s.push_str("## Broker options\n\n");
    s.push_str(
        "A TOML file given with `sluice serve --config FILE`; `--data-dir`, `--listen`, `--cores`, `--node-id` \
         and `--peer` override the file. Options named `log.x` go in a `[log]` table, `cluster.x` in `[cluster]`, `replication.x` in `[replication]`. None of them changes at run time: edit the \
         file and restart (SIGTERM flushes and checkpoints every partition first). The effective values \
         are logged at start (`config` lines at info level). Example: `tuning/sluice.toml`.\n\n",
    );
    s.push_str("| option | default | unit | changes at run time | meaning |\n|---|---|---|---|---|\n");
    for o in BROKER_OPTIONS {
        let default = match defaults.get(o.key) {
            Some(Some(v)) => readable(v, o.unit),
            Some(None) => "none".to_string(),
            None => "?".to_string(),
        };
        s.push_str(&format!("| `{}` | {default} | {} | no (restart) | {} |\n", o.key, o.unit, o.doc));
    }
    s.push_str("\n## Topic configs\n\n");
    s.push_str(
        "Kafka names, set per topic at creation (`sluice topic create NAME --config KEY=VALUE`, CreateTopics) \
         and changed at run time with AlterConfigs / IncrementalAlterConfigs (e.g. `kafka-configs.sh \
         --alter`): a change applies to the topic's open partitions at once. A topic without an override \
         uses the broker default.\n\n",
    );
    s.push_str("| config | default | broker default from | changes at run time | meaning |\n|---|---|---|---|---|\n");
    let base = TopicSettings::resolve(&BrokerConfig::default(), &[]);
    for (name, doc) in TOPIC_CONFIGS {
        let value = base.as_ref().ok().and_then(|t| t.value_of(name));
        let source = broker_default_of(name);
        let unit = source.and_then(|k| BROKER_OPTIONS.iter().find(|o| o.key == k)).map(|o| o.unit).unwrap_or("");
        let default = value.map(|v| readable(&v, unit)).unwrap_or_else(|| "?".into());
        let source = source.map(|k| format!("`{k}`")).unwrap_or_else(|| "fixed".into());
        s.push_str(&format!("| `{name}` | {default} | {source} | yes (AlterConfigs) | {doc} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn reference_names_every_field_of_broker_config_and_nothing_else() {
        let fields: BTreeSet<String> = default_values().into_keys().collect();
        let documented: BTreeSet<String> = BROKER_OPTIONS.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(documented.len(), BROKER_OPTIONS.len(), "an option is documented twice");
        let missing: Vec<_> = fields.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&fields).collect();
        assert!(missing.is_empty(), "BrokerConfig fields missing from BROKER_OPTIONS: {missing:?}");
        assert!(extra.is_empty(), "BROKER_OPTIONS entries that are not BrokerConfig fields: {extra:?}");
    }

    #[test]
    fn every_topic_config_has_a_default() {
        let md = markdown();
        for (name, _) in TOPIC_CONFIGS {
            let row = md.lines().find(|l| l.starts_with(&format!("| `{name}` |"))).expect("a row per topic config");
            assert!(!row.contains("| ? |"), "no default for {name}: {row}");
        }
    }

    #[test]
    fn readable_units() {
        assert_eq!(readable("8388608", "bytes"), "`8388608` (8 MiB)");
        assert_eq!(readable("604800000", "ms"), "`604800000` (7 d)");
        assert_eq!(readable("9223372036854775807", "count"), "`9223372036854775807` (never)");
        assert_eq!(readable("\"./data\"", "path"), "`\"./data\"`");
        assert_eq!(broker_default_of("segment.bytes"), Some("log.segment_bytes"));
        assert_eq!(broker_default_of("max.message.bytes"), Some("max_message_bytes"));
        assert_eq!(broker_default_of("compression.type"), None);
    }
}
