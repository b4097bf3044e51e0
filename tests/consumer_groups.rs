//! Consumer groups and committed offsets (issue 4) against real clients: librdkafka through the
//! `rdkafka` crate and kafka-python (`python3 -c`), each talking to a real `sluice serve` process.
//!
//! Covered: queue mode (two members split a 4-partition topic, eager `range` and incremental
//! `cooperative-sticky`; a member beyond the partition count idles), pub/sub mode (a second group reads
//! everything), a member SIGKILLed mid-stream (the survivor takes over after the session timeout and
//! continues from the committed offsets), a clean broker restart and a `kill -9` of the broker (committed
//! offsets survive exactly as acknowledged), the admin side (ListGroups, DescribeGroups, OffsetFetch,
//! commit metadata, DeleteGroups, OffsetDelete) and static membership (KIP-345).
//!
//! Everything asserted is Kafka's classic group protocol as a real Kafka broker implements it (none runs
//! here to prove it): the partition assignment is computed by the clients (the group leader), so the
//! exact split is the client assignor's; what the broker owns is membership, generations, session
//! expiry and the offsets. Every test starts its own broker, uses its own topic and group names, waits
//! by polling until a condition holds or a deadline passes, and takes well under a minute.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::groups::GroupInfo;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use common::live::LiveProcess;
use common::{drop_within, run_python_json, unique_topic, Broker};

/// `session.timeout.ms` of every member: Kafka's smallest allowed (`group.min.session.timeout.ms`), so a
/// dead member is noticed quickly.
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// `heartbeat.interval.ms` of every member.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Static-membership test: a longer session, so the restart of a member fits in it with room to spare.
const STATIC_SESSION_TIMEOUT_MS: u64 = 10_000;
/// Limit of one librdkafka call that talks to the broker (offsets, group lists, watermarks, admin).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client's destructor may take (librdkafka's consumer close leaves the group first).
const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long members may take to join and agree on an assignment (Kafka delays a new group's first
/// rebalance by `group.initial.rebalance.delay.ms`, 3 s by default).
const GROUP_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long consumers may take to read what a test expects.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a member is killed the survivor must own its partitions: the session timeout plus a
/// rebalance.
const TAKEOVER_TIMEOUT: Duration = Duration::from_millis(SESSION_TIMEOUT_MS + 20_000);
/// Slack on the earliest moment a killed member's session may expire (timer granularity, scheduling).
const TAKEOVER_CLOCK_SLACK: Duration = Duration::from_millis(1_000);
/// How long a described group may take to reach the state a test waits for.
const GROUP_STATE_TIMEOUT: Duration = Duration::from_secs(20);
/// One `poll` of one member inside the multi-member loops: short, so that every member is served often.
const MEMBER_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Pause between two DescribeGroups while waiting for a group state (a poll interval, not a wait for
/// an event).
const DESCRIBE_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// How long the line reader may take to hand over a killed process's last lines.
const LIVE_OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Kafka error codes the tests expect by number.
const NON_EMPTY_GROUP: i64 = 68;
const GROUP_ID_NOT_FOUND: i64 = 69;
const GROUP_SUBSCRIBED_TO_TOPIC: i64 = 86;

/// A record's place in a topic: (partition, offset).
type Position = (i32, i64);

// ---------------------------------------------------------------------------------------------------
// Topics and records.

/// argv: bootstrap. stdin: [{"name", "partitions"}]. Creates the topics and waits until the broker's
/// metadata shows a leader for every partition.
const PY_CREATE_TOPICS: &str = r#"
import json, sys
from kafka.admin import KafkaAdminClient
bootstrap = sys.argv[1]
spec = json.load(sys.stdin)
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id='sluice-test-admin', request_timeout_ms=20000)
try:
    admin.create_topics(
        {t['name']: {'num_partitions': t['partitions'], 'replication_factor': 1} for t in spec},
        timeout_ms=20000, wait_for_metadata=True)
finally:
    admin.close()
print(json.dumps({'created': [t['name'] for t in spec]}))
"#;

/// Creates `(name, partitions)` topics explicitly: auto-created topics get one partition.
fn create_topics(broker: &Broker, topics: &[(&str, i32)]) {
    let spec: Vec<Value> =
        topics.iter().map(|(name, partitions)| json!({"name": name, "partitions": partitions})).collect();
    let stdin = serde_json::to_vec(&spec).expect("serialize JSON");
    let out = run_python_json(PY_CREATE_TOPICS, &[&broker.bootstrap()], &stdin);
    assert_eq!(out["created"].as_array().map(Vec::len), Some(topics.len()), "create_topics: {out}");
}

/// Produces records `seqs` with acks=all, record `seq` keyed `key-{seq}` to partition `seq % partitions`
/// (explicitly, so every partition gets data whatever the partitioner). Returns where each landed.
fn produce(bootstrap: &str, topic: &str, partitions: i32, seqs: std::ops::Range<u64>) -> BTreeSet<Position> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-test-producer")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("create rdkafka producer");
    let deliveries: Vec<_> = seqs
        .map(|seq| {
            let partition = i32::try_from(seq % partitions as u64).expect("partition fits i32");
            let key = format!("key-{seq}");
            let value = format!("{topic}/{seq}");
            let record = FutureRecord::to(topic).partition(partition).key(&key).payload(&value);
            let delivery = producer.send_result(record).map_err(|(e, _)| e).expect("enqueue a record in librdkafka");
            (seq, partition, delivery)
        })
        .collect();
    let mut landed = BTreeSet::new();
    for (seq, partition, delivery) in deliveries {
        let (got_partition, offset) = match block_on(delivery) {
            Ok(Ok(d)) => (d.partition, d.offset),
            Ok(Err((e, _))) => panic!("record {seq} to {topic} not delivered: {e}"),
            Err(_) => panic!("record {seq} to {topic}: delivery future cancelled"),
        };
        assert_eq!(got_partition, partition, "record {seq} acknowledged on another partition");
        assert!(landed.insert((partition, offset)), "two records acknowledged at {topic}/{partition}@{offset}");
    }
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    landed
}

/// A consumer that joins no group (librdkafka wants a `group.id` for offset look-ups; it is `group`).
fn plain_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-test-inspector")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create rdkafka consumer")
}

/// High watermark of each partition `0..partitions`.
fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer = plain_consumer(bootstrap, &format!("sluice-test-unused-{topic}"));
    let marks = (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, CLIENT_CALL_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            (p, high)
        })
        .collect();
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    marks
}

/// A committed offset as OffsetFetch reports it: `None` for "no commit" (offset -1 on the wire).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed {
    offset: Option<i64>,
    metadata: String,
}

impl Committed {
    fn at(offset: i64, metadata: &str) -> Committed {
        Committed { offset: Some(offset), metadata: metadata.to_string() }
    }
    fn none() -> Committed {
        Committed { offset: None, metadata: String::new() }
    }
}

