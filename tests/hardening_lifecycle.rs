//! Process lifecycle under stress (issue 13, items 7 and 8), against the real binary:
//! - every start listens within a bound while other processes saturate the CPUs (a lost wake-up in
//!   glommio's executor used to leave a start asleep for good; see vendor/README.md);
//! - SIGTERM ends the process within `shutdown_timeout_ms` even when the graceful path cannot finish
//!   (a client that never reads keeps the connection drain waiting), exiting non-zero and saying so,
//!   without losing what was acknowledged; a second SIGTERM exits at once; a plain SIGTERM exits 0.

mod common;

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Buf;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::records::RecordBatchDecoder;
use sluice_client::requests::{self, NewTopic};

use common::wire::RawClient;
use common::{free_port, plain_batch, unique_topic, Broker, BrokerOptions};

/// Start-up test: starts (override with SLUICE_LIFECYCLE_STARTS for long runs by hand), busy-loop
/// processes per CPU (SLUICE_LIFECYCLE_SPINNERS_PER_CPU), cores of the broker, and the bound within
/// which every start must listen.
const STARTS_ENV: &str = "SLUICE_LIFECYCLE_STARTS";
const DEFAULT_STARTS: usize = 200;
const SPINNERS_PER_CPU_ENV: &str = "SLUICE_LIFECYCLE_SPINNERS_PER_CPU";
const DEFAULT_SPINNERS_PER_CPU: usize = 3;
const STARTUP_CORES: usize = 2;
const START_BOUND: Duration = Duration::from_secs(10);
/// The broker's log line once every core listens.
const ALL_CORES_LISTENING_LOG: &str = "sluice::server: listening on";
/// How often a condition (a log line, a process exit, bytes on a socket) is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Shutdown tests: the deadline configured for the stuck case, and the slack allowed past a bound
/// (process exit, scheduling on a loaded host, the 1 s `syncfs` grace of the watchdog).
const STUCK_SHUTDOWN_TIMEOUT_MS: u64 = 1_500;
const EXIT_SLACK: Duration = Duration::from_secs(3);
/// How long a second SIGTERM may take to end the process.
const SECOND_SIGNAL_EXIT_BOUND: Duration = Duration::from_secs(2);
/// Exit codes: the watchdog's, and 128 + SIGTERM for a second signal.
const EXIT_SHUTDOWN_TIMED_OUT: i32 = 3;
const EXIT_SECOND_SIGTERM: i32 = 128 + libc::SIGTERM;
/// Log lines of the shutdown path.
const SHUTDOWN_BEGUN_LOG: &str = "shutting down: stop accepting";
const SHUTDOWN_TIMED_OUT_LOG: &str = "graceful shutdown did not finish within shutdown_timeout_ms";
const SECOND_SIGNAL_LOG: &str = "second signal: exiting at once";
const CLEAN_SHUTDOWN_LOG: &str = "shut down cleanly";
/// The data a non-reading client asks for: batches of records of this size (a batch stays under the
/// default `max_message_bytes`), and how many Fetches of all of it it sends without reading. Together
/// far more than the socket buffers of the broker and the client hold.
const STUCK_BATCHES: usize = 8;
const STUCK_RECORDS_PER_BATCH: usize = 9;
const STUCK_RECORD_BYTES: usize = 100 * 1024;
const STUCK_FETCHES: usize = 4;
const STUCK_FETCH_MAX_BYTES: i32 = 32 << 20;
/// Receive buffer of the non-reading client (the kernel doubles it and applies its minimum).
const STUCK_CLIENT_RCVBUF_BYTES: libc::c_int = 4096;
/// Read/write timeout of the raw connections; how long the broker may take to start answering.
const RAW_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Produce, Fetch and CreateTopics versions spoken here; Fetch size for reading everything back.
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
const READ_BACK_FETCH_MAX_BYTES: i32 = 4 << 20;
const ERROR_NONE: i16 = 0;

// ---------------------------------------------------------------------------------------------------
// Item 7: start-up under CPU saturation.

/// Busy-loop processes, SIGKILLed and reaped on drop.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start(count: usize) -> Spinners {
        let children = (0..count)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn a busy-loop sh")
            })
            .collect();
        Spinners(children)
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A broker process of the start-up test, SIGKILLed and reaped on drop.
struct StartingBroker(Child);

