//! Consumer threads. Group membership is static and standalone: consumer `i` of a group of `n` owns
//! the partitions `p % n == i`, starts at the log end offsets taken when the run started, and commits
//! its positions every second with OffsetCommit at generation -1 (Kafka's "simple consumer" commit).
//! A group may process at most `max_records_per_sec` (shared evenly by its consumers), modelling a
//! slow downstream; records it has fetched but not processed yet still count as lag.
//! End-to-end latency = processing time − intended send time (from the value header).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_client::requests;

use crate::client::{
    commit_offsets, decode_response, encode_request, find_coordinator, read_frame, Connection, TopicLayout,
};
use crate::error::{LoadgenError, Result};
use crate::produce::decode_value_header;
use crate::scenario::GroupSpec;
use crate::stats::Shared;

/// Longest a fetch waits at the broker for data (milliseconds).
pub const FETCH_MAX_WAIT_MS: i32 = 100;
/// Bytes a fetch asks for per partition, and in all.
pub const FETCH_PARTITION_MAX_BYTES: i32 = 1 << 20;
pub const FETCH_MAX_BYTES: i32 = 8 << 20;
/// How often a consumer without partitions checks for the end of the run.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often positions are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Kafka's OFFSET_OUT_OF_RANGE: the position fell below the log start (retention) or above its end.
const ERROR_OFFSET_OUT_OF_RANGE: i16 = 1;

/// Most credit a paced consumer may save up while it is faster than its input (seconds of its rate):
/// without a cap, a consumer that kept up for a minute would process the start of a burst unpaced.
const PACER_MAX_CREDIT_S: f64 = 0.05;

/// Paces processing at a fixed rate; idle time builds up at most `PACER_MAX_CREDIT_S` of credit.
struct Pacer {
    rate: f64,
    anchor: Instant,
    done: u64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer { rate, anchor: Instant::now(), done: 0 }
    }

    /// Records that may be processed now (unbounded without a rate).
    fn allowed(&mut self, now: Instant) -> u64 {
        if self.rate <= 0.0 {
            return u64::MAX;
        }
        let budget = (now.saturating_duration_since(self.anchor).as_secs_f64() * self.rate) as u64;
        let max_credit = (self.rate * PACER_MAX_CREDIT_S).max(1.0) as u64;
        if budget > self.done + max_credit {
            // Forget the excess: move the anchor so that exactly `max_credit` is left.
            let keep = Duration::from_secs_f64((self.done + max_credit) as f64 / self.rate);
            self.anchor = now.checked_sub(keep).unwrap_or(self.anchor);
            return max_credit;
        }
        budget.saturating_sub(self.done)
    }

    /// How long until one more record is allowed.
    fn wait_for_next(&self, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let at = self.anchor + Duration::from_secs_f64((self.done + 1) as f64 / self.rate);
        at.saturating_duration_since(now)
    }

    fn consumed(&mut self, n: u64) {
        self.done += n;
    }
}

struct Owned {
    address: String,
    conn: Connection,
    version: i16,
    partitions: Vec<i32>,
}

/// Runs consumer `index` of group `group_index` until the collector says stop.
pub fn run_consumer(
    group_index: usize,
    index: usize,
    group: GroupSpec,
    layout: Arc<TopicLayout>,
    shared: Arc<Shared>,
) -> Result<()> {
    let mine: Vec<i32> = (0..layout.partitions()).filter(|p| *p as usize % group.consumers == index).collect();
    let mut owned = Vec::new();
    for (address, partitions) in layout.by_leader(&mine)? {
        let conn = crate::client::connect(&address)?;
        let version = conn.version(ApiKey::Fetch)?;
        owned.push(Owned { address, conn, version, partitions });
    }
    let state = &shared.groups[group_index];
    let rate = if group.max_records_per_sec > 0.0 { group.max_records_per_sec / group.consumers as f64 } else { 0.0 };
    let mut pacer = Pacer::new(rate);
    let mut last_commit = Instant::now();
    if owned.is_empty() {
        // More consumers than partitions: this one has nothing to read.
        while !shared.stopping() {
            thread::sleep(IDLE_CHECK_INTERVAL);
        }
        return Ok(());
    }
    // Offsets go to the group's coordinator. Without one, this consumer does not commit (the
    // measurement does not depend on commits) and says so once.
    let mut coordinator =
        match find_coordinator(&mut owned[0].conn, &group.name).and_then(|a| crate::client::connect(&a)) {
            Ok(conn) => Some(conn),
            Err(e) => {
                eprintln!("sluice-loadgen: group {}: no coordinator ({e}); offsets are not committed", group.name);
                None
            }
        };
    // Fetched records not processed yet: (partition, offset, value).
    let mut buffered: std::collections::VecDeque<(i32, i64, Option<Bytes>)> = Default::default();
    while !shared.stopping() {
        if buffered.is_empty() {
            for o in &mut owned {
                fetch_into(o, &layout.topic, &shared, group_index, &mut buffered)?;
            }
        }
        // Process what the pacer allows, then wait for the next slot (or fetch again when empty).
        let now = Instant::now();
        let allowed = pacer.allowed(now).min(buffered.len() as u64);
        if allowed > 0 {
            let now_unix_us = shared.now_unix_us();
            let mut e2e = state.e2e.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..allowed {
                let Some((partition, offset, value)) = buffered.pop_front() else { break };
                if let Some((intended_unix_us, phase)) = value.as_deref().and_then(decode_value_header) {
                    e2e.record(u64::try_from(now_unix_us - intended_unix_us).unwrap_or(0), phase);
                }
                state.positions[partition as usize].store(offset + 1, Ordering::Relaxed);
            }
            drop(e2e);
            pacer.consumed(allowed);
            state.consumed.fetch_add(allowed, Ordering::Relaxed);
        } else if !buffered.is_empty() {
            thread::sleep(pacer.wait_for_next(Instant::now()).min(Duration::from_millis(10)));
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = Instant::now();
            commit_positions(&mut coordinator, &group.name, &layout.topic, &mine, state);
        }
    }
    // The final positions, so that the group's committed offsets are where this run left it.
    commit_positions(&mut coordinator, &group.name, &layout.topic, &mine, state);
    Ok(())
}