/// `group`'s committed offsets for partitions `0..partitions` of `topic` (OffsetFetch), read by a client
/// that is not a member.
fn committed_offsets(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Committed> {
    let consumer = plain_consumer(bootstrap, group);
    let mut query = TopicPartitionList::new();
    query.add_partition_range(topic, 0, partitions - 1);
    let answer = consumer
        .committed_offsets(query, CLIENT_CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("OffsetFetch of group {group}: {e}"));
    let offsets = answer
        .elements_for_topic(topic)
        .iter()
        .map(|elem| {
            elem.error().unwrap_or_else(|e| panic!("OffsetFetch {group} {topic}/{}: {e}", elem.partition()));
            let offset = match elem.offset() {
                Offset::Offset(o) => Some(o),
                // librdkafka's spelling of the -1 that the broker sends for "no committed offset".
                Offset::Invalid => None,
                other => panic!("OffsetFetch {group} {topic}/{}: offset {other:?}", elem.partition()),
            };
            (elem.partition(), Committed { offset, metadata: elem.metadata().to_string() })
        })
        .collect();
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    offsets
}

// ---------------------------------------------------------------------------------------------------
// Group members (librdkafka).

/// What a member's rebalance callback saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RebalanceEvent {
    Assign(BTreeSet<i32>),
    Revoke(BTreeSet<i32>),
    Error(String),
}

/// Records every rebalance callback; librdkafka calls it on assignment even when the assignment is
/// empty, so a member with an `Assign` event has completed a join.
#[derive(Default)]
struct RebalanceLog {
    events: Mutex<Vec<RebalanceEvent>>,
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect();
        let event = match rebalance {
            Rebalance::Assign(tpl) => RebalanceEvent::Assign(partitions(tpl)),
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoke(partitions(tpl)),
            Rebalance::Error(e) => RebalanceEvent::Error(e.to_string()),
        };
        self.events.lock().expect("rebalance log").push(event);
    }
}

/// How a member commits what it consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commits {
    /// A synchronous commit of `offset + 1` after each record is processed (recorded).
    EachRecord,
    /// None unless the test commits explicitly.
    Explicit,
}

/// One librdkafka consumer subscribed to one topic in a group (classic protocol).
struct Member {
    /// Its `client.id`, which DescribeGroups reports.
    client_id: String,
    topic: String,
    commits: Commits,
    consumer: BaseConsumer<RebalanceLog>,
    /// Every record it was handed, in order.
    consumed: Vec<Position>,
    /// Failed commits and consumer errors, for the assertions and the failure messages.
    commit_errors: Vec<String>,
    errors: Vec<String>,
}

impl Member {
    fn join(
        bootstrap: &str,
        group: &str,
        topic: &str,
        client_id: &str,
        strategy: &str,
        commits: Commits,
        extra: &[(&str, &str)],
    ) -> Member {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("client.id", client_id)
            .set("group.id", group)
            .set("group.protocol", "classic")
            .set("partition.assignment.strategy", strategy)
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100");
        for (name, value) in extra {
            config.set(*name, *value);
        }
        let consumer: BaseConsumer<RebalanceLog> =
            config.create_with_context(RebalanceLog::default()).expect("create rdkafka group consumer");
        consumer.subscribe(&[topic]).unwrap_or_else(|e| panic!("{client_id}: subscribe to {topic}: {e}"));
        Member {
            client_id: client_id.to_string(),
            topic: topic.to_string(),
            commits,
            consumer,
            consumed: Vec::new(),
            commit_errors: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn events(&self) -> Vec<RebalanceEvent> {
        self.consumer.context().events.lock().expect("rebalance log").clone()
    }

    /// Has completed a join and handled the assignment that came with it (its last rebalance event is
    /// an assignment).
    fn is_settled(&self) -> bool {
        matches!(self.events().last(), Some(RebalanceEvent::Assign(_)))
    }

    /// The partitions it owns now.
    fn assignment(&self) -> BTreeSet<i32> {
        let tpl = self.consumer.assignment().unwrap_or_else(|e| panic!("{}: assignment: {e}", self.client_id));
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
    }

    /// Polls once; a record is recorded as processed and then, with `Commits::EachRecord`, committed
    /// synchronously. Rebalance callbacks run inside this call.
    fn poll_once(&mut self, timeout: Duration) -> Option<Position> {
        match self.consumer.poll(timeout) {
            None => None,
            Some(Ok(message)) => {
                assert_eq!(
                    message.topic(),
                    self.topic,
                    "{}: record from a topic it did not subscribe to",
                    self.client_id
                );
                let at = (message.partition(), message.offset());
                self.consumed.push(at);
                if self.commits == Commits::EachRecord {
                    if let Err(e) = self.consumer.commit_message(&message, CommitMode::Sync) {
                        self.commit_errors.push(format!("commit after {at:?}: {e}"));
                    }
                }
                Some(at)
            }
            Some(Err(KafkaError::PartitionEOF(_))) => None,
            Some(Err(e)) => {
                self.errors.push(e.to_string());
                None
            }
        }
    }

    /// Commits `(partition, offset, metadata)` synchronously, as the member (its generation and id).
    fn commit(&self, offsets: &[(i32, i64, &str)]) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset, metadata) in offsets {
            let mut elem = tpl.add_partition(&self.topic, partition);
            elem.set_offset(Offset::Offset(offset)).expect("commit offset");
            elem.set_metadata(metadata);
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }

    /// Offsets of the records it consumed from `partition`, in the order it got them.
    fn consumed_from(&self, partition: i32) -> Vec<i64> {
        self.consumed.iter().filter(|(p, _)| *p == partition).map(|(_, o)| *o).collect()
    }

    fn describe(&self) -> String {
        let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
        for (p, _) in &self.consumed {
            *per_partition.entry(*p).or_default() += 1;
        }
        format!(
            "{}: assignment {:?}, rebalance events {:?}, records per partition {per_partition:?}, commit errors \
             {:?}, consumer errors {:?}",
            self.client_id,
            self.assignment(),
            self.events(),
            self.commit_errors,
            self.errors
        )
    }

    /// Closes the consumer (which leaves the group) within `CLIENT_CLOSE_TIMEOUT`.
    fn close(self) {
        let what = format!("group member {}", self.client_id);
        drop_within(self.consumer, CLIENT_CLOSE_TIMEOUT, &what);
    }
}

/// Polls every member in turn until `done` holds; panics with each member's state at `timeout`.
fn poll_until(members: &mut [Member], timeout: Duration, what: &str, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        for member in members.iter_mut() {
            member.poll_once(MEMBER_POLL_INTERVAL);
        }
        if done(members) {
            return;
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = members.iter().map(Member::describe).collect();
            panic!("{what}: not reached within {timeout:?}\n{}", states.join("\n"));
        }
    }
}

/// Every member has handled its latest assignment, and together they own each of `0..partitions`
/// exactly once.
fn is_settled_split(members: &[Member], partitions: i32) -> bool {
    if !members.iter().all(Member::is_settled) {
        return false;
    }
    let mut owned = Vec::new();
    for member in members {
        owned.extend(member.assignment());
    }
    owned.sort_unstable();
    owned == (0..partitions).collect::<Vec<_>>()
}

