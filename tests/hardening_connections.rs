//! Issue 13, the connection items: what a careless or hostile client can do to a connection must
//! cost the broker a bounded amount, for a bounded time.
//! - item 4: clients that pipeline large Fetches, never read, then disconnect release their
//!   connection slot and memory at once (more attacks than slots; fresh clients still served);
//!   while such a client stays connected, the answers queued for it are bounded by
//!   `max_queued_answer_bytes_per_connection`, and other clients are served meanwhile.
//! - item 9a: a connection idle for `connections_max_idle_ms` is closed.
//! - item 9b: half-sent large frames cannot take more than `queued_max_request_bytes` of memory.
//! - item 9c / item 10: bad frames are logged at a bounded rate; a peer resetting its connection
//!   is a normal disconnect, not a "bad frame" warning.
//! - item 5: a failing `accept` (out of descriptors) backs off instead of spinning and flooding the
//!   log; clients are served again once descriptors are free.
//!
//! Figures (RSS, CPU, log lines) are printed with `--nocapture`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use sluice_client::requests::{self, NewTopic};

use common::wire::RawClient;
use common::{free_port, plain_batch, unique_topic, wire, Broker, BrokerOptions};

const ERROR_NONE: i16 = 0;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
/// Read/write timeout of a raw connection that expects answers.
const RAW_IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer frame the raw client reads (a Fetch answer holding the large record).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// How long the broker has to notice a dead or idle connection and release it.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGTERM may take once no client is connected: well under the 10 s drain timeout.
const PROMPT_EXIT: Duration = Duration::from_secs(5);
/// Interval of the polls below (conditions with a deadline, not synchronisation by sleeping).
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------------
// Helpers: broker start, raw client, metrics scrape, /proc of the broker.

/// Every broker of this file starts through here. The broker fixes glibc's mmap threshold itself
/// (src/main.rs), so the RSS figures show what it holds, not what the allocator caches.
fn start(options: BrokerOptions) -> Broker {
    Broker::start_with(options)
}

impl RawClient {
    fn connect(broker: &Broker) -> RawClient {
        RawClient::open(broker.addr(), "sluice-hardening-test", RAW_IO_TIMEOUT, MAX_ANSWER_BYTES)
    }
}

fn create_topic(client: &mut RawClient, topic: &str, configs: &[(&str, &str)]) {
    let spec = NewTopic { name: topic, partitions: 1, replication_factor: -1, configs };
    let response = client.call(&requests::create_topics(&[spec], 10_000), CREATE_TOPICS_VERSION);
    for t in response.topics {
        assert_eq!(t.error_code, ERROR_NONE, "create {topic}: {:?}", t.error_message);
    }
}

fn produce(client: &mut RawClient, topic: &str, records: Bytes) {
    let response = client.call(&requests::produce(topic, 0, records, -1, 10_000), PRODUCE_VERSION);
    for t in &response.responses {
        for p in &t.partition_responses {
            assert_eq!(p.error_code, ERROR_NONE, "produce to {topic}: {p:?}");
        }
    }
}

fn fetch_request(topic: &str, max_bytes: i32) -> FetchRequest {
    requests::fetch(topic, &[(0, 0)], max_bytes).with_max_wait_ms(0).with_min_bytes(0).with_max_bytes(max_bytes)
}

/// GET /metrics; the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to metrics {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send scrape");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read scrape");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).expect("HTTP body")
}

