//! What topic administration may do, checked in one place for both paths that change the catalog
//! (the single node's `shard.rs` and the cluster controller's `controller.rs`): which topics are
//! the broker's own (internal) and refused to clients, how many partitions one request and one
//! broker may hold, and the file-descriptor budget that partitions live within.
//!
//! Every check here runs before anything is created, and answers a Kafka error code with a message
//! saying which limit was hit and how to change it. This module reads counts and the process's
//! descriptor limit (and raises its soft limit to the hard one, once, at start); it changes no
//! catalog and opens no partition.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kafka_protocol::error::ResponseError;
use tracing::{info, warn};

use crate::config::{BrokerConfig, TopicSettings};
use crate::topics::{self, is_internal};

/// Descriptors a partition holds open for as long as it is open (defined with the config it bounds).
pub use crate::config::DESCRIPTORS_HELD_PER_PARTITION;
/// Partition opens between two counts of `/proc/self/fd` (a count reads one entry per descriptor).
const OPENS_BETWEEN_DESCRIPTOR_COUNTS: u32 = 32;

/// An error for a client: the Kafka code and the message that goes with it.
pub type Refusal = (ResponseError, String);

/// Refuses a client's change (`action`: "deleted", "reconfigured", "given more partitions") to a
/// protected topic (`protected_topics`, by default `__consumer_offsets`).
///
/// Kafka itself lets an authorized principal delete or reconfigure `__consumer_offsets` (its brokers
/// protect it only through ACLs, answering TOPIC_AUTHORIZATION_FAILED), and Redpanda refuses it by
/// default (`kafka_nodelete_topics`) with TOPIC_AUTHORIZATION_FAILED. This broker has no ACLs, and
/// losing that topic loses every committed offset, so it does as Redpanda does, with that code.
pub fn refuse_protected_change(config: &BrokerConfig, topic: &str, action: &str) -> Result<(), Refusal> {
    if !config.protected_topics.iter().any(|t| t == topic) {
        return Ok(());
    }
    let why = if is_internal(topic) { "internal to the broker" } else { "protected" };
    Err((
        ResponseError::TopicAuthorizationFailed,
        format!("Topic {topic} is {why} (protected_topics) and cannot be {action} by a client."),
    ))
}

/// Refuses creating an internal topic through CreateTopics or auto-creation: the broker creates it
/// itself, with its own partition count and configs. Kafka answers the same for its metadata topic
/// (ControllerApis: INVALID_REQUEST "Creation of internal topic __cluster_metadata is prohibited.").
pub fn refuse_internal_creation(topic: &str) -> Result<(), Refusal> {
    if !is_internal(topic) {
        return Ok(());
    }
    Err((
        ResponseError::InvalidRequest,
        format!("Creation of internal topic {topic} is prohibited: the broker creates it itself."),
    ))
}

/// Checks a topic to create (name, internal, existence, partition count, configs): its partition
/// count (`-1`: the broker default), or the refusal.
pub fn validate_new_topic(
    config: &BrokerConfig,
    name: &str,
    partitions: i32,
    configs: &[(String, String)],
    exists: bool,
) -> Result<i32, Refusal> {
    topics::validate_topic_name(name).map_err(|msg| (ResponseError::InvalidTopicException, msg))?;
    if exists {
        return Err((ResponseError::TopicAlreadyExists, format!("Topic '{name}' already exists.")));
    }
    refuse_internal_creation(name)?;
    let partitions = effective_partitions(config, partitions);
    if partitions < 1 || partitions as u32 > topics::MAX_PARTITIONS_PER_TOPIC {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Number of partitions must be in [1, {}].", topics::MAX_PARTITIONS_PER_TOPIC),
        ));
    }
    TopicSettings::resolve(config, configs).map_err(|msg| (ResponseError::InvalidConfig, msg))?;
    Ok(partitions)
}

/// Checks growing a topic from `current` to `count` partitions: how many are added, or the refusal.
pub fn validate_partition_increase(current: i32, count: i32) -> Result<u64, Refusal> {
    if count <= current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic currently has {current} partitions, {count} would not be an increase."),
        ));
    }
    if count as u32 > topics::MAX_PARTITIONS_PER_TOPIC {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Number of partitions must be at most {}.", topics::MAX_PARTITIONS_PER_TOPIC),
        ));
    }
    Ok((count - current) as u64)
}

fn effective_partitions(config: &BrokerConfig, requested: i32) -> i32 {
    if requested == -1 {
        i32::try_from(config.default_partitions).unwrap_or(i32::MAX)
    } else {
        requested
    }
}

/// Partitions a CreateTopics request asks for, all topics together (invalid counts count as none:
/// those topics are refused on their own).
pub fn requested_partitions(config: &BrokerConfig, counts: impl Iterator<Item = i32>) -> u64 {
    counts.map(|n| u64::try_from(effective_partitions(config, n)).unwrap_or(0)).sum()
}

