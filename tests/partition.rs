//! A network partition between brokers, made with fault-injecting TCP proxies the test runs itself.
//! Three `sluice serve` processes on 127.0.0.1; each broker reaches each other broker's Raft and
//! replication listeners only through a proxy of its own (its `--peer` list names the proxies), while
//! clients reach every broker directly. Cutting the proxies around the leader isolates it from the
//! other brokers but not from clients: the majority elects a new leader, the stale leader keeps taking
//! acks=1 writes it cannot replicate and must never acknowledge an acks=all write, and once the
//! partition heals it truncates what it took alone and rejoins the ISR. Nothing acknowledged with
//! acks=all is lost or duplicated.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use common::cluster::{call, metadata_at, temp_dir, PartitionView};
use common::{drop_within, free_port, plain_batch, unique_topic};

const BROKERS: usize = 3;
/// How long the brokers have to start and agree on a controller.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a condition may take (a failover, a rejoin, a read).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// How long one proxied connection attempt may take.
const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The stale leader's acks=all wait (the request's timeout) before it answers.
const STALE_PRODUCE_TIMEOUT_MS: i32 = 2_000;
const ERROR_REQUEST_TIMED_OUT: i16 = 7;
const ERROR_NOT_ENOUGH_REPLICAS: i16 = 19;
const ERROR_NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// A TCP proxy to `target` that can be cut (every connection closed, new ones refused) and healed.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        // Runs until the test process exits (the brokers are gone by then).
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, PROXY_CONNECT_TIMEOUT) else { continue };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                {
                    let mut open = o.lock().expect("proxy connections");
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(client.try_clone().expect("clone"));
                    open.push(server.try_clone().expect("clone"));
                }
                thread::spawn(move || pump(client, s2));
                thread::spawn(move || pump(server, c2));
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().expect("proxy connections").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side ends.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Three brokers whose peer traffic goes through `proxies[from][to] = (raft, replication)`.
struct Cluster {
    kafka: Vec<SocketAddr>,
    children: Vec<Child>,
    proxies: Vec<Vec<Option<(Proxy, Proxy)>>>,
    dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let ports: Vec<[u16; 3]> = (0..BROKERS).map(|_| [free_port(), free_port(), free_port()]).collect();
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("address") };
        let proxies: Vec<Vec<Option<(Proxy, Proxy)>>> = (0..BROKERS)
            .map(|from| {
                (0..BROKERS)
                    .map(|to| {
                        (from != to).then(|| (Proxy::start(addr(ports[to][2])), Proxy::start(addr(ports[to][1]))))
                    })
                    .collect()
            })
            .collect();
        let mut children = Vec::new();
        for i in 0..BROKERS {
            let node_dir = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let log = std::fs::File::create(node_dir.join("broker.log")).expect("broker.log");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
            cmd.args(["serve", "--node-id", &i.to_string(), "--cores", "1", "--listen"])
                .arg(format!("127.0.0.1:{}", ports[i][0]))
                .arg("--data-dir")
                .arg(node_dir.join("data"));
            for (j, p) in ports.iter().enumerate() {
                let (replication, raft) = match &proxies[i][j] {
                    None => (p[1], p[2]),
                    Some((raft, replication)) => (replication.port, raft.port),
                };
                cmd.arg("--peer").arg(format!("{j}=127.0.0.1:{},127.0.0.1:{replication},127.0.0.1:{raft}", p[0]));
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start a broker");
            children.push(child);
        }
        let cluster =
            Cluster { kafka: ports.iter().map(|p| addr(p[0])).collect(), children, proxies, dir: dir.to_path_buf() };
        for i in 0..BROKERS {
            cluster.wait(&format!("node {i} lists every broker and a controller"), START_TIMEOUT, || {
                let m = metadata_at(cluster.kafka[i], i as i32, None)?;
                if m.brokers.len() == BROKERS && m.controller >= 0 {
                    Ok(())
                } else {
                    Err(format!("{} brokers, controller {}", m.brokers.len(), m.controller))
                }
            });
        }
        cluster
    }

    fn bootstrap_without(&self, node: usize) -> String {
        (0..BROKERS).filter(|i| *i != node).map(|i| self.kafka[i].to_string()).collect::<Vec<_>>().join(",")
    }

    fn partition(&self, from: usize, topic: &str) -> Result<PartitionView, String> {
        metadata_at(self.kafka[from], from as i32, Some(&[topic]))?.partition(topic, 0)
    }

    /// Cuts (or heals) every proxy between `node` and the other brokers, both ways.
    fn isolate(&self, node: usize, cut: bool) {
        for (from, row) in self.proxies.iter().enumerate() {
            for (to, pair) in row.iter().enumerate() {
                if let Some((raft, replication)) = pair {
                    if from == node || to == node {
                        for p in [raft, replication] {
                            if cut {
                                p.cut()
                            } else {
                                p.heal()
                            }
                        }
                    }
                }
            }
        }
    }

    fn log_of(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{node}/broker.log"))).unwrap_or_default()
    }

    fn tails(&self) -> String {
        (0..BROKERS)
            .map(|i| {
                let log = self.log_of(i);
                let lines: Vec<&str> = log.lines().collect();
                format!("--- node {i} ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[track_caller]
    fn wait<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(v) => return v,
                Err(e) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}: {e}\n{}", self.tails()),
                Err(_) => thread::sleep(POLL),
            }
        }
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// One Produce request straight to `addr`: its partition error code.
fn raw_produce(addr: SocketAddr, topic: &str, acks: i16, values: &[String]) -> i16 {
    let request =
        ProduceRequest::default().with_acks(acks).with_timeout_ms(STALE_PRODUCE_TIMEOUT_MS).with_topic_data(vec![
            TopicProduceData::default().with_name(topic_name(topic)).with_partition_data(vec![
                PartitionProduceData::default().with_index(0).with_records(Some(plain_batch(values))),
            ]),
        ]);
    let response = call(addr, &request, 9).expect("Produce answered");
    response.responses[0].partition_responses[0].error_code
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// acks=all through librdkafka (idempotent) bootstrapped at `bootstrap`; every record must be
/// acknowledged.
fn produce_all(bootstrap: &str, topic: &str, values: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("socket.timeout.ms", "5000")
        .set("topic.metadata.refresh.fast.interval.ms", "100")
        .create()
        .expect("rdkafka producer");
    let deliveries: Vec<_> = values
        .iter()
        .map(|v| producer.send_result(FutureRecord::<(), _>::to(topic).partition(0).payload(v)).expect("enqueue"))
        .collect();
    for (v, d) in values.iter().zip(deliveries) {
        match block_on(d) {
            Ok(Ok(_)) => {}
            other => panic!("record {v}: not acknowledged: {other:?}"),
        }
    }
    drop_within(producer, Duration::from_secs(15), "rdkafka producer");
}

/// Every record of partition 0 (at least `expected` of them), read with librdkafka.
fn read_all(cluster: &Cluster, topic: &str, expected: usize) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_without(BROKERS))
        .set("group.id", format!("unused-{topic}"))
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.fast.interval.ms", "100")
        .create()
        .expect("rdkafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("assignment");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while got.len() < expected {
        assert!(Instant::now() < deadline, "{} of {expected} records read\n{}", got.len(), cluster.tails());
        if let Some(Ok(m)) = consumer.poll(POLL) {
            got.push((m.offset(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()));
        }
    }
    // Anything beyond the expected records would show within a few more polls.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        if let Some(Ok(m)) = consumer.poll(POLL) {
            got.push((m.offset(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()));
        }
    }
    drop_within(consumer, Duration::from_secs(15), "rdkafka consumer");
    got
}

