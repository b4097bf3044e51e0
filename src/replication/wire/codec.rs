//! The metadata section of a frame: each message struct as an rkyv archive, validated by bytecheck
//! (copied into an aligned buffer first) before it is deserialised.

use super::WireError;
use crate::replication::messages::*;

pub(super) fn encode_metadata(msg: &Message) -> Result<rkyv::util::AlignedVec, WireError> {
    use rkyv::rancor::Error as E;
    let res = match msg {
        Message::Hello(m) => rkyv::to_bytes::<E>(m),
        Message::HelloAck(m) => rkyv::to_bytes::<E>(m),
        Message::ReplicaFetch(m) => rkyv::to_bytes::<E>(m),
        Message::ReplicaFetchResponse(m) => rkyv::to_bytes::<E>(m),
        Message::OffsetsForLeaderEpoch(m) => rkyv::to_bytes::<E>(m),
        Message::OffsetsForLeaderEpochResponse(m) => rkyv::to_bytes::<E>(m),
    };
    res.map_err(|e| WireError::InvalidMetadata { kind: msg.kind(), reason: format!("encoding: {e}") })
}

/// Validates (bytecheck) and deserialises the metadata of a `kind` frame. The archive is copied
/// into an aligned buffer first: received bytes have no alignment guarantee.
pub(super) fn decode_metadata(kind: MessageKind, meta: &[u8]) -> Result<Message, WireError> {
    use rkyv::rancor::Error as E;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(meta.len());
    aligned.extend_from_slice(meta);
    let invalid = |e: E| WireError::InvalidMetadata { kind, reason: e.to_string() };
    Ok(match kind {
        MessageKind::Hello => Message::Hello(rkyv::from_bytes::<Hello, E>(&aligned).map_err(invalid)?),
        MessageKind::HelloAck => Message::HelloAck(rkyv::from_bytes::<HelloAck, E>(&aligned).map_err(invalid)?),
        MessageKind::ReplicaFetch => {
            Message::ReplicaFetch(rkyv::from_bytes::<ReplicaFetch, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::ReplicaFetchResponse => {
            Message::ReplicaFetchResponse(rkyv::from_bytes::<ReplicaFetchResponse, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::OffsetsForLeaderEpoch => {
            Message::OffsetsForLeaderEpoch(rkyv::from_bytes::<OffsetsForLeaderEpoch, E>(&aligned).map_err(invalid)?)
        }
        MessageKind::OffsetsForLeaderEpochResponse => Message::OffsetsForLeaderEpochResponse(
            rkyv::from_bytes::<OffsetsForLeaderEpochResponse, E>(&aligned).map_err(invalid)?,
        ),
    })
}
