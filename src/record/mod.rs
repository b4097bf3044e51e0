//! Kafka's RecordBatch v2, the format records are produced, stored, replicated and fetched in:
//! batch headers and their CRC32C (`batch`), the compression codecs decoded as bounded streams
//! (`codec`), the checks a produced batch must pass before it is stored (`validate`), and the
//! records inside a stored batch for the cleaner (`records`).
//!
//! Used by the partition (produce, replication), compaction and the group coordinator. Knows
//! nothing of requests, sockets or the storage engine: it turns bytes into checked facts.

pub mod batch;
pub mod codec;
pub mod records;
pub mod validate;
