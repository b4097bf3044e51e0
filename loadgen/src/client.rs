//! A lean blocking Kafka client: size-prefixed frames over `std::net::TcpStream`, requests and
//! responses encoded with `kafka-protocol`, versions negotiated with ApiVersions. It knows just the
//! APIs a load generator needs: Metadata, CreateTopics, Produce, Fetch, ListOffsets, OffsetCommit.
//! Pipelining (several requests in flight) is done by the producer on a cloned stream; this module
//! gives it the pieces (`encode_request`, `read_frame`, `decode_response`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest, FindCoordinatorRequest,
    GroupId, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::{LoadgenError, Result};
use crate::scenario::TopicSpec;

/// Largest response frame read (a guard against reading garbage as a length).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Read/write timeout of every socket: a broker silent this long fails the run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a created topic to have a leader for every partition.
pub const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const CLIENT_ID: &str = "sluice-loadgen";

const ERROR_UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ERROR_LEADER_NOT_AVAILABLE: i16 = 5;
const ERROR_TOPIC_ALREADY_EXISTS: i16 = 36;
const ERROR_COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// How long to wait for a group coordinator to become available.
pub const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(15);

/// The versions this client can speak, per API (kafka-protocol encodes any of them; these are the
/// ones with topic names rather than only topic ids, and RecordBatch v2).
fn supported_range(key: ApiKey) -> (i16, i16) {
    match key {
        ApiKey::Produce => (3, 9),
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 7),
        ApiKey::Metadata => (1, 12),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::OffsetCommit => (2, 8),
        ApiKey::FindCoordinator => (1, 4),
        ApiKey::ApiVersions => (0, 0),
        _ => (0, -1),
    }
}

/// The version of each API to use with one broker: the highest both sides speak.
#[derive(Clone, Debug, Default)]
pub struct ApiVersionTable {
    chosen: HashMap<i16, i16>,
}

impl ApiVersionTable {
    fn from_response(response: &ApiVersionsResponse) -> ApiVersionTable {
        let mut chosen = HashMap::new();
        for range in &response.api_keys {
            let Ok(key) = ApiKey::try_from(range.api_key) else { continue };
            let (min, max) = supported_range(key);
            let version = max.min(range.max_version);
            if version >= min.max(range.min_version) {
                chosen.insert(range.api_key, version);
            }
        }
        ApiVersionTable { chosen }
    }

    pub fn version(&self, key: ApiKey, broker: &str) -> Result<i16> {
        self.chosen.get(&(key as i16)).copied().ok_or_else(|| {
            let (min, max) = supported_range(key);
            LoadgenError::protocol(broker, format!("{key:?}: the broker speaks no version in {min}..={max}"))
        })
    }
}

/// One request as a size-prefixed frame.
pub fn encode_request<R: Request>(request: &R, version: i16, correlation_id: i32) -> Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| LoadgenError::Invalid(format!("encoding a request header: {e}")))?;
    request.encode(&mut buf, version).map_err(|e| LoadgenError::Invalid(format!("encoding {:?}: {e}", R::KEY)))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| LoadgenError::Invalid("request over 2 GiB".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads one size-prefixed frame (without its size).
pub fn read_frame(stream: &mut TcpStream, broker: &str) -> Result<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| LoadgenError::io(format!("reading from {broker}"), e))?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MAX_FRAME_BYTES)
        .ok_or_else(|| LoadgenError::protocol(broker, format!("response frame size {size}")))?;
    let mut frame = vec![0u8; size];
    stream.read_exact(&mut frame).map_err(|e| LoadgenError::io(format!("reading from {broker}"), e))?;
    Ok(Bytes::from(frame))
}

/// Decodes a response frame to request type `R` sent with `version`, checking the correlation id.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
    broker: &str,
) -> Result<R::Response>
where
    R::Response: Decodable + HeaderVersion,
{
    let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
        .map_err(|e| LoadgenError::protocol(broker, format!("{:?} response header: {e}", R::KEY)))?;
    if header.correlation_id != correlation_id {
        return Err(LoadgenError::protocol(
            broker,
            format!("correlation id {} in answer to {correlation_id}", header.correlation_id),
        ));
    }
    let response = R::Response::decode(&mut frame, version)
        .map_err(|e| LoadgenError::protocol(broker, format!("{:?} v{version} response: {e}", R::KEY)))?;
    if frame.has_remaining() {
        return Err(LoadgenError::protocol(
            broker,
            format!("{} trailing bytes in a {:?} response", frame.remaining(), R::KEY),
        ));
    }
    Ok(response)
}

/// A connection to one broker with the API versions it speaks.
pub struct Connection {
    stream: TcpStream,
    broker: String,
    correlation_id: i32,
    versions: Arc<ApiVersionTable>,
}

