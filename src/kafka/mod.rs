//! The Kafka protocol front end: one module per API group, and the connection loop that reads
//! size-prefixed frames, decodes them with kafka-protocol, runs handlers concurrently (up to
//! `max_inflight_requests_per_connection`) and writes responses in request order, as Kafka requires.
//! A garbage or oversized frame closes that connection (with a log line); other connections go on.

pub mod admin;
pub mod api_versions;
pub mod delete_records;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod producer_ids;
pub mod response;

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::Decodable;
use tracing::{debug, warn};

use crate::shard::Shard;
use response::{Chunk, RecordsSplice};

/// Bytes read from the socket per read call while assembling a frame.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Pieces smaller than this are coalesced into one write.
const COALESCE_BYTES: usize = 64 * 1024;

/// What a handler produced.
enum Outcome {
    /// Frame pieces to write.
    Respond(Vec<Chunk>),
    /// Nothing to write (acks=0 produce).
    Silent,
    /// Protocol violation: close the connection after earlier responses.
    Close(String),
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("connection closed")]
    Eof,
    #[error("frame size {0} outside [8, {1}]")]
    BadSize(i64, usize),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_frame<R: futures_lite::AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len) as i64;
    if size < 8 || size as usize > max {
        return Err(FrameError::BadSize(size, max));
    }
    let size = size as usize;
    // Grow with what actually arrives: a large size prefix alone does not allocate it all.
    let mut buf = BytesMut::with_capacity(size.min(READ_CHUNK_BYTES));
    while buf.len() < size {
        let want = (size - buf.len()).min(READ_CHUNK_BYTES);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated frame")));
        }
    }
    Ok(buf.freeze())
}

/// Serves one client connection until it closes, misbehaves, or the broker shuts down.
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<glommio::task::JoinHandle<Outcome>>(
        shard.config.max_inflight_requests_per_connection,
    );
    let writer_peer = peer.clone();
    let metrics = shard.metrics.clone();
    let writer_task = glommio::spawn_local(async move {
        while let Some(handle) = rx.recv().await {
            match handle.await {
                Some(Outcome::Respond(chunks)) => {
                    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                    metrics.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
                    if let Err(e) = crate::socket_write::write_coalesced(
                        &mut writer,
                        chunks.iter().map(|c| c.bytes()),
                        COALESCE_BYTES,
                    )
                    .await
                    {
                        debug!(peer = %writer_peer, error = %e, "write failed");
                        break;
                    }
                }
                Some(Outcome::Silent) => {}
                Some(Outcome::Close(why)) => {
                    warn!(peer = %writer_peer, reason = %why, "closing connection");
                    break;
                }
                None => break,
            }
        }
        let _ = writer.close().await;
    });
    let max = shard.config.max_request_size_bytes;
    loop {
        let frame = futures_lite::future::or(async { Some(read_frame(&mut reader, max).await) }, async {
            shard.wait_shutdown().await;
            None
        })
        .await;
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(FrameError::Eof)) => break,
            Some(Err(e)) => {
                warn!(peer = %peer, error = %e, "bad frame: closing connection");
                break;
            }
        };
        shard.metrics.bytes_in.fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        let s = shard.clone();
        let p = peer.clone();
        let task = glommio::spawn_local(async move {
            let began = std::time::Instant::now();
            // read_frame guarantees at least 8 bytes (key, version, correlation id).
            let key = i16::from_be_bytes([frame[0], frame[1]]);
            let outcome = handle_frame(&s, frame, &p).await;
            s.metrics.record_request(key, began.elapsed(), matches!(outcome, Outcome::Close(_)));
            outcome
        })
        .detach();
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    writer_task.await;
}

