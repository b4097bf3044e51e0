//! Topic administration under hostile or careless clients (issue 13, items 5 and 6): the internal
//! `__consumer_offsets` topic cannot be deleted, reconfigured or grown by a client and keeps every
//! committed offset; Metadata marks only Kafka's internal topics `is_internal`; partition counts
//! are limited per request and per broker, refused before anything is created; creations that
//! would exhaust the file-descriptor limit are refused with a clear error while the broker stays
//! reachable; a broker restarted with more partitions than descriptors still listens; and a
//! partition with more segments than the broker has descriptors restarts and is read from offset 0
//! (sealed segments are opened through a capped per-core cache, not held open).
//!
//! Each test starts the real broker binary and speaks raw Kafka requests to it.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource as IncrementalResource, AlterableConfig as IncrementalConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterConfigsRequest, CreatePartitionsRequest, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    GroupId, IncrementalAlterConfigsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use common::cluster::{call, temp_dir, DevCluster};
use common::{free_port, plain_batch, unique_topic, Broker, BrokerOptions};

const OFFSETS_TOPIC: &str = "__consumer_offsets";
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const POLICY_VIOLATION: i16 = 44;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// How long a broker restarted by a test itself has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn create_topics(broker: &Broker, topics: &[(&str, i32)]) -> CreateTopicsResponse {
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(
        topics
            .iter()
            .map(|(t, n)| {
                CreatableTopic::default().with_name(name(t)).with_num_partitions(*n).with_replication_factor(1)
            })
            .collect(),
    );
    call(broker.addr(), &request, 5).expect("CreateTopics")
}

/// (error code, message) of each topic of a CreateTopics answer, by name.
fn create_results(response: &CreateTopicsResponse) -> Vec<(String, i16, String)> {
    response
        .topics
        .iter()
        .map(|t| {
            (t.name.0.to_string(), t.error_code, t.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
        })
        .collect()
}

fn metadata(broker: &Broker, topics: Option<&[&str]>, allow_auto_create: bool) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_topics(
            topics.map(|ts| ts.iter().map(|t| MetadataRequestTopic::default().with_name(Some(name(t)))).collect()),
        )
        .with_allow_auto_topic_creation(allow_auto_create);
    call(broker.addr(), &request, 12).expect("Metadata")
}

/// Partitions of `topic` in Metadata, or None when the broker does not know it.
fn partition_count(broker: &Broker, topic: &str) -> Option<usize> {
    let response = metadata(broker, Some(&[topic]), false);
    let t = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))?;
    (t.error_code == 0).then_some(t.partitions.len())
}

fn commit(broker: &Broker, group: &str, topic: &str, partition: i32, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(name(topic)).with_partitions(vec![
            OffsetCommitRequestPartition::default().with_partition_index(partition).with_committed_offset(offset),
        ])]);
    let response = call(broker.addr(), &request, 5).expect("OffsetCommit");
    response.topics[0].partitions[0].error_code
}

fn committed(broker: &Broker, group: &str, topic: &str, partition: i32) -> i64 {
    let request = OffsetFetchRequest::default().with_group_id(GroupId(s(group))).with_topics(Some(vec![
        OffsetFetchRequestTopic::default().with_name(name(topic)).with_partition_indexes(vec![partition]),
    ]));
    let response = call(broker.addr(), &request, 5).expect("OffsetFetch");
    assert_eq!(response.error_code, 0, "OffsetFetch error");
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "OffsetFetch partition error");
    p.committed_offset
}

fn produce(broker: &Broker, topic: &str, partition: i32) -> i16 {
    let request = ProduceRequest::default().with_acks(1).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(plain_batch(&["v".to_string()])))]),
    ]);
    let response = call(broker.addr(), &request, 9).expect("Produce");
    response.responses[0].partition_responses[0].error_code
}

fn broker_with(config_toml: &str) -> Broker {
    Broker::start_with(BrokerOptions { cores: 2, config_toml: Some(config_toml.to_string()) })
}