/// Whether every position in `wanted` has been consumed by some member.
fn consumed_all(members: &[Member], wanted: &BTreeSet<Position>) -> bool {
    let seen: BTreeSet<Position> = members.iter().flat_map(|m| m.consumed.iter().copied()).collect();
    wanted.is_subset(&seen)
}

/// Asserts the queue-mode contract over `members` after they consumed `produced`: each record exactly
/// once across the members, nothing else, each partition read by one member only and that member owns
/// it in `owners`.
fn assert_each_record_once_by_its_owner(members: &[Member], produced: &BTreeSet<Position>, owners: &[BTreeSet<i32>]) {
    let mut times: BTreeMap<Position, usize> = BTreeMap::new();
    let mut readers: BTreeMap<i32, BTreeSet<&str>> = BTreeMap::new();
    for member in members {
        for &at in &member.consumed {
            *times.entry(at).or_default() += 1;
            readers.entry(at.0).or_default().insert(member.client_id.as_str());
        }
    }
    let duplicated: Vec<_> = times.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicated.is_empty(), "records consumed more than once in one group: {duplicated:?}");
    let unexpected: Vec<_> = times.keys().filter(|at| !produced.contains(at)).collect();
    assert!(unexpected.is_empty(), "records consumed that were not produced: {unexpected:?}");
    let missing: Vec<_> = produced.iter().filter(|at| !times.contains_key(at)).collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
    for (partition, who) in &readers {
        assert_eq!(who.len(), 1, "partition {partition} consumed by several members of one group: {who:?}");
        let reader = who.iter().next().expect("one reader");
        let index = members.iter().position(|m| m.client_id == *reader).expect("reader is a member");
        assert!(
            owners[index].contains(partition),
            "partition {partition} consumed by {reader}, which was assigned {:?}",
            owners[index]
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// kafka-python scripts. Each prints one JSON line (the live victim prints one per event).

/// argv: bootstrap, topic, group, count. A kafka-python member (range) of `group` reads until it has
/// `count` records (or 40 s), commits synchronously, and prints what it read and what is committed.
const PY_GROUP_READ_ALL: &str = r#"
import json, sys, time
from kafka import KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
bootstrap, topic, group, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id='sluice-test-pubsub', group_id=group,
                         enable_auto_commit=False, auto_offset_reset='earliest', session_timeout_ms=6000,
                         heartbeat_interval_ms=500, partition_assignment_strategy=[RangePartitionAssignor],
                         fetch_max_wait_ms=100, request_timeout_ms=20000)
consumer.subscribe([topic])
seen = []
deadline = time.monotonic() + 40
while len(seen) < want and time.monotonic() < deadline:
    for records in consumer.poll(timeout_ms=200).values():
        seen.extend([r.partition, r.offset] for r in records)
consumer.commit()
committed = {str(tp.partition): consumer.committed(tp) for tp in sorted(consumer.assignment())}
consumer.close(autocommit=False)
print(json.dumps({'records': seen, 'committed': committed}))
"#;

/// argv: bootstrap, topic, group, commit_count, uncommitted_count. A kafka-python member (range) of
/// `group` that prints one JSON line per event: `assigned`/`revoked` (from its rebalance listener), each
/// `record` as it processes it, and `committed` after each synchronous commit of `offset + 1`. It commits
/// its first `commit_count` records, processes `uncommitted_count` more without committing, prints
/// `stalled` and then idles (still heartbeating from its network thread) until it is killed.
const PY_VICTIM: &str = r#"
import json, sys, time
from kafka import KafkaConsumer, TopicPartition, OffsetAndMetadata, ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
commit_count, uncommitted_count = int(sys.argv[4]), int(sys.argv[5])
def say(**event):
    print(json.dumps(event), flush=True)
class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        say(event='revoked', partitions=sorted(tp.partition for tp in revoked))
    def on_partitions_assigned(self, assigned):
        say(event='assigned', partitions=sorted(tp.partition for tp in assigned))
consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id='sluice-test-victim', group_id=group,
                         enable_auto_commit=False, auto_offset_reset='earliest', session_timeout_ms=6000,
                         heartbeat_interval_ms=500, partition_assignment_strategy=[RangePartitionAssignor],
                         max_poll_records=5, fetch_max_wait_ms=100, request_timeout_ms=20000)
consumer.subscribe([topic], listener=Listener())
processed = 0
limit = commit_count + uncommitted_count
while processed < limit:
    for records in consumer.poll(timeout_ms=100).values():
        for r in records:
            if processed >= limit:
                break
            say(event='record', partition=r.partition, offset=r.offset)
            processed += 1
            if processed <= commit_count:
                consumer.commit({TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, '', -1)})
                say(event='committed', partition=r.partition, offset=r.offset + 1)
say(event='stalled')
while True:
    time.sleep(1)
"#;

/// argv: bootstrap, topic, group, partitions. kafka-python's `committed(tp, metadata=True)` for each
/// partition, from a consumer that does not join: `[offset, metadata]`, or null for "no commit".
const PY_COMMITTED: &str = r#"
import json, sys
from kafka import KafkaConsumer, TopicPartition
bootstrap, topic, group, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id='sluice-test-committed', group_id=group,
                         enable_auto_commit=False, request_timeout_ms=20000)
out = {}
for p in range(partitions):
    om = consumer.committed(TopicPartition(topic, p), metadata=True)
    out[str(p)] = None if om is None else [om.offset, om.metadata]
consumer.close(autocommit=False)
print(json.dumps(out))
"#;

/// argv: bootstrap. stdin: a list of operations, run in order with one KafkaAdminClient; prints the list
/// of their results. Error codes are Kafka's numbers (0 for none).
///   {"op": "list"}                                   -> [[group_id, protocol_type], ...] sorted
///   {"op": "describe", "group"}                      -> {error, state, protocol_type, protocol,
///                                                        members: [[client_id, [partitions]], ...]}
///   {"op": "offsets", "group", "topic", "partitions"} -> {"p": [offset, metadata]}  (OffsetFetch)
///   {"op": "delete_offsets", "group", "topic", "partitions"} -> {"p": code} or {"error": code}
///   {"op": "delete_groups", "groups"}                -> {group: code}
const PY_GROUP_ADMIN: &str = r#"
import json, sys
import kafka.errors as Errors
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
bootstrap = sys.argv[1]
ops = json.load(sys.stdin)
def code(err):
    if err is None or err == 'OK':
        return 0
    if isinstance(err, str):
        return getattr(Errors, err).errno
    return err.errno
def assigned(assignment):
    if isinstance(assignment, dict):
        return sorted(p for t in assignment.get('assigned_partitions') or [] for p in t['partitions'])
    return None
admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id='sluice-test-admin', request_timeout_ms=20000)
out = []
try:
    for op in ops:
        kind = op['op']
        if kind == 'list':
            out.append(sorted([g['group_id'], g['protocol_type']] for g in admin.list_groups()))
        elif kind == 'describe':
            d = admin.describe_groups([op['group']])[op['group']]
            out.append({'error': d.get('error'), 'state': d.get('group_state'), 'protocol_type': d.get('protocol_type'),
                        'protocol': d.get('protocol_data'),
                        'members': sorted([m['client_id'], assigned(m.get('member_assignment'))]
                                          for m in d.get('members') or [])})
        elif kind == 'offsets':
            tps = [TopicPartition(op['topic'], p) for p in op['partitions']]
            got = admin.list_group_offsets({op['group']: tps})[op['group']]
            out.append({str(tp.partition): [om.offset, om.metadata] for tp, om in got.items()})
        elif kind == 'delete_offsets':
            tps = [TopicPartition(op['topic'], p) for p in op['partitions']]
            try:
                res = admin.delete_group_offsets(op['group'], tps)
                out.append({str(tp.partition): code(e) for tp, e in res.items()})
            except Errors.KafkaError as e:
                out.append({'error': e.errno})
        elif kind == 'delete_groups':
            res = admin.delete_groups(op['groups'])
            out.append({g: code(e) for g, e in res.items()})
        else:
            raise ValueError('unknown op ' + kind)
finally:
    admin.close()
print(json.dumps(out))
"#;

fn group_admin(broker: &Broker, ops: &[Value]) -> Vec<Value> {
    let stdin = serde_json::to_vec(ops).expect("serialize JSON");
    let out = run_python_json(PY_GROUP_ADMIN, &[&broker.bootstrap()], &stdin);
    let results = out.as_array().unwrap_or_else(|| panic!("admin results: {out}")).clone();
    assert_eq!(results.len(), ops.len(), "one result per admin operation: {out}");
    results
}

fn as_i64(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn as_position(v: &Value) -> Position {
    let partition = i32::try_from(as_i64(&v[0])).expect("partition fits i32");
    (partition, as_i64(&v[1]))
}

// ---------------------------------------------------------------------------------------------------
// librdkafka's view of groups: ListGroups + DescribeGroups (rd_kafka_list_groups), DeleteGroups.

/// ListGroups then DescribeGroups for `group`, through librdkafka. `None` if the group is not listed.
fn describe_group(bootstrap: &str, group: &str) -> Option<DescribedGroup> {
    let consumer = plain_consumer(bootstrap, &format!("sluice-test-describer-{group}"));
    let list = consumer
        .fetch_group_list(Some(group), CLIENT_CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("ListGroups/DescribeGroups for {group}: {e}"));
    let described = list.groups().iter().find(|g| g.name() == group).map(DescribedGroup::from);
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    described
}

/// Every group name ListGroups returns, through librdkafka.
fn listed_groups(bootstrap: &str) -> BTreeSet<String> {
    let consumer = plain_consumer(bootstrap, "sluice-test-lister");
    let list = consumer.fetch_group_list(None, CLIENT_CALL_TIMEOUT).unwrap_or_else(|e| panic!("ListGroups: {e}"));
    let names = list.groups().iter().map(|g| g.name().to_string()).collect();
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    names
}

/// An owned copy of librdkafka's `GroupInfo`, with each member's assignment decoded.
#[derive(Debug)]
struct DescribedGroup {
    state: String,
    protocol_type: String,
    protocol: String,
    /// client id → partitions assigned, per topic.
    members: BTreeMap<String, BTreeMap<String, BTreeSet<i32>>>,
}

impl From<&GroupInfo> for DescribedGroup {
    fn from(info: &GroupInfo) -> DescribedGroup {
        let members = info
            .members()
            .iter()
            .map(|m| (m.client_id().to_string(), m.assignment().map(decode_assignment).unwrap_or_default()))
            .collect();
        DescribedGroup {
            state: info.state().to_string(),
            protocol_type: info.protocol_type().to_string(),
            protocol: info.protocol().to_string(),
            members,
        }
    }
}

/// Decodes a ConsumerProtocolAssignment (every version starts the same: version i16, then
/// `[topic string, [partition i32]]`); what follows (user data) is ignored. Empty bytes decode as an
/// empty assignment.
fn decode_assignment(bytes: &[u8]) -> BTreeMap<String, BTreeSet<i32>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            assert!(self.0.len() >= n, "assignment truncated: want {n} more bytes, have {}", self.0.len());
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head
        }
        fn i16(&mut self) -> i16 {
            i16::from_be_bytes(self.take(2).try_into().expect("2 bytes"))
        }
        fn i32(&mut self) -> i32 {
            i32::from_be_bytes(self.take(4).try_into().expect("4 bytes"))
        }
        fn count(&mut self) -> usize {
            usize::try_from(self.i32()).unwrap_or(0)
        }
    }
    let mut assignment = BTreeMap::new();
    if bytes.is_empty() {
        return assignment;
    }
    let mut r = Reader(bytes);
    let _version = r.i16();
    for _ in 0..r.count() {
        let len = usize::try_from(r.i16()).expect("topic name length");
        let topic = String::from_utf8(r.take(len).to_vec()).expect("topic name is UTF-8");
        let partitions = (0..r.count()).map(|_| r.i32()).collect();
        assignment.insert(topic, partitions);
    }
    assignment
}

/// DeleteGroups for one group through librdkafka's admin client: `Ok` or the group's error code.
fn delete_group(bootstrap: &str, group: &str) -> Result<(), RDKafkaErrorCode> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-test-admin")
        .create()
        .expect("create rdkafka admin client");
    let options = AdminOptions::new().request_timeout(Some(CLIENT_CALL_TIMEOUT));
    let results = block_on(admin.delete_groups(&[group], &options)).unwrap_or_else(|e| panic!("DeleteGroups: {e}"));
    drop_within(admin, CLIENT_CLOSE_TIMEOUT, "rdkafka admin client");
    assert_eq!(results.len(), 1, "one result per group: {results:?}");
    match results.into_iter().next().expect("one result") {
        Ok(name) => {
            assert_eq!(name, group);
            Ok(())
        }
        Err((name, code)) => {
            assert_eq!(name, group);
            Err(code)
        }
    }
}

/// Describes `group` until its state is `state` (a group goes through PreparingRebalance and
/// CompletingRebalance before it is Stable, and is Empty only once every member has left).
fn wait_for_group_state(bootstrap: &str, group: &str, state: &str) -> DescribedGroup {
    let deadline = Instant::now() + GROUP_STATE_TIMEOUT;
    loop {
        let described = describe_group(bootstrap, group);
        match described {
            Some(d) if d.state == state => return d,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "group {group} not {state} within {GROUP_STATE_TIMEOUT:?}: {other:?}"
                );
            }
        }
        thread::sleep(DESCRIBE_RETRY_INTERVAL);
    }
}

// ---------------------------------------------------------------------------------------------------
// Tests.

