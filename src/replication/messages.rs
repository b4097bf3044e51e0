//! The messages of the replication protocol. Each is the rkyv-archived metadata of one frame; the
//! stored batch bytes of a fetch response travel beside it in the frame's raw section, referred to
//! by [`RawRange`]s (see `wire/` for the frame). Partition error codes use Kafka's numbering
//! (`kafka_protocol::error::ResponseError`), so the broker maps them to client answers unchanged.

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};

/// A topic's 128-bit id (Kafka's topic UUID), as stored in the catalog.
pub type TopicId = [u8; 16];

/// Kafka's "no error" code.
pub const NO_ERROR: i16 = 0;
/// Kafka's UNDEFINED_EPOCH: the follower knows no epoch (an empty log).
pub const UNDEFINED_EPOCH: i32 = -1;

/// The kind of a frame, carried in its header; selects the archived type of the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    Hello = 1,
    HelloAck = 2,
    ReplicaFetch = 3,
    ReplicaFetchResponse = 4,
    OffsetsForLeaderEpoch = 5,
    OffsetsForLeaderEpochResponse = 6,
}

impl MessageKind {
    /// Every kind, for tests and dispatch tables.
    pub const ALL: [MessageKind; 6] = [
        MessageKind::Hello,
        MessageKind::HelloAck,
        MessageKind::ReplicaFetch,
        MessageKind::ReplicaFetchResponse,
        MessageKind::OffsetsForLeaderEpoch,
        MessageKind::OffsetsForLeaderEpochResponse,
    ];

    /// The kind with this wire code.
    pub fn from_code(code: u16) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| *k as u16 == code)
    }
}

/// First frame on a new replication connection, from the connecting (follower) side: who it is,
/// which cluster it believes it is in, and which core of the peer it wants (one connection per
/// broker pair per core).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    pub node_id: i32,
    pub cluster_id: String,
    pub core: u16,
}

/// Answer to [`Hello`]: the accepting node, and `error_code` (Kafka's; e.g.
/// INCONSISTENT_CLUSTER_ID) when the connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HelloAck {
    pub node_id: i32,
    pub error_code: i16,
}

/// A follower's fetch for the partitions it follows on this core of the leader.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetch {
    pub follower_id: i32,
    pub partitions: Vec<FetchPartition>,
}

/// One partition of a [`ReplicaFetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchPartition {
    pub topic_id: TopicId,
    pub partition: i32,
    /// The follower's log end offset: where to read from.
    pub fetch_offset: u64,
    /// The leader epoch the follower believes current (fences stale leaders and followers).
    pub current_leader_epoch: i32,
    /// Epoch of the last batch the follower holds (KIP-320), or [`UNDEFINED_EPOCH`]; lets the
    /// leader detect divergence inside the fetch.
    pub last_fetched_epoch: i32,
    /// Upper bound on the batch bytes returned for this partition (at least one batch is sent).
    pub max_bytes: u32,
}

/// Where an epoch ended on the leader: `end_offset` is the start of the next epoch (or the log end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochEndOffset {
    pub epoch: i32,
    pub end_offset: u64,
}

/// A range `[offset, offset + len)` of a frame's raw section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RawRange {
    pub offset: u32,
    pub len: u32,
}

impl RawRange {
    /// The empty range.
    pub const EMPTY: RawRange = RawRange { offset: 0, len: 0 };

    /// One past the last byte, without overflow.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// The leader's answer to a [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReplicaFetchResponse {
    pub partitions: Vec<FetchedPartition>,
}

/// One partition of a [`ReplicaFetchResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchedPartition {
    pub topic_id: TopicId,
    pub partition: i32,
    /// Kafka error code (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, OFFSET_OUT_OF_RANGE, ...).
    pub error_code: i16,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// The leader's log end offset (lets the follower report its lag).
    pub log_end_offset: u64,
    /// Set when the follower's last fetched epoch ended earlier on the leader: truncate to
    /// `end_offset` before fetching again (KIP-320).
    pub diverging_epoch: Option<EpochEndOffset>,
    /// The stored batches, as written on the leader, in the raw section.
    pub records: RawRange,
}

/// A follower (usually one that rejoins) asks where its epochs ended on the leader (KIP-101).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetsForLeaderEpoch {
    pub follower_id: i32,
    pub partitions: Vec<EpochQuery>,
}

/// One partition of an [`OffsetsForLeaderEpoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochQuery {
    pub topic_id: TopicId,
    pub partition: i32,
    pub current_leader_epoch: i32,
    /// The epoch whose end is asked for (the follower's latest).
    pub requested_epoch: i32,
}

/// The leader's answer to an [`OffsetsForLeaderEpoch`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OffsetsForLeaderEpochResponse {
    pub partitions: Vec<EpochAnswer>,
}

/// One partition of an [`OffsetsForLeaderEpochResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochAnswer {
    pub topic_id: TopicId,
    pub partition: i32,
    pub error_code: i16,
    /// `(largest leader epoch <= requested, its end offset)`; `None` is Kafka's
    /// UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET (the follower then keeps its log up to the high
    /// watermark).
    pub end: Option<EpochEndOffset>,
}

/// Kafka error of a partition result (`None` for success).
pub fn partition_error(error_code: i16) -> Option<ResponseError> {
    error_code.err()
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloAck(HelloAck),
    ReplicaFetch(ReplicaFetch),
    ReplicaFetchResponse(ReplicaFetchResponse),
    OffsetsForLeaderEpoch(OffsetsForLeaderEpoch),
    OffsetsForLeaderEpochResponse(OffsetsForLeaderEpochResponse),
}

impl Message {
    /// The header kind of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::HelloAck(_) => MessageKind::HelloAck,
            Message::ReplicaFetch(_) => MessageKind::ReplicaFetch,
            Message::ReplicaFetchResponse(_) => MessageKind::ReplicaFetchResponse,
            Message::OffsetsForLeaderEpoch(_) => MessageKind::OffsetsForLeaderEpoch,
            Message::OffsetsForLeaderEpochResponse(_) => MessageKind::OffsetsForLeaderEpochResponse,
        }
    }

    /// The ranges this message holds into the raw section (only fetch responses have any).
    pub fn raw_ranges(&self) -> impl Iterator<Item = RawRange> + '_ {
        let parts: &[FetchedPartition] = match self {
            Message::ReplicaFetchResponse(r) => &r.partitions,
            _ => &[],
        };
        parts.iter().map(|p| p.records)
    }
}