/// Sum of the samples of `metric` (every label set) whose labels contain `label` (e.g. `api="Fetch"`).
fn metric_sum(body: &str, metric: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let name = name_labels.split('{').next()?;
            (name == metric && name_labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn metric(addr: &str, name: &str) -> f64 {
    metric_sum(&scrape(addr), name, "")
}

/// Polls `cond` every `POLL` until it holds; panics with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !cond() {
        assert!(began.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(POLL);
    }
    began.elapsed()
}

/// The pid of the `sluice serve` process using `broker`'s data directory.
fn broker_pid(broker: &Broker) -> i32 {
    let needle = broker.data_dir().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" serve ") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no broker process with data dir {needle}");
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command (which may contain spaces) start at field 3 (state).
    let after = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn log_path(broker: &Broker) -> PathBuf {
    broker.data_dir().parent().expect("broker dir").join("broker.log")
}

fn log_text(broker: &Broker) -> String {
    std::fs::read_to_string(log_path(broker)).unwrap_or_default()
}

/// Closes `stream` with a reset (SO_LINGER 0), as a crashed or impatient peer does.
fn reset(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket we own, with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

fn terminate_promptly(broker: &mut Broker) -> Duration {
    let began = Instant::now();
    broker.terminate();
    let took = began.elapsed();
    assert!(took < PROMPT_EXIT, "SIGTERM took {took:?}");
    took
}

fn api_versions_ok(broker: &Broker) -> Result<(), String> {
    let r = wire::api_versions_v0_round_trip(broker.addr(), Duration::from_secs(5))?;
    if r.error_code == ERROR_NONE {
        Ok(())
    } else {
        Err(format!("ApiVersions error {}", r.error_code))
    }
}

// ---------------------------------------------------------------------------------------------------
// Item 4: dead Fetch clients.

/// Size of the one record the attackers fetch.
const LARGE_RECORD_BYTES: usize = 20 << 20;
/// Connection slots of the broker's one core.
const SLOTS: usize = 4;
/// Attacks: twice as many as there are slots.
const ATTACKS: usize = 2 * SLOTS;
/// Answers queued per connection (`max_inflight_requests_per_connection`).
const INFLIGHT: usize = 2;
/// Fetches each attacker pipelines: more than the writer, the queue and the reader can hold.
const ATTACK_FETCHES: usize = INFLIGHT + 4;

/// Idle time after which the broker closes a client that stopped reading.
const STALL_IDLE_MS: u64 = 1_000;

/// Connects and pipelines `ATTACK_FETCHES` fetches of the large record without reading: returns
/// once the broker's writer is stuck on the first answer, its queue is full and its reader waits
/// to queue one more (that many fetches have been handled).
fn pipeline_until_stuck(broker: &Broker, metrics_addr: &str, topic: &str, what: &str) -> RawClient {
    let fetches_before = metric_sum(&scrape(metrics_addr), "sluice_requests_total", "api=\"Fetch\"");
    let mut client = RawClient::connect(broker);
    let request = fetch_request(topic, i32::try_from(MAX_ANSWER_BYTES).expect("fits"));
    let mut pipelined = Vec::new();
    for _ in 0..ATTACK_FETCHES {
        pipelined.extend_from_slice(&client.frame(&request, FETCH_VERSION));
    }
    client.stream().write_all(&pipelined).expect("pipeline fetches");
    let stuck = (INFLIGHT + 2) as f64;
    wait_until(&format!("{what}: {stuck} fetches handled"), RAW_IO_TIMEOUT, || {
        metric_sum(&scrape(metrics_addr), "sluice_requests_total", "api=\"Fetch\"") >= fetches_before + stuck
    });
    client
}

#[test]
fn dead_fetch_clients_release_their_slot_and_memory_at_once() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!(
        "metrics_listen = \"{metrics_addr}\"\nmax_connections_per_core = {SLOTS}\n\
         max_inflight_requests_per_connection = {INFLIGHT}\nmax_message_bytes = {}\n\
         connections_max_idle_ms = {STALL_IDLE_MS}\n\
         max_queued_answer_bytes_per_connection = {}\n",
        32 << 20,
        // Large enough that every pipelined Fetch is answered and queued: this test is about
        // releasing what a dead connection holds (the bound on it is tested below).
        1 << 30
    );
    let mut broker = start(BrokerOptions { cores: 1, config_toml: Some(toml) });
    let pid = broker_pid(&broker);
    let topic = unique_topic("dead-fetch");
    let max_bytes = i32::try_from(MAX_ANSWER_BYTES).expect("fits");
    {
        let mut client = RawClient::connect(&broker);
        create_topic(&mut client, &topic, &[("max.message.bytes", &(32 << 20).to_string())]);
        produce(&mut client, &topic, plain_batch(&["x".repeat(LARGE_RECORD_BYTES)]));
        // One fetch read to the end, so that the baseline includes whatever a fetch leaves cached.
        let response = client.call(&fetch_request(&topic, max_bytes), FETCH_VERSION);
        let records = response.responses[0].partitions[0].records.as_ref().map_or(0, |r| r.len());
        assert!(records > LARGE_RECORD_BYTES, "fetch returned {records} bytes");
    }
    wait_until("the setup connection to close", RELEASE_TIMEOUT, || metric(&metrics_addr, "sluice_connections") == 0.0);
    let rss_before = rss_kib(pid);
    let mut rss_peak = rss_before;

    for attack in 0..ATTACKS {
        let client = pipeline_until_stuck(&broker, &metrics_addr, &topic, &format!("attack {attack}"));
        rss_peak = rss_peak.max(rss_kib(pid));
        drop(client);
        let left = Instant::now();
        while metric(&metrics_addr, "sluice_connections") != 0.0 {
            assert!(
                left.elapsed() < RELEASE_TIMEOUT,
                "attack {attack}: the dead connection is still open {RELEASE_TIMEOUT:?} after the client left; \
                 VmRSS {} MiB (before the attacks {} MiB)",
                rss_kib(pid) >> 10,
                rss_before >> 10
            );
            thread::sleep(POLL);
        }
        println!("attack {attack}: connection released {:?} after the client left", left.elapsed());
    }
    // A client that stays connected but never reads is closed once nothing has moved for
    // connections_max_idle_ms (its writer makes no progress): its slot and answers go too.
    let stalled = pipeline_until_stuck(&broker, &metrics_addr, &topic, "stalled client");
    let began = Instant::now();
    wait_until(
        "the broker to close the stalled connection",
        Duration::from_millis(STALL_IDLE_MS) + RELEASE_TIMEOUT,
        || metric(&metrics_addr, "sluice_connections") == 0.0,
    );
    println!("stalled client (connected, not reading) closed {:?} after it stalled", began.elapsed());
    drop(stalled);
    let rss_after = rss_kib(pid);
    // A fresh client gets a slot and an answer.
    api_versions_ok(&broker).expect("fresh client after the attacks");
    let refused = metric(&metrics_addr, "sluice_connections_refused_total");
    println!(
        "{ATTACKS} attacks, {SLOTS} slots: VmRSS before {} MiB, peak {} MiB, after {} MiB; refused connections {refused}",
        rss_before >> 10,
        rss_peak >> 10,
        rss_after >> 10
    );
    assert_eq!(refused, 0.0, "connections refused: slots leaked");
    // What the attacks held (at least a few answers of 20 MiB each) is given back.
    assert!(
        rss_after <= rss_before + (LARGE_RECORD_BYTES as u64 >> 10),
        "VmRSS grew from {} MiB to {} MiB over the attacks",
        rss_before >> 10,
        rss_after >> 10
    );
    let took = terminate_promptly(&mut broker);
    println!("SIGTERM after the attacks: exited in {took:?}");
}

// ---------------------------------------------------------------------------------------------------
// Item 4, continued: answers queued for a client that stopped reading.

/// Answer bytes one connection may queue in the test below: a fifth of one large answer.
const QUEUED_ANSWER_LIMIT_BYTES: usize = 4 << 20;
/// Fetches the greedy client pipelines without reading (all within its in-flight window).
const GREEDY_FETCHES: usize = 12;
/// How long the greedy client is watched once its first answer is computed.
const GREEDY_WATCH: Duration = Duration::from_secs(3);

#[test]
fn answers_queued_for_a_client_that_stopped_reading_are_bounded() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!(
        "metrics_listen = \"{metrics_addr}\"\nmax_message_bytes = {}\n\
         max_queued_answer_bytes_per_connection = {QUEUED_ANSWER_LIMIT_BYTES}\n",
        32 << 20
    );
    let mut broker = start(BrokerOptions { cores: 1, config_toml: Some(toml) });
    let pid = broker_pid(&broker);
    let topic = unique_topic("greedy");
    let max_bytes = i32::try_from(MAX_ANSWER_BYTES).expect("fits");
    let fetched = |client: &mut RawClient| {
        let response = client.call(&fetch_request(&topic, max_bytes), FETCH_VERSION);
        response.responses[0].partitions[0].records.as_ref().map_or(0, |r| r.len())
    };
    {
        let mut client = RawClient::connect(&broker);
        create_topic(&mut client, &topic, &[("max.message.bytes", &(32 << 20).to_string())]);
        produce(&mut client, &topic, plain_batch(&["x".repeat(LARGE_RECORD_BYTES)]));
        // Larger than the limit: one answer is always allowed.
        assert!(fetched(&mut client) > LARGE_RECORD_BYTES, "a fetch returns the large record");
    }
    wait_until("the setup connection to close", RELEASE_TIMEOUT, || metric(&metrics_addr, "sluice_connections") == 0.0);
    let rss_before = rss_kib(pid);
    let handled = || metric_sum(&scrape(&metrics_addr), "sluice_requests_total", "api=\"Fetch\"");
    let handled_before = handled();

    let mut greedy = RawClient::connect(&broker);
    let mut pipelined = Vec::new();
    for _ in 0..GREEDY_FETCHES {
        pipelined.extend_from_slice(&greedy.frame(&fetch_request(&topic, max_bytes), FETCH_VERSION));
    }
    greedy.stream().write_all(&pipelined).expect("pipeline fetches");
    wait_until("the first greedy fetch to be answered", RAW_IO_TIMEOUT, || handled() > handled_before);
    // Its writer is stuck on the first 20 MiB answer: no further Fetch of it may run meanwhile.
    let watch = Instant::now();
    let (mut most_handled, mut rss_peak) = (0.0f64, rss_before);
    while watch.elapsed() < GREEDY_WATCH {
        most_handled = most_handled.max(handled() - handled_before);
        rss_peak = rss_peak.max(rss_kib(pid));
        thread::sleep(POLL);
    }
    // Other clients are served meanwhile, large answers included.
    api_versions_ok(&broker).expect("another client during the stall");
    let mut other = RawClient::connect(&broker);
    assert!(fetched(&mut other) > LARGE_RECORD_BYTES, "another client fetches the large record");
    drop(other);
    most_handled = most_handled.max(handled() - handled_before - 1.0);
    println!(
        "greedy client: {GREEDY_FETCHES} fetches pipelined, {most_handled} answered while it did not read; \
         VmRSS before {} MiB, peak {} MiB",
        rss_before >> 10,
        rss_peak >> 10
    );
    assert!(most_handled <= 1.0, "{most_handled} of the greedy client's fetches answered while it did not read");
    let held_kib = rss_peak.saturating_sub(rss_before);
    let bound_kib = ((2 * LARGE_RECORD_BYTES + QUEUED_ANSWER_LIMIT_BYTES) >> 10) as u64;
    assert!(held_kib <= bound_kib, "the greedy client held {} MiB (bound {} MiB)", held_kib >> 10, bound_kib >> 10);

    // Gone: its connection and answers are released at once.
    drop(greedy);
    wait_until("the greedy connection to close", RELEASE_TIMEOUT, || {
        metric(&metrics_addr, "sluice_connections") == 0.0
    });
    let released = wait_until("VmRSS to return near its level before", RELEASE_TIMEOUT, || {
        rss_kib(pid) <= rss_before + (LARGE_RECORD_BYTES as u64 >> 11)
    });
    println!("after the greedy client left: VmRSS {} MiB within {released:?}", rss_kib(pid) >> 10);
    terminate_promptly(&mut broker);
}