#[test]
fn offsets_topic_cannot_be_deleted_reconfigured_or_grown_and_commits_survive() {
    let mut broker = Broker::start();
    let topic = unique_topic("commits");
    let created = create_topics(&broker, &[(&topic, 2)]);
    assert_eq!(created.topics[0].error_code, 0, "{:?}", create_results(&created));
    assert_eq!(commit(&broker, "g1", &topic, 1, 42), 0, "commit");
    let offsets_partitions = partition_count(&broker, OFFSETS_TOPIC).expect("__consumer_offsets exists");

    // DeleteTopics, by name (v4) and in the v6 form.
    let v4 = DeleteTopicsRequest::default().with_topic_names(vec![name(OFFSETS_TOPIC)]).with_timeout_ms(10_000);
    let answer = call(broker.addr(), &v4, 4).expect("DeleteTopics v4");
    assert_eq!(answer.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED, "delete v4: {:?}", answer.responses[0]);
    let v6 = DeleteTopicsRequest::default()
        .with_topics(vec![DeleteTopicState::default().with_name(Some(name(OFFSETS_TOPIC)))])
        .with_timeout_ms(10_000);
    let answer = call(broker.addr(), &v6, 6).expect("DeleteTopics v6");
    let r = &answer.responses[0];
    assert_eq!(r.error_code, TOPIC_AUTHORIZATION_FAILED, "delete v6: {r:?}");
    let message = r.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
    assert!(message.contains("internal"), "message says why: {message}");

    // AlterConfigs and IncrementalAlterConfigs: a tiny max.message.bytes would fail every commit.
    let alter = AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(s(OFFSETS_TOPIC))
        .with_configs(vec![AlterableConfig::default().with_name(s("max.message.bytes")).with_value(Some(s("100")))])]);
    let answer = call(broker.addr(), &alter, 1).expect("AlterConfigs");
    assert_eq!(answer.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED, "AlterConfigs: {:?}", answer.responses[0]);
    let incremental = IncrementalAlterConfigsRequest::default().with_resources(vec![IncrementalResource::default()
        .with_resource_type(2)
        .with_resource_name(s(OFFSETS_TOPIC))
        .with_configs(vec![IncrementalConfig::default()
            .with_name(s("max.message.bytes"))
            .with_config_operation(0)
            .with_value(Some(s("100")))])]);
    let answer = call(broker.addr(), &incremental, 1).expect("IncrementalAlterConfigs");
    assert_eq!(
        answer.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "IncrementalAlterConfigs: {:?}",
        answer.responses[0]
    );

    // CreatePartitions would move groups to other partitions (the group → partition hash).
    let grow =
        CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![CreatePartitionsTopic::default()
            .with_name(name(OFFSETS_TOPIC))
            .with_count(offsets_partitions as i32 * 2)]);
    let answer = call(broker.addr(), &grow, 1).expect("CreatePartitions");
    assert_eq!(answer.results[0].error_code, TOPIC_AUTHORIZATION_FAILED, "CreatePartitions: {:?}", answer.results[0]);

    // CreateTopics of it: it exists (Kafka's answer).
    let again = create_topics(&broker, &[(OFFSETS_TOPIC, 1)]);
    assert_eq!(again.topics[0].error_code, TOPIC_ALREADY_EXISTS, "{:?}", create_results(&again));

    // Metadata: only Kafka's internal topics are internal (not every "__" name).
    let own = unique_topic("__own");
    assert_eq!(create_topics(&broker, &[(&own, 1)]).topics[0].error_code, 0);
    let all = metadata(&broker, None, false);
    let internal = |t: &str| {
        all.topics
            .iter()
            .find(|m| m.name.as_ref().is_some_and(|n| n.0.as_str() == t))
            .unwrap_or_else(|| panic!("{t} in Metadata"))
            .is_internal
    };
    assert!(internal(OFFSETS_TOPIC), "__consumer_offsets is internal");
    assert!(!internal(&topic), "a user topic is not internal");
    assert!(!internal(&own), "a user topic named __... is not internal");

    // Nothing changed: same partitions, the commit is there, also after a restart.
    assert_eq!(partition_count(&broker, OFFSETS_TOPIC), Some(offsets_partitions));
    assert_eq!(committed(&broker, "g1", &topic, 1), 42);
    assert_eq!(commit(&broker, "g1", &topic, 0, 7), 0, "commits still work (max.message.bytes unchanged)");
    broker.terminate();
    broker.restart();
    assert_eq!(partition_count(&broker, OFFSETS_TOPIC), Some(offsets_partitions));
    assert_eq!(committed(&broker, "g1", &topic, 1), 42);
    assert_eq!(committed(&broker, "g1", &topic, 0), 7);
}