/// Queue mode with one assignor. Two members of one group subscribe to a 4-partition topic and settle
/// on 2 + 2 partitions (both assignors balance); then 400 keyed records are produced to all partitions.
/// Each record is consumed exactly once across the two members (each commits synchronously after each
/// record), each partition only by the member that owns it, and the assignment does not change while
/// they consume; the group's committed offsets end at the high watermarks. Then two members of another
/// group on a 1-partition topic: one owns the partition and gets every record, the other is assigned
/// nothing and gets nothing.
fn queue_mode(strategy: &str) {
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 400;
    const LONE_RECORDS: u64 = 50;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic(&format!("queue-{strategy}"));
    let lone = unique_topic(&format!("queue-lone-{strategy}"));
    create_topics(&broker, &[(&topic, PARTITIONS), (&lone, 1)]);

    let group = unique_topic(&format!("queue-group-{strategy}"));
    let mut members: Vec<Member> = ["a", "b"]
        .iter()
        .map(|name| {
            let client_id = format!("sluice-test-queue-{name}");
            Member::join(&bootstrap, &group, &topic, &client_id, strategy, Commits::EachRecord, &[])
        })
        .collect();
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "two members own the 4 partitions between them", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let owners: Vec<BTreeSet<i32>> = members.iter().map(Member::assignment).collect();
    for (member, owned) in members.iter().zip(&owners) {
        assert_eq!(owned.len(), 2, "{strategy} balances 4 partitions over 2 members: {}", member.describe());
    }

    let produced = produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);
    poll_until(&mut members, CONSUME_TIMEOUT, "every record consumed", |ms| consumed_all(ms, &produced));
    assert_each_record_once_by_its_owner(&members, &produced, &owners);
    for (member, owned) in members.iter().zip(&owners) {
        assert_eq!(&member.assignment(), owned, "no rebalance while the group was stable: {}", member.describe());
        assert!(member.commit_errors.is_empty(), "commits failed: {}", member.describe());
    }
    let high = high_watermarks(&bootstrap, &topic, PARTITIONS);
    let expected: BTreeMap<i32, Committed> = high.iter().map(|(&p, &hw)| (p, Committed::at(hw, ""))).collect();
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), expected, "committed offsets at the end");
    for member in members {
        member.close();
    }

    // More members than partitions: the extra one idles.
    let lone_group = unique_topic(&format!("queue-lone-group-{strategy}"));
    let mut members: Vec<Member> = ["c", "d"]
        .iter()
        .map(|name| {
            let client_id = format!("sluice-test-lone-{name}");
            Member::join(&bootstrap, &lone_group, &lone, &client_id, strategy, Commits::EachRecord, &[])
        })
        .collect();
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "one of two members owns the only partition", |ms| {
        is_settled_split(ms, 1)
    });
    let owners: Vec<BTreeSet<i32>> = members.iter().map(Member::assignment).collect();
    let produced = produce(&bootstrap, &lone, 1, 0..LONE_RECORDS);
    poll_until(&mut members, CONSUME_TIMEOUT, "every record of the 1-partition topic consumed", |ms| {
        consumed_all(ms, &produced)
    });
    assert_each_record_once_by_its_owner(&members, &produced, &owners);
    let idle: Vec<&Member> = members.iter().filter(|m| m.assignment().is_empty()).collect();
    assert_eq!(idle.len(), 1, "exactly one member idles");
    assert!(idle[0].consumed.is_empty(), "the idle member got records: {}", idle[0].describe());
    for member in members {
        member.close();
    }
}

#[test]
fn queue_mode_range_two_members_split_partitions() {
    queue_mode("range");
}

#[test]
fn queue_mode_cooperative_sticky_two_members_split_partitions() {
    queue_mode("cooperative-sticky");
}

/// Pub/sub: group 1 (two librdkafka members, range) and group 2 (one kafka-python member) both read the
/// same 3-partition topic. Each group gets every record exactly once, and each group's committed offsets
/// are its own: both end at the high watermarks.
#[test]
fn pub_sub_every_group_reads_every_record() {
    const PARTITIONS: i32 = 3;
    const RECORDS: u64 = 300;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("pubsub");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let first_group = unique_topic("pubsub-group-1");
    let second_group = unique_topic("pubsub-group-2");

    let mut members: Vec<Member> = ["a", "b"]
        .iter()
        .map(|name| {
            let client_id = format!("sluice-test-pubsub-{name}");
            Member::join(&bootstrap, &first_group, &topic, &client_id, "range", Commits::EachRecord, &[])
        })
        .collect();
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "group 1 owns the 3 partitions between its two members", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let owners: Vec<BTreeSet<i32>> = members.iter().map(Member::assignment).collect();

    let produced = produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);
    // Group 2 joins meanwhile, in its own process, and reads from the earliest offsets.
    let second = {
        let (bootstrap, topic, group) = (bootstrap.clone(), topic.clone(), second_group.clone());
        thread::spawn(move || {
            run_python_json(PY_GROUP_READ_ALL, &[&bootstrap, &topic, &group, &RECORDS.to_string()], b"")
        })
    };
    poll_until(&mut members, CONSUME_TIMEOUT, "group 1 consumed every record", |ms| consumed_all(ms, &produced));
    assert_each_record_once_by_its_owner(&members, &produced, &owners);
    let out = second.join().unwrap_or_else(|e| std::panic::resume_unwind(e));

    let second_records: Vec<Position> = out["records"].as_array().expect("records").iter().map(as_position).collect();
    let distinct: BTreeSet<Position> = second_records.iter().copied().collect();
    assert_eq!(distinct.len(), second_records.len(), "group 2 got records more than once");
    assert_eq!(distinct, produced, "group 2 got every record");

    let high = high_watermarks(&bootstrap, &topic, PARTITIONS);
    let second_committed: BTreeMap<String, Value> =
        out["committed"].as_object().expect("committed").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let expected: BTreeMap<String, Value> = high.iter().map(|(p, hw)| (p.to_string(), json!(hw))).collect();
    assert_eq!(second_committed, expected, "group 2's committed offsets (kafka-python)");
    let expected: BTreeMap<i32, Committed> = high.iter().map(|(&p, &hw)| (p, Committed::at(hw, ""))).collect();
    assert_eq!(committed_offsets(&bootstrap, &first_group, &topic, PARTITIONS), expected, "group 1's offsets");
    assert_eq!(committed_offsets(&bootstrap, &second_group, &topic, PARTITIONS), expected, "group 2's offsets");
    for member in members {
        assert!(member.commit_errors.is_empty(), "commits failed: {}", member.describe());
        member.close();
    }
}

/// The victim's account of itself, from its JSON lines.
#[derive(Debug, Default)]
struct VictimLog {
    /// Its current assignment (`None` between a revocation and the next assignment).
    assigned: Option<BTreeSet<i32>>,
    processed: Vec<Position>,
    /// Highest committed `offset + 1` per partition, as acknowledged to it.
    committed: BTreeMap<i32, i64>,
    stalled: bool,
}

