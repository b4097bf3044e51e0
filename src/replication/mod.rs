//! Replication between brokers. For now only the wire protocol followers and leaders speak over
//! the replication listener: `messages` (what is said) and `wire` (how it is framed). Fetcher
//! tasks, leader-side follower state, ISR and high-watermark logic come on top of it; the leader
//! epochs themselves live in the storage engine (`sluice_io::EpochCache`, `Log::assign_epoch`).
//!
//! May touch: bytes and the message types only. No sockets, no runtime (glommio or other), no
//! partition state: callers own the connection and decide what each message does.

pub mod messages;
pub mod progress;
pub mod wire;

pub use messages::*;
pub use wire::{encode, encode_head, Frame, FrameDecoder, RawSection, WireError, MAX_FRAME_BYTES, PROTOCOL_VERSION};
