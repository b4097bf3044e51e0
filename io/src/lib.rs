//! `sluice-io`: the Sluice storage engine. A partition log of segments written with O_DIRECT through
//! glommio DMA files, CRC32C-checked frames, sparse offset and time indexes, group commit, a tail
//! cache, retention, truncation, crash recovery and the leader-epoch cache. It stores opaque batches and knows nothing of
//! Kafka or networking.
//!
//! Invariants: offsets are strictly increasing, and dense as appended (only a segment rewritten by
//! compaction skips offsets; each segment's range still reaches up to the next one's base); a reader never sees a batch before its
//! write completed; after recovery the log ends at the last batch whose CRC32C is valid and nothing
//! before that point changed.

mod batch;
mod cache;
mod checkpoint;
mod config;
mod dio;
mod epochs;
mod error;
mod file_cache;
pub mod framed_file;
mod index;
pub mod latency;
mod log;
mod recovery;
mod rewrite;
mod segment;

pub use batch::{BatchHeader, FRAME_MAGIC, HEADER_LEN, MAX_PAYLOAD_LEN};
pub use checkpoint::{LogCheckpoint, CHECKPOINT_FILE};
pub use config::{Durability, LogConfig, MAX_SEGMENT_BYTES};
pub use epochs::{EpochCache, EpochEntry, EPOCH_CHECKPOINT_FILE};
pub use error::{Error, Result};
pub use file_cache::{
    open_segment_files_on_all_cores, segment_file_limits, segment_file_stats, set_segment_file_limits,
    SegmentFileLimits, SegmentFileStats, DEFAULT_MAX_OPEN_SEGMENT_FILES, DEFAULT_SEGMENT_FILE_IDLE_CLOSE_MS,
};
pub use log::{Admission, AppendBatch, Appended, BatchBytes, Log, LogStats, StoredBatch, LOCK_FILE};
pub use recovery::{RecoveryReport, Truncation};
pub use rewrite::{SealedSegment, SegmentRewrite, REWRITE_BUFFER_BYTES, REWRITE_SUFFIX};
