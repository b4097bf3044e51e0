//! `sluice dev-cluster` end to end: three real brokers on 127.0.0.1 started by one command, each
//! listing all three in Metadata; a broker killed with SIGKILL and restarted by hand from its saved
//! command line keeps its data; a second dev-cluster on the same directory is refused; SIGTERM
//! stops everything cleanly.

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{run_kcat, run_with_timeout, unique_topic, wire, CLIENT_PROCESS_TIMEOUT};

const BROKERS: u16 = 3;
/// dev-cluster's own offsets of the replication and Raft listeners above the Kafka ones.
const LISTENER_PORT_OFFSETS: [u16; 3] = [0, 100, 200];
/// How long dev-cluster has to print its ready line (its own limit is 60 s).
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(70);
/// How long dev-cluster has to exit after SIGTERM (its brokers get 30 s, then SIGKILL).
const CLUSTER_EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a restarted broker or a refused dev-cluster has to answer or exit.
const NODE_TIMEOUT: Duration = Duration::from_secs(20);
/// Base ports tried before giving up (another process may take a port between check and bind).
const START_ATTEMPTS: usize = 4;
/// Lowest and highest base port picked (the Raft ports go 200 + BROKERS above it).
const BASE_PORT_RANGE: (u16, u16) = (20_000, 60_000);
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// A running `sluice dev-cluster`; SIGKILLed on drop (its brokers then get SIGTERM from the kernel).
struct DevCluster {
    child: Option<Child>,
    dir: PathBuf,
    base_port: u16,
    stdout: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl DevCluster {
    /// Starts a 3-broker dev-cluster on free ports in a fresh directory under target/ and waits for
    /// its ready line; on a port collision, tries other ports (and a fresh directory: the brokers of
    /// a failed attempt may still be stopping).
    fn start(root: &Path) -> DevCluster {
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let base_port = free_base_port(attempt);
            let mut cluster = DevCluster::spawn(&root.join(format!("cluster-{attempt}")), base_port);
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                Err(e) => failures.push(format!("base port {base_port}: {e}\n{}", cluster.stderr())),
            }
        }
        panic!("dev-cluster did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n---\n"));
    }

    fn spawn(dir: &Path, base_port: u16) -> DevCluster {
        let stderr_path = dir.with_extension(format!("{base_port}.stderr"));
        let stderr = fs::File::create(&stderr_path).expect("create dev-cluster stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["dev-cluster", "--brokers", &BROKERS.to_string(), "--cores", "1", "--base-port"])
            .arg(base_port.to_string())
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn sluice dev-cluster");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DevCluster { child: Some(child), dir: dir.to_path_buf(), base_port, stdout, stderr_path }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with("ready:") => break,
                Ok(line) => printed.push(line),
                Err(_) => return Err(format!("no ready line within {CLUSTER_READY_TIMEOUT:?}; stdout: {printed:?}")),
            }
        }
        // A command line per node, printed before the ready line.
        for id in 0..BROKERS {
            let prefix = format!("node {id}: ");
            let line = printed.iter().find_map(|l| l.strip_prefix(&prefix)).ok_or(format!("no {prefix:?} line"))?;
            let saved = fs::read_to_string(self.node_dir(id).join("cmdline")).map_err(|e| e.to_string())?;
            assert_eq!(saved, format!("{line}\n"), "saved command line of node {id} differs from the printed one");
        }
        Ok(())
    }

    fn node_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn kafka_addr(&self, id: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base_port + id))
    }

    fn pid(&self, id: u16) -> Option<libc::pid_t> {
        fs::read_to_string(self.node_dir(id).join("pid")).ok().and_then(|t| t.trim().parse().ok())
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM and the exit status, within `CLUSTER_EXIT_TIMEOUT`.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("dev-cluster is running");
        send_signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + CLUSTER_EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait dev-cluster") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dev-cluster still running {CLUSTER_EXIT_TIMEOUT:?} after SIGTERM; stderr:\n{}", self.stderr());
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- dev-cluster stderr ---\n{}", self.stderr());
            for id in 0..BROKERS {
                let log = fs::read_to_string(self.node_dir(id).join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- node {id} log tail ---");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

/// A broker restarted by hand; SIGKILLed on drop if a test failed before stopping it.
struct HandStarted(Option<Child>);

impl Drop for HandStarted {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) on a process this test started and has not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// Whether a process with this pid exists (a zombie counts).
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A base port whose Kafka, replication and Raft ports for every broker are free right now.
fn free_base_port(attempt: usize) -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64)
        + attempt as u64 * 104_729;
    let span = u64::from(BASE_PORT_RANGE.1 - BASE_PORT_RANGE.0);
    for step in 0..span {
        let base = BASE_PORT_RANGE.0 + ((seed + step * 331) % span) as u16;
        let all_free = LISTENER_PORT_OFFSETS
            .iter()
            .flat_map(|off| (0..BROKERS).map(move |i| base + off + i))
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free base port in {BASE_PORT_RANGE:?}");
}

/// Metadata v1 (all topics) from one broker: its brokers `(id, host, port)` and controller id.
fn metadata_brokers(addr: SocketAddr) -> (Vec<(i32, String, i32)>, i32) {
    let mut stream = wire::connect(addr, NODE_TIMEOUT).expect("connect for Metadata");
    let body = (-1i32).to_be_bytes(); // null topic array: all topics
    let frame = wire::request_frame(wire::API_KEY_METADATA, 1, 7, "dev-cluster-test", false, &body);
    io::Write::write_all(&mut stream, &frame).expect("send Metadata v1");
    let response = wire::read_frame(&mut stream).expect("read Metadata v1 response");
    let mut r = &response[..];
    let mut take = |n: usize| -> Vec<u8> {
        assert!(r.len() >= n, "Metadata v1 response cut short");
        let (head, rest) = r.split_at(n);
        r = rest;
        head.to_vec()
    };
    let i32_of = |b: Vec<u8>| i32::from_be_bytes(b.try_into().expect("4 bytes"));
    let i16_of = |b: Vec<u8>| i16::from_be_bytes(b.try_into().expect("2 bytes"));
    assert_eq!(i32_of(take(4)), 7, "correlation id");
    let count = i32_of(take(4));
    let mut brokers = Vec::new();
    for _ in 0..count {
        let id = i32_of(take(4));
        let len = i16_of(take(2));
        let host = String::from_utf8(take(usize::try_from(len).expect("host length"))).expect("host is UTF-8");
        let port = i32_of(take(4));
        let rack = i16_of(take(2));
        if rack > 0 {
            take(rack as usize);
        }
        brokers.push((id, host, port));
    }
    let controller = i32_of(take(4));
    (brokers, controller)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(POLL);
    }
}

