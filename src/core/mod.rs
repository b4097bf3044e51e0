//! The thread-per-core runtime of the broker: one [`Shard`] per core owning its partitions
//! (`shard`), cross-core calls as closures (`mesh`), services and hooks the modules above install
//! per core (`services`), applying the topic catalog (`catalog`), reaching a partition from any
//! core (`route`), and the core's periodic jobs (`tasks`). Nothing here names a module above it:
//! Kafka handlers, groups, topic administration and replication call down into the core.

pub mod catalog;
pub mod latch;
pub mod mesh;
pub mod route;
pub mod services;
mod shard;
pub mod tasks;

pub use catalog::OpenFailure;
pub use mesh::{Envelope, MeshError, ReplyEnvelope};
pub use route::{FetchedRecords, RemoteRead};
pub use shard::{Shard, CATALOG_CORE};