impl VictimLog {
    fn take(&mut self, line: &str) {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("victim printed non-JSON ({e}): {line}"));
        let partitions = || -> BTreeSet<i32> {
            event["partitions"].as_array().expect("partitions").iter().map(|p| as_i64(p) as i32).collect()
        };
        match event["event"].as_str() {
            Some("assigned") => self.assigned = Some(partitions()),
            Some("revoked") => self.assigned = None,
            Some("record") => self.processed.push((as_i64(&event["partition"]) as i32, as_i64(&event["offset"]))),
            Some("committed") => {
                let (partition, next) = (as_i64(&event["partition"]) as i32, as_i64(&event["offset"]));
                let previous = self.committed.insert(partition, next);
                assert!(previous.is_none_or(|o| o < next), "victim's commits on {partition} go backwards");
            }
            Some("stalled") => self.stalled = true,
            _ => panic!("unknown victim event: {line}"),
        }
    }

    fn drain(&mut self, victim: &LiveProcess) {
        while let Some(line) = victim.try_line() {
            self.take(&line);
        }
    }
}

/// A member killed mid-stream. The survivor (librdkafka, range) and the victim (kafka-python in its own
/// process, range) split a 4-partition topic 2 + 2; both commit synchronously after each record. The
/// victim commits 20 records, processes 7 more without committing, stops, and is SIGKILLed (so it never
/// leaves the group). The survivor owns all 4 partitions no sooner than the victim's session can have
/// expired and within the session timeout plus a rebalance. On each of the victim's partitions it starts
/// exactly at the victim's last acknowledged commit (or at the start, where the victim committed
/// nothing), so no committed record is read twice and the only records read by both are the victim's
/// uncommitted ones (all of which are read again); every record is read; records produced after the
/// takeover reach the survivor; the committed offsets end at the high watermarks.
#[test]
fn killed_member_partitions_taken_over_from_committed_offsets() {
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 400;
    const MORE_RECORDS: u64 = 40;
    const VICTIM_COMMITS: usize = 20;
    const VICTIM_UNCOMMITTED: usize = 7;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("takeover");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let group = unique_topic("takeover-group");

    let mut survivor =
        Member::join(&bootstrap, &group, &topic, "sluice-test-survivor", "range", Commits::EachRecord, &[]);
    let mut victim = LiveProcess::python(
        PY_VICTIM,
        &[&bootstrap, &topic, &group, &VICTIM_COMMITS.to_string(), &VICTIM_UNCOMMITTED.to_string()],
    );
    let mut log = VictimLog::default();
    let step = |survivor: &mut Member, log: &mut VictimLog, victim: &mut LiveProcess| {
        survivor.poll_once(MEMBER_POLL_INTERVAL);
        log.drain(victim);
        if let Some(status) = victim.try_exit_status() {
            panic!("the victim exited ({status}); stderr:\n{}", victim.stderr());
        }
    };

    let deadline = Instant::now() + GROUP_SETTLE_TIMEOUT;
    let victim_partitions = loop {
        step(&mut survivor, &mut log, &mut victim);
        if let Some(theirs) = &log.assigned {
            let ours = survivor.assignment();
            let all: BTreeSet<i32> = ours.union(theirs).copied().collect();
            if survivor.is_settled() && ours.len() == 2 && theirs.len() == 2 && all.len() == 4 {
                break theirs.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "survivor and victim did not settle on 2 + 2 partitions within {GROUP_SETTLE_TIMEOUT:?}: {}; victim {log:?}",
            survivor.describe()
        );
    };
    let survivor_partitions = survivor.assignment();

    let mut produced = produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while !log.stalled {
        step(&mut survivor, &mut log, &mut victim);
        assert!(Instant::now() < deadline, "the victim did not process its records in time: {log:?}");
    }
    victim.kill9();
    let killed_at = Instant::now();
    for line in victim.remaining_lines(LIVE_OUTPUT_DRAIN_TIMEOUT) {
        log.take(&line);
    }
    let before_takeover = survivor.consumed.len();

    poll_until(std::slice::from_mut(&mut survivor), TAKEOVER_TIMEOUT, "the survivor owns all 4 partitions", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let takeover = killed_at.elapsed();
    eprintln!("takeover {takeover:?} after the kill (session timeout {SESSION_TIMEOUT_MS} ms)");
    // The victim heartbeated until it was killed, so its session cannot have expired sooner than a session
    // timeout after its last heartbeat: a coordinator that drops members when their connection closes
    // (Kafka does not) would take over early.
    let earliest = Duration::from_millis(SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) - TAKEOVER_CLOCK_SLACK;
    assert!(
        takeover >= earliest,
        "takeover {takeover:?} after the kill, before the session could expire ({earliest:?})"
    );

    produced.extend(produce(&bootstrap, &topic, PARTITIONS, RECORDS..RECORDS + MORE_RECORDS));
    let high = high_watermarks(&bootstrap, &topic, PARTITIONS);
    poll_until(
        std::slice::from_mut(&mut survivor),
        CONSUME_TIMEOUT,
        "the survivor read every partition to its end",
        |ms| high.iter().all(|(&p, &hw)| ms[0].consumed_from(p).last() == Some(&(hw - 1))),
    );

    // Before the takeover the survivor read only its own partitions.
    let strays: Vec<_> =
        survivor.consumed[..before_takeover].iter().filter(|(p, _)| !survivor_partitions.contains(p)).collect();
    assert!(strays.is_empty(), "survivor read the victim's partitions before the takeover: {strays:?}");
    assert!(
        log.processed.iter().all(|(p, _)| victim_partitions.contains(p)),
        "victim read partitions it did not own: {log:?}"
    );
    assert_eq!(log.processed.len(), VICTIM_COMMITS + VICTIM_UNCOMMITTED, "victim's records: {log:?}");
    let victim_committed: BTreeSet<Position> =
        log.processed.iter().copied().filter(|&(p, o)| log.committed.get(&p).is_some_and(|&next| o < next)).collect();
    let victim_uncommitted: BTreeSet<Position> =
        log.processed.iter().copied().filter(|at| !victim_committed.contains(at)).collect();
    assert_eq!(victim_committed.len(), VICTIM_COMMITS, "victim's commits cover its first records: {log:?}");

    for p in 0..PARTITIONS {
        let offsets = survivor.consumed_from(p);
        let start = if victim_partitions.contains(&p) { log.committed.get(&p).copied().unwrap_or(0) } else { 0 };
        let expected: Vec<i64> = (start..high[&p]).collect();
        assert_eq!(
            offsets, expected,
            "partition {p}: the survivor reads each record once from {start} (victim's commit or the start) to the end"
        );
    }
    let survivor_read: BTreeSet<Position> = survivor.consumed.iter().copied().collect();
    let read_twice: BTreeSet<Position> =
        survivor_read.intersection(&log.processed.iter().copied().collect()).copied().collect();
    assert_eq!(read_twice, victim_uncommitted, "duplicates are exactly the victim's uncommitted records");
    let read: BTreeSet<Position> = survivor_read.union(&victim_committed).copied().collect();
    assert_eq!(read, produced, "every record read and committed by one member or the other");
    assert!(survivor.commit_errors.is_empty(), "survivor's commits failed: {}", survivor.describe());
    let expected: BTreeMap<i32, Committed> = high.iter().map(|(&p, &hw)| (p, Committed::at(hw, ""))).collect();
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), expected, "committed offsets at the end");
    survivor.close();
}

