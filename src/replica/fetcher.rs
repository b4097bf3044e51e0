//! The follower side: on every core, one fetcher task per leader broker of this core's followed
//! partitions, over one connection to that broker's same core. Each round sends one fetch for all
//! of them (each at its log end, with the epoch it follows and its last fetched epoch); the answer
//! is appended at the leader's offsets, or a diverging tail is truncated first (KIP-320: the leader
//! names where the follower's last epoch ended on its side).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use tracing::{debug, info, warn};

use super::{read_frame, write_frame, ConnError};
use crate::core::Shard;
use crate::partition::Partition;
use crate::replication::{
    FetchPartition, FetchedPartition, FrameDecoder, Hello, Message, ReplicaFetch, MAX_FRAME_BYTES, NO_ERROR,
};

/// How long connecting to a leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Added to the leader's fetch wait before a fetch counts as lost.
const FETCH_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// Starts this core's fetcher manager: a fetcher per leader broker, started as partitions begin
/// following it; a fetcher ends when it has nothing left to follow.
pub fn start(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let running: Rc<RefCell<HashSet<i32>>> = Rc::new(RefCell::new(HashSet::new()));
        while !shard.shutting_down() {
            let listener = shard.followers_changed.listen();
            let leaders: HashSet<i32> =
                shard.local_partitions().iter().filter_map(|p| p.following().map(|(leader, _)| leader)).collect();
            for leader in leaders {
                if running.borrow_mut().insert(leader) {
                    let (s, r) = (shard.clone(), running.clone());
                    glommio::spawn_local(async move {
                        fetch_from(&s, leader).await;
                        r.borrow_mut().remove(&leader);
                        // Re-plan: partitions may have started following it meanwhile.
                        s.followers_changed.notify(usize::MAX);
                    })
                    .detach();
                }
            }
            futures_lite::future::or(listener, shard.wait_shutdown()).await;
        }
    })
    .detach();
}

/// This core's partitions following `leader`, with their topic ids and followed epochs.
fn followed(shard: &Shard, leader: i32) -> Vec<(Rc<Partition>, [u8; 16], i32)> {
    let catalog = shard.catalog();
    shard
        .local_partitions()
        .into_iter()
        .filter_map(|p| match p.following() {
            Some((l, leader_epoch)) if l == leader => {
                let id = catalog.topics.get(&p.topic)?.id;
                Some((p, id, leader_epoch))
            }
            _ => None,
        })
        .collect()
}

struct Connection {
    stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u32,
}

async fn connect(shard: &Shard, leader: i32) -> Result<Connection, ConnError> {
    let catalog = shard.catalog();
    // This broker's own configuration says how it reaches its peers; the registered address is the
    // fallback (a broker not in the configured peer list).
    let configured = shard.config.cluster.peer(leader).map(|p| p.replication.clone());
    let registered =
        catalog.cluster.as_ref().and_then(|v| v.state.brokers.get(&leader)).map(|b| b.replication_addr.clone());
    let addr = configured
        .or(registered)
        .ok_or_else(|| ConnError::Unexpected(format!("broker {leader} has no replication address")))?;
    let stream = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        TcpStream::connect(addr.as_str()).await.map_err(|e| glommio::GlommioError::IoError(e.into()))
    })
    .await
    .map_err(|e| ConnError::Unexpected(format!("connecting to broker {leader} at {addr}: {e}")))?;
    stream.set_nodelay(true).map_err(|e| ConnError::Unexpected(format!("nodelay: {e}")))?;
    let mut conn = Connection { stream, decoder: FrameDecoder::new(MAX_FRAME_BYTES), next_id: 1 };
    let hello = Message::Hello(Hello {
        node_id: shard.config.node_id,
        cluster_id: catalog.cluster_id.clone(),
        core: shard.id as u16,
    });
    write_frame(&mut conn.stream, 0, &hello, &[] as &[Bytes]).await?;
    match read_frame(&mut conn.stream, &mut conn.decoder).await? {
        Some(f) => match f.message {
            Message::HelloAck(ack) if ack.error_code == NO_ERROR => Ok(conn),
            Message::HelloAck(ack) => {
                Err(ConnError::Unexpected(format!("broker {leader} refused: code {}", ack.error_code)))
            }
            other => Err(ConnError::Unexpected(format!("{:?} instead of HelloAck", other.kind()))),
        },
        None => Err(ConnError::Unexpected("closed before HelloAck".into())),
    }
}

