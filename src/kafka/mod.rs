//! The Kafka protocol front end: one module per API group, the connection loop (`connection`:
//! frames in, answers out in request order), and the dispatch of one decoded request to its handler
//! (`handle_frame`). A garbage or oversized frame closes that connection (with a rate-limited log
//! line); other connections go on.

pub mod admin;
pub mod api_versions;
pub mod connection;
pub mod delete_records;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod producer_ids;
pub mod response;

pub use connection::{serve_connection, RequestMemory};

use std::rc::Rc;

use crate::core::Shard;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::Decodable;
use response::{Chunk, RecordsSplice};

/// What a handler produced.
pub(crate) enum Outcome {
    /// Frame pieces to write.
    Respond(Vec<Chunk>),
    /// Nothing to write (acks=0 produce).
    Silent,
    /// Protocol violation: close the connection after earlier responses.
    Close(String),
}

/// Decodes one request frame (at least 8 bytes: key, version, correlation id), runs its handler
/// and encodes the answer.
pub(crate) async fn handle_frame(shard: &Rc<Shard>, mut frame: Bytes, peer: &str) -> Outcome {
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