/// A clean broker restart (SIGTERM, start again). A member commits exactly up to offsets 30 and 45 of a
/// 2-partition topic with 100 records each (commits `offset + 1` for the records below those and nothing
/// else), then closes. After the restart the committed offsets are read back unchanged, and a new member
/// of the group (auto.offset.reset=earliest) starts exactly there on each partition, not at the beginning,
/// and reads each record once to the end, including records produced after the restart.
#[test]
fn broker_restart_group_resumes_from_committed_offsets() {
    const PARTITIONS: i32 = 2;
    const RECORDS: u64 = 200;
    const MORE_RECORDS: u64 = 40;
    let stop_at: BTreeMap<i32, i64> = BTreeMap::from([(0, 30), (1, 45)]);
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("restart");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let group = unique_topic("restart-group");
    produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);

    let mut first = Member::join(&bootstrap, &group, &topic, "sluice-test-before", "range", Commits::Explicit, &[]);
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + GROUP_SETTLE_TIMEOUT + CONSUME_TIMEOUT;
    while committed != stop_at {
        if let Some((p, o)) = first.poll_once(MEMBER_POLL_INTERVAL) {
            if o < stop_at[&p] {
                first.commit(&[(p, o + 1, "")]).unwrap_or_else(|e| panic!("commit {p}@{}: {e}", o + 1));
                committed.insert(p, o + 1);
            }
        }
        assert!(Instant::now() < deadline, "did not commit up to {stop_at:?} in time: {}", first.describe());
    }
    first.close();
    let expected: BTreeMap<i32, Committed> = stop_at.iter().map(|(&p, &o)| (p, Committed::at(o, ""))).collect();
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), expected, "committed before the restart");

    broker.terminate();
    broker.restart();

    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), expected, "committed after the restart");
    produce(&bootstrap, &topic, PARTITIONS, RECORDS..RECORDS + MORE_RECORDS);
    let high = high_watermarks(&bootstrap, &topic, PARTITIONS);
    let mut members =
        vec![Member::join(&bootstrap, &group, &topic, "sluice-test-after", "range", Commits::EachRecord, &[])];
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT + CONSUME_TIMEOUT, "the new member read to the end", |ms| {
        high.iter().all(|(&p, &hw)| ms[0].consumed_from(p).last() == Some(&(hw - 1)))
    });
    let second = members.pop().expect("one member");
    for (&p, &start) in &stop_at {
        let expected: Vec<i64> = (start..high[&p]).collect();
        assert_eq!(second.consumed_from(p), expected, "partition {p}: resumes at the committed offset {start}");
    }
    assert!(second.commit_errors.is_empty(), "commits failed: {}", second.describe());
    second.close();
    broker.terminate();
}

/// `kill -9` of the broker right after a synchronous commit returned. A member of the group commits both
/// partitions of a topic 40 times in a row (growing offsets, a metadata string naming the round), each
/// commit synchronous; the broker is SIGKILLed the moment the last one returns. After a restart,
/// OffsetFetch (librdkafka's `committed_offsets` and kafka-python's `committed(metadata=True)`) returns
/// exactly the last acknowledged offsets and metadata.
#[test]
fn kill_9_after_commit_keeps_acknowledged_offsets() {
    const PARTITIONS: i32 = 2;
    const RECORDS: u64 = 200;
    const COMMIT_ROUNDS: i64 = 40;
    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("kill9-commit");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let group = unique_topic("kill9-group");
    produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);

    let mut members =
        vec![Member::join(&bootstrap, &group, &topic, "sluice-test-committer", "range", Commits::Explicit, &[])];
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "the member owns both partitions", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let mut member = members.pop().expect("one member");
    let offsets_of_round = |round: i64| [(0, round + 1), (1, 2 * (round + 1))];
    let metadata_of = |round: i64, partition: i32| format!("kill9 round {round} partition {partition}");
    for round in 0..COMMIT_ROUNDS {
        let metadata: Vec<String> = (0..PARTITIONS).map(|p| metadata_of(round, p)).collect();
        let commit: Vec<(i32, i64, &str)> =
            offsets_of_round(round).iter().map(|&(p, o)| (p, o, metadata[p as usize].as_str())).collect();
        member.commit(&commit).unwrap_or_else(|e| panic!("commit round {round}: {e}; {}", member.describe()));
        // Serve the member's callbacks between commits; records it is handed are not committed.
        member.poll_once(Duration::ZERO);
    }
    broker.kill9();
    let last = COMMIT_ROUNDS - 1;
    let expected: BTreeMap<i32, Committed> =
        offsets_of_round(last).iter().map(|&(p, o)| (p, Committed::at(o, &metadata_of(last, p)))).collect();

    broker.restart();
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), expected, "librdkafka OffsetFetch");
    let out = run_python_json(PY_COMMITTED, &[&bootstrap, &topic, &group, &PARTITIONS.to_string()], b"");
    let expected_py: Value = expected
        .iter()
        .map(|(p, c)| (p.to_string(), json!([c.offset.expect("committed"), c.metadata])))
        .collect::<serde_json::Map<String, Value>>()
        .into();
    assert_eq!(out, expected_py, "kafka-python committed(metadata=True)");
    // The old member outlived the broker's process; it reconnects and leaves now.
    member.close();
}