/// Fetches from `leader` until this core follows nothing of it (or shutdown).
async fn fetch_from(shard: &Rc<Shard>, leader: i32) {
    let backoff = Duration::from_millis(shard.config.replication.replica_fetch_backoff_ms);
    let wait = Duration::from_millis(shard.config.replication.replica_fetch_wait_max_ms);
    let max_bytes = shard.config.replication.replica_fetch_max_bytes;
    let mut conn: Option<Connection> = None;
    while !shard.shutting_down() {
        // Listen before planning: a change from here on cuts the coming fetch short.
        let changed = shard.followers_changed.listen();
        let parts = followed(shard, leader);
        if parts.is_empty() {
            return;
        }
        if conn.is_none() {
            match connect(shard, leader).await {
                Ok(c) => {
                    info!(leader, core = shard.id, partitions = parts.len(), "replica fetcher connected");
                    conn = Some(c);
                }
                Err(e) => {
                    debug!(leader, error = %e, "replica fetcher cannot connect");
                    pause(shard, backoff).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let fetch = ReplicaFetch {
            follower_id: shard.config.node_id,
            partitions: parts
                .iter()
                .map(|(p, id, epoch)| FetchPartition {
                    topic_id: *id,
                    partition: p.index,
                    fetch_offset: p.log_end_offset() as u64,
                    current_leader_epoch: *epoch,
                    last_fetched_epoch: p.last_fetched_epoch(),
                    max_bytes,
                })
                .collect(),
        };
        let id = c.next_id;
        c.next_id = c.next_id.wrapping_add(1);
        let exchange = glommio::timer::timeout(wait + FETCH_TIMEOUT_MARGIN, async {
            let r = async {
                write_frame(&mut c.stream, id, &Message::ReplicaFetch(fetch), &[] as &[Bytes]).await?;
                read_frame(&mut c.stream, &mut c.decoder).await
            };
            Ok(r.await)
        });
        let exchange = futures_lite::future::or(async { Some(exchange.await) }, async {
            changed.await;
            None
        })
        .await;
        let Some(exchange) = exchange else {
            // This core's followed partitions changed while the fetch waited at the leader (a new
            // topic, a failover): fetch the new set now, on a fresh connection, rather than after
            // the leader's idle wait; the old fetch's answer is abandoned with its connection.
            debug!(leader, "followed partitions changed: restarting the fetch");
            conn = None;
            continue;
        };
        let frame = match exchange {
            Ok(Ok(Some(f))) if f.correlation_id == id => f,
            Ok(Ok(Some(_))) | Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                let why = match exchange {
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                    _ => "closed or out of step".into(),
                };
                debug!(leader, error = %why, "replica fetch failed; reconnecting");
                conn = None;
                pause(shard, backoff).await;
                continue;
            }
        };
        let mut trouble = false;
        for (f, records) in frame.fetched() {
            let Some((p, _, epoch)) = parts.iter().find(|(p, id, _)| *id == f.topic_id && p.index == f.partition)
            else {
                continue;
            };
            // The partition may have changed role while the fetch was out.
            if p.following() != Some((leader, *epoch)) {
                continue;
            }
            if let Err(e) = apply(p, &f, &records).await {
                // Epoch and leadership mismatches are transient: metadata is still propagating.
                let transient = [
                    ResponseError::NotLeaderOrFollower,
                    ResponseError::FencedLeaderEpoch,
                    ResponseError::UnknownLeaderEpoch,
                ]
                .iter()
                .any(|c| c.code() == f.error_code);
                if transient {
                    debug!(topic = %p.topic, partition = p.index, leader, error = %e, "replica fetch");
                } else {
                    warn!(topic = %p.topic, partition = p.index, leader, error = %e, "replica fetch");
                }
                trouble = true;
            }
        }
        if trouble {
            pause(shard, backoff).await;
        }
    }
}

/// Applies one partition's answer to the follower's log.
async fn apply(p: &Partition, f: &FetchedPartition, records: &Bytes) -> Result<(), String> {
    if f.error_code != NO_ERROR {
        let leo = p.log_end_offset() as u64;
        if f.error_code == ResponseError::OffsetOutOfRange.code() {
            if leo < f.log_start_offset {
                // The leader deleted everything this log has and more: start over at its start.
                p.restart_at(f.log_start_offset).await.map_err(|e| e.message)?;
                return Ok(());
            }
            if leo > f.log_end_offset {
                // Beyond the leader's end with no epoch to compare: keep what the leader has.
                p.truncate_to(f.log_end_offset).await.map_err(|e| e.message)?;
                return Ok(());
            }
        }
        return Err(format!("leader answered error code {}", f.error_code));
    }
    if let Some(d) = f.diverging_epoch {
        // Kafka's rule: truncate to the smaller of the leader's end of that epoch and ours.
        let ours = p.epoch_end_offset(d.epoch).map_or(d.end_offset, |(_, end)| end);
        let target = d.end_offset.min(ours);
        info!(topic = %p.topic, partition = p.index, epoch = d.epoch, leader_end = d.end_offset, target,
            "diverging log: truncating");
        p.truncate_to(target).await.map_err(|e| e.message)?;
        return Ok(());
    }
    p.append_replicated(records, f.high_watermark).await.map_err(|e| e.message)?;
    p.follow_log_start(f.log_start_offset).await.map_err(|e| e.message)?;
    Ok(())
}

/// Sleeps `d`, or less if shutdown begins.
async fn pause(shard: &Shard, d: Duration) {
    futures_lite::future::or(glommio::timer::sleep(d), shard.wait_shutdown()).await;
}