impl Connection {
    /// Connects and negotiates API versions (ApiVersions v0, which every broker answers).
    pub fn connect(broker: &str) -> Result<Connection> {
        let addr = broker
            .to_socket_addrs()
            .map_err(|e| LoadgenError::io(format!("resolving {broker}"), e))?
            .next()
            .ok_or_else(|| LoadgenError::NoBroker(broker.to_string()))?;
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| LoadgenError::io(format!("connecting to {broker}"), e))?;
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))
        };
        setup(&stream).map_err(|e| LoadgenError::io(format!("socket options for {broker}"), e))?;
        let mut conn = Connection {
            stream,
            broker: broker.to_string(),
            correlation_id: 0,
            versions: Arc::new(ApiVersionTable::default()),
        };
        let response = conn.call_version(&ApiVersionsRequest::default(), 0)?;
        if response.error_code != 0 {
            return Err(LoadgenError::Broker {
                broker: broker.to_string(),
                api: "ApiVersions",
                code: response.error_code,
                detail: None,
            });
        }
        conn.versions = Arc::new(ApiVersionTable::from_response(&response));
        Ok(conn)
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }

    pub fn versions(&self) -> Arc<ApiVersionTable> {
        self.versions.clone()
    }

    pub fn version(&self, key: ApiKey) -> Result<i16> {
        self.versions.version(key, &self.broker)
    }

    /// A second handle on the same socket (one thread writes, another reads).
    pub fn try_clone_stream(&self) -> Result<TcpStream> {
        self.stream.try_clone().map_err(|e| LoadgenError::io(format!("cloning the socket to {}", self.broker), e))
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        self.correlation_id
    }

    /// Sends `request` at the negotiated version and waits for its answer.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response>
    where
        R::Response: Decodable + HeaderVersion,
    {
        let key = ApiKey::try_from(R::KEY).map_err(|_| LoadgenError::Invalid(format!("api key {}", R::KEY)))?;
        let version = self.version(key)?;
        self.call_version(request, version)
    }

    fn call_version<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response>
    where
        R::Response: Decodable + HeaderVersion,
    {
        let correlation_id = self.next_correlation_id();
        let frame = encode_request(request, version, correlation_id)?;
        self.stream.write_all(&frame).map_err(|e| LoadgenError::io(format!("writing to {}", self.broker), e))?;
        let response = read_frame(&mut self.stream, &self.broker)?;
        decode_response::<R>(response, version, correlation_id, &self.broker)
    }
}

/// Where the topic's partitions live: broker addresses and the leader of each partition.
#[derive(Clone, Debug)]
pub struct TopicLayout {
    pub topic: String,
    /// node id → `host:port`.
    pub brokers: HashMap<i32, String>,
    /// Leader node id of partition `i` (index = partition).
    pub leaders: Vec<i32>,
}

impl TopicLayout {
    pub fn partitions(&self) -> i32 {
        self.leaders.len() as i32
    }

    pub fn leader_address(&self, partition: i32) -> Result<&str> {
        let leader = self.leaders.get(partition as usize).copied().unwrap_or(-1);
        self.brokers
            .get(&leader)
            .map(String::as_str)
            .ok_or_else(|| LoadgenError::Invalid(format!("partition {partition} has no known leader ({leader})")))
    }

    /// Partitions grouped by leader address, in partition order.
    pub fn by_leader(&self, partitions: &[i32]) -> Result<Vec<(String, Vec<i32>)>> {
        let mut groups: Vec<(String, Vec<i32>)> = Vec::new();
        for &p in partitions {
            let addr = self.leader_address(p)?.to_string();
            match groups.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, ps)) => ps.push(p),
                None => groups.push((addr, vec![p])),
            }
        }
        Ok(groups)
    }
}

/// Connects to the first bootstrap broker that answers.
pub fn connect_any(bootstrap: &[String]) -> Result<Connection> {
    let mut last = None;
    for broker in bootstrap {
        match Connection::connect(broker) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| LoadgenError::NoBroker(bootstrap.join(","))))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates the topic if it is missing (TOPIC_ALREADY_EXISTS is fine) and waits until every partition
