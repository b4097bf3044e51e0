//! Replication (issue 7) end to end: a three-broker `sluice dev-cluster` of real processes on
//! 127.0.0.1, faults injected with SIGKILL (a broker that dies) and restarts from the saved command
//! line, observed through Metadata (leader, leader epoch, replicas, ISR, controller) and through real
//! clients (librdkafka producing and consuming).
//!
//! What is asserted, Kafka's semantics throughout:
//! - Metadata from any broker lists the three brokers and one controller; CreateTopics spreads
//!   replicas and refuses a replication factor above the broker count; Produce and Fetch to a
//!   broker that does not lead the partition answer NOT_LEADER_OR_FOLLOWER.
//! - acks=all with an idempotent librdkafka producer survives the partition leader being killed again
//!   and again: every acknowledged record is in the log exactly once, at its acknowledged offset, in
//!   send order.
//! - A follower killed and restarted catches up and rejoins the ISR, and can lead with the whole log.
//! - With fewer in-sync replicas than `min.insync.replicas`, acks=all is refused (NOT_ENOUGH_REPLICAS)
//!   and writes nothing, while acks=1 still works.
//! - A leader's records that no follower got (acks=1) are truncated when it rejoins under a newer
//!   leader: the log is the new leader's, with no gap and none of the lost records.
//! - Killing the controller elects another; topics can then still be created and used.
//!
//! Each test starts its own cluster (one core per broker) and uses its own topics. Every wait polls a
//! condition up to a deadline and, on failure, prints every broker's log tail. The whole file takes
//! well under three minutes on two cores.

mod common;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use common::cluster::{self, temp_dir, DevCluster, NodeState, BROKERS, ERROR_INVALID_REPLICATION_FACTOR};
use common::{drop_within, plain_batch, unique_topic};
use sluice_client::requests;

/// How long the controller has to notice a dead leader and name a new one (the target is under 3 s;
/// the slack is for two loaded cores).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the controller has to drop a dead broker from an ISR.
const ISR_SHRINK_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a restarted broker has to catch up and be back in the ISR.
const ISR_REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new controller may take after the old one was killed.
const CONTROLLER_FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// librdkafka gives up on a record this long after it was enqueued: far longer than a failover.
const MESSAGE_TIMEOUT_MS: &str = "30000";
/// librdkafka's socket timeout: an unresponsive broker must not hold a request longer than this.
const SOCKET_TIMEOUT_MS: &str = "5000";
/// How long a consumer may take to read a partition back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's poll granularity while reading back.
const CONSUMER_POLL: Duration = Duration::from_millis(100);
/// Limit of one librdkafka metadata call (watermarks).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a librdkafka client's destructor may take.
const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// Kafka error code asserted on raw requests.
const ERROR_NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// Raw Produce and Fetch versions.
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
/// `timeout_ms` of raw Produce requests.
const RAW_PRODUCE_TIMEOUT_MS: i32 = 5_000;
/// Most leader kills spent trying to hand leadership to one particular replica.
const MAX_LEADERSHIP_MOVES: usize = 3;

// ---------------------------------------------------------------------------------------------------
// Clients.

fn producer(bootstrap: &str, settings: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-replication-test")
        .set("linger.ms", "5")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .set("socket.timeout.ms", SOCKET_TIMEOUT_MS)
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("topic.metadata.refresh.fast.interval.ms", "100");
    for (name, value) in settings {
        config.set(*name, *value);
    }
    config.create().expect("create rdkafka producer")
}

/// A record's delivery report: (partition, offset) once acknowledged.
type Delivered = Result<(i32, i64), KafkaError>;

fn settle(delivery: DeliveryFuture) -> Delivered {
    match block_on(delivery) {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// Sends every value to one partition and waits for all the deliveries: (value, outcome) in send order.
fn produce(producer: &FutureProducer, topic: &str, partition: i32, values: &[String]) -> Vec<(String, Delivered)> {
    let deliveries: Vec<(String, DeliveryFuture)> = values
        .iter()
        .map(|value| {
            let record = FutureRecord::<(), _>::to(topic).partition(partition).payload(value);
            let delivery = producer.send_result(record).map_err(|(e, _)| e).expect("enqueue a record in librdkafka");
            (value.clone(), delivery)
        })
        .collect();
    // Each delivery is settled within `MESSAGE_TIMEOUT_MS` of its enqueueing: no further limit needed.
    deliveries.into_iter().map(|(value, delivery)| (value, settle(delivery))).collect()
}

/// Produces every value and asserts that each was acknowledged; returns the acknowledged offsets.
fn produce_acked(producer: &FutureProducer, topic: &str, partition: i32, values: &[String], what: &str) -> Vec<i64> {
    produce(producer, topic, partition, values)
        .into_iter()
        .map(|(value, outcome)| match outcome {
            Ok((_, offset)) => offset,
            Err(e) => panic!("{what}: record {value:?} to {topic}/{partition} not acknowledged: {e}"),
        })
        .collect()
}

fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "sluice-replication-test")
        // Required by librdkafka's assign(); no group API is used.
        .set("group.id", format!("sluice-test-unused-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("socket.timeout.ms", SOCKET_TIMEOUT_MS)
        .set("topic.metadata.refresh.fast.interval.ms", "100")
        .set("check.crcs", "true")
        .create()
        .expect("create rdkafka consumer")
}

/// Every record of the partition from offset 0 up to its high watermark, as (offset, value), read with
/// librdkafka from whichever broker leads it now, once that high watermark reaches `acked_end` (a
/// new leader's high watermark catches up with acknowledged records once its followers fetched
/// from it: until then they are stored but not yet visible, as in Kafka).
fn read_partition(cluster: &DevCluster, topic: &str, partition: i32, acked_end: i64) -> Vec<(i64, String)> {
    read_partition_from(cluster, topic, partition, 0, acked_end)
}

/// Every record of a partition whose log starts at `log_start`, up to its high watermark (at least
/// `acked_end`).
fn read_partition_from(
    cluster: &DevCluster,
    topic: &str,
    partition: i32,
    log_start: i64,
    acked_end: i64,
) -> Vec<(i64, String)> {
    let consumer = consumer(&cluster.bootstrap(), topic);
    let (low, high) = cluster.wait_until(&format!("watermarks of {topic}/{partition}"), CONSUME_TIMEOUT, || {
        match consumer.fetch_watermarks(topic, partition, CLIENT_CALL_TIMEOUT) {
            Ok((low, high)) if high >= acked_end => Ok((low, high)),
            Ok((_, high)) => Err(format!("high watermark {high}, acknowledged up to {acked_end}")),
            Err(e) => Err(e.to_string()),
        }
    });
    assert_eq!(low, log_start, "{topic}/{partition}: log start offset");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment entry");
    consumer.assign(&assignment).expect("assign the partition");
    let mut got: Vec<(i64, String)> = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while got.last().map_or(0, |&(offset, _)| offset + 1) < high {
        if Instant::now() >= deadline {
            panic!(
                "reading {topic}/{partition}: {} records up to offset {:?} within {CONSUME_TIMEOUT:?}, high watermark \
                 {high}; client errors {errors:?}\n{}",
                got.len(),
                got.last().map(|r| r.0),
                cluster.log_tails()
            );
        }
        match consumer.poll(CONSUMER_POLL) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                got.push((m.offset(), value));
            }
            Some(Err(e)) => errors.push(e.to_string()),
        }
    }
    drop_within(consumer, CLIENT_CLOSE_TIMEOUT, "rdkafka consumer");
    got
}