async fn handle_frame(shard: &Rc<Shard>, mut frame: Bytes, peer: &str) -> Outcome {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Outcome::Close(format!("unknown API key {key}"));
    };
    let Some((lo, hi)) = api_versions::range(api) else {
        return Outcome::Close(format!("API {api:?} is not served"));
    };
    if version < lo || version > hi {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with the error and our ranges; the client retries lower.
            let body = ResponseKind::ApiVersions(api_versions::response(Some(ResponseError::UnsupportedVersion)));
            return encode(correlation_id, 0, &body, 0, Vec::new());
        }
        return Outcome::Close(format!("{api:?} v{version} is outside the served range {lo}..={hi}"));
    }
    let header_version = api.request_header_version(version);
    let header = match RequestHeader::decode(&mut frame, header_version) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("undecodable {api:?} v{version} header: {e}")),
    };
    let request = match RequestKind::decode(api, &mut frame, version) {
        Ok(r) => r,
        Err(e) => return Outcome::Close(format!("undecodable {api:?} v{version} request: {e}")),
    };
    let response_header_version = api.response_header_version(version);
    let (body, splices) = match request {
        RequestKind::ApiVersions(_) => (ResponseKind::ApiVersions(api_versions::response(None)), Vec::new()),
        RequestKind::Metadata(r) => (ResponseKind::Metadata(metadata::handle(shard, r, version).await), Vec::new()),
        RequestKind::Produce(r) => {
            let silent = r.acks == 0;
            let resp = produce::handle(shard, r, version).await;
            if silent {
                return Outcome::Silent;
            }
            (ResponseKind::Produce(resp), Vec::new())
        }
        RequestKind::Fetch(r) => {
            let (resp, splices) = fetch::handle(shard, r, version).await;
            (ResponseKind::Fetch(resp), splices)
        }
        RequestKind::ListOffsets(r) => {
            (ResponseKind::ListOffsets(list_offsets::handle(shard, r, version).await), Vec::new())
        }
        RequestKind::CreateTopics(r) => {
            (ResponseKind::CreateTopics(admin::create_topics(shard, r, version).await), Vec::new())
        }
        RequestKind::DeleteTopics(r) => {
            (ResponseKind::DeleteTopics(admin::delete_topics(shard, r, version).await), Vec::new())
        }
        RequestKind::CreatePartitions(r) => {
            (ResponseKind::CreatePartitions(admin::create_partitions(shard, r).await), Vec::new())
        }
        RequestKind::DescribeConfigs(r) => {
            (ResponseKind::DescribeConfigs(admin::describe_configs(shard, r)), Vec::new())
        }
        RequestKind::InitProducerId(r) => {
            (ResponseKind::InitProducerId(producer_ids::handle(shard, r).await), Vec::new())
        }
        RequestKind::FindCoordinator(r) => {
            (ResponseKind::FindCoordinator(groups::find_coordinator(shard, r, version)), Vec::new())
        }
        RequestKind::JoinGroup(r) => {
            let client = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            let host = format!("/{}", peer.rsplit_once(':').map_or(peer, |(h, _)| h));
            (ResponseKind::JoinGroup(groups::join(shard, r, version, client, host).await), Vec::new())
        }
        RequestKind::SyncGroup(r) => (ResponseKind::SyncGroup(groups::sync(shard, r, version).await), Vec::new()),
        RequestKind::Heartbeat(r) => (ResponseKind::Heartbeat(groups::heartbeat(shard, r).await), Vec::new()),
        RequestKind::LeaveGroup(r) => (ResponseKind::LeaveGroup(groups::leave(shard, r, version).await), Vec::new()),
        RequestKind::OffsetCommit(r) => {
            (ResponseKind::OffsetCommit(groups::offset_commit(shard, r, version).await), Vec::new())
        }
        RequestKind::OffsetFetch(r) => {
            (ResponseKind::OffsetFetch(groups::offset_fetch(shard, r, version).await), Vec::new())
        }
        RequestKind::ListGroups(r) => {
            (ResponseKind::ListGroups(groups::list_groups(shard, r, version).await), Vec::new())
        }
        RequestKind::DescribeGroups(r) => {
            (ResponseKind::DescribeGroups(groups::describe_groups(shard, r, version).await), Vec::new())
        }
        RequestKind::DeleteGroups(r) => (ResponseKind::DeleteGroups(groups::delete_groups(shard, r).await), Vec::new()),
        RequestKind::DeleteRecords(r) => {
            (ResponseKind::DeleteRecords(delete_records::handle(shard, r).await), Vec::new())
        }
        RequestKind::AlterConfigs(r) => (ResponseKind::AlterConfigs(admin::alter_configs(shard, r).await), Vec::new()),
        RequestKind::IncrementalAlterConfigs(r) => {
            (ResponseKind::IncrementalAlterConfigs(admin::incremental_alter_configs(shard, r).await), Vec::new())
        }
        RequestKind::OffsetDelete(r) => (ResponseKind::OffsetDelete(groups::offset_delete(shard, r).await), Vec::new()),
        _ => return Outcome::Close(format!("{api:?} has no handler")),
    };
    encode(header.correlation_id, response_header_version, &body, version, splices)
}

fn encode(
    correlation_id: i32,
    header_version: i16,
    body: &ResponseKind,
    version: i16,
    splices: Vec<RecordsSplice>,
) -> Outcome {
    match response::encode(correlation_id, header_version, body, version, splices) {
        Ok(chunks) => Outcome::Respond(chunks),
        Err(e) => Outcome::Close(format!("cannot encode response: {e}")),
    }
}
