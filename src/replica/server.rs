//! The leader side: the replication listener of every core, followers' fetches answered from the
//! partitions this core leads.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::error::ResponseError;
use tracing::{debug, info, warn};

use super::{read_frame, write_frame, ConnError};
use crate::core::Shard;
use crate::partition::ReplicaRead;
use crate::replication::{
    EpochAnswer, EpochEndOffset, FetchPartition, FetchedPartition, FrameDecoder, Hello, HelloAck, Message,
    OffsetsForLeaderEpochResponse, RawRange, RawSection, ReplicaFetch, ReplicaFetchResponse, MAX_FRAME_BYTES, NO_ERROR,
};

/// Batch bytes one fetch response carries at most (the frame limit leaves room for metadata).
const MAX_RESPONSE_BATCH_BYTES: u64 = (MAX_FRAME_BYTES / 2) as u64;
/// Replication connections served per core at once.
const MAX_CONNECTIONS_PER_CORE: usize = 256;

/// A piece of a fetch response's raw section: stored batches as read (this core), or copied from
/// another core.
enum Piece {
    Stored(sluice_io::StoredBatch),
    Copied(Bytes),
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        match self {
            Piece::Stored(b) => &b.payload,
            Piece::Copied(b) => b,
        }
    }
}

/// Accepts replication connections on this core until shutdown.
pub async fn listen(shard: Rc<Shard>, addr: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&addr).map_err(|e| anyhow::anyhow!("binding replication listener {addr}: {e}"))?;
    if shard.id == 0 {
        info!(%addr, "replication listener");
    }
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        let stream = match accepted {
            None => return Ok(()),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                warn!(error = %e, "replication accept failed");
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS_PER_CORE {
            warn!(limit = MAX_CONNECTIONS_PER_CORE, "replication connection limit reached: refusing");
            continue;
        }
        let (s, open) = (shard.clone(), open.clone());
        open.set(open.get() + 1);
        glommio::spawn_local(async move {
            if let Err(e) = accept(s, stream).await {
                debug!(error = %e, "replication connection closed");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Reads the Hello, hands the connection to the core it names, or serves it here.
async fn accept(shard: Rc<Shard>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true).map_err(|e| ConnError::Unexpected(format!("nodelay: {e}")))?;
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let Some(frame) = read_frame(&mut stream, &mut decoder).await? else { return Ok(()) };
    let Message::Hello(hello) = frame.message else {
        return Err(ConnError::Unexpected(format!("{:?} before Hello", frame.message.kind())));
    };
    if decoder.buffered() > 0 {
        return Err(ConnError::Unexpected("data after Hello before HelloAck".into()));
    }
    let wanted = usize::from(hello.core);
    if wanted != shard.id && wanted < shard.cores {
        // Duplicate the descriptor for the other core; this core's handle closes with `stream`.
        // SAFETY: the descriptor belongs to `stream`, which is alive for the whole borrow.
        let fd: OwnedFd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()?;
        // The adopting core answers the Hello.
        let correlation_id = frame.correlation_id;
        let adopted = shard.invoke_on(wanted, move |s| async move { adopt(s, fd, hello, correlation_id) }).await;
        adopted.map_err(|e| ConnError::Unexpected(format!("core {wanted} did not adopt the connection: {e}")))?;
        return Ok(());
    }
    serve(shard, stream, hello, frame.correlation_id).await
}

/// Takes over a connection another core accepted, whose Hello (`correlation_id`) it read.
fn adopt(shard: Rc<Shard>, fd: OwnedFd, hello: Hello, correlation_id: u32) {
    // SAFETY: `fd` is an open TCP socket we own; the stream takes ownership of it.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    glommio::spawn_local(async move {
        if let Err(e) = serve(shard, stream, hello, correlation_id).await {
            debug!(error = %e, "replication connection closed");
        }
    })
    .detach();
}

/// Answers the Hello, then one fetch at a time until the follower goes away.
async fn serve(shard: Rc<Shard>, mut stream: TcpStream, hello: Hello, hello_id: u32) -> Result<(), ConnError> {
    let cluster_id = shard.catalog().cluster_id.clone();
    let mismatch = !hello.cluster_id.is_empty() && !cluster_id.is_empty() && hello.cluster_id != cluster_id;
    let error_code = if mismatch { ResponseError::InconsistentClusterId.code() } else { NO_ERROR };
    let ack = Message::HelloAck(HelloAck { node_id: shard.config.node_id, error_code });
    write_frame(&mut stream, hello_id, &ack, &[] as &[Bytes]).await?;
    if mismatch {
        return Err(ConnError::Unexpected(format!("cluster id {} is not ours ({cluster_id})", hello.cluster_id)));
    }
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    loop {
        let frame = futures_lite::future::or(read_frame(&mut stream, &mut decoder), async {
            shard.wait_shutdown().await;
            Ok(None)
        })
        .await?;
        let Some(frame) = frame else { return Ok(()) };
        match frame.message {
            Message::ReplicaFetch(fetch) => {
                let (response, raw) = answer_fetch(&shard, &fetch).await;
                write_frame(&mut stream, frame.correlation_id, &Message::ReplicaFetchResponse(response), &raw).await?;
            }
            Message::OffsetsForLeaderEpoch(q) => {
                let partitions = q
                    .partitions
                    .iter()
                    .map(|e| {
                        let answer = |error_code, end| EpochAnswer {
                            topic_id: e.topic_id,
                            partition: e.partition,
                            error_code,
                            end,
                        };
                        match local_leader(&shard, &e.topic_id, e.partition) {
                            Ok(p) => answer(
                                NO_ERROR,
                                p.epoch_end_offset(e.requested_epoch)
                                    .map(|(epoch, end_offset)| EpochEndOffset { epoch, end_offset }),
                            ),
                            Err(code) => answer(code, None),
                        }
                    })
                    .collect();
                let msg = Message::OffsetsForLeaderEpochResponse(OffsetsForLeaderEpochResponse { partitions });
                write_frame(&mut stream, frame.correlation_id, &msg, &[] as &[Bytes]).await?;
            }
            other => return Err(ConnError::Unexpected(format!("{:?} from a follower", other.kind()))),
        }
    }
}

fn local_leader(shard: &Shard, topic_id: &[u8; 16], partition: i32) -> Result<Rc<crate::partition::Partition>, i16> {
    let name = shard.catalog().by_id(topic_id).map(|t| t.name.clone());
    let name = name.ok_or(ResponseError::UnknownTopicId.code())?;
    shard.local(&name, partition).map_err(|e| e.code.code())
}

fn fetched(p: &FetchPartition, error_code: i16) -> FetchedPartition {
    FetchedPartition {
        topic_id: p.topic_id,
        partition: p.partition,
        error_code,
        high_watermark: 0,
        log_start_offset: 0,
        log_end_offset: 0,
        diverging_epoch: None,
        records: RawRange::EMPTY,
    }
}

/// One partition's answer, read on this core.
async fn fetch_one(
    shard: &Shard,
    follower: i32,
    p: &FetchPartition,
) -> (FetchedPartition, Vec<sluice_io::StoredBatch>) {
    let part = match local_leader(shard, &p.topic_id, p.partition) {
        Ok(part) => part,
        Err(code) => return (fetched(p, code), Vec::new()),
    };
    let max = (p.max_bytes as usize).min(shard.config.replication.replica_fetch_max_bytes as usize);
    let r = part.replica_fetch(follower, p.fetch_offset, p.current_leader_epoch, p.last_fetched_epoch, max).await;
    match r {
        Err(e) => {
            let f = FetchedPartition {
                log_start_offset: part.log_start_offset() as u64,
                log_end_offset: part.log_end_offset() as u64,
                ..fetched(p, e.code.code())
            };
            (f, Vec::new())
        }
        Ok(ReplicaRead { batches, high_watermark, log_start_offset, log_end_offset, diverging_epoch }) => {
            let f = FetchedPartition {
                high_watermark,
                log_start_offset,
                log_end_offset,
                diverging_epoch,
                ..fetched(p, NO_ERROR)
            };
            (f, batches)
        }
    }
}

/// A fetch of partitions owned by this core, for a connection on another core (copied bytes).
async fn fetch_copied(
    shard: &Rc<Shard>,
    follower: i32,
    partitions: &[FetchPartition],
) -> Vec<(FetchedPartition, Vec<Bytes>)> {
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (f, batches) = fetch_one(shard, follower, p).await;
        out.push((f, batches.iter().map(|b| Bytes::copy_from_slice(&b.payload)).collect()));
    }
    out
}