/// Asserts that the log's offsets run 0, 1, 2, ... with no gap or repeat.
fn assert_dense(topic: &str, partition: i32, log: &[(i64, String)]) {
    for (i, (offset, value)) in log.iter().enumerate() {
        assert_eq!(*offset, i as i64, "{topic}/{partition}: offsets not dense from 0 (value {value:?} at index {i})");
    }
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:06}")).collect()
}

/// Kills the partition's leader until `want` leads it (at most `MAX_LEADERSHIP_MOVES` kills), each time
/// waiting for the new leader, restarting the killed node and waiting until it is back in the ISR.
/// Returns whether `want` ended up leading. Every replica is running and in the ISR afterwards.
fn move_leadership_to(cluster: &mut DevCluster, topic: &str, partition: i32, want: i32) -> bool {
    for _ in 0..MAX_LEADERSHIP_MOVES {
        let now = cluster.wait_fully_replicated(topic, partition, ISR_REJOIN_TIMEOUT);
        if now.leader == want {
            return true;
        }
        let (killed, _) = cluster.kill_leader_and_wait_failover(topic, partition, FAILOVER_TIMEOUT);
        cluster.restart(killed);
        cluster.wait_in_isr(topic, partition, killed, ISR_REJOIN_TIMEOUT);
    }
    cluster.wait_fully_replicated(topic, partition, ISR_REJOIN_TIMEOUT).leader == want
}

// ---------------------------------------------------------------------------------------------------
// Raw requests to one broker.

/// Produce (acks=all) one record to `node`: the partition's error code.
fn raw_produce_error(cluster: &DevCluster, node: i32, topic: &str, partition: i32) -> i16 {
    let records = plain_batch(&["to-a-non-leader".to_string()]);
    let request = requests::produce(topic, partition, records, -1, RAW_PRODUCE_TIMEOUT_MS);
    let response = cluster::call(cluster.kafka_addr(node), &request, PRODUCE_VERSION)
        .unwrap_or_else(|e| panic!("Produce to node {node}: {e}"));
    let [t] = response.responses.as_slice() else { panic!("Produce answered {response:?}") };
    let [p] = t.partition_responses.as_slice() else { panic!("Produce answered {response:?}") };
    p.error_code
}

/// Fetch from offset 0 on `node`: the partition's error code.
fn raw_fetch_error(cluster: &DevCluster, node: i32, topic: &str, partition: i32) -> i16 {
    let request = requests::fetch(topic, &[(partition, 0)], 1 << 20)
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20);
    let response = cluster::call(cluster.kafka_addr(node), &request, FETCH_VERSION)
        .unwrap_or_else(|e| panic!("Fetch from node {node}: {e}"));
    let [t] = response.responses.as_slice() else { panic!("Fetch answered {response:?}") };
    let [p] = t.partitions.as_slice() else { panic!("Fetch answered {response:?}") };
    p.error_code
}

// ---------------------------------------------------------------------------------------------------
// Tests.