/// A directory under target/ (never tmpfs: the brokers use O_DIRECT), removed at the end.
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target/")
}

#[test]
fn three_broker_dev_cluster_lifecycle() {
    let tmp = temp_dir("sluice-dev-cluster-");
    let mut cluster = DevCluster::start(tmp.path());
    let (base, dir) = (cluster.base_port, cluster.dir.clone());

    // (a) Every broker answers, and each lists all three with their Kafka ports; controller 0.
    let expected: Vec<(i32, String, i32)> =
        (0..BROKERS).map(|i| (i32::from(i), "127.0.0.1".to_string(), i32::from(base + i))).collect();
    for id in 0..BROKERS {
        wire::api_versions_v0_round_trip(cluster.kafka_addr(id), NODE_TIMEOUT).expect("ApiVersions");
        assert_eq!(metadata_brokers(cluster.kafka_addr(id)), (expected.clone(), 0), "Metadata from node {id}");
        assert!(cluster.pid(id).is_some_and(process_exists), "pid file of node {id} names a live process");
    }

    // (d) A second dev-cluster on the same directory is refused while the first runs.
    let mut second = Command::new(env!("CARGO_BIN_EXE_sluice"));
    second.args(["dev-cluster", "--brokers", "3", "--cores", "1", "--base-port"]);
    second.arg((base + 300).to_string()).arg("--data-dir").arg(&dir);
    let refused = run_with_timeout(second, b"", NODE_TIMEOUT);
    assert!(!refused.status.success(), "second dev-cluster on the same directory was not refused");
    assert!(refused.stderr.contains("is running"), "refusal should name the running node: {}", refused.stderr);

    // (b) A record on node 1 survives kill -9 and a restart from the saved command line.
    let node1 = cluster.kafka_addr(1).to_string();
    let topic = unique_topic("dev-cluster");
    let created = run_with_timeout(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
            c.args(["topic", "create", &topic, "--bootstrap", &node1]);
            c
        },
        b"",
        CLIENT_PROCESS_TIMEOUT,
    );
    assert!(created.status.success(), "topic create on node 1: {}", created.stderr);
    run_kcat(&["-b", &node1, "-P", "-t", &topic, "-p", "0"], b"before-kill\n");
    let pid = cluster.pid(1).expect("pid file of node 1");
    send_signal(pid as u32, libc::SIGKILL);
    // dev-cluster reaps it, reports it and removes its pid file (it names a dead process now).
    wait_until("dev-cluster reports the killed node", NODE_TIMEOUT, || {
        cluster.pid(1).is_none() && cluster.stderr().contains("exited on its own")
    });
    assert!(!process_exists(pid), "killed node 1 was reaped");
    let cmdline = fs::read_to_string(cluster.node_dir(1).join("cmdline")).expect("cmdline of node 1");
    assert_eq!(cmdline.lines().count(), 1, "one line: {cmdline:?}");
    let log = cluster.node_dir(1).join("broker.log");
    let restarted = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {} >> '{}' 2>&1", cmdline.trim(), log.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("restart node 1 from its cmdline");
    let mut restarted = HandStarted(Some(restarted));
    wait_until("restarted node 1 answers", NODE_TIMEOUT, || {
        wire::api_versions_v0_round_trip(cluster.kafka_addr(1), Duration::from_secs(1)).is_ok()
    });
    assert_eq!(metadata_brokers(cluster.kafka_addr(1)), (expected.clone(), 0), "Metadata from restarted node 1");
    let read = run_kcat(&["-b", &node1, "-C", "-t", &topic, "-p", "0", "-o", "beginning", "-e", "-q"], b"");
    assert_eq!(String::from_utf8_lossy(&read).trim(), "before-kill", "record on node 1 after kill -9 and restart");
    // dev-cluster does not manage a broker restarted by hand: stop it here, cleanly.
    let mut child = restarted.0.take().expect("restarted node 1");
    send_signal(child.id(), libc::SIGTERM);
    let mut status = None;
    wait_until("restarted node 1 exits after SIGTERM", NODE_TIMEOUT, || {
        status = child.try_wait().expect("try_wait node 1");
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0), "restarted node 1 exit");

    // (c) SIGTERM stops the brokers dev-cluster started; exit 0; pid files gone.
    let pids: Vec<libc::pid_t> = [0, 2].iter().map(|&id| cluster.pid(id).expect("pid file")).collect();
    let started = Instant::now();
    let status = cluster.terminate();
    assert_eq!(status.code(), Some(0), "dev-cluster exit after SIGTERM; stderr:\n{}", cluster.stderr());
    assert!(started.elapsed() < CLUSTER_EXIT_TIMEOUT);
    for id in 0..BROKERS {
        assert!(!cluster.node_dir(id).join("pid").exists(), "pid file of node {id} left behind");
    }
    for pid in pids {
        assert!(!process_exists(pid), "broker {pid} still exists after dev-cluster stopped");
    }
    let mut stderr = String::new();
    fs::File::open(&cluster.stderr_path).and_then(|mut f| f.read_to_string(&mut stderr)).expect("stderr");
    assert!(!stderr.contains("after SIGTERM: SIGKILL"), "a broker needed SIGKILL at shutdown:\n{stderr}");
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let tmp = temp_dir("sluice-dev-cluster-args-");
    let dir = tmp.path().to_str().expect("UTF-8 temp dir").to_string();
    for (args, says) in [
        (vec!["--brokers", "17", "--base-port", "20000"], "--brokers 17"),
        (vec!["--brokers", "0", "--base-port", "20000"], "--brokers 0"),
        (vec!["--brokers", "3", "--base-port", "65400"], "--base-port"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("dev-cluster").args(&args).args(["--data-dir", &dir]);
        let out = run_with_timeout(cmd, b"", NODE_TIMEOUT);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!Path::new(&dir).join("node-0").exists(), "{args:?} started a node");
    }
    // `serve` checks its place in the cluster before it opens anything.
    let peers = ["--peer", "0=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--peer", "1=127.0.0.1:4,127.0.0.1:5,127.0.0.1:6"];
    let data_dir = format!("{dir}/serve-data");
    for (extra, says) in [
        (vec!["--node-id", "2"], "node_id 2 is not among the cluster peers"),
        (vec!["--node-id", "1", "--peer", "2=127.0.0.1:7,127.0.0.1:8,127.0.0.1:1"], "used twice"),
        (vec!["--peer", "3=127.0.0.1:9"], "expected ID=KAFKA,REPLICATION,RAFT"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--data-dir", &data_dir]).args(peers).args(&extra);
        let out = run_with_timeout(cmd, b"", NODE_TIMEOUT);
        assert!(!out.status.success(), "serve {extra:?} accepted");
        assert!(out.stderr.contains(says), "serve {extra:?}: {}", out.stderr);
        assert!(!Path::new(&data_dir).exists(), "serve {extra:?} created its data directory");
    }
}