/// Introspection and administration of a group with two librdkafka members (range) on a 3-partition
/// topic, through librdkafka and kafka-python:
/// - ListGroups lists the group with protocol type `consumer`; DescribeGroups shows it Stable, protocol
///   type `consumer`, protocol `range`, both members by client id, each with the assignment it holds;
/// - the members commit partition 0 and 1 with metadata strings (one non-ASCII); OffsetFetch returns
///   offset and metadata as committed, and -1 (no commit) for partition 2;
/// - DeleteGroups while it has members fails with NON_EMPTY_GROUP (68); OffsetDelete of a partition of a
///   topic the group is subscribed to fails with GROUP_SUBSCRIBED_TO_TOPIC (86) and deletes nothing;
/// - once both members have left, the group is Empty (still described, offsets kept); OffsetDelete of
///   partition 0 succeeds and leaves partition 1's commit alone; DeleteGroups succeeds, the group is no
///   longer listed, its offsets are gone (-1), and deleting it again fails with GROUP_ID_NOT_FOUND (69).
#[test]
fn admin_list_describe_offsets_and_delete() {
    const PARTITIONS: i32 = 3;
    const RECORDS: u64 = 30;
    let p0_meta = "checkpoint p0 é";
    let p1_meta = "checkpoint p1";
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("admin");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let group = unique_topic("admin-group");
    produce(&bootstrap, &topic, PARTITIONS, 0..RECORDS);

    let client_ids = ["sluice-test-admin-a", "sluice-test-admin-b"];
    let mut members: Vec<Member> = client_ids
        .iter()
        .map(|id| Member::join(&bootstrap, &group, &topic, id, "range", Commits::Explicit, &[]))
        .collect();
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "two members own the 3 partitions between them", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let owner_of = |p: i32| members.iter().find(|m| m.assignment().contains(&p)).expect("an owner");
    owner_of(0).commit(&[(0, 7, p0_meta)]).unwrap_or_else(|e| panic!("commit partition 0: {e}"));
    owner_of(1).commit(&[(1, 4, p1_meta)]).unwrap_or_else(|e| panic!("commit partition 1: {e}"));
    let all_partitions: Vec<i32> = (0..PARTITIONS).collect();
    let both_committed =
        BTreeMap::from([(0, Committed::at(7, p0_meta)), (1, Committed::at(4, p1_meta)), (2, Committed::none())]);
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), both_committed, "librdkafka OffsetFetch");

    // librdkafka: ListGroups + DescribeGroups.
    let described = wait_for_group_state(&bootstrap, &group, "Stable");
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(described.protocol, "range");
    let expected_members: BTreeMap<String, BTreeMap<String, BTreeSet<i32>>> =
        members.iter().map(|m| (m.client_id.clone(), BTreeMap::from([(topic.clone(), m.assignment())]))).collect();
    assert_eq!(described.members, expected_members, "DescribeGroups members (client id → assignment)");
    assert!(listed_groups(&bootstrap).contains(&group), "ListGroups lists {group}");

    // kafka-python's admin client, while the group is active.
    let results = group_admin(
        &broker,
        &[
            json!({"op": "list"}),
            json!({"op": "describe", "group": group}),
            json!({"op": "offsets", "group": group, "topic": topic, "partitions": all_partitions}),
            json!({"op": "delete_offsets", "group": group, "topic": topic, "partitions": [0]}),
            json!({"op": "offsets", "group": group, "topic": topic, "partitions": [0]}),
        ],
    );
    let listed = results[0].as_array().expect("list");
    assert!(listed.contains(&json!([group, "consumer"])), "kafka-python list_groups: {listed:?}");
    let mut members_py: Vec<Value> =
        members.iter().map(|m| json!([m.client_id, m.assignment().into_iter().collect::<Vec<_>>()])).collect();
    members_py.sort_by_key(|v| v[0].as_str().map(str::to_string));
    assert_eq!(
        results[1],
        json!({"error": null, "state": "Stable", "protocol_type": "consumer", "protocol": "range", "members": members_py}),
        "kafka-python describe_groups"
    );
    assert_eq!(
        results[2],
        json!({"0": [7, p0_meta], "1": [4, p1_meta], "2": [-1, ""]}),
        "kafka-python list_group_offsets: committed offsets with metadata, -1 where nothing was committed"
    );
    assert_eq!(results[3], json!({"0": GROUP_SUBSCRIBED_TO_TOPIC}), "OffsetDelete on a subscribed topic");
    assert_eq!(results[4], json!({"0": [7, p0_meta]}), "a refused OffsetDelete deletes nothing");
    assert_eq!(
        delete_group(&bootstrap, &group).map_err(|code| code as i64),
        Err(NON_EMPTY_GROUP),
        "DeleteGroups while members are in the group"
    );

    for member in members {
        member.close();
    }
    let described = wait_for_group_state(&bootstrap, &group, "Empty");
    assert!(described.members.is_empty(), "an Empty group has no members: {described:?}");
    assert_eq!(
        committed_offsets(&bootstrap, &group, &topic, PARTITIONS),
        both_committed,
        "an Empty group keeps its offsets"
    );

    let results = group_admin(
        &broker,
        &[
            json!({"op": "delete_offsets", "group": group, "topic": topic, "partitions": [0]}),
            json!({"op": "offsets", "group": group, "topic": topic, "partitions": all_partitions}),
        ],
    );
    assert_eq!(results[0], json!({"0": 0}), "OffsetDelete of partition 0 once the group is empty");
    assert_eq!(
        results[1],
        json!({"0": [-1, ""], "1": [4, p1_meta], "2": [-1, ""]}),
        "only partition 0's commit is gone"
    );

    assert_eq!(delete_group(&bootstrap, &group), Ok(()), "DeleteGroups of an empty group");
    assert!(!listed_groups(&bootstrap).contains(&group), "a deleted group is not listed");
    let none: BTreeMap<i32, Committed> = (0..PARTITIONS).map(|p| (p, Committed::none())).collect();
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, PARTITIONS), none, "a deleted group has no offsets");
    let results = group_admin(&broker, &[json!({"op": "delete_groups", "groups": [group]})]);
    assert_eq!(results[0], json!({group.as_str(): GROUP_ID_NOT_FOUND}), "DeleteGroups of a group that is gone");
}

/// Static membership (KIP-345). A dynamic member and a static member (`group.instance.id`) split a
/// 4-partition topic 2 + 2. The static member is closed (a static member sends no LeaveGroup) and a new
/// consumer with the same instance id joins well within the session timeout: it gets the same
/// partitions, and the other member sees no rebalance at all (no revocation, no new assignment, same
/// partitions), since the coordinator hands the returning instance its stored assignment.
#[test]
fn static_member_restart_keeps_assignment_without_rebalance() {
    const PARTITIONS: i32 = 4;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("static");
    create_topics(&broker, &[(&topic, PARTITIONS)]);
    let group = unique_topic("static-group");
    let instance_id = format!("sluice-test-instance-{group}");
    let session = STATIC_SESSION_TIMEOUT_MS.to_string();
    let static_settings = [("group.instance.id", instance_id.as_str()), ("session.timeout.ms", session.as_str())];

    let mut members =
        vec![Member::join(&bootstrap, &group, &topic, "sluice-test-dynamic", "range", Commits::Explicit, &[])];
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "the dynamic member owns all partitions", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    members.push(Member::join(
        &bootstrap,
        &group,
        &topic,
        "sluice-test-static",
        "range",
        Commits::Explicit,
        &static_settings,
    ));
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "dynamic and static member own 2 + 2 partitions", |ms| {
        is_settled_split(ms, PARTITIONS)
    });
    let dynamic_events = members[0].events();
    let dynamic_owned = members[0].assignment();
    let static_owned = members[1].assignment();
    assert_eq!((dynamic_owned.len(), static_owned.len()), (2, 2), "range splits 4 partitions 2 + 2");

    let restarted_at = Instant::now();
    members.pop().expect("static member").close();
    members.push(Member::join(
        &bootstrap,
        &group,
        &topic,
        "sluice-test-static",
        "range",
        Commits::Explicit,
        &static_settings,
    ));
    poll_until(&mut members, GROUP_SETTLE_TIMEOUT, "the restarted static member has an assignment", |ms| {
        ms[1].is_settled()
    });
    let took = restarted_at.elapsed();
    assert!(
        took < Duration::from_millis(STATIC_SESSION_TIMEOUT_MS),
        "inconclusive: the restart took {took:?}, longer than the session timeout"
    );
    assert_eq!(members[1].assignment(), static_owned, "the returning instance gets its old partitions");
    assert_eq!(members[0].events(), dynamic_events, "the other member saw no rebalance");
    assert_eq!(members[0].assignment(), dynamic_owned, "the other member kept its partitions");
    for member in members {
        member.close();
    }
}