/// Metadata from every broker lists the three brokers and names the same controller; a topic with
/// replication factor 3 has three distinct replicas, all in the ISR, led by one of them; three
/// partitions with replication factor 1 land on three different brokers; replication factor 4 is
/// refused with INVALID_REPLICATION_FACTOR; Produce and Fetch sent to a follower answer
/// NOT_LEADER_OR_FOLLOWER, while librdkafka (which follows Metadata to the leader) round-trips.
#[test]
fn metadata_placement_and_not_leader() {
    let tmp = temp_dir("sluice-repl-metadata-");
    let cluster = DevCluster::start(tmp.path());
    let controller = cluster.controller(CONTROLLER_FAILOVER_TIMEOUT);
    let expected: Vec<(i32, String, i32)> =
        (0..BROKERS).map(|id| (id, "127.0.0.1".to_string(), i32::from(cluster.kafka_port(id)))).collect();
    for id in 0..BROKERS {
        // Every broker applies the same Raft log: each lists the three brokers (once registered) and
        // names the one controller.
        let what = format!("node {id} lists brokers {expected:?} and controller {controller}");
        cluster.wait_until(&what, CONTROLLER_FAILOVER_TIMEOUT, || {
            let view = cluster.metadata_from(id, None)?;
            if view.controller == controller && view.brokers == expected {
                Ok(())
            } else {
                Err(format!("brokers {:?}, controller {}", view.brokers, view.controller))
            }
        });
    }

    let replicated = unique_topic("repl-rf3");
    cluster.create_topic(&replicated, 1, 3, &[("min.insync.replicas", "2")]);
    let p = cluster.wait_fully_replicated(&replicated, 0, ISR_REJOIN_TIMEOUT);
    let mut replicas = p.replicas.clone();
    replicas.sort_unstable();
    assert_eq!(replicas, vec![0, 1, 2], "replicas of {replicated}/0: {p:?}");
    assert!(p.replicas.contains(&p.leader), "{replicated}/0 leader among its replicas: {p:?}");
    assert!(p.leader_epoch >= 0, "{replicated}/0 leader epoch: {p:?}");

    let spread = unique_topic("repl-spread");
    cluster.create_topic(&spread, 3, 1, &[]);
    let mut leaders: Vec<i32> =
        (0..3).map(|p| cluster.wait_fully_replicated(&spread, p, ISR_REJOIN_TIMEOUT).leader).collect();
    leaders.sort_unstable();
    assert_eq!(leaders, vec![0, 1, 2], "leaders of the three single-replica partitions of {spread}");

    let (code, message) = cluster.create_topic_result(&unique_topic("repl-rf4"), 1, 4, &[]);
    assert_eq!(code, ERROR_INVALID_REPLICATION_FACTOR, "replication factor 4 on 3 brokers: {message}");

    let follower = *p.replicas.iter().find(|&&r| r != p.leader).expect("a follower");
    assert_eq!(
        raw_produce_error(&cluster, follower, &replicated, 0),
        ERROR_NOT_LEADER_OR_FOLLOWER,
        "Produce to follower {follower}"
    );
    assert_eq!(
        raw_fetch_error(&cluster, follower, &replicated, 0),
        ERROR_NOT_LEADER_OR_FOLLOWER,
        "Fetch from follower {follower}"
    );

    let producer = producer(&cluster.kafka_addr(follower).to_string(), &[("acks", "all")]);
    let sent = values("hello", 10);
    let offsets = produce_acked(&producer, &replicated, 0, &sent, "bootstrapped from a follower");
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>(), "acknowledged offsets");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    let log = read_partition(&cluster, &replicated, 0, 10);
    assert_eq!(log.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), sent, "{replicated}/0 read back");
}

/// Record `n` of the chaos test goes to `CHAOS_TARGETS[n % CHAOS_TARGETS.len()]`: partition 0 of the
/// single-partition topic (whose leader is the one killed), or a partition of the three-partition
/// topic (whose leaders are spread, so each kill also moves some of them).
const CHAOS_TARGETS: [(usize, i32); 4] = [(0, 0), (1, 0), (1, 1), (1, 2)];
/// Leader kills in the chaos test.
const CHAOS_KILLS: usize = 4;
/// Acknowledgements (over every partition) required before each kill, and after the last one.
const CHAOS_ACKS_PER_ROUND: u64 = 1_000;
/// Records the producer thread lets librdkafka hold unacknowledged at once.
const CHAOS_WINDOW_RECORDS: usize = 200;
/// librdkafka batch size: small, so that many requests are in flight when the leader dies.
const CHAOS_BATCH_RECORDS: &str = "20";
/// The whole produce-and-kill phase must end within this.
const CHAOS_DEADLINE: Duration = Duration::from_secs(120);

/// Counters the producer thread updates and the main thread reads.
#[derive(Default)]
struct ChaosProgress {
    sent: AtomicU64,
    acked: AtomicU64,
    stop: AtomicBool,
    /// librdkafka's fatal error, once it raises one (the producer stops).
    fatal: Mutex<Option<String>>,
}

/// What the producer thread saw.
struct ChaosOutcome {
    /// (record, partition, offset) of every acknowledged record.
    acked: Vec<(u64, i32, i64)>,
    /// (record, delivery error) of every record librdkafka gave up on.
    failed: Vec<(u64, String)>,
    sent: u64,
}

/// Idempotent librdkafka producer, acks=all, five requests in flight: sends record 0, 1, 2, ... (value =
/// the number) until told to stop, with at most `CHAOS_WINDOW_RECORDS` unacknowledged.
fn chaos_producer(bootstrap: String, topics: [String; 2], progress: Arc<ChaosProgress>) -> ChaosOutcome {
    let producer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "2"),
            ("batch.num.messages", CHAOS_BATCH_RECORDS),
        ],
    );
    let mut outcome = ChaosOutcome { acked: Vec::new(), failed: Vec::new(), sent: 0 };
    let mut in_flight: VecDeque<(u64, DeliveryFuture)> = VecDeque::new();
    let settle_oldest = |in_flight: &mut VecDeque<(u64, DeliveryFuture)>, outcome: &mut ChaosOutcome| {
        let (n, delivery) = in_flight.pop_front().expect("something in flight");
        match settle(delivery) {
            Ok((partition, offset)) => {
                outcome.acked.push((n, partition, offset));
                progress.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => outcome.failed.push((n, e.to_string())),
        }
    };
    let mut n = 0u64;
    while !progress.stop.load(Ordering::SeqCst) {
        if let Some((code, text)) = producer.client().fatal_error() {
            *progress.fatal.lock().expect("fatal error slot") = Some(format!("{code:?}: {text}"));
            break;
        }
        let (topic, partition) = CHAOS_TARGETS[(n % CHAOS_TARGETS.len() as u64) as usize];
        let value = n.to_string();
        let record = FutureRecord::<(), _>::to(&topics[topic]).partition(partition).payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back((n, delivery)),
            Err((e, _)) => {
                outcome.failed.push((n, format!("enqueue: {e}")));
                break;
            }
        }
        n += 1;
        outcome.sent = n;
        progress.sent.store(n, Ordering::SeqCst);
        while in_flight.len() >= CHAOS_WINDOW_RECORDS {
            settle_oldest(&mut in_flight, &mut outcome);
        }
    }
    while !in_flight.is_empty() {
        settle_oldest(&mut in_flight, &mut outcome);
    }
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "idempotent rdkafka producer");
    outcome
}