/// Partitions a CreatePartitions request adds: per topic (current count if it exists, new count).
pub fn added_partitions(topics: impl Iterator<Item = (Option<i32>, i32)>) -> u64 {
    topics.filter_map(|(current, count)| current.map(|c| u64::try_from(count - c).unwrap_or(0))).sum()
}

/// The process's descriptor limit (soft, after [`raise_descriptor_limit`]); `None` when unlimited
/// or unknown.
pub fn descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

/// Raises the soft descriptor limit to the hard limit, once per process (as Kafka's and Redpanda's
/// start scripts and systemd units expect): partitions hold files open, and the soft limit of a
/// login shell (often 1024) is far below what the host allows. Logged either way.
pub fn raise_descriptor_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            warn!(error = %std::io::Error::last_os_error(), "reading RLIMIT_NOFILE");
            return;
        }
        if lim.rlim_cur >= lim.rlim_max {
            info!(limit = lim.rlim_cur, "file descriptor limit (RLIMIT_NOFILE)");
            return;
        }
        let before = lim.rlim_cur;
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            warn!(error = %std::io::Error::last_os_error(), soft = before, "raising RLIMIT_NOFILE to its hard limit");
            return;
        }
        info!(before, limit = lim.rlim_max, "file descriptor limit (RLIMIT_NOFILE) raised to the hard limit");
    });
}

/// Descriptors this process has open now (`/proc/self/fd`); `None` if that cannot be read.
pub fn open_descriptors() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle itself is one of the entries: not counted.
    Some((dir.count() as u64).saturating_sub(1))
}

/// Descriptors the log in `dir` keeps open once opened: its lock and its active segment, however
/// many segments it has (recovery closes the sealed ones it scanned; reads open them through the
/// per-core cache, whose descriptors are set aside once per core).
pub fn descriptors_of_partition_dir(_dir: &Path) -> u64 {
    DESCRIPTORS_HELD_PER_PARTITION
}

/// Cores the broker runs (`cores`, or every core of the machine).
fn cores_of(config: &BrokerConfig) -> u64 {
    config.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) as u64
}

/// The caches of sealed segment files take at most 1/this of the descriptors left after
/// `reserved_descriptors`: under a low limit they shrink rather than leave partitions no room.
const SEGMENT_FILE_CACHES_SHARE_DIVISOR: u64 = 4;

/// Files each core's cache of sealed segments may keep open: `max_open_segment_files_per_core`,
/// or less when that many on every core would take more than their share of the descriptor
/// limit; at least one.
pub fn segment_files_per_core(config: &BrokerConfig, cores: u64) -> usize {
    let configured = config.max_open_segment_files_per_core as u64;
    let Some(limit) = descriptor_limit() else { return config.max_open_segment_files_per_core };
    let share = limit.saturating_sub(config.reserved_descriptors) / SEGMENT_FILE_CACHES_SHARE_DIVISOR / cores.max(1);
    configured.min(share).max(1) as usize
}

/// Descriptors set aside for the caches of sealed segment files: what each core's may hold, on
/// each core.
fn segment_file_caches(config: &BrokerConfig, cores: u64) -> u64 {
    (segment_files_per_core(config, cores) as u64).saturating_mul(cores)
}

/// Descriptors open now that count against partitions and the reserve: everything but the files
/// the segment caches hold (those are within their own share).
fn open_outside_segment_caches() -> Option<u64> {
    open_descriptors().map(|open| open.saturating_sub(sluice_io::open_segment_files_on_all_cores() as u64))
}

/// The partition limits of this broker, read once per admin request: the per-request and
/// per-broker counts from the config, and the descriptor budget from the process's limit and what
/// it has open right now.
#[derive(Debug, Clone)]
pub struct PartitionBudget {
    max_per_request: u64,
    max_per_core: u64,
    cores: u64,
    descriptors: Option<DescriptorBudget>,
}

/// The share of the descriptor limit partitions may use.
#[derive(Debug, Clone, Copy)]
struct DescriptorBudget {
    /// RLIMIT_NOFILE (soft) now.
    limit: u64,
    /// Kept for connections, listeners, io_uring rings and transient files (`reserved_descriptors`).
    reserved: u64,
    /// Kept for the per-core caches of sealed segment files (`max_open_segment_files_per_core` x
    /// cores).
    segment_files: u64,
    /// Budgeted per partition (`descriptors_per_partition`).
    per_partition: u64,
    /// Open now (this broker only), plus what partitions admitted since then are budgeted at.
    open: u64,
}