#[test]
fn isolated_leader_cannot_acknowledge_and_truncates_after_healing() {
    let tmp = temp_dir("sluice-partition-");
    let cluster = Cluster::start(tmp.path());
    let topic = unique_topic("partitioned");
    let request = CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![CreatableTopic::default()
        .with_name(topic_name(&topic))
        .with_num_partitions(1)
        .with_replication_factor(3)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("min.insync.replicas"))
            .with_value(Some(StrBytes::from_static_str("2")))])]);
    let created = call(cluster.kafka[0], &request, 5).expect("CreateTopics");
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0].error_message);
    let before = cluster.wait("the topic fully replicated", STEP_TIMEOUT, || {
        let p = cluster.partition(0, &topic)?;
        if p.isr.len() == BROKERS && p.leader >= 0 {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    });
    let all = cluster.kafka.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    produce_all(&all, &topic, &values("before", 100));

    // Isolate the leader from the other brokers (clients still reach it).
    let stale = before.leader as usize;
    let other = (0..BROKERS).find(|i| *i != stale).expect("another broker");
    let cut_at = Instant::now();
    cluster.isolate(stale, true);
    let after = cluster.wait("a new leader on the majority side", STEP_TIMEOUT, || {
        let p = cluster.partition(other, &topic)?;
        if p.leader >= 0 && p.leader != before.leader && p.leader_epoch > before.leader_epoch {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    });
    let failover = cut_at.elapsed();

    // The stale leader still believes it leads: acks=1 is taken (and will be thrown away), acks=all
    // can never be acknowledged (its followers fetch elsewhere now).
    let stale_one = raw_produce(cluster.kafka[stale], &topic, 1, &values("stale-acks1", 10));
    assert!(
        stale_one == 0 || stale_one == ERROR_NOT_LEADER_OR_FOLLOWER,
        "acks=1 on the isolated leader: error {stale_one}"
    );
    let stale_all = raw_produce(cluster.kafka[stale], &topic, -1, &values("stale-acksall", 10));
    assert!(
        [ERROR_REQUEST_TIMED_OUT, ERROR_NOT_ENOUGH_REPLICAS, ERROR_NOT_LEADER_OR_FOLLOWER].contains(&stale_all),
        "acks=all on the isolated leader must not succeed: error {stale_all}"
    );

    // The majority side goes on.
    produce_all(&cluster.bootstrap_without(stale), &topic, &values("during", 100));

    // Heal: the old leader learns the new epoch, truncates what it took alone, and rejoins.
    cluster.isolate(stale, false);
    cluster.wait("the old leader back in the ISR", STEP_TIMEOUT, || {
        let p = cluster.partition(after.leader as usize, &topic)?;
        if p.isr.contains(&before.leader) {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    if stale_one == 0 {
        let log = cluster.log_of(stale);
        assert!(
            log.lines().any(|l| l.contains("diverging log: truncating") && l.contains(&topic)),
            "node {stale} took acks=1 records alone but never truncated them\n{}",
            cluster.tails()
        );
    }
    produce_all(&all, &topic, &values("healed", 100));

    let log = read_all(&cluster, &topic, 300);
    let expected: Vec<String> =
        values("before", 100).into_iter().chain(values("during", 100)).chain(values("healed", 100)).collect();
    let got: Vec<String> = log.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, expected, "the partition holds exactly the acknowledged records, in order");
    assert_eq!(log.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (0..300).collect::<Vec<i64>>(), "offsets");
    println!(
        "partition: leader {} isolated from the other brokers; new leader {} (epoch {} -> {}) after {failover:?}; \
         stale leader answered acks=1 with {stale_one}, acks=all with {stale_all}; after healing it rejoined the ISR; \
         300 acknowledged records read back, none of the stale ones",
        before.leader, after.leader, before.leader_epoch, after.leader_epoch
    );
}