/// The issue's acceptance test. Topics with replication factor 3 and `min.insync.replicas=2`: one with
/// one partition, one with three. An idempotent librdkafka producer (acks=all) sends numbered records
/// to all four partitions without pause while, four times, after another `CHAOS_ACKS_PER_ROUND`
/// acknowledgements, the single partition's leader is killed with SIGKILL, a new leader (higher epoch,
/// from the ISR) must appear in Metadata, and the killed broker is restarted and must rejoin the ISR of
/// every partition. Then the partitions are read back: offsets dense from 0; every record is one of
/// ours, on its partition, none twice, numbers increasing with the offset (send order); every
/// acknowledged record is stored at the offset it was acknowledged with.
#[test]
fn acks_all_survives_repeated_leader_kills() {
    chaos(Disruption::Kill, CHAOS_KILLS);
}

/// The same with the leader cut off instead of killed: SIGSTOP (it holds its connections and answers
/// nothing, as behind a partition) until a new leader is elected, then SIGCONT. The stale leader must
/// step down when it learns the new epoch: what it appended meanwhile is never acknowledged to acks=all
/// and is truncated when it follows again; nothing acknowledged is lost or duplicated.
#[test]
fn acks_all_survives_a_frozen_leader() {
    chaos(Disruption::Freeze, 2);
}

/// How the chaos test takes a leader away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// SIGKILL, then restart from the saved command line.
    Kill,
    /// SIGSTOP until a new leader is elected, then SIGCONT.
    Freeze,
}

fn chaos(disruption: Disruption, rounds: usize) {
    let tmp = temp_dir("sluice-repl-chaos-");
    let mut cluster = DevCluster::start(tmp.path());
    let topics = [unique_topic("repl-chaos-1p"), unique_topic("repl-chaos-3p")];
    cluster.create_topic(&topics[0], 1, 3, &[("min.insync.replicas", "2")]);
    cluster.create_topic(&topics[1], 3, 3, &[("min.insync.replicas", "2")]);

    let progress = Arc::new(ChaosProgress::default());
    let (done_tx, done_rx) = mpsc::channel::<ChaosOutcome>();
    {
        let (bootstrap, topics, progress) = (cluster.bootstrap(), topics.clone(), progress.clone());
        thread::spawn(move || {
            let _ = done_tx.send(chaos_producer(bootstrap, topics, progress));
        });
    }
    let deadline = Instant::now() + CHAOS_DEADLINE;
    let wait_for_acks = |cluster: &DevCluster, goal: u64| {
        cluster.wait_until(
            &format!("{goal} records acknowledged"),
            deadline.saturating_duration_since(Instant::now()),
            || {
                if let Some(fatal) = progress.fatal.lock().expect("fatal error slot").as_ref() {
                    panic!("librdkafka raised a fatal error: {fatal}\n{}", cluster.log_tails());
                }
                let acked = progress.acked.load(Ordering::SeqCst);
                if acked >= goal {
                    Ok(())
                } else {
                    Err(format!("{acked} acknowledged, {} sent", progress.sent.load(Ordering::SeqCst)))
                }
            },
        )
    };

    // (killed node, old epoch, new leader, new epoch, failover time, acknowledged at the kill)
    let mut kills: Vec<(i32, i32, i32, i32, Duration, u64)> = Vec::new();
    for round in 1..=rounds as u64 {
        wait_for_acks(&cluster, CHAOS_ACKS_PER_ROUND * round);
        let before = cluster.wait_fully_replicated(&topics[0], 0, ISR_REJOIN_TIMEOUT);
        let acked_at_kill = progress.acked.load(Ordering::SeqCst);
        let killed_at = Instant::now();
        match disruption {
            Disruption::Kill => cluster.kill9(before.leader),
            Disruption::Freeze => cluster.freeze(before.leader),
        }
        let after = cluster.wait_new_leader(&topics[0], 0, &before, FAILOVER_TIMEOUT);
        let failover = killed_at.elapsed();
        // The killed broker led or followed every partition of the three-partition topic too.
        for p in 0..3 {
            cluster.wait_until(&format!("{}/{p}: a running leader in its ISR", topics[1]), FAILOVER_TIMEOUT, || {
                let v = cluster.partition(&topics[1], p)?;
                if v.leader >= 0 && v.leader != before.leader && v.isr.contains(&v.leader) {
                    Ok(())
                } else {
                    Err(format!("{v:?}"))
                }
            });
        }
        match disruption {
            Disruption::Kill => cluster.restart(before.leader),
            Disruption::Freeze => cluster.thaw(before.leader),
        }
        cluster.wait_in_isr(&topics[0], 0, before.leader, ISR_REJOIN_TIMEOUT);
        for p in 0..3 {
            cluster.wait_in_isr(&topics[1], p, before.leader, ISR_REJOIN_TIMEOUT);
        }
        kills.push((before.leader, before.leader_epoch, after.leader, after.leader_epoch, failover, acked_at_kill));
    }
    wait_for_acks(&cluster, CHAOS_ACKS_PER_ROUND * (rounds as u64 + 1));
    progress.stop.store(true, Ordering::SeqCst);
    let outcome = done_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(40))
        .unwrap_or_else(|_| panic!("the producer did not finish draining\n{}", cluster.log_tails()));
    if let Some(fatal) = progress.fatal.lock().expect("fatal error slot").as_ref() {
        panic!("librdkafka raised a fatal error: {fatal}");
    }

    let mut stored: BTreeMap<u64, (usize, i32, i64)> = BTreeMap::new();
    for (t, topic) in topics.iter().enumerate() {
        let partitions = if t == 0 { 1 } else { 3 };
        for p in 0..partitions {
            let log = read_partition(&cluster, topic, p, 0);
            assert_dense(topic, p, &log);
            let mut previous: Option<u64> = None;
            for (offset, value) in log {
                let n: u64 =
                    value.parse().unwrap_or_else(|_| panic!("{topic}/{p}@{offset}: {value:?} is no record of ours"));
                let target = CHAOS_TARGETS[(n % CHAOS_TARGETS.len() as u64) as usize];
                assert_eq!(target, (t, p), "{topic}/{p}@{offset}: record {n} belongs to another partition");
                if let Some(first) = stored.insert(n, (t, p, offset)) {
                    panic!("record {n} stored twice: {first:?} and {topic}/{p}@{offset}");
                }
                if let Some(previous) = previous {
                    assert!(
                        n > previous,
                        "{topic}/{p}@{offset}: record {n} after record {previous}: out of send order"
                    );
                }
                previous = Some(n);
            }
        }
    }
    for &(n, partition, offset) in &outcome.acked {
        let (t, p) = CHAOS_TARGETS[(n % CHAOS_TARGETS.len() as u64) as usize];
        assert_eq!(partition, p, "record {n} acknowledged on partition {partition}");
        assert_eq!(
            stored.get(&n),
            Some(&(t, p, offset)),
            "acknowledged record {n} ({}/{p}@{offset}) is not stored where it was acknowledged",
            topics[t]
        );
    }
    let failovers: Vec<Duration> = kills.iter().map(|k| k.4).collect();
    println!(
        "replication chaos ({disruption:?}): {} leaders taken away and back (rejoined the ISR), {} records sent, {} \
         acknowledged (acks=all, idempotent), {} stored and read back, {} not delivered, every acknowledged record \
         present exactly once in order; failover times {failovers:?}; (node, epoch -> new leader, epoch): {:?}",
        kills.len(),
        outcome.sent,
        outcome.acked.len(),
        stored.len(),
        outcome.failed.len(),
        kills.iter().map(|k| (k.0, k.1, k.2, k.3)).collect::<Vec<_>>()
    );
    assert_eq!(kills.len(), rounds, "leaders taken away");
    if !outcome.failed.is_empty() {
        // Not a durability failure (nothing acknowledged was lost), but the cluster was unavailable for
        // longer than librdkafka's message timeout.
        panic!(
            "{} records not delivered within {MESSAGE_TIMEOUT_MS} ms, first: {:?}",
            outcome.failed.len(),
            &outcome.failed[..outcome.failed.len().min(5)]
        );
    }
}