// ---------------------------------------------------------------------------------------------------
// Item 9a: idle connections.

const IDLE_MS: u64 = 500;

#[test]
fn idle_connections_are_closed() {
    let toml = format!("connections_max_idle_ms = {IDLE_MS}\n");
    let broker = start(BrokerOptions { cores: 1, config_toml: Some(toml) });
    // A connection waiting for its answer is not idle: a long-poll Fetch three idle times long.
    let mut poller = RawClient::connect(&broker);
    let topic = unique_topic("idle");
    create_topic(&mut poller, &topic, &[]);
    let long_poll = fetch_request(&topic, 1 << 20).with_max_wait_ms(3 * IDLE_MS as i32).with_min_bytes(1);
    let polled = Instant::now();
    let response = poller.call(&long_poll, FETCH_VERSION);
    assert_eq!(response.error_code, ERROR_NONE, "long poll: {response:?}");
    assert!(polled.elapsed() >= Duration::from_millis(2 * IDLE_MS), "long poll answered after {:?}", polled.elapsed());

    let began = Instant::now();
    // Silent from the start.
    let mut silent = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    // One request, then silent.
    let mut answered = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    wire::api_versions_v0(&mut answered, 1).expect("ApiVersions");
    // Stops in the middle of a request.
    let mut half = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    half.write_all(&[0, 0, 1, 0, 0, 18, 0, 0]).expect("half a frame");
    // Busy: a request every tenth of the idle time, for three idle times.
    let mut busy = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    let mut correlation_id = 1;
    while began.elapsed() < Duration::from_millis(3 * IDLE_MS) {
        correlation_id += 1;
        wire::api_versions_v0(&mut busy, correlation_id).expect("the busy connection is served");
        thread::sleep(Duration::from_millis(IDLE_MS / 10));
    }
    for (what, stream) in [("silent", &mut silent), ("answered", &mut answered), ("half frame", &mut half)] {
        let left = (began + RELEASE_TIMEOUT).saturating_duration_since(Instant::now());
        wire::wait_for_close(stream, left).unwrap_or_else(|e| panic!("{what} connection: {e}"));
    }
    let closed_after = began.elapsed();
    wire::api_versions_v0(&mut busy, correlation_id + 1).expect("the busy connection is still served");
    println!("idle connections closed within {closed_after:?} (connections_max_idle_ms = {IDLE_MS})");
}

