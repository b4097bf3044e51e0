//! Builds the Prometheus metric families of a scrape from every core's `CoreMetrics`. Latencies are
//! summaries whose quantiles come from the HDR histograms (cumulative since start), in seconds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};

use super::{latency_histogram, BrokerMetrics};

/// Quantiles reported for every latency summary (1.0 is the maximum).
pub const QUANTILES: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

fn labels(pairs: &[(&str, String)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.clone());
            l
        })
        .collect()
}

struct Family {
    inner: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_string());
        inner.set_help(help.to_string());
        inner.set_field_type(kind);
        Family { inner }
    }

    /// One sample per (labels, value), the value set by `set` (counter or gauge).
    fn scalars(
        mut self,
        samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
        set: impl Fn(&mut Metric, f64),
    ) -> MetricFamily {
        for (l, v) in samples {
            let mut m = Metric::default();
            m.set_label(labels(&l));
            set(&mut m, v);
            self.inner.mut_metric().push(m);
        }
        self.inner
    }

    fn counter(self, samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>) -> MetricFamily {
        self.scalars(samples, |m, v| {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        })
    }

    fn gauge(self, samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>) -> MetricFamily {
        self.scalars(samples, |m, v| {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        })
    }

    /// Microsecond histograms reported in seconds.
    fn summary(
        mut self,
        samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, Histogram<u64>)>,
    ) -> MetricFamily {
        for (l, h) in samples {
            let mut s = Summary::default();
            s.set_sample_count(h.len());
            s.set_sample_sum(h.mean() * h.len() as f64 / 1e6);
            s.set_quantile(
                QUANTILES
                    .iter()
                    .map(|&q| {
                        let mut qq = Quantile::default();
                        qq.set_quantile(q);
                        let v = if q >= 1.0 { h.max() } else { h.value_at_quantile(q) };
                        qq.set_value(if h.is_empty() { 0.0 } else { v as f64 / 1e6 });
                        qq
                    })
                    .collect(),
            );
            let mut m = Metric::default();
            m.set_label(labels(&l));
            m.set_summary(s);
            self.inner.mut_metric().push(m);
        }
        self.inner
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map(|a| format!("{a:?}")).unwrap_or_else(|_| format!("key{key}"))
}