/// Records produced while a follower is down.
const CATCH_UP_RECORDS: usize = 5_000;

/// Replication factor 3, `min.insync.replicas=2`. A follower is killed with SIGKILL and must leave the
/// ISR; 5000 records are produced with acks=all (the two remaining replicas suffice); the follower is
/// restarted and must catch up and rejoin the ISR. Then the leader is killed (up to three times) to hand
/// leadership to the restarted follower, and the partition read from whoever leads it must hold every
/// record, in order, at the offsets they were acknowledged with.
#[test]
fn follower_restart_catches_up() {
    let tmp = temp_dir("sluice-repl-catchup-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-catchup");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "2")]);
    let before = cluster.wait_fully_replicated(&topic, 0, ISR_REJOIN_TIMEOUT);
    let follower = *before.replicas.iter().find(|&&r| r != before.leader).expect("a follower");

    let producer = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    let early = values("early", 100);
    let mut acked = produce_acked(&producer, &topic, 0, &early, "with every replica up");

    cluster.kill9(follower);
    cluster.wait_out_of_isr(&topic, 0, follower, ISR_SHRINK_TIMEOUT);
    let during = values("during", CATCH_UP_RECORDS);
    acked.extend(produce_acked(&producer, &topic, 0, &during, "with the follower down (ISR 2 = min.insync.replicas)"));
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

    cluster.restart(follower);
    cluster.wait_in_isr(&topic, 0, follower, ISR_REJOIN_TIMEOUT);
    // The follower does not lead yet, so this kills the leader at least once.
    let follower_led = move_leadership_to(&mut cluster, &topic, 0, follower);
    let leader = cluster.leader_of(&topic, 0);

    let expected: Vec<String> = early.iter().chain(&during).cloned().collect();
    let log = read_partition(&cluster, &topic, 0, expected.len() as i64);
    assert_dense(&topic, 0, &log);
    assert_eq!(log.len(), expected.len(), "records in {topic}/0 read from node {leader}");
    assert_eq!(acked, (0..expected.len() as i64).collect::<Vec<_>>(), "acknowledged offsets");
    for ((offset, got), want) in log.iter().zip(&expected) {
        assert_eq!(got, want, "{topic}/0@{offset} read from node {leader}");
    }
    println!(
        "follower restart: node {follower} caught up {} records and rejoined the ISR; read back from node {leader} \
         (the restarted follower led: {follower_led})",
        log.len()
    );
}