// ---------------------------------------------------------------------------------------------------
// Item 9b: request memory.

const MAX_REQUEST_BYTES: usize = 32 << 20;
const REQUEST_MEMORY_BYTES: usize = 40 << 20;
const HALF_FRAME_SENDERS: usize = 8;
/// What each sender sends of its `MAX_REQUEST_BYTES` frame before it stops.
const HALF_FRAME_BYTES: usize = 24 << 20;

#[test]
fn half_sent_frames_stay_within_the_request_memory() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!(
        "metrics_listen = \"{metrics_addr}\"\nmax_request_size_bytes = {MAX_REQUEST_BYTES}\n\
         queued_max_request_bytes = {REQUEST_MEMORY_BYTES}\n"
    );
    let broker = start(BrokerOptions { cores: 1, config_toml: Some(toml) });
    let pid = broker_pid(&broker);
    let rss_before = rss_kib(pid);
    let senders: Vec<_> = (0..HALF_FRAME_SENDERS)
        .map(|_| {
            let addr = broker.addr();
            thread::spawn(move || {
                let mut s = wire::connect(addr, RAW_IO_TIMEOUT).expect("connect");
                // Each write must make progress within a second, else the broker is not reading.
                s.set_write_timeout(Some(Duration::from_secs(1))).expect("write timeout");
                let mut frame = u32::try_from(MAX_REQUEST_BYTES).expect("fits").to_be_bytes().to_vec();
                frame.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1]);
                let mut sent = 0;
                let chunk = vec![0u8; 256 << 10];
                let _ = s.write_all(&frame);
                while sent < HALF_FRAME_BYTES {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                (s, sent)
            })
        })
        .collect();
    let senders: Vec<(TcpStream, usize)> = senders.into_iter().map(|h| h.join().expect("sender")).collect();
    let sent: Vec<usize> = senders.iter().map(|(_, n)| n >> 20).collect();
    // The broker may still be copying what the kernel buffered: watch the RSS for a while.
    let mut rss_peak = rss_kib(pid);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        rss_peak = rss_peak.max(rss_kib(pid));
        thread::sleep(POLL);
    }
    // A normal client is served meanwhile.
    api_versions_ok(&broker).expect("a normal client while the request memory is taken");
    drop(senders);
    wait_until("the senders' connections to close", RELEASE_TIMEOUT, || {
        metric(&metrics_addr, "sluice_connections") == 0.0
    });
    let rss_after = rss_kib(pid);
    api_versions_ok(&broker).expect("a normal client after the senders left");
    let grew_mib = rss_peak.saturating_sub(rss_before) >> 10;
    println!(
        "{HALF_FRAME_SENDERS} senders of {} MiB of a {} MiB frame (MiB sent each: {sent:?}), \
         queued_max_request_bytes {} MiB: VmRSS before {} MiB, peak {} MiB (+{grew_mib} MiB), after {} MiB",
        HALF_FRAME_BYTES >> 20,
        MAX_REQUEST_BYTES >> 20,
        REQUEST_MEMORY_BYTES >> 20,
        rss_before >> 10,
        rss_peak >> 10,
        rss_after >> 10
    );
    // The budget plus slack for everything else a connection and the allocator hold.
    let bound_mib = (REQUEST_MEMORY_BYTES >> 20) as u64 + 16;
    assert!(grew_mib <= bound_mib, "VmRSS grew by {grew_mib} MiB, more than {bound_mib} MiB");
}