/// Answers a follower's fetch: partitions of this core read in place, others through their core.
/// With nothing to send, waits up to `replica_fetch_wait_max_ms` for this core's partitions to
/// grow (one of them is enough), then reads again.
async fn answer_fetch(shard: &Rc<Shard>, fetch: &ReplicaFetch) -> (ReplicaFetchResponse, Vec<Piece>) {
    let wait = Duration::from_millis(shard.config.replication.replica_fetch_wait_max_ms);
    let mut results = collect(shard, fetch).await;
    let idle = results.iter().all(|(f, b)| f.error_code == NO_ERROR && f.diverging_epoch.is_none() && b.is_empty());
    if idle && !wait.is_zero() {
        let waits: Vec<_> = fetch
            .partitions
            .iter()
            .filter_map(|p| local_leader(shard, &p.topic_id, p.partition).ok().map(|part| (part, p.fetch_offset)))
            .collect();
        if !waits.is_empty() {
            // Any partition growing ends the wait: each waiter finishing notifies `grew`.
            let grew = Rc::new(event_listener::Event::new());
            let listener = grew.listen();
            let tasks: Vec<_> = waits
                .into_iter()
                .map(|(part, offset)| {
                    let grew = grew.clone();
                    glommio::spawn_local(async move {
                        part.wait_for_append(offset).await;
                        grew.notify(usize::MAX);
                    })
                })
                .collect();
            let _ = glommio::timer::timeout(wait, async {
                futures_lite::future::or(listener, shard.wait_shutdown()).await;
                Ok(())
            })
            .await;
            // Dropping a glommio task cancels it.
            drop(tasks);
            results = collect(shard, fetch).await;
        }
    }
    let mut raw: RawSection<Piece> = RawSection::default();
    let mut partitions = Vec::with_capacity(results.len());
    for (mut f, pieces) in results {
        let bytes: u64 = pieces.iter().map(|p| p.as_ref().len() as u64).sum();
        if raw.len() + bytes <= MAX_RESPONSE_BATCH_BYTES {
            match raw.push_partition(pieces) {
                Ok(range) => f.records = range,
                Err(e) => warn!(error = %e, "replica fetch response too large; partition sent empty"),
            }
        }
        partitions.push(f);
    }
    (ReplicaFetchResponse { partitions }, raw.into_pieces())
}