/// Replication factor 3, `min.insync.replicas=3`. With every replica in the ISR, acks=all works. One
/// follower is killed and, once Metadata shows an ISR of two, acks=all is refused with
/// NOT_ENOUGH_REPLICAS (librdkafka with no retries reports the broker's error as it is) and the record
/// is not written, while acks=1 is accepted. With the follower restarted and back in the ISR, acks=all
/// works again, and the log holds exactly the accepted records.
#[test]
fn min_insync_refusal() {
    let tmp = temp_dir("sluice-repl-mininsync-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-mininsync");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "3")]);
    let before = cluster.wait_fully_replicated(&topic, 0, ISR_REJOIN_TIMEOUT);
    let follower = *before.replicas.iter().find(|&&r| r != before.leader).expect("a follower");

    // The refusal and the acks=1 write go through producers that do not retry, so that each outcome is
    // the broker's answer as it is; the acks=all writes with a full ISR through one that does (a
    // leader that has not yet taken in the ISR it is given may refuse for a moment; clients retry).
    let no_retries = [("enable.idempotence", "false"), ("retries", "0"), ("linger.ms", "0")];
    let refused_all = producer(&cluster.bootstrap(), &[&no_retries[..], &[("acks", "all")]].concat());
    let acks_one = producer(&cluster.bootstrap(), &[&no_retries[..], &[("acks", "1")]].concat());
    let acks_all = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    produce_acked(&acks_all, &topic, 0, &["full-isr".to_string()], "acks=all with ISR 3");

    cluster.kill9(follower);
    cluster.wait_out_of_isr(&topic, 0, follower, ISR_SHRINK_TIMEOUT);
    // The refusal is the leader's decision: wait until the leader itself has adopted the smaller ISR.
    let leader = before.leader;
    let shrunk = cluster.wait_until(&format!("leader {leader} sees ISR 2 for {topic}/0"), ISR_SHRINK_TIMEOUT, || {
        let p = cluster.metadata_from(leader, Some(&[&topic]))?.partition(&topic, 0)?;
        if p.leader == leader && p.isr.len() == 2 && !p.isr.contains(&follower) {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    });
    let refused = produce(&refused_all, &topic, 0, &["refused".to_string()]);
    match &refused[0].1 {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)) => {}
        other => panic!(
            "acks=all with ISR {:?} < min.insync.replicas 3: expected NOT_ENOUGH_REPLICAS ({}), got {other:?}",
            shrunk.isr,
            cluster::ERROR_NOT_ENOUGH_REPLICAS
        ),
    }
    produce_acked(&acks_one, &topic, 0, &["acks-1".to_string()], "acks=1 with ISR 2 < min.insync.replicas");

    cluster.restart(follower);
    cluster.wait_in_isr(&topic, 0, follower, ISR_REJOIN_TIMEOUT);
    produce_acked(&acks_all, &topic, 0, &["isr-restored".to_string()], "acks=all with ISR 3 again");
    for p in [acks_all, acks_one, refused_all] {
        drop_within(p, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    }

    let log = read_partition(&cluster, &topic, 0, 3);
    assert_dense(&topic, 0, &log);
    let got: Vec<&str> = log.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(got, ["full-isr", "acks-1", "isr-restored"], "{topic}/0: the refused record must not be written");
}

/// Records of the divergence test: acknowledged by every replica first, written on the leader alone
/// once its followers are dead (acks=1), and produced under the new leader (acks=all).
const REPLICATED_BEFORE: usize = 100;
const UNREPLICATED: usize = 200;
const PRODUCED_AFTER: usize = 300;

/// A leader that lost both followers takes acks=1 records nobody else gets, then dies; the cluster
/// moves on without them, and when the old leader comes back its divergent tail must be truncated
/// (KIP-101 leader epochs), never served.
///
/// Replication factor 3, `min.insync.replicas=1`:
/// 1. 100 records with acks=all: on every replica.
/// 2. Both followers are killed (SIGKILL). If one of them was the controller, Raft has lost its quorum;
///    either way Metadata stays as it is (the ISR still names all three) and the leader keeps leading.
/// 3. 200 records with acks=1, sent to the leader only: accepted, written on the leader alone (its log
///    end moves, its high watermark cannot).
/// 4. The leader is killed and both followers restarted: Raft has a quorum again, and the controller
///    elects one of them to lead (higher epoch, from the ISR); their logs end at offset 100.
/// 5. 300 records with acks=all under the new leader: offsets 100..400.
/// 6. The old leader is restarted. Its offsets 100..300 are from the old epoch and conflict with the
///    new leader's: it must truncate to 100, fetch 100..400, and rejoin the ISR.
/// 7. The leader is killed (up to three times) to hand leadership to the old leader, so that its log,
///    if it kept anything it should not have, is what a consumer reads.
///
/// The partition then holds exactly the 100 + 300 acks=all records, offsets dense from 0, none of the
/// 200 acks=1 ones.
///
/// Why killed rather than frozen (SIGSTOP) followers: a fetch a frozen follower had pending at the
/// leader is answered into its socket buffer, and once thawed it appends those records, quite
/// correctly, so they are not lost and the scenario does not happen.
#[test]
fn divergent_follower_truncates() {
    let tmp = temp_dir("sluice-repl-diverge-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-diverge");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "1")]);
    let before = cluster.wait_fully_replicated(&topic, 0, ISR_REJOIN_TIMEOUT);
    let old_leader = before.leader;
    let followers: Vec<i32> = before.replicas.iter().copied().filter(|&r| r != old_leader).collect();
    assert_eq!(followers.len(), 2, "followers of {topic}/0: {before:?}");

    // 1.
    let replicated = values("replicated", REPLICATED_BEFORE);
    let acks_all = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    produce_acked(&acks_all, &topic, 0, &replicated, "acks=all with every replica up");
    drop_within(acks_all, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

    // 2. The acks=1 producer talks to the leader only: connect it (Metadata) while all are up.
    let acks_one = producer(
        &cluster.kafka_addr(old_leader).to_string(),
        &[("acks", "1"), ("enable.idempotence", "false"), ("message.timeout.ms", "15000")],
    );
    acks_one.client().fetch_metadata(Some(&topic), CLIENT_CALL_TIMEOUT).expect("Metadata from the leader");
    for &f in &followers {
        cluster.kill9(f);
    }

    // 3.
    let lost = values("unreplicated", UNREPLICATED);
    let offsets = produce_acked(&acks_one, &topic, 0, &lost, "acks=1 to the leader with both followers dead");
    assert_eq!(
        offsets,
        (REPLICATED_BEFORE as i64..(REPLICATED_BEFORE + UNREPLICATED) as i64).collect::<Vec<_>>(),
        "acks=1 offsets on the old leader"
    );
    drop_within(acks_one, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

    // 4.
    cluster.kill9(old_leader);
    for &f in &followers {
        cluster.restart(f);
    }
    let new = cluster.wait_new_leader(&topic, 0, &before, FAILOVER_TIMEOUT + CONTROLLER_FAILOVER_TIMEOUT);
    assert!(followers.contains(&new.leader), "new leader {} is one of the old followers {followers:?}", new.leader);

    // 5.
    let after = values("after", PRODUCED_AFTER);
    let acks_all = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    let offsets = produce_acked(&acks_all, &topic, 0, &after, "acks=all under the new leader");
    drop_within(acks_all, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    assert_eq!(
        offsets,
        (REPLICATED_BEFORE as i64..(REPLICATED_BEFORE + PRODUCED_AFTER) as i64).collect::<Vec<_>>(),
        "acks=all offsets under the new leader continue the replicated log, not the old leader's"
    );

    // 6.
    cluster.restart(old_leader);
    cluster.wait_in_isr(&topic, 0, old_leader, ISR_REJOIN_TIMEOUT);

    // 7.
    let old_leader_leads = move_leadership_to(&mut cluster, &topic, 0, old_leader);
    let reader = cluster.leader_of(&topic, 0);
    let log = read_partition(&cluster, &topic, 0, 400);
    assert_dense(&topic, 0, &log);
    let got: Vec<&String> = log.iter().map(|(_, v)| v).collect();
    let expected: Vec<&String> = replicated.iter().chain(&after).collect();
    if let Some((offset, value)) = log.iter().find(|(_, v)| v.starts_with("unreplicated-")) {
        panic!("{topic}/0@{offset} read from node {reader}: {value:?}, an acks=1 record only the dead leader had");
    }
    assert_eq!(got, expected, "{topic}/0 read from node {reader} (the old leader leads: {old_leader_leads})");
    println!(
        "divergence: old leader {old_leader} truncated {UNREPLICATED} unreplicated records and rejoined; read {} records \
         from node {reader} (the old leader leads: {old_leader_leads})",
        log.len()
    );
}

/// Records produced to the topic created after the controller failover.
const AFTER_FAILOVER_RECORDS: usize = 100;

/// The controller (the Raft leader) is killed with SIGKILL; every running broker must name another
/// one within `CONTROLLER_FAILOVER_TIMEOUT`. The killed broker is then restarted (a replication factor
/// of 3 needs three live brokers, as in Kafka), and the new controller must create a topic with
/// replication factor 3 that takes 100 records with acks=all and serves them back.
#[test]
fn controller_failover() {
    let tmp = temp_dir("sluice-repl-controller-");
    let mut cluster = DevCluster::start(tmp.path());
    let old = cluster.controller(CONTROLLER_FAILOVER_TIMEOUT);
    let killed_at = Instant::now();
    cluster.kill9(old);
    let new =
        cluster.wait_until(&format!("a controller other than killed node {old}"), CONTROLLER_FAILOVER_TIMEOUT, || {
            let mut named = Vec::new();
            for id in cluster.running_nodes() {
                named.push(cluster.metadata_from(id, None)?.controller);
            }
            match named.as_slice() {
                [first, rest @ ..] if *first >= 0 && *first != old && rest.iter().all(|c| c == first) => Ok(*first),
                _ => Err(format!("controllers named by the running nodes {:?}: {named:?}", cluster.running_nodes())),
            }
        });
    let failover = killed_at.elapsed();
    assert_eq!(cluster.state(new), NodeState::Running);

    cluster.restart(old);
    let topic = unique_topic("repl-after-failover");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "2")]);
    let producer = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    let sent = values("after-failover", AFTER_FAILOVER_RECORDS);
    let offsets = produce_acked(&producer, &topic, 0, &sent, "acks=all after the controller failover");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    assert_eq!(offsets, (0..AFTER_FAILOVER_RECORDS as i64).collect::<Vec<_>>(), "acknowledged offsets");
    let log = read_partition(&cluster, &topic, 0, AFTER_FAILOVER_RECORDS as i64);
    assert_dense(&topic, 0, &log);
    assert_eq!(log.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), sent, "{topic}/0 read back");
    println!("controller failover: node {old} killed, node {new} controller after {failover:?}");
}