/// Commits the group's positions in `partitions`; on a failure, says so and stops committing.
fn commit_positions(
    coordinator: &mut Option<Connection>,
    group: &str,
    topic: &str,
    partitions: &[i32],
    state: &crate::stats::GroupState,
) {
    let Some(conn) = coordinator.as_mut() else { return };
    let offsets: Vec<(i32, i64)> = partitions
        .iter()
        .map(|&p| (p, state.positions[p as usize].load(Ordering::Relaxed)))
        .filter(|&(_, offset)| offset >= 0)
        .collect();
    if let Err(e) = commit_offsets(conn, group, topic, &offsets) {
        eprintln!("sluice-loadgen: group {group}: offset commit failed ({e}); not committing any more");
        *coordinator = None;
    }
}

/// One Fetch for the partitions of `o` at the group's positions; complete records at or after each
/// position go to `buffered`.
fn fetch_into(
    o: &mut Owned,
    topic: &str,
    shared: &Shared,
    group_index: usize,
    buffered: &mut std::collections::VecDeque<(i32, i64, Option<Bytes>)>,
) -> Result<()> {
    let state = &shared.groups[group_index];
    let positions: Vec<(i32, i64)> =
        o.partitions.iter().map(|&p| (p, state.positions[p as usize].load(Ordering::Relaxed).max(0))).collect();
    let request = requests::fetch(topic, &positions, FETCH_PARTITION_MAX_BYTES)
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES);
    let correlation_id = o.conn.next_correlation_id();
    let frame = encode_request(&request, o.version, correlation_id)?;
    let mut stream = o.conn.try_clone_stream()?;
    std::io::Write::write_all(&mut stream, &frame)
        .map_err(|e| LoadgenError::io(format!("writing to {}", o.address), e))?;
    let response =
        decode_response::<FetchRequest>(read_frame(&mut stream, &o.address)?, o.version, correlation_id, &o.address)?;
    if response.error_code != 0 {
        return Err(LoadgenError::broker(&o.address, "Fetch", response.error_code, None));
    }
    for t in &response.responses {
        for p in &t.partitions {
            let position =
                state.positions.get(p.partition_index as usize).map(|a| a.load(Ordering::Relaxed)).ok_or_else(
                    || LoadgenError::protocol(&o.address, format!("partition {} in a fetch answer", p.partition_index)),
                )?;
            if p.error_code == ERROR_OFFSET_OUT_OF_RANGE {
                let detail = format!("partition {} at offset {position} (deleted by retention?)", p.partition_index);
                return Err(LoadgenError::broker(&o.address, "Fetch", p.error_code, Some(detail)));
            }
            if p.error_code != 0 {
                shared.record_errors(p.error_code, 1);
                continue;
            }
            let Some(records) = &p.records else { continue };
            for batch in complete_batches(records) {
                let mut batch = batch;
                let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| {
                    LoadgenError::protocol(&o.address, format!("record batch of partition {}: {e}", p.partition_index))
                })?;
                for record in set.records {
                    if record.offset >= position {
                        buffered.push_back((p.partition_index, record.offset, record.value));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The whole batches in a fetched `records` blob (a response may end with a partial batch).
pub fn complete_batches(records: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 12 <= records.len() {
        let len = i32::from_be_bytes([records[at + 8], records[at + 9], records[at + 10], records[at + 11]]);
        let Ok(len) = usize::try_from(len) else { break };
        let end = at + 12 + len;
        if end > records.len() {
            break;
        }
        out.push(records.slice(at..end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_limits_rate_and_caps_saved_credit() {
        let mut p = Pacer::new(1000.0);
        let t0 = p.anchor;
        assert_eq!(p.allowed(t0 + Duration::from_millis(10)), 10);
        p.consumed(10);
        assert_eq!(p.allowed(t0 + Duration::from_millis(10)), 0);
        assert!(p.wait_for_next(t0 + Duration::from_millis(10)) <= Duration::from_millis(1));
        // Five idle seconds leave 50 ms of credit (50 records), not 5000.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.allowed(later), 50);
        p.consumed(50);
        assert_eq!(p.allowed(later), 0);
        assert_eq!(p.allowed(later + Duration::from_secs(1)), 50);
        assert_eq!(Pacer::new(0.0).allowed(t0), u64::MAX);
    }

    #[test]
    fn partial_trailing_batch_is_left_out() {
        let mut blob = Vec::new();
        for len in [49i32, 60] {
            blob.extend_from_slice(&0i64.to_be_bytes());
            blob.extend_from_slice(&len.to_be_bytes());
            blob.extend(std::iter::repeat_n(0u8, len as usize));
        }
        blob.truncate(blob.len() - 5);
        let batches = complete_batches(&Bytes::from(blob));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 61);
    }
}