#[test]
fn a_request_over_the_partition_limit_is_refused_whole() {
    let broker = broker_with("max_partitions_per_request = 50\n");
    let (a, b) = (unique_topic("req-a"), unique_topic("req-b"));
    let answer = create_topics(&broker, &[(&a, 30), (&b, 30)]);
    let results = create_results(&answer);
    assert_eq!(results.len(), 2, "{results:?}");
    for (topic, code, message) in &results {
        assert_eq!(*code, POLICY_VIOLATION, "{topic}: {message}");
        assert!(message.contains("max_partitions_per_request"), "message names the limit: {message}");
    }
    assert_eq!(partition_count(&broker, &a), None, "nothing created");
    assert_eq!(partition_count(&broker, &b), None, "nothing created");

    // Within the limit: created.
    let answer = create_topics(&broker, &[(&a, 25), (&b, 25)]);
    assert!(answer.topics.iter().all(|t| t.error_code == 0), "{:?}", create_results(&answer));
    // CreatePartitions counts what it adds: +30 and +30 is over 50.
    let grow = CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatePartitionsTopic::default().with_name(name(&a)).with_count(55),
        CreatePartitionsTopic::default().with_name(name(&b)).with_count(55),
    ]);
    let answer = call(broker.addr(), &grow, 1).expect("CreatePartitions");
    assert!(answer.results.iter().all(|r| r.error_code == POLICY_VIOLATION), "{:?}", answer.results);
    assert_eq!(partition_count(&broker, &a), Some(25));
    assert_eq!(partition_count(&broker, &b), Some(25));
}

#[test]
fn partitions_beyond_the_broker_limit_are_refused_before_anything_is_created() {
    // 2 cores x 20 = 40 partitions, 4 of them __consumer_offsets.
    let broker = broker_with("max_partitions_per_core = 20\noffsets_topic_partitions = 4\n");
    let (a, b) = (unique_topic("cap-a"), unique_topic("cap-b"));
    let answer = create_topics(&broker, &[(&a, 30)]);
    assert_eq!(answer.topics[0].error_code, 0, "{:?}", create_results(&answer));

    let answer = create_topics(&broker, &[(&b, 10)]);
    let (_, code, message) = &create_results(&answer)[0];
    assert_eq!(*code, INVALID_PARTITIONS, "{message}");
    assert!(message.contains("max_partitions_per_core"), "message names the limit: {message}");
    assert_eq!(partition_count(&broker, &b), None, "nothing created");

    // Growing past it is refused too; up to it works.
    let grow = |count: i32| {
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatePartitionsTopic::default().with_name(name(&a)).with_count(count)]);
        call(broker.addr(), &request, 1).expect("CreatePartitions").results[0].error_code
    };
    assert_eq!(grow(37), INVALID_PARTITIONS);
    assert_eq!(partition_count(&broker, &a), Some(30));
    assert_eq!(grow(36), 0);
    assert_eq!(partition_count(&broker, &a), Some(36));

    // Auto-creation is held to the same limit.
    let auto = unique_topic("cap-auto");
    let answer = metadata(&broker, Some(&[&auto]), true);
    assert_eq!(answer.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION, "{:?}", answer.topics[0]);
    assert_eq!(partition_count(&broker, &auto), None);
}

/// The broker's pid, found by its data directory on the command line (the harness keeps it private).
fn broker_pid(data_dir: &Path) -> i32 {
    let wanted = data_dir.to_string_lossy().to_string();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "serve") && args.contains(&wanted) {
            return pid;
        }
    }
    panic!("no broker process with data dir {wanted}");
}