/// DeleteRecords on the leader reaches the followers: their log start follows the leader's (carried
/// in every fetch answer), so after the leader is killed the new leader's low watermark is where the
/// old one's was, and the records below it are gone there too.
#[test]
fn delete_records_reach_followers() {
    const DELETE_BEFORE: i64 = 60;

    let tmp = temp_dir("sluice-repl-delrec-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-delrec");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "2")]);
    cluster.wait_fully_replicated(&topic, 0, ISR_REJOIN_TIMEOUT);
    let producer = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    produce_acked(&producer, &topic, 0, &values("r", 100), "before DeleteRecords");

    let before = cluster.partition(&topic, 0).expect("metadata");
    let leader = before.leader;
    let delete = requests::delete_records(&topic, &[(0, DELETE_BEFORE)], 5_000);
    let answer = cluster::call(cluster.kafka_addr(leader), &delete, 1).expect("DeleteRecords");
    let p = &answer.topics[0].partitions[0];
    assert_eq!((p.error_code, p.low_watermark), (0, DELETE_BEFORE), "DeleteRecords on leader {leader}");

    // ListOffsets on `node` (-2: the log start).
    let list_offset = |cluster: &DevCluster, node: i32, timestamp: i64| -> Result<i64, String> {
        let request = requests::list_offsets(&topic, &[0], timestamp);
        let r = cluster::call(cluster.kafka_addr(node), &request, 1)?;
        let p = &r.topics[0].partitions[0];
        if p.error_code != 0 {
            return Err(format!("ListOffsets error {} from node {node}", p.error_code));
        }
        Ok(p.offset)
    };
    // One more acks=all record: acknowledged only once every follower appended it, from a fetch
    // answer that also carried the new log start (applied with the append).
    produce_acked(&producer, &topic, 0, &values("after", 1), "after DeleteRecords");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    cluster.kill9(leader);
    let new_leader = cluster.wait_new_leader(&topic, 0, &before, FAILOVER_TIMEOUT);
    let start = cluster
        .wait_until("the new leader's log start", FAILOVER_TIMEOUT, || list_offset(&cluster, new_leader.leader, -2));
    assert_eq!(start, DELETE_BEFORE, "log start on the new leader {}", new_leader.leader);
    // A new leader's high watermark catches up once the other in-sync follower fetched from it
    // (until then the acknowledged last record is there but not yet visible, as in Kafka).
    cluster.wait_until("the new leader's high watermark past the last record", FAILOVER_TIMEOUT, || match list_offset(
        &cluster,
        new_leader.leader,
        -1,
    )? {
        101 => Ok(()),
        hw => Err(format!("high watermark {hw}")),
    });
    let log = read_partition_from(&cluster, &topic, 0, DELETE_BEFORE, 101);
    assert_eq!(log.first().map(|(o, _)| *o), Some(DELETE_BEFORE), "first record read from the new leader");
    assert_eq!(log.len(), 41, "records 60..=100 on the new leader");
}