/// has a leader. An existing topic is used with the partitions it has.
pub fn ensure_topic(conn: &mut Connection, spec: &TopicSpec) -> Result<TopicLayout> {
    if let Some(layout) = topic_layout(conn, &spec.name)? {
        return Ok(layout);
    }
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![CreatableTopic::default()
        .with_name(topic_name(&spec.name))
        .with_num_partitions(spec.partitions)
        .with_replication_factor(spec.replication_factor)]);
    let response = conn.call(&request)?;
    for result in &response.topics {
        if result.error_code != 0 && result.error_code != ERROR_TOPIC_ALREADY_EXISTS {
            return Err(LoadgenError::Broker {
                broker: conn.broker().to_string(),
                api: "CreateTopics",
                code: result.error_code,
                detail: result.error_message.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        if let Some(layout) = topic_layout(conn, &spec.name)? {
            return Ok(layout);
        }
        if Instant::now() >= deadline {
            return Err(LoadgenError::Invalid(format!(
                "topic {} has no leader for every partition {TOPIC_READY_TIMEOUT:?} after creation",
                spec.name
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The topic's layout, or `None` while it does not exist or some partition has no leader.
pub fn topic_layout(conn: &mut Connection, topic: &str) -> Result<Option<TopicLayout>> {
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]));
    let response = conn.call(&request)?;
    let brokers: HashMap<i32, String> =
        response.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let Some(t) = response.topics.iter().find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic)) else {
        return Ok(None);
    };
    match t.error_code {
        0 => {}
        ERROR_UNKNOWN_TOPIC_OR_PARTITION | ERROR_LEADER_NOT_AVAILABLE => return Ok(None),
        code => {
            return Err(LoadgenError::Broker { broker: conn.broker().to_string(), api: "Metadata", code, detail: None })
        }
    }
    if t.partitions.is_empty() {
        return Ok(None);
    }
    let mut leaders = vec![-1; t.partitions.len()];
    for p in &t.partitions {
        let index = usize::try_from(p.partition_index).ok().filter(|&i| i < leaders.len());
        let Some(index) = index else {
            return Err(LoadgenError::protocol(conn.broker(), format!("partition index {}", p.partition_index)));
        };
        leaders[index] = p.leader_id.0;
    }
    if leaders.iter().any(|l| !brokers.contains_key(l)) {
        return Ok(None);
    }
    Ok(Some(TopicLayout { topic: topic.to_string(), brokers, leaders }))
}

/// Log end offsets (ListOffsets "latest") of `partitions`, which must all be led by `conn`'s broker.
pub fn latest_offsets(conn: &mut Connection, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
    let request =
        ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(-1))
                    .collect(),
            )]);
    let response = conn.call(&request)?;
    let mut out = Vec::with_capacity(partitions.len());
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(LoadgenError::Broker {
                    broker: conn.broker().to_string(),
                    api: "ListOffsets",
                    code: p.error_code,
                    detail: Some(format!("partition {}", p.partition_index)),
                });
            }
            out.push((p.partition_index, p.offset));
        }
    }
    Ok(out)
}

/// The `host:port` of `group`'s coordinator (FindCoordinator; waits while it is not available yet).
pub fn find_coordinator(conn: &mut Connection, group: &str) -> Result<String> {
    let version = conn.version(ApiKey::FindCoordinator)?;
    let key = StrBytes::from_string(group.to_string());
    let request = if version >= 4 {
        FindCoordinatorRequest::default().with_key_type(0).with_coordinator_keys(vec![key])
    } else {
        FindCoordinatorRequest::default().with_key_type(0).with_key(key)
    };
    let deadline = Instant::now() + COORDINATOR_TIMEOUT;
    loop {
        let response = conn.call(&request)?;
        let (code, message, host, port) = match response.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.error_message.clone(), c.host.clone(), c.port),
            _ => (response.error_code, response.error_message.clone(), response.host.clone(), response.port),
        };
        match code {
            0 => return Ok(format!("{}:{port}", host.as_str())),
            ERROR_COORDINATOR_NOT_AVAILABLE if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            code => {
                return Err(LoadgenError::Broker {
                    broker: conn.broker().to_string(),
                    api: "FindCoordinator",
                    code,
                    detail: message.map(|m| m.to_string()),
                })
            }
        }
    }
}

/// Commits `offsets` (partition, next offset to read) for a standalone consumer of `group`
/// (generation -1, no member id: Kafka's "simple" commit, accepted while the group has no members).
/// `conn` must be the group's coordinator.
pub fn commit_offsets(conn: &mut Connection, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(
            offsets
                .iter()
                .map(|&(p, o)| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(o)
                        .with_committed_leader_epoch(-1)
                })
                .collect(),
        )]);
    let response = conn.call(&request)?;
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(LoadgenError::Broker {
                    broker: conn.broker().to_string(),
                    api: "OffsetCommit",
                    code: p.error_code,
                    detail: Some(format!("group {group} partition {}", p.partition_index)),
                });
            }
        }
    }
    Ok(())
}

/// The type markers the producer and consumer pass to `encode_request`/`decode_response`.
pub type Produce = ProduceRequest;
pub type Fetch = FetchRequest;