fn open_descriptors(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_creation_beyond_the_descriptor_limit_is_refused_and_the_broker_stays_healthy() {
    const NOFILE: u32 = 600;
    let broker = broker_with("reserved_descriptors = 100\ndescriptors_per_partition = 4\n");
    let pid = broker_pid(broker.data_dir());
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed: {status}");
    let before = open_descriptors(pid);

    // 200 partitions x 4 descriptors cannot fit in 600 - 100.
    let big = unique_topic("fd-big");
    let answer = create_topics(&broker, &[(&big, 200)]);
    let (_, code, message) = &create_results(&answer)[0];
    assert_eq!(*code, INVALID_PARTITIONS, "{message}");
    assert!(message.contains("RLIMIT_NOFILE") && message.contains("600"), "message says which limit: {message}");
    assert_eq!(partition_count(&broker, &big), None, "nothing created");
    let after = open_descriptors(pid);
    assert!(after <= before + 4, "no descriptors taken by the refused topic: {before} before, {after} after");

    // Healthy: new connections, a topic that fits is created and every partition takes writes.
    let small = unique_topic("fd-small");
    let answer = create_topics(&broker, &[(&small, 10)]);
    assert_eq!(answer.topics[0].error_code, 0, "{:?}", create_results(&answer));
    for p in 0..10 {
        assert_eq!(produce(&broker, &small, p), 0, "produce to {small}-{p}");
    }
    assert!(open_descriptors(pid) < NOFILE as usize, "within the limit");
}

/// Polls until the broker `child` answers ApiVersions on `addr` (Ok), exits, or does not within
/// `READY_TIMEOUT` (Err says which).
fn wait_listening(child: &mut Child, addr: std::net::SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(format!("exited: {status}"));
        }
        if common::wire::api_versions_v0_round_trip(addr, Duration::from_secs(2)).is_ok_and(|r| r.error_code == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("not listening".to_string());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sluice serve` under `prlimit --nofile=LIMIT:LIMIT` (so the broker cannot raise it).
fn spawn_limited(data_dir: &Path, port: u16, config: &Path, nofile: u32, log: &Path) -> Child {
    let out = fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log");
    Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cores")
        .arg("2")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn prlimit sluice")
}

#[test]
fn a_restart_with_more_partitions_than_descriptors_still_listens() {
    let config = "reserved_descriptors = 100\ndescriptors_per_partition = 2\n";
    let mut broker = broker_with(config);
    let topic = unique_topic("many");
    let answer = create_topics(&broker, &[(&topic, 300)]);
    assert_eq!(answer.topics[0].error_code, 0, "{:?}", create_results(&answer));
    assert_eq!(commit(&broker, "g-many", &topic, 0, 5), 0);
    broker.terminate();

    // 300 partitions need at least 600 descriptors; the limit is 400.
    let data_dir = broker.data_dir().to_path_buf();
    let dir = data_dir.parent().expect("broker dir").to_path_buf();
    let config_path = dir.join("limited.toml");
    fs::write(&config_path, config).expect("write config");
    let log_path = dir.join("limited.log");
    let port = free_port();
    let mut child = spawn_limited(&data_dir, port, &config_path, 400, &log_path);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ready = wait_listening(&mut child, addr);
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker under nofile 400 {e}; log tail:\n{tail}");
    }
    // One clear line saying what was left closed and why, not one per partition.
    let summaries: Vec<&str> =
        log.lines().filter(|l| l.contains("partitions left closed: not enough file descriptors")).collect();
    assert!((1..=2).contains(&summaries.len()), "one summary line per core at most; log tail:\n{tail}");
    for line in &summaries {
        eprintln!("{line}");
    }
    // Committed offsets are opened first and still served.
    let offsets = {
        let request = OffsetFetchRequest::default().with_group_id(GroupId(s("g-many"))).with_topics(Some(vec![
            OffsetFetchRequestTopic::default().with_name(name(&topic)).with_partition_indexes(vec![0]),
        ]));
        call(addr, &request, 5).expect("OffsetFetch")
    };
    assert_eq!(offsets.topics[0].partitions[0].committed_offset, 5, "{offsets:?}");
    // SIGTERM still ends it.
    // SAFETY: kill(2) on the prlimit child, which execs the broker (same pid).
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "broker did not exit after SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_refuses_the_same_changes_through_its_controller() {
    let root = temp_dir("sluice-admin-cluster-");
    let cluster = DevCluster::start(root.path());
    let offsets_partitions = cluster.wait_until("__consumer_offsets created", Duration::from_secs(30), || {
        let view = cluster.metadata(Some(&[OFFSETS_TOPIC]))?;
        let t = view.topic(OFFSETS_TOPIC)?;
        if t.error_code == 0 && !t.partitions.is_empty() {
            Ok(t.partitions.len())
        } else {
            Err(format!("{t:?}"))
        }
    });
    let controller = cluster.kafka_addr(cluster.controller(Duration::from_secs(20)));

    let delete = DeleteTopicsRequest::default().with_topic_names(vec![name(OFFSETS_TOPIC)]).with_timeout_ms(10_000);
    let answer = call(controller, &delete, 4).expect("DeleteTopics");
    assert_eq!(answer.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED, "{:?}", answer.responses[0]);
    let incremental = IncrementalAlterConfigsRequest::default().with_resources(vec![IncrementalResource::default()
        .with_resource_type(2)
        .with_resource_name(s(OFFSETS_TOPIC))
        .with_configs(vec![IncrementalConfig::default()
            .with_name(s("retention.ms"))
            .with_config_operation(0)
            .with_value(Some(s("1")))])]);
    let answer = call(controller, &incremental, 1).expect("IncrementalAlterConfigs");
    assert_eq!(answer.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED, "{:?}", answer.responses[0]);
    let grow =
        CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![CreatePartitionsTopic::default()
            .with_name(name(OFFSETS_TOPIC))
            .with_count(offsets_partitions as i32 + 1)]);
    let answer = call(controller, &grow, 1).expect("CreatePartitions");
    assert_eq!(answer.results[0].error_code, TOPIC_AUTHORIZATION_FAILED, "{:?}", answer.results[0]);
    let all: MetadataResponse = call(controller, &MetadataRequest::default().with_topics(None), 12).expect("Metadata");
    let offsets = all.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == OFFSETS_TOPIC));
    assert!(offsets.is_some_and(|t| t.is_internal), "__consumer_offsets is internal: {offsets:?}");

    // The defaults: 10,000 partitions per request, 1,000 per core (dev-cluster brokers have one).
    let huge = unique_topic("huge");
    let (code, message) = cluster.create_topic_result(&huge, 10_001, 1, &[]);
    assert_eq!(code, POLICY_VIOLATION, "{message}");
    let wide = unique_topic("wide");
    let (code, message) = cluster.create_topic_result(&wide, 1_001, 3, &[]);
    assert_eq!(code, INVALID_PARTITIONS, "{message}");
    assert!(message.contains("max_partitions_per_core"), "{message}");
    let view = cluster.metadata(None).expect("Metadata");
    assert!(view.topic(&huge).is_err() && view.topic(&wide).is_err(), "nothing created: {:?}", view.topics);
    assert_eq!(view.topic(OFFSETS_TOPIC).map(|t| t.partitions.len()).ok(), Some(offsets_partitions));
}

#[test]
fn a_topic_whose_partition_cannot_be_opened_is_reported_and_taken_back() {
    const KAFKA_STORAGE_ERROR: i16 = 56;
    let broker = Broker::start();
    let topic = unique_topic("unopenable");
    let other = unique_topic("fine");
    // A file where partition 1's directory must go: that partition cannot be opened.
    fs::write(broker.data_dir().join(format!("{topic}-1")), b"not a directory").expect("write blocker");

    let answer = create_topics(&broker, &[(&topic, 3), (&other, 2)]);
    let results = create_results(&answer);
    let (_, code, message) = results.iter().find(|(t, _, _)| *t == topic).expect("result for the topic");
    assert_eq!(*code, KAFKA_STORAGE_ERROR, "{message}");
    assert!(message.contains(&format!("{topic}-1")) && message.contains("not created"), "{message}");
    let (_, code, message) = results.iter().find(|(t, _, _)| *t == other).expect("result for the other topic");
    assert_eq!(*code, 0, "the other topic of the request is created: {message}");

    // Taken back: unknown to Metadata, the partitions that did open are gone from disk.
    assert_eq!(partition_count(&broker, &topic), None);
    for p in [0, 2] {
        let dir = broker.data_dir().join(format!("{topic}-{p}"));
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    assert_eq!(partition_count(&broker, &other), Some(2));
    assert_eq!(produce(&broker, &other, 1), 0);
}

/// Reads `count` records of `topic`-0 from offset 0 with librdkafka (manual assignment, nothing
/// committed); returns their offsets, or what it had when `timeout` ran out and the errors it saw.
fn consume_from_start(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Result<Vec<i64>, String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("sluice-test-unused-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("check.crcs", "true")
        .create()
        .expect("create rdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(0)).expect("assignment entry");
    consumer.assign(&assignment).expect("assign");
    let mut offsets = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + timeout;
    while offsets.len() < count {
        if Instant::now() > deadline {
            errors.truncate(5);
            return Err(format!("{} of {count} records after {timeout:?}; errors: {errors:?}", offsets.len()));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => offsets.push(m.offset()),
            Some(Err(e)) => errors.push(e.to_string()),
        }
    }
    common::drop_within(consumer, Duration::from_secs(10), "rdkafka consumer");
    Ok(offsets)
}

#[test]
fn a_partition_with_more_segments_than_descriptors_restarts_and_is_read_from_offset_0() {
    // One 3000-byte record per batch in 4 KiB segments: each batch seals a segment.
    const BATCHES: usize = 420;
    const VALUE_BYTES: usize = 3000;
    const NOFILE: u32 = 320;
    const CACHE_FILES_PER_CORE: u64 = 8;
    const CORES: u64 = 2;
    // Consumer and test connections, the cores' listeners and transient files beyond the count
    // taken before the topic existed.
    const SLACK_DESCRIPTORS: u64 = 16;
    let config = format!(
        "reserved_descriptors = 100\nmax_open_segment_files_per_core = {CACHE_FILES_PER_CORE}\n\
         segment_file_idle_close_ms = 60000\n"
    );
    let mut broker = broker_with(&config);
    let baseline = open_descriptors(broker_pid(broker.data_dir())) as u64;
    let topic = unique_topic("segments");
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![CreatableTopic::default()
        .with_name(name(&topic))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(s("segment.bytes"))
            .with_value(Some(s("4096")))])]);
    let answer = call(broker.addr(), &request, 5).expect("CreateTopics");
    assert_eq!(answer.topics[0].error_code, 0, "{:?}", create_results(&answer));
    let value = "x".repeat(VALUE_BYTES);
    for i in 0..BATCHES {
        let request = ProduceRequest::default().with_acks(1).with_timeout_ms(10_000).with_topic_data(vec![
            TopicProduceData::default().with_name(name(&topic)).with_partition_data(vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(plain_batch(std::slice::from_ref(&value)))),
            ]),
        ]);
        let response = call(broker.addr(), &request, 9).expect("Produce");
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0, "produce {i}");
    }
    broker.terminate();
    let data_dir = broker.data_dir().to_path_buf();
    let segments = fs::read_dir(data_dir.join(format!("{topic}-0")))
        .expect("partition dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log")))
        .count();
    assert!(segments > NOFILE as usize, "{segments} segments, more than the {NOFILE} descriptors");

    // Restart with fewer descriptors than segments.
    let dir = data_dir.parent().expect("broker dir").to_path_buf();
    let config_path = dir.join("limited.toml");
    fs::write(&config_path, &config).expect("write config");
    let log_path = dir.join("limited.log");
    let port = free_port();
    let mut child = spawn_limited(&data_dir, port, &config_path, NOFILE, &log_path);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ready = wait_listening(&mut child, addr);
    let log_tail = || {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let consumed =
        ready.and_then(|()| consume_from_start(&format!("127.0.0.1:{port}"), &topic, BATCHES, READY_TIMEOUT));
    let pid = child.id() as i32;
    let open_after = open_descriptors(pid) as u64;
    // SAFETY: kill(2) on the prlimit child, which execs the broker (same pid).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    let offsets = consumed.unwrap_or_else(|e| panic!("broker under nofile {NOFILE}: {e}; log tail:\n{}", log_tail()));
    assert_eq!(offsets, (0..BATCHES as i64).collect::<Vec<_>>(), "every record, in order, from offset 0");
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("partitions left closed"), "log tail:\n{}", log_tail());
    // The partition holds its lock and active segment; reads hold at most the caches' files.
    let bound = baseline + 2 + CORES * CACHE_FILES_PER_CORE + SLACK_DESCRIPTORS;
    assert!(
        open_after <= bound,
        "{open_after} descriptors open after reading {segments} segments (at most {bound}: {baseline} before \
         the topic, 2 for the partition, {CACHE_FILES_PER_CORE} cached files x {CORES} cores, {SLACK_DESCRIPTORS} slack)"
    );
    eprintln!("{segments} segments read under nofile {NOFILE}: {open_after} descriptors open (baseline {baseline}, bound {bound})");
}
