//! The core's periodic jobs: retention and compaction, idempotent-producer snapshots, and the
//! metrics the exporter thread reads. Modules above the core start their own jobs (the group
//! coordinator's timers, the replication fetchers) the same way, with `every`.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use tracing::{info, warn};

use super::Shard;
use crate::partition::Partition;

/// Runs `job` every `interval_ms` on this core until shutdown (first run after one interval).
pub fn every<F, Fut>(shard: &Rc<Shard>, interval_ms: u64, mut job: F)
where
    F: FnMut(Rc<Shard>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    assert!(interval_ms > 0, "a periodic job needs a positive interval");
    let s = shard.clone();
    glommio::spawn_local(async move {
        while s.unless_shutdown(glommio::timer::sleep(Duration::from_millis(interval_ms))).await.is_some() {
            job(s.clone()).await;
        }
    })
    .detach();
}

/// Starts the core's own periodic jobs.
pub fn start(shard: &Rc<Shard>) {
    shard.publish_metrics();
    every(shard, shard.config.retention_check_interval_ms, |s| async move {
        s.apply_retention().await;
        s.snapshot_producers().await;
    });
    every(shard, shard.config.metrics_publish_interval_ms, |s| async move { s.publish_metrics() });
}

impl Shard {
    /// Copies what the metrics exporter reads from this core's own state: partition offsets and
    /// append counters, storage latencies, executor busy time.
    pub fn publish_metrics(&self) {
        let partitions = self
            .partitions
            .borrow()
            .values()
            .map(|p| {
                let (records, bytes) = p.appended();
                crate::metrics::PartitionSample {
                    topic: p.topic.clone(),
                    partition: p.index,
                    log_start_offset: p.log_start_offset(),
                    log_end_offset: p.log_end_offset(),
                    high_watermark: p.high_watermark(),
                    size_bytes: p.size_bytes(),
                    records_appended: records,
                    bytes_appended: bytes,
                    replication: p.replication_sample(),
                }
            })
            .collect();
        self.metrics.publish_partitions(partitions);
        self.metrics.add_storage_latency(&sluice_io::latency::take());
        // executor_stats() hands over what accumulated since the previous call.
        let busy = glommio::executor().executor_stats().total_runtime();
        self.metrics.busy_ns.fetch_add(busy.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs retention and compaction on this core's partitions.
    pub async fn apply_retention(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            match p.apply_retention(now).await {
                Ok(0) => {}
                Ok(n) => info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted segments"),
                Err(e) => warn!(topic = %p.topic, partition = p.index, error = %e.message, "retention failed"),
            }
            match p.compact(self.config.cleaner_dedupe_buffer_bytes, now).await {
                Ok(None) => {}
                Ok(Some(stats)) if stats.segments_rewritten > 0 => crate::compaction::report(&p.topic, p.index, &stats),
                Ok(Some(_)) => {}
                Err(e) => warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed"),
            }
        }
    }

    /// Snapshots idempotent-producer state of this core's partitions (bounds rebuild at start-up).
    pub async fn snapshot_producers(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.snapshot_producers().await {
                warn!(topic = %p.topic, partition = p.index, error = %e, "producer snapshot failed");
            }
        }
    }
}