/// Every family of one scrape.
pub fn gather(m: &BrokerMetrics) -> Vec<MetricFamily> {
    let cores = m.cores.as_ref();
    let core = |c: usize| vec![("core", c.to_string())];
    let per_core = |f: &dyn Fn(&super::CoreMetrics) -> f64| -> Vec<(Vec<(&'static str, String)>, f64)> {
        cores.iter().map(|c| (core(c.core), f(c))).collect()
    };
    let mut out = Vec::new();

    // Requests per API: counts per core, latency merged over cores.
    let mut requests = Vec::new();
    let mut failed = Vec::new();
    let mut latency: HashMap<i16, Histogram<u64>> = HashMap::new();
    for c in cores {
        for (key, n, f, h) in c.api_stats() {
            let l = vec![("core", c.core.to_string()), ("api", api_name(key))];
            requests.push((l.clone(), n as f64));
            failed.push((l, f as f64));
            let _ = latency.entry(key).or_insert_with(latency_histogram).add(&h);
        }
    }
    let mut latency: Vec<(i16, Histogram<u64>)> = latency.into_iter().collect();
    latency.sort_by_key(|(k, _)| *k);
    out.push(
        Family::new("sluice_requests_total", "Kafka requests handled, per core and API.", MetricType::COUNTER)
            .counter(requests),
    );
    out.push(
        Family::new(
            "sluice_request_failures_total",
            "Requests that closed their connection (undecodable, unsupported).",
            MetricType::COUNTER,
        )
        .counter(failed),
    );
    out.push(
        Family::new(
            "sluice_request_latency_seconds",
            "Time from a request's decode to its response being ready, per API (HDR, since start).",
            MetricType::SUMMARY,
        )
        .summary(latency.into_iter().map(|(k, h)| (vec![("api", api_name(k))], h))),
    );

    let n = |f: fn(&super::CoreMetrics) -> &std::sync::atomic::AtomicU64| {
        move |c: &super::CoreMetrics| f(c).load(Ordering::Relaxed) as f64
    };
    out.push(
        Family::new("sluice_network_received_bytes_total", "Bytes of request frames received.", MetricType::COUNTER)
            .counter(per_core(&n(|c| &c.bytes_in))),
    );
    out.push(
        Family::new("sluice_network_sent_bytes_total", "Bytes of response frames sent.", MetricType::COUNTER)
            .counter(per_core(&n(|c| &c.bytes_out))),
    );
    out.push(
        Family::new("sluice_connections", "Open client connections.", MetricType::GAUGE)
            .gauge(per_core(&|c| c.connections_open.load(Ordering::Relaxed) as f64)),
    );
    out.push(
        Family::new("sluice_connections_accepted_total", "Client connections accepted.", MetricType::COUNTER)
            .counter(per_core(&n(|c| &c.connections_accepted))),
    );
    out.push(
        Family::new(
            "sluice_connections_refused_total",
            "Connections refused at max_connections_per_core.",
            MetricType::COUNTER,
        )
        .counter(per_core(&n(|c| &c.connections_refused))),
    );
    out.push(
        Family::new(
            "sluice_cross_core_requests_sent_total",
            "Requests this core forwarded to the core owning a partition or group.",
            MetricType::COUNTER,
        )
        .counter(per_core(&n(|c| &c.cross_core_sent))),
    );
    out.push(
        Family::new(
            "sluice_cross_core_requests_served_total",
            "Requests this core served for other cores.",
            MetricType::COUNTER,
        )
        .counter(per_core(&n(|c| &c.cross_core_served))),
    );
    out.push(
        Family::new(
            "sluice_core_busy_seconds_total",
            "Time the core's executor spent running tasks and polling I/O.",
            MetricType::COUNTER,
        )
        .counter(per_core(&|c| c.busy_ns.load(Ordering::Relaxed) as f64 / 1e9)),
    );

    let storage: Vec<(usize, Histogram<u64>, Histogram<u64>)> = cores
        .iter()
        .map(|c| {
            let (w, s) = c.storage_latency();
            (c.core, w, s)
        })
        .collect();
    out.push(
        Family::new(
            "sluice_storage_write_latency_seconds",
            "O_DIRECT segment writes (one per group of batches).",
            MetricType::SUMMARY,
        )
        .summary(storage.iter().map(|(c, w, _)| (core(*c), w.clone()))),
    );
    out.push(
        Family::new("sluice_storage_sync_latency_seconds", "fdatasync of segment files.", MetricType::SUMMARY)
            .summary(storage.iter().map(|(c, _, s)| (core(*c), s.clone()))),
    );

    // Partitions and groups, as last published by their cores.
    let snapshots: Vec<super::CoreSnapshot> = cores.iter().map(|c| c.snapshot()).collect();
    let mut parts: Vec<&super::PartitionSample> = snapshots.iter().flat_map(|s| &s.partitions).collect();
    parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let tp = |p: &super::PartitionSample| vec![("topic", p.topic.clone()), ("partition", p.partition.to_string())];
    let gauge = |name: &str, help: &str, f: &dyn Fn(&super::PartitionSample) -> f64| {
        Family::new(name, help, MetricType::GAUGE).gauge(parts.iter().map(|p| (tp(p), f(p))))
    };
    out.push(gauge("sluice_partition_log_start_offset", "First readable offset.", &|p| p.log_start_offset as f64));
    out.push(gauge("sluice_partition_log_end_offset", "Offset the next record gets.", &|p| p.log_end_offset as f64));
    out.push(gauge("sluice_partition_high_watermark", "Offset up to which consumers may read.", &|p| {
        p.high_watermark as f64
    }));
    out.push(gauge("sluice_partition_size_bytes", "Bytes of the partition's segments.", &|p| p.size_bytes as f64));
    let r = |p: &super::PartitionSample| p.replication;
    out.push(gauge("sluice_partition_leader", "1 where this broker leads the partition, 0 where it follows.", &|p| {
        f64::from(u8::from(r(p).leader))
    }));
    out.push(gauge("sluice_partition_leader_epoch", "Leader epoch this replica is at.", &|p| {
        f64::from(r(p).leader_epoch)
    }));
    out.push(gauge("sluice_partition_replicas", "Replicas of the partition (on its leader; 0 on followers).", &|p| {
        r(p).replicas as f64
    }));
    out.push(gauge(
        "sluice_partition_in_sync_replicas",
        "In-sync replicas, the leader included (on its leader; 0 on followers).",
        &|p| r(p).in_sync_replicas as f64,
    ));
    out.push(gauge(
        "sluice_partition_under_replicated",
        "1 where this broker leads the partition and its ISR is smaller than its replica set (Kafka's \
         UnderReplicatedPartitions, per partition).",
        &|p| f64::from(u8::from(r(p).leader && r(p).in_sync_replicas < r(p).replicas)),
    ));
    out.push(gauge(
        "sluice_partition_follower_max_lag_records",
        "On the leader: its log end minus the smallest log end a follower reported (a follower not \
         heard from in this leadership counts from 0).",
        &|p| r(p).max_follower_lag as f64,
    ));
    out.push(
        Family::new(
            "sluice_partition_records_appended_total",
            "Records of produced batches appended since start.",
            MetricType::COUNTER,
        )
        .counter(parts.iter().map(|p| (tp(p), p.records_appended as f64))),
    );
    out.push(
        Family::new(
            "sluice_partition_bytes_appended_total",
            "Bytes of produced batches appended since start.",
            MetricType::COUNTER,
        )
        .counter(parts.iter().map(|p| (tp(p), p.bytes_appended as f64))),
    );

    let hw: HashMap<(&str, i32), i64> =
        parts.iter().map(|p| ((p.topic.as_str(), p.partition), p.high_watermark)).collect();
    let mut commits: Vec<&super::CommitSample> = snapshots.iter().flat_map(|s| &s.commits).collect();
    commits.sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    let gtp = |c: &super::CommitSample| {
        vec![("group", c.group.clone()), ("topic", c.topic.clone()), ("partition", c.partition.to_string())]
    };
    out.push(
        Family::new("sluice_group_committed_offset", "Offset a consumer group committed.", MetricType::GAUGE)
            .gauge(commits.iter().map(|c| (gtp(c), c.offset as f64))),
    );
    out.push(
        Family::new("sluice_group_lag", "High watermark minus the group's committed offset.", MetricType::GAUGE).gauge(
            commits.iter().filter_map(|c| {
                let hw = hw.get(&(c.topic.as_str(), c.partition))?;
                Some((gtp(c), (hw - c.offset).max(0) as f64))
            }),
        ),
    );
    out.retain(|f| !f.get_metric().is_empty());
    out
}