// ---------------------------------------------------------------------------------------------------
// Items 9c and 10: log lines.

const BAD_FRAMES: usize = 10_000;
const BAD_FRAME_THREADS: usize = 4;

fn bad_frame_lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains("bad frame") || l.contains("closing connection")).count()
}

#[test]
fn bad_frames_are_logged_at_a_bounded_rate() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!("metrics_listen = \"{metrics_addr}\"\n");
    let broker = start(BrokerOptions { cores: 2, config_toml: Some(toml) });
    let accepted_before = metric(&metrics_addr, "sluice_connections_accepted_total");
    let began = Instant::now();
    let threads: Vec<_> = (0..BAD_FRAME_THREADS)
        .map(|t| {
            let addr = broker.addr();
            thread::spawn(move || {
                for i in 0..BAD_FRAMES / BAD_FRAME_THREADS {
                    let mut s = wire::connect(addr, RAW_IO_TIMEOUT).expect("connect");
                    let frame = if (t + i) % 2 == 0 {
                        // A size below the smallest request.
                        vec![0, 0, 0, 3, 1, 2, 3]
                    } else {
                        // An API key Kafka does not have.
                        wire::request_frame(999, 0, 1, "bad", false, &[])
                    };
                    s.write_all(&frame).expect("send a bad frame");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("bad-frame sender");
    }
    wait_until("every bad connection accepted and closed", Duration::from_secs(60), || {
        let body = scrape(&metrics_addr);
        metric_sum(&body, "sluice_connections_accepted_total", "") >= accepted_before + BAD_FRAMES as f64
            && metric_sum(&body, "sluice_connections", "") == 0.0
    });
    let elapsed = began.elapsed();
    let lines = bad_frame_lines(&log_text(&broker));
    let log_bytes = std::fs::metadata(log_path(&broker)).map(|m| m.len()).unwrap_or(0);
    println!("{BAD_FRAMES} bad frames in {elapsed:?}: {lines} log lines about them, log file {log_bytes} bytes");
    // Two call sites (bad frame, closing connection), each at most 10 lines per 5 s window.
    let windows = elapsed.as_secs() / 5 + 2;
    let bound = 2 * 10 * windows as usize;
    assert!(lines <= bound, "{lines} log lines for {BAD_FRAMES} bad frames (bound {bound})");
    // Once a window has passed, the next bad frame is logged with the count of those dropped.
    wait_until("a line with the count of suppressed lines", Duration::from_secs(15), || {
        let mut s = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
        s.write_all(&[0, 0, 0, 3]).expect("send a bad frame");
        let _ = wire::wait_for_close(&mut s, Duration::from_secs(5));
        log_text(&broker).lines().any(|l| l.contains("suppressed"))
    });
}

#[test]
fn a_peer_resetting_its_connection_is_not_a_bad_frame() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let toml = format!("metrics_listen = \"{metrics_addr}\"\n");
    let broker = start(BrokerOptions { cores: 1, config_toml: Some(toml) });
    let accepted_before = metric(&metrics_addr, "sluice_connections_accepted_total");
    // Reset while the broker waits for the next request.
    let mut between = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    wire::api_versions_v0(&mut between, 1).expect("ApiVersions");
    // Reset in the middle of a request.
    let mut within = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    within.write_all(&[0, 0, 1, 0, 0, 18, 0, 0]).expect("half a frame");
    // Closed (FIN) in the middle of a request.
    let mut closed = wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect");
    closed.write_all(&[0, 0, 1, 0, 0, 18, 0, 0]).expect("half a frame");
    wait_until("three connections accepted", RELEASE_TIMEOUT, || {
        metric(&metrics_addr, "sluice_connections_accepted_total") >= accepted_before + 3.0
    });
    reset(between);
    reset(within);
    drop(closed);
    wait_until("the connections to close", RELEASE_TIMEOUT, || metric(&metrics_addr, "sluice_connections") == 0.0);
    let log = log_text(&broker);
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bad frame") || l.contains("closing connection") || l.contains("reset by peer"))
        .collect();
    assert!(noisy.is_empty(), "disconnects logged as warnings:\n{}", noisy.join("\n"));
}

// ---------------------------------------------------------------------------------------------------
// Item 5: accept errors.

/// Descriptors left to the broker above what it has open when the limit is set.
const SPARE_FDS: u64 = 4;
/// Connections opened beyond the descriptors: they wait in the listen backlog.
const EXTRA_CONNECTIONS: usize = 16;
const CPU_WINDOW: Duration = Duration::from_secs(2);

#[test]
fn accept_failures_back_off_and_clients_are_served_again() {
    let mut broker = start(BrokerOptions { cores: 1, config_toml: None });
    let pid = broker_pid(&broker);
    let fds = open_fds(pid) as u64;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let new = libc::rlimit { rlim_cur: fds + SPARE_FDS, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit on our own child's pid with valid rlimit structs.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit get: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_max: old.rlim_max, ..new };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set: {}", std::io::Error::last_os_error());

    let streams: Vec<TcpStream> = (0..SPARE_FDS as usize + EXTRA_CONNECTIONS)
        .map(|_| wire::connect(broker.addr(), RAW_IO_TIMEOUT).expect("connect (the backlog accepts)"))
        .collect();
    wait_until("the broker to run out of descriptors", RELEASE_TIMEOUT, || open_fds(pid) as u64 >= fds + SPARE_FDS);
    let log_before = std::fs::metadata(log_path(&broker)).map(|m| m.len()).unwrap_or(0);
    let ticks_before = cpu_ticks(pid);
    thread::sleep(CPU_WINDOW);
    let ticks = cpu_ticks(pid) - ticks_before;
    let log_growth = std::fs::metadata(log_path(&broker)).map(|m| m.len()).unwrap_or(0) - log_before;
    let cpu_percent = ticks * 100 * 1000 / (clock_ticks_per_second() * CPU_WINDOW.as_millis() as u64);
    println!(
        "out of descriptors for {CPU_WINDOW:?}: broker CPU {cpu_percent} % of a core ({ticks} ticks), log +{log_growth} bytes"
    );
    assert!(cpu_percent <= 10, "the broker used {cpu_percent} % of a core while accept failed");
    assert!(log_growth <= 16 * 1024, "the log grew by {log_growth} bytes while accept failed");

    drop(streams);
    let took = wait_until("a fresh client to be served", Duration::from_secs(10), || api_versions_ok(&broker).is_ok());
    println!("served again {took:?} after the connections closed");
    // SAFETY: restores the limit read above on our own child.
    unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    terminate_promptly(&mut broker);
}
