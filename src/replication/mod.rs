//! The replication protocol between brokers, without I/O: `messages` (what followers and leaders
//! say), `wire` (how it is framed), and `progress` (the leader's view of each follower: fetch
//! positions, ISR shrink/expand decisions, the high watermark as the ISR's smallest log end). The
//! connections that carry it are in `replica/` (listener and fetchers); the leader epochs live
//! in the storage engine (`sluice_io::EpochCache`, `Log::assign_epoch`); ISR changes are written
//! through the cluster metadata by the controller (`metadata/controller.rs`).
//!
//! May touch: bytes, the message types and plain state. No sockets, no runtime (glommio or
//! other), no partition: callers own the connection and the partition and apply what it decides.

pub mod messages;
pub mod progress;
pub mod wire;

pub use messages::*;
pub use wire::{encode, encode_head, Frame, FrameDecoder, RawSection, WireError, MAX_FRAME_BYTES, PROTOCOL_VERSION};