/// Kafka's group-to-partition rule: `abs(String.hashCode) % partitions` of `__consumer_offsets`.
fn offsets_partition_of(group: &str, partitions: i32) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash.unsigned_abs() % partitions as u32) as i32
}

/// Committed offsets survive the group coordinator's death: `__consumer_offsets` is replicated,
/// commits wait for its ISR, and the new leader of the group's offsets partition loads them. A
/// librdkafka group member reads 200 of 300 records and commits; the coordinator is killed; a new
/// member of the same group gets exactly the other 100.
#[test]
fn group_offsets_survive_coordinator_kill() {
    use rdkafka::consumer::CommitMode;
    const TOTAL: usize = 300;
    const FIRST: usize = 200;

    let tmp = temp_dir("sluice-repl-group-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-group");
    let group = format!("group-{topic}");
    cluster.create_topic(&topic, 3, 3, &[("min.insync.replicas", "2")]);
    let producer = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    for p in 0..3 {
        let vs: Vec<String> = (0..TOTAL / 3).map(|i| format!("p{p}-{i}")).collect();
        produce_acked(&producer, &topic, p, &vs, "group input");
    }
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");

    let member = |cluster: &DevCluster| -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("socket.timeout.ms", SOCKET_TIMEOUT_MS)
            .set("topic.metadata.refresh.fast.interval.ms", "100")
            .create()
            .expect("create rdkafka group consumer");
        c.subscribe(&[topic.as_str()]).expect("subscribe");
        c
    };
    let read = |cluster: &DevCluster, c: &BaseConsumer, count: usize| -> Vec<String> {
        let mut got = Vec::new();
        let deadline = Instant::now() + CONSUME_TIMEOUT;
        while got.len() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} records within {CONSUME_TIMEOUT:?}\n{}",
                got.len(),
                cluster.log_tails()
            );
            if let Some(Ok(m)) = c.poll(CONSUMER_POLL) {
                got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        got
    };

    let first = member(&cluster);
    let seen = read(&cluster, &first, FIRST);
    first.commit_consumer_state(CommitMode::Sync).expect("commit");
    drop_within(first, CLIENT_CLOSE_TIMEOUT, "first group member");

    let offsets_partition = offsets_partition_of(&group, 16);
    let coordinator = cluster.partition("__consumer_offsets", offsets_partition).expect("offsets partition");
    cluster.kill9(coordinator.leader);
    cluster.wait_new_leader("__consumer_offsets", offsets_partition, &coordinator, FAILOVER_TIMEOUT);

    let second = member(&cluster);
    let rest = read(&cluster, &second, TOTAL - FIRST);
    drop_within(second, CLIENT_CLOSE_TIMEOUT, "second group member");
    let mut all: Vec<&String> = seen.iter().chain(&rest).collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        TOTAL,
        "every record once across the two members (coordinator {} killed)",
        coordinator.leader
    );
    println!("group offsets: coordinator node {} killed after a commit at {FIRST} records; the next member read the other {}", coordinator.leader, rest.len());
}

/// Controlled shutdown: a leader stopped with SIGTERM hands its partitions to another in-sync replica
/// and leaves the ISR itself before it exits (its log says so), so the cluster does not wait for the
/// session timeout; acks=all goes on at the new leader, and the stopped broker rejoins on restart.
#[test]
fn sigterm_moves_leadership_before_exit() {
    let tmp = temp_dir("sluice-repl-sigterm-");
    let mut cluster = DevCluster::start(tmp.path());
    let topic = unique_topic("repl-sigterm");
    cluster.create_topic(&topic, 1, 3, &[("min.insync.replicas", "2")]);
    let before = cluster.wait_fully_replicated(&topic, 0, ISR_REJOIN_TIMEOUT);
    let producer = producer(&cluster.bootstrap(), &[("acks", "all"), ("enable.idempotence", "true")]);
    produce_acked(&producer, &topic, 0, &values("before", 50), "before the SIGTERM");

    cluster.sigterm(before.leader);
    let log = std::fs::read_to_string(cluster.node_dir(before.leader).join("broker.log")).expect("broker.log");
    let line = log.lines().find(|l| l.contains("controlled shutdown: leadership moved")).unwrap_or_else(|| {
        panic!("no controlled-shutdown line in node {}'s log\n{}", before.leader, cluster.log_tails())
    });
    assert!(!line.contains("moved=0"), "node {} moved no leadership: {line}", before.leader);
    let after = cluster.wait_until("metadata after the controlled shutdown", FAILOVER_TIMEOUT, || {
        let p = cluster.partition(&topic, 0)?;
        if p.leader != before.leader && !p.isr.contains(&before.leader) {
            Ok(p)
        } else {
            Err(format!("leader {} isr {:?}", p.leader, p.isr))
        }
    });
    assert!(after.leader_epoch > before.leader_epoch, "epoch {} after {}", after.leader_epoch, before.leader_epoch);
    produce_acked(&producer, &topic, 0, &values("after", 50), "after the SIGTERM");
    drop_within(producer, CLIENT_CLOSE_TIMEOUT, "rdkafka producer");
    cluster.restart(before.leader);
    cluster.wait_in_isr(&topic, 0, before.leader, ISR_REJOIN_TIMEOUT);
    let read = read_partition(&cluster, &topic, 0, 100);
    assert_dense(&topic, 0, &read);
    assert_eq!(read.len(), 100);
    println!("controlled shutdown of node {}: {line}", before.leader);
}
