//! Fetch with long poll. Partitions owned by this core are read into DMA buffer views (or tail-cache
//! `Bytes`) that go to the socket as they are (zero-copy, see `response`); partitions on other cores
//! come back as one copy. When fewer than `min_bytes` are available, the request waits until data
//! arrives on any of its partitions or `max_wait_ms` passes, then reads again.
//! No fetch sessions (KIP-227): we answer session id 0, which tells clients to send full requests.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::partition::BatchBytes;
use event_listener::Event;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};

use crate::core::{FetchedRecords, Shard};
use crate::kafka::response::RecordsSplice;
use crate::partition::PartitionError;

struct Wanted {
    topic: Option<String>,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> (FetchResponse, Vec<RecordsSplice>) {
    let cat = shard.catalog();
    // Resolve names (v13+ requests name topics by id only).
    let topics: Vec<(kafka_protocol::messages::fetch_request::FetchTopic, Option<String>)> = req
        .topics
        .into_iter()
        .map(|t| {
            let name = if version >= 13 {
                cat.by_id(t.topic_id.as_bytes()).map(|m| m.name.clone())
            } else {
                Some(t.topic.0.to_string())
            };
            (t, name)
        })
        .collect();
    let wanted: Vec<Vec<Wanted>> = topics
        .iter()
        .map(|(t, name)| {
            t.partitions
                .iter()
                .map(|p| Wanted {
                    topic: name.clone(),
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.max(0) as usize,
                })
                .collect()
        })
        .collect();
    let max_wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(shard.config.max_fetch_wait_ms));
    let deadline = Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let response_max = if version >= 3 && req.max_bytes > 0 { req.max_bytes as usize } else { usize::MAX };
    loop {
        let (results, total, any_error) = read_all(shard, &wanted, response_max, version).await;
        let now = Instant::now();
        if total >= min_bytes || any_error || now >= deadline {
            return build(topics, results, version);
        }
        wait_for_any(shard, &wanted, &results, deadline).await;
        if Instant::now() >= deadline {
            let (results, _, _) = read_all(shard, &wanted, response_max, version).await;
            return build(topics, results, version);
        }
    }
}

type PartitionResult = (i32, Result<(RecordsSplice, i64, i64), PartitionError>);

async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[Vec<Wanted>],
    response_max: usize,
    version: i16,
) -> (Vec<Vec<PartitionResult>>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(wanted.len());
    for topic in wanted {
        let mut parts = Vec::with_capacity(topic.len());
        for w in topic {
            let res = match &w.topic {
                None => Err(PartitionError::new(
                    if version >= 13 { ResponseError::UnknownTopicId } else { ResponseError::UnknownTopicOrPartition },
                    "unknown topic",
                )),
                Some(name) => {
                    let remaining = response_max.saturating_sub(total);
                    if remaining == 0 && total > 0 {
                        watermarks_only(shard, name, w.partition).await
                    } else {
                        let limit = w.max_bytes.min(remaining).max(1);
                        match shard.fetch(name, w.partition, w.offset, limit).await {
                            Ok(f) => Ok(to_splice(f, total > 0, remaining)),
                            Err(e) => Err(e),
                        }
                    }
                }
            };
            match &res {
                Ok((s, _, _)) => total += s.len,
                Err(_) => any_error = true,
            }
            parts.push((w.partition, res));
        }
        out.push(parts);
    }
    (out, total, any_error)
}

/// Turns a read into records; after the first non-empty partition, a first batch that would
/// overflow the response limit is left for the next fetch (KIP-74: only the very first batch of a
/// response may exceed the limits).
fn to_splice(f: FetchedRecords, not_first: bool, remaining: usize) -> (RecordsSplice, i64, i64) {
    let mut s = RecordsSplice::default();
    let (hw, start) = match f {
        FetchedRecords::Local(batches, hw, start) => {
            for b in batches {
                s.push(b.payload);
            }
            (hw, start)
        }
        FetchedRecords::Remote(r) => {
            for b in r.batches {
                s.push(BatchBytes::Memory(b));
            }
            (r.high_watermark, r.log_start_offset)
        }
    };
    if not_first && s.len > remaining {
        s = RecordsSplice::default();
    }
    (s, hw, start)
}

async fn watermarks_only(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
) -> Result<(RecordsSplice, i64, i64), PartitionError> {
    let (start, hw) =
        shard.on_leader(topic, partition, |p| async move { Ok((p.log_start_offset(), p.high_watermark())) }).await?;
    Ok((RecordsSplice::default(), hw, start))
}

/// Waits until any partition with no data gets some, or the deadline.
async fn wait_for_any(shard: &Rc<Shard>, wanted: &[Vec<Wanted>], results: &[Vec<PartitionResult>], deadline: Instant) {
    let woke = Rc::new(Event::new());
    let listener = woke.listen();
    let timeout = deadline.saturating_duration_since(Instant::now());
    for (topic, res) in wanted.iter().zip(results) {
        for (w, (_, r)) in topic.iter().zip(res) {
            let (Some(name), Ok((s, hw, _))) = (&w.topic, r) else { continue };
            if s.len > 0 || w.offset < *hw {
                continue;
            }
            let (shard, woke, name, partition, offset) =
                (shard.clone(), woke.clone(), name.clone(), w.partition, w.offset);
            glommio::spawn_local(async move {
                let waited = shard.on_partition(&name, partition, move |p| async move {
                    let _ = glommio::timer::timeout(timeout, async {
                        p.wait_for_data(offset).await;
                        Ok(())
                    })
                    .await;
                    Ok(())
                });
                // Whether it got data, timed out or is gone: the fetch looks again.
                let _ = waited.await;
                woke.notify(1);
            })
            .detach();
        }
    }
    // Shutdown cuts a long poll short: the connection answers with what there is and closes.
    let _ = glommio::timer::timeout(timeout, async {
        futures_lite::future::or(listener, shard.wait_shutdown()).await;
        Ok(())
    })
    .await;
}

fn build(
    topics: Vec<(kafka_protocol::messages::fetch_request::FetchTopic, Option<String>)>,
    results: Vec<Vec<PartitionResult>>,
    version: i16,
) -> (FetchResponse, Vec<RecordsSplice>) {
    let mut splices = Vec::new();
    let mut responses = Vec::with_capacity(topics.len());
    for ((t, _), parts) in topics.into_iter().zip(results) {
        let mut partitions = Vec::with_capacity(parts.len());
        for (index, r) in parts {
            let p = PartitionData::default().with_partition_index(index).with_preferred_read_replica(BrokerId(-1));
            let p = match r {
                Ok((s, hw, start)) => {
                    let p = p
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(start)
                        .with_records(s.field());
                    splices.push(s);
                    p
                }
                Err(e) => p
                    .with_error_code(e.code.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_records(Some(bytes::Bytes::new())),
            };
            partitions.push(p);
        }
        let topic = FetchableTopicResponse::default().with_partitions(partitions);
        let topic = if version >= 13 { topic.with_topic_id(t.topic_id) } else { topic.with_topic(t.topic) };
        responses.push(topic);
    }
    (FetchResponse::default().with_responses(responses), splices)
}