impl Drop for StartingBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What each thread of a stalled broker was doing (name, state, kernel wait channel).
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return "<no /proc entry>".into() };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_string();
        let state = read("stat").rsplit(") ").next().and_then(|s| s.split(' ').next()).unwrap_or("?").to_string();
        out.push(format!("{} {} state={state} wchan={}", t.file_name().to_string_lossy(), read("comm"), read("wchan")));
    }
    out.join("; ")
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")),
        Err(_) => default,
    }
}

/// Starts the broker again and again on one data directory (kill -9 after each start, so every start
/// but the first recovers its logs) while busy loops keep every CPU saturated; every start must log
/// that all its cores listen within START_BOUND. A stalled start is SIGKILLed, counted and reported
/// with what its threads were doing.
#[test]
fn broker_starts_under_cpu_saturation() {
    let starts = env_count(STARTS_ENV, DEFAULT_STARTS);
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let spinners = cpus * env_count(SPINNERS_PER_CPU_ENV, DEFAULT_SPINNERS_PER_CPU);
    let cores = STARTUP_CORES.min(cpus);
    let dir = tempfile::Builder::new()
        .prefix("sluice-lifecycle-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temp dir under target/");
    let data_dir = dir.path().join("data");
    let log_path = dir.path().join("broker.log");
    let _spinners = Spinners::start(spinners);
    let began = Instant::now();
    let mut stalls = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..starts {
        let log = File::create(&log_path).expect("create broker log");
        let log_err = log.try_clone().expect("clone broker log handle");
        let port = free_port();
        let started = Instant::now();
        let mut broker = StartingBroker(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("serve")
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--cores")
                .arg(cores.to_string())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .spawn()
                .expect("spawn the sluice binary"),
        );
        let listening = loop {
            if fs::read_to_string(&log_path).unwrap_or_default().contains(ALL_CORES_LISTENING_LOG) {
                break true;
            }
            if let Some(status) = broker.0.try_wait().expect("try_wait on broker") {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                panic!("start {i}: broker exited ({status}) before listening; log:\n{log}");
            }
            if started.elapsed() > START_BOUND {
                break false;
            }
            thread::sleep(POLL_INTERVAL);
        };
        let took = started.elapsed();
        if listening {
            slowest = slowest.max(took);
        } else {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().last().unwrap_or("<empty log>").to_string();
            stalls.push(format!("start {i}: {}; last log line: {last}", thread_states(broker.0.id())));
        }
        drop(broker);
    }
    eprintln!(
        "{starts} starts (--cores {cores}, {spinners} busy loops on {cpus} CPUs) in {:?}: {} stalled \
         (no listener within {START_BOUND:?}), slowest successful start {slowest:?}",
        began.elapsed(),
        stalls.len()
    );
    assert!(stalls.is_empty(), "{} of {starts} starts stalled:\n{}", stalls.len(), stalls.join("\n"));
}

// ---------------------------------------------------------------------------------------------------
// Item 8: SIGTERM always ends the process.

/// Largest answer frame the raw client reads (a read-back Fetch answer is at most 4 MiB).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// `client_id` of the raw connections.
const CLIENT_ID: &str = "sluice-lifecycle-test";

impl RawClient {
    fn connect(addr: SocketAddr) -> RawClient {
        RawClient::open(addr, CLIENT_ID, RAW_IO_TIMEOUT, MAX_ANSWER_BYTES)
    }
}

fn fetch_request(topic: &str, from: i64, max_bytes: i32) -> FetchRequest {
    requests::fetch(topic, &[(0, from)], max_bytes).with_max_wait_ms(0).with_min_bytes(0).with_max_bytes(max_bytes)
}

/// Creates a one-partition topic and produces STUCK_BATCHES batches to it (acks=all); returns every
/// acknowledged record value in offset order.
fn create_and_fill(client: &mut RawClient, topic: &str) -> Vec<String> {
    let spec = NewTopic { name: topic, partitions: 1, replication_factor: -1, configs: &[] };
    let request = requests::create_topics(&[spec], 10_000);
    for t in client.call(&request, CREATE_TOPICS_VERSION).topics {
        assert_eq!(t.error_code, ERROR_NONE, "create {topic}: {:?}", t.error_message);
    }
    let mut acked = Vec::new();
    for b in 0..STUCK_BATCHES {
        let values: Vec<String> = (0..STUCK_RECORDS_PER_BATCH)
            .map(|r| {
                let tag = format!("batch {b} record {r} ");
                let fill = STUCK_RECORD_BYTES.saturating_sub(tag.len());
                format!("{tag}{}", "x".repeat(fill))
            })
            .collect();
        let request = requests::produce(topic, 0, plain_batch(&values), -1, 10_000);
        let response = client.call(&request, PRODUCE_VERSION);
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, ERROR_NONE, "produce batch {b}: {:?}", p.error_message);
        assert_eq!(p.base_offset, acked.len() as i64, "produce batch {b}: base offset");
        acked.extend(values);
    }
    acked
}