impl PartitionBudget {
    /// This broker's limits as of now (`cores`: its executors).
    pub fn of_this_broker(config: &BrokerConfig, cores: usize) -> Self {
        let descriptors = descriptor_limit().map(|limit| DescriptorBudget {
            limit,
            reserved: config.reserved_descriptors,
            segment_files: segment_file_caches(config, cores as u64),
            per_partition: config.descriptors_per_partition,
            // Unreadable /proc: judge by the budgeted partitions alone.
            open: open_outside_segment_caches().unwrap_or(0),
        });
        PartitionBudget {
            max_per_request: u64::from(config.max_partitions_per_request),
            max_per_core: u64::from(config.max_partitions_per_core),
            cores: cores as u64,
            descriptors,
        }
    }

    /// Refuses a whole CreateTopics or CreatePartitions request that would add more than
    /// `max_partitions_per_request` partitions. Kafka's controller refuses a request whose metadata
    /// records exceed `MAX_RECORDS_PER_USER_OP` (10,000; one record per partition) as a whole,
    /// with POLICY_VIOLATION ("Unable to perform excessively large batch operation.").
    pub fn check_request(&self, new_partitions: u64) -> Result<(), Refusal> {
        if new_partitions <= self.max_per_request {
            return Ok(());
        }
        Err((
            ResponseError::PolicyViolation,
            format!(
                "The request adds {new_partitions} partitions; at most {} are allowed per request \
                 (max_partitions_per_request). Nothing was created.",
                self.max_per_request
            ),
        ))
    }

    /// Most partitions this broker may host (`max_partitions_per_core` × cores).
    pub fn max_per_broker(&self) -> u64 {
        self.max_per_core.saturating_mul(self.cores)
    }

    /// Admits `new` more partition replicas on broker `broker`, which hosts `hosted` now, or says
    /// which limit they would exceed (INVALID_PARTITIONS, as Redpanda answers for its per-core and
    /// descriptor limits). `local`: the broker is this one, whose open descriptors are known
    /// (others are assumed to have this one's limits, as every broker of a cluster should).
    /// On success the new partitions count as hosted for the rest of the request.
    pub fn admit(&mut self, broker: i32, hosted: u64, new: u64, local: bool) -> Result<(), Refusal> {
        let total = hosted.saturating_add(new);
        let max = self.max_per_broker();
        if total > max {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Broker {broker} would host {total} partitions ({hosted} now, {new} new); at most {max} are \
                     allowed (max_partitions_per_core {} x {} cores).",
                    self.max_per_core, self.cores
                ),
            ));
        }
        let Some(d) = self.descriptors.as_mut() else { return Ok(()) };
        let usable = d.limit.saturating_sub(d.reserved).saturating_sub(d.segment_files);
        let by_budget = total.saturating_mul(d.per_partition);
        let needed_now = if local { d.open.saturating_add(new.saturating_mul(d.per_partition)) } else { 0 };
        if by_budget > usable || needed_now > usable {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Broker {broker} has no file descriptors for {new} more partitions: {total} partitions x \
                     {} descriptors (descriptors_per_partition) with {} descriptors open now would exceed \
                     the limit of {} (RLIMIT_NOFILE) less {} kept for connections (reserved_descriptors) \
                     and {} for the segment file caches (max_open_segment_files_per_core x cores). \
                     Raise LimitNOFILE (see `sluice tune`) or create fewer partitions.",
                    d.per_partition,
                    if local { d.open } else { 0 },
                    d.limit,
                    d.reserved,
                    d.segment_files
                ),
            ));
        }
        if local {
            d.open = needed_now;
        }
        Ok(())
    }
}

/// Descriptors the process is believed to have open, shared by every core's [`OpenGuard`]: a
/// count of `/proc/self/fd` plus what partition opens took since (so that cores opening partitions
/// at the same time see each other's).
static OPEN_DESCRIPTORS_ESTIMATE: AtomicU64 = AtomicU64::new(0);
/// Partition opens since `/proc/self/fd` was last counted.
static OPENS_SINCE_COUNT: AtomicU32 = AtomicU32::new(0);

/// Keeps partition opens within the descriptor limit (start-up, or a catalog change): a partition
/// whose files would eat into `reserved_descriptors` is not opened, so the listeners and
/// connections always have descriptors (an accept failing with EMFILE makes the broker
/// unreachable). Re-counts `/proc/self/fd` every few opens, and before refusing.
pub struct OpenGuard {
    limit: Option<u64>,
    reserved: u64,
    /// Kept for the per-core caches of sealed segment files.
    segment_files: u64,
}

impl OpenGuard {
    pub fn new(config: &BrokerConfig) -> Self {
        let limit = descriptor_limit();
        if limit.is_some() {
            recount();
        }
        let segment_files = segment_file_caches(config, cores_of(config));
        OpenGuard { limit, reserved: config.reserved_descriptors, segment_files }
    }