async fn collect(shard: &Rc<Shard>, fetch: &ReplicaFetch) -> Vec<(FetchedPartition, Vec<Piece>)> {
    let mut out = Vec::with_capacity(fetch.partitions.len());
    let mut remote: std::collections::BTreeMap<usize, Vec<FetchPartition>> = Default::default();
    for p in &fetch.partitions {
        let owner =
            shard.catalog().by_id(&p.topic_id).and_then(|t| t.partition_cores.get(p.partition as usize).copied());
        match owner {
            Some(core) if core as usize != shard.id => remote.entry(core as usize).or_default().push(*p),
            _ => {
                let (f, batches) = fetch_one(shard, fetch.follower_id, p).await;
                out.push((f, batches.into_iter().map(Piece::Stored).collect()));
            }
        }
    }
    for (core, partitions) in remote {
        let asked = partitions.clone();
        let follower = fetch.follower_id;
        match shard.invoke_on(core, move |s| async move { fetch_copied(&s, follower, &partitions).await }).await {
            Ok(r) => out.extend(r.into_iter().map(|(f, b)| (f, b.into_iter().map(Piece::Copied).collect()))),
            Err(_) => {
                out.extend(asked.iter().map(|p| (fetched(p, ResponseError::UnknownServerError.code()), Vec::new())))
            }
        }
    }
    out
}