/// Every record value of partition 0, read back from offset 0 up to the high watermark.
fn read_back(addr: SocketAddr, topic: &str) -> Vec<String> {
    let mut client = RawClient::connect(addr);
    let mut values = Vec::new();
    loop {
        let from = values.len() as i64;
        let response = client.call(&fetch_request(topic, from, READ_BACK_FETCH_MAX_BYTES), FETCH_VERSION);
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, ERROR_NONE, "fetch {topic} from {from}: {p:?}");
        let mut records = p.records.clone().unwrap_or_default();
        while records.has_remaining() {
            let set = RecordBatchDecoder::decode(&mut records).expect("decode a fetched batch");
            for r in set.records {
                if r.offset < values.len() as i64 {
                    continue; // before `from`: the batch began earlier
                }
                assert_eq!(r.offset, values.len() as i64, "offsets are dense");
                values.push(r.value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default());
            }
        }
        if values.len() as i64 >= p.high_watermark {
            return values;
        }
        assert!(values.len() as i64 > from, "fetch {topic} from {from} returned nothing below {}", p.high_watermark);
    }
}

/// A connection with a tiny receive buffer that asks for the whole topic STUCK_FETCHES times and
/// never reads: once the broker has started writing the answers (bytes arrive), its writer for this
/// connection is blocked on a full socket with megabytes still to send, and the connection drain of a
/// graceful shutdown waits for it.
fn stuck_reader(addr: SocketAddr, topic: &str) -> TcpStream {
    // SAFETY: plain socket(2)/setsockopt(2)/connect(2) on a descriptor owned here, handed to
    // TcpStream (which closes it) right after.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let rcvbuf = STUCK_CLIENT_RCVBUF_BYTES;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&rcvbuf).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "setsockopt(SO_RCVBUF): {}", std::io::Error::last_os_error());
        let SocketAddr::V4(v4) = addr else { panic!("broker address {addr} is not IPv4") };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            std::ptr::from_ref(&sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        stream
    };
    stream.set_write_timeout(Some(RAW_IO_TIMEOUT)).expect("set write timeout");
    let mut client = RawClient::from_stream(stream, CLIENT_ID, MAX_ANSWER_BYTES);
    for _ in 0..STUCK_FETCHES {
        client.send(&fetch_request(topic, 0, STUCK_FETCH_MAX_BYTES), FETCH_VERSION);
    }
    let deadline = Instant::now() + RAW_IO_TIMEOUT;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer it is given.
        let rc = unsafe { libc::ioctl(client.stream().as_raw_fd(), libc::FIONREAD, &mut queued) };
        assert_eq!(rc, 0, "ioctl(FIONREAD): {}", std::io::Error::last_os_error());
        if queued > 0 {
            return client.conn.into_stream();
        }
        assert!(Instant::now() < deadline, "the broker sent nothing to the stuck reader within {RAW_IO_TIMEOUT:?}");
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until connecting to `addr` is refused (every core closed its listener) or `timeout` passes.
fn wait_until_refused(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, RAW_IO_TIMEOUT) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => thread::sleep(POLL_INTERVAL),
        }
    }
    false
}

fn exit_code(status: ExitStatus, broker: &Broker) -> i32 {
    status.code().unwrap_or_else(|| panic!("broker ended by a signal ({status}); log tail:\n{}", broker.log_tail()))
}