    /// Takes `needed` descriptors for a partition about to be opened, or says why not.
    pub fn take(&mut self, needed: u64) -> Result<(), String> {
        let Some(limit) = self.limit else { return Ok(()) };
        if OPENS_SINCE_COUNT.fetch_add(1, Ordering::Relaxed) >= OPENS_BETWEEN_DESCRIPTOR_COUNTS {
            recount();
        }
        let usable = limit.saturating_sub(self.reserved).saturating_sub(self.segment_files);
        let taken = OPEN_DESCRIPTORS_ESTIMATE.fetch_add(needed, Ordering::Relaxed) + needed;
        if taken <= usable {
            return Ok(());
        }
        // Files may have been closed since the last count: look once more before refusing.
        let open = recount();
        if open + needed <= usable {
            OPEN_DESCRIPTORS_ESTIMATE.fetch_add(needed, Ordering::Relaxed);
            return Ok(());
        }
        Err(format!(
            "not opened: it needs {needed} file descriptors, {open} are open and the limit is {limit} \
             (RLIMIT_NOFILE) less {} kept for connections (reserved_descriptors) and {} for the segment \
             file caches (max_open_segment_files_per_core x cores); raise LimitNOFILE",
            self.reserved, self.segment_files
        ))
    }
}

/// Counts `/proc/self/fd` (less the segment caches' files) into the shared estimate; returns the
/// count.
fn recount() -> u64 {
    OPENS_SINCE_COUNT.store(0, Ordering::Relaxed);
    match open_outside_segment_caches() {
        Some(open) => {
            OPEN_DESCRIPTORS_ESTIMATE.store(open, Ordering::Relaxed);
            open
        }
        None => OPEN_DESCRIPTORS_ESTIMATE.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64, open: u64) -> PartitionBudget {
        PartitionBudget {
            max_per_request: 100,
            max_per_core: 50,
            cores: 2,
            descriptors: Some(DescriptorBudget { limit, reserved: 100, segment_files: 0, per_partition: 4, open }),
        }
    }

    #[test]
    fn internal_topics_are_kafkas() {
        assert!(is_internal("__consumer_offsets"));
        assert!(is_internal("__transaction_state"));
        assert!(!is_internal("__my_own_topic"));
        assert!(!is_internal("orders"));
        let config = BrokerConfig::default();
        let refusal = refuse_protected_change(&config, "__consumer_offsets", "deleted").unwrap_err();
        assert_eq!(refusal.0, ResponseError::TopicAuthorizationFailed);
        assert!(refusal.1.contains("internal"), "{}", refusal.1);
        assert!(refuse_protected_change(&config, "orders", "deleted").is_ok());
        let open = BrokerConfig { protected_topics: Vec::new(), ..BrokerConfig::default() };
        assert!(refuse_protected_change(&open, "__consumer_offsets", "deleted").is_ok());
        assert_eq!(refuse_internal_creation("__consumer_offsets").unwrap_err().0, ResponseError::InvalidRequest);
    }

    #[test]
    fn request_and_broker_limits() {
        let mut b = budget(1_000_000, 10);
        assert!(b.check_request(100).is_ok());
        assert_eq!(b.check_request(101).unwrap_err().0, ResponseError::PolicyViolation);
        assert!(b.admit(0, 60, 40, true).is_ok());
        let (code, msg) = b.admit(0, 60, 41, true).unwrap_err();
        assert_eq!(code, ResponseError::InvalidPartitions);
        assert!(msg.contains("max_partitions_per_core"), "{msg}");
    }

    #[test]
    fn descriptor_budget_counts_what_is_open_and_what_was_admitted() {
        // 500 - 100 reserved = 400 usable; 4 per partition.
        let mut b = budget(500, 300);
        assert!(b.admit(0, 0, 25, true).is_ok()); // 300 + 100 = 400
        let (code, msg) = b.admit(0, 25, 1, true).unwrap_err();
        assert_eq!(code, ResponseError::InvalidPartitions);
        assert!(msg.contains("RLIMIT_NOFILE"), "{msg}");
        // Another broker: judged by the budgeted partitions only.
        assert!(b.admit(1, 0, 100, false).is_ok());
        assert!(b.admit(1, 100, 1, false).is_err());
    }

    #[test]
    fn descriptor_budget_sets_the_segment_file_caches_aside() {
        // 500 - 100 reserved - 2 cores x 50 cached segment files = 300 usable; 4 per partition.
        let mut b = budget(500, 0);
        b.descriptors.as_mut().unwrap().segment_files = 100;
        assert!(b.admit(0, 0, 75, true).is_ok());
        let (_, msg) = b.admit(0, 75, 1, true).unwrap_err();
        assert!(msg.contains("max_open_segment_files_per_core"), "{msg}");
        // A partition holds its lock and active segment, whatever its segment count.
        assert_eq!(descriptors_of_partition_dir(Path::new("/nonexistent")), DESCRIPTORS_HELD_PER_PARTITION);
    }
}
