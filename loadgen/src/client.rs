//! The load generator's use of `sluice-client` (the workspace's one Kafka client): its client id and
//! its timeouts. Pipelining (several requests in flight) is
//! done by the producer on a cloned stream with the client's frame pieces (`encode_request`,
//! `read_frame`, `decode_response`).

use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::protocol::Request;
use sluice_client::requests::NewTopic;
use sluice_client::{admin, frame, ConnectOptions};

pub use sluice_client::admin::TopicLayout;
pub use sluice_client::Connection;

use crate::error::Result;
use crate::scenario::TopicSpec;

/// Largest response frame read (a guard against reading garbage as a length).
pub const MAX_FRAME_BYTES: usize = frame::MAX_FRAME_BYTES;
/// Read/write timeout of every socket: a broker silent this long fails the run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a created topic to have a leader for every partition.
pub const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const CLIENT_ID: &str = "sluice-loadgen";
/// How long to wait for a group coordinator to become available.
pub const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(15);

fn options() -> ConnectOptions {
    ConnectOptions::new(CLIENT_ID).io_timeout(IO_TIMEOUT).max_frame_bytes(MAX_FRAME_BYTES)
}

/// Connects to `broker` and negotiates API versions.
pub fn connect(broker: &str) -> Result<Connection> {
    Ok(Connection::connect(broker, &options())?)
}

/// Connects to the first bootstrap broker that answers.
pub fn connect_any(bootstrap: &[String]) -> Result<Connection> {
    Ok(Connection::connect_any(bootstrap, &options())?)
}

/// One request as a size-prefixed frame, with the load generator's client id.
pub fn encode_request<R: Request>(request: &R, version: i16, correlation_id: i32) -> Result<Bytes> {
    Ok(frame::encode_request(request, version, correlation_id, CLIENT_ID)?)
}

/// Reads one size-prefixed frame (without its size).
pub fn read_frame(stream: &mut TcpStream, broker: &str) -> Result<Bytes> {
    Ok(frame::read_frame(stream, MAX_FRAME_BYTES, broker)?)
}

/// Decodes a response frame to request type `R` sent with `version`, checking the correlation id.
pub fn decode_response<R: Request>(
    frame: Bytes,
    version: i16,
    correlation_id: i32,
    broker: &str,
) -> Result<R::Response> {
    Ok(frame::decode_response::<R>(frame, version, correlation_id, broker)?)
}

/// Creates the topic if it is missing and waits until every partition has a leader. An existing
/// topic is used with the partitions it has.
pub fn ensure_topic(conn: &mut Connection, spec: &TopicSpec) -> Result<TopicLayout> {
    let topic = NewTopic {
        name: &spec.name,
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        configs: &[],
    };
    Ok(admin::ensure_topic(conn, topic, TOPIC_READY_TIMEOUT)?)
}

/// Log end offsets (ListOffsets "latest") of `partitions`, which must all be led by `conn`'s broker.
pub fn latest_offsets(conn: &mut Connection, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
    Ok(admin::latest_offsets(conn, topic, partitions)?)
}

/// The `host:port` of `group`'s coordinator (waits while it is not available yet).
pub fn find_coordinator(conn: &mut Connection, group: &str) -> Result<String> {
    Ok(admin::find_coordinator(conn, group, COORDINATOR_TIMEOUT)?)
}

/// Commits `offsets` (partition, next offset to read) for a standalone consumer of `group`.
pub fn commit_offsets(conn: &mut Connection, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
    Ok(admin::commit_offsets(conn, group, topic, offsets)?)
}
