//! `sluice-client`: the one Kafka client of this workspace, blocking, over `std::net::TcpStream`,
//! requests and responses encoded with `kafka-protocol`. The load generator, the `sluice` CLI's topic
//! commands, `sluice dev-cluster`'s readiness probe and the integration tests all speak Kafka through it.
//!
//! It imports nothing of the broker crate (like `loadgen`): it talks to any Kafka-compatible broker.
//! - [`frame`]: size-prefixed frames, request headers at the right header version, response decoding,
//!   and a raw mode (hand-made headers, arbitrary bytes) for tests that send what no client would;
//! - [`versions`]: the versions this client speaks and the ApiVersions negotiation;
//! - [`connection`]: one connection with correlation ids, blocking calls and pipelining;
//! - [`requests`]: builders of the requests the users send; [`admin`]: typed calls on top of them;
//! - [`batch`]: RecordBatch v2 building (codecs, idempotent fields) and [`batch::forge`] to lie.

pub mod admin;
pub mod batch;
pub mod connection;
pub mod error;
pub mod frame;
pub mod requests;
pub mod versions;

pub use batch::BatchBuilder;
pub use connection::{ConnectOptions, Connection};
pub use error::{ClientError, Result};
pub use versions::ApiVersionTable;

/// Kafka error codes this crate acts on (the protocol guide's table).
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
}