/// The graceful path cannot finish in time (a client that never reads keeps the drain waiting, 10 s),
/// so the watchdog ends the process at `shutdown_timeout_ms`: exit code 3, and the log says why. What
/// was acknowledged before is all there after a restart (recovery as after kill -9).
#[test]
fn sigterm_ends_a_stuck_shutdown_within_shutdown_timeout() {
    let config = format!("shutdown_timeout_ms = {STUCK_SHUTDOWN_TIMEOUT_MS}\n");
    let mut broker = Broker::start_with(BrokerOptions { config_toml: Some(config), ..BrokerOptions::default() });
    let topic = unique_topic("stuck-shutdown");
    let acked = create_and_fill(&mut RawClient::connect(broker.addr()), &topic);
    let _stuck = stuck_reader(broker.addr(), &topic);

    let signalled = Instant::now();
    broker.signal(libc::SIGTERM);
    let bound = Duration::from_millis(STUCK_SHUTDOWN_TIMEOUT_MS) + EXIT_SLACK;
    let status = broker.wait_exit(bound).unwrap_or_else(|| {
        panic!("broker still running {bound:?} after SIGTERM (shutdown_timeout_ms = {STUCK_SHUTDOWN_TIMEOUT_MS}); log tail:\n{}", broker.log_tail())
    });
    let took = signalled.elapsed();
    eprintln!("stuck shutdown: exit {status} {took:?} after SIGTERM");
    assert_eq!(exit_code(status, &broker), EXIT_SHUTDOWN_TIMED_OUT, "exit code; log tail:\n{}", broker.log_tail());
    assert!(took >= Duration::from_millis(STUCK_SHUTDOWN_TIMEOUT_MS), "exited after {took:?}, before its deadline");
    let log = broker.log();
    assert!(log.contains(SHUTDOWN_BEGUN_LOG), "no {SHUTDOWN_BEGUN_LOG:?} in the log:\n{}", broker.log_tail());
    assert!(log.contains(SHUTDOWN_TIMED_OUT_LOG), "no {SHUTDOWN_TIMED_OUT_LOG:?} in the log:\n{}", broker.log_tail());

    broker.restart();
    let read = read_back(broker.addr(), &topic);
    assert_eq!(read.len(), acked.len(), "records after the forced exit and a restart");
    assert!(read == acked, "record values changed across the forced exit");
    broker.terminate();
}

/// A second SIGTERM while the graceful path is still waiting ends the process at once, with
/// 128 + SIGTERM, and the log says so.
#[test]
fn second_sigterm_exits_at_once() {
    let mut broker = Broker::start();
    let topic = unique_topic("second-sigterm");
    create_and_fill(&mut RawClient::connect(broker.addr()), &topic);
    let _stuck = stuck_reader(broker.addr(), &topic);

    broker.signal(libc::SIGTERM);
    // The first signal was taken once the listeners are gone (the graceful path has begun).
    assert!(
        wait_until_refused(broker.addr(), RAW_IO_TIMEOUT),
        "still accepting connections {RAW_IO_TIMEOUT:?} after SIGTERM; log tail:\n{}",
        broker.log_tail()
    );
    let signalled = Instant::now();
    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(SECOND_SIGNAL_EXIT_BOUND).unwrap_or_else(|| {
        panic!(
            "broker still running {SECOND_SIGNAL_EXIT_BOUND:?} after a second SIGTERM; log tail:\n{}",
            broker.log_tail()
        )
    });
    eprintln!("second SIGTERM: exit {status} {:?} after it", signalled.elapsed());
    assert_eq!(exit_code(status, &broker), EXIT_SECOND_SIGTERM, "exit code; log tail:\n{}", broker.log_tail());
    let log = broker.log();
    assert!(log.contains(SHUTDOWN_BEGUN_LOG), "no {SHUTDOWN_BEGUN_LOG:?} in the log:\n{}", broker.log_tail());
    assert!(log.contains(SECOND_SIGNAL_LOG), "no {SECOND_SIGNAL_LOG:?} in the log:\n{}", broker.log_tail());
}

/// Nothing holds the graceful path up: SIGTERM exits 0 (Broker::terminate checks the code) well before
/// the deadline, and the data is there after a restart.
#[test]
fn plain_sigterm_still_exits_zero() {
    let mut broker = Broker::start();
    let topic = unique_topic("plain-sigterm");
    let acked = create_and_fill(&mut RawClient::connect(broker.addr()), &topic);
    broker.terminate();
    let log = broker.log();
    assert!(log.contains(SHUTDOWN_BEGUN_LOG), "no {SHUTDOWN_BEGUN_LOG:?} in the log:\n{}", broker.log_tail());
    assert!(log.contains(CLEAN_SHUTDOWN_LOG), "no {CLEAN_SHUTDOWN_LOG:?} in the log:\n{}", broker.log_tail());
    assert!(!log.contains(SHUTDOWN_TIMED_OUT_LOG), "the watchdog fired on a clean shutdown:\n{}", broker.log_tail());
    broker.restart();
    assert!(read_back(broker.addr(), &topic) == acked, "records after a clean restart");
    broker.terminate();
}
