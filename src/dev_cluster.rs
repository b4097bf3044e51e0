//! `sluice dev-cluster`: a local cluster for development and tests. Starts one `sluice serve` process
//! per broker (this same executable) on 127.0.0.1, each with its own directory `DIR/node-<id>/`
//! (`data/`, `pid`, `cmdline`, `broker.log`), waits until every broker answers ApiVersions, then
//! supervises them until SIGTERM/SIGINT, when it stops them (SIGTERM, then SIGKILL after
//! `STOP_TIMEOUT`) and exits 0.
//!
//! It manages only the processes it started: a broker that dies is reported and not restarted, and a
//! broker restarted by hand from its `cmdline` file is the restarter's to stop. It touches nothing
//! outside `DIR` and never talks to a broker beyond the readiness probe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use sluice_client::{requests, ConnectOptions, Connection};
use tracing::{info, warn};

/// Most brokers one dev-cluster starts (ports above the Kafka ones are spaced by 100).
pub const MAX_BROKERS: usize = 16;
/// Broker i's replication listener is on `base_port + REPLICATION_PORT_OFFSET + i`.
pub const REPLICATION_PORT_OFFSET: u16 = 100;
/// Broker i's Raft listener is on `base_port + RAFT_PORT_OFFSET + i`.
pub const RAFT_PORT_OFFSET: u16 = 200;
/// How long every broker has to answer its first ApiVersions after start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect and read/write limit of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness rounds, and between supervision rounds.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the brokers have to exit after SIGTERM (flush, checkpoint) before they are SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a dead broker's log shown in its report.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a broker's log to find those lines.
const LOG_TAIL_BYTES: u64 = 64 << 10;
/// Largest response the probe reads (the real ApiVersions and Metadata answers are under 1 KiB).
const MAX_PROBE_RESPONSE_BYTES: usize = 64 << 10;
/// The host every listener binds.
const HOST: &str = "127.0.0.1";

/// `sluice dev-cluster` flags.
#[derive(Args, Debug)]
pub struct DevClusterArgs {
    /// Brokers to start (node ids 0..N-1), 1 to 16.
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    /// Directory holding each broker's `node-<id>/` (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Kafka port of broker 0; broker i uses BASE_PORT+i, replication BASE_PORT+100+i, Raft
    /// BASE_PORT+200+i.
    #[arg(long)]
    base_port: u16,
    /// `--cores` of every broker (default: every core, for each of them).
    #[arg(long)]
    cores: Option<usize>,
    /// Serve each broker's Prometheus metrics on 127.0.0.1:METRICS_BASE_PORT+i.
    #[arg(long)]
    metrics_base_port: Option<u16>,
}

/// One broker: what it runs and, once started, its process.
struct Node {
    id: i32,
    dir: PathBuf,
    kafka: SocketAddr,
    /// `serve ...` arguments (the executable is separate).
    args: Vec<String>,
    /// The process this dev-cluster started; `None` before the start and once it has exited.
    child: Option<Child>,
}

impl Node {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
}

/// Runs the cluster until SIGTERM/SIGINT.
pub fn run(args: &DevClusterArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;

    fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Absolute, so that each saved command line works from any directory.
    let root = fs::canonicalize(&args.data_dir).with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let exe = std::env::current_exe().context("finding the sluice executable")?;
    let exe = exe.to_str().context("the sluice executable's path is not UTF-8")?.to_string();
    let nodes = plan(args, &root)?;
    for node in &nodes {
        if let Some(pid) = live_broker_pid(node)? {
            bail!("node {} is running (pid {pid} in {}): stop it first", node.id, node.pid_file().display());
        }
    }
    let _lock = lock_dir(&root)?;

    let mut cluster = Cluster { nodes, stopped: false };
    for node in &mut cluster.nodes {
        let line = std::iter::once(exe.as_str()).chain(node.args.iter().map(String::as_str));
        let line = line.map(shell_quote).collect::<Vec<_>>().join(" ");
        println!("node {}: {line}", node.id);
        start(node, &exe, &line)?;
    }
    if !wait_ready(&mut cluster.nodes, &stop)? {
        cluster.stop();
        return Ok(());
    }
    let bootstrap: Vec<String> = cluster.nodes.iter().map(|n| n.kafka.to_string()).collect();
    println!("ready: {} brokers answer on {}", cluster.nodes.len(), bootstrap.join(","));

    while !stop.load(Ordering::SeqCst) {
        for node in &mut cluster.nodes {
            reap_if_exited(node);
        }
        thread::sleep(POLL_INTERVAL);
    }
    cluster.stop();
    println!("stopped");
    Ok(())
}

/// The brokers' directories, ports and command lines; refuses sizes and ports out of range.
fn plan(args: &DevClusterArgs, root: &Path) -> anyhow::Result<Vec<Node>> {
    let n = args.brokers;
    ensure!((1..=MAX_BROKERS).contains(&n), "--brokers {n}: must be in 1..={MAX_BROKERS}");
    ensure!(args.cores.is_none_or(|c| c >= 1), "--cores must be >= 1");
    // n <= 16, so every offset below fits u16; the sums are checked.
    let last = n as u16 - 1;
    let port = |base: u16, offset: u16, what: &str| -> anyhow::Result<u16> {
        base.checked_add(offset)
            .filter(|_| base != 0)
            .with_context(|| format!("{what}: port {base} + {offset} is not in 1..=65535"))
    };
    let base = args.base_port;
    port(base, RAFT_PORT_OFFSET + last, "--base-port")?;
    if let Some(m) = args.metrics_base_port {
        port(m, last, "--metrics-base-port")?;
    }
    let root = root.to_str().context("--data-dir is not UTF-8")?;
    let addr = |p: u16| format!("{HOST}:{p}");
    let peers: Vec<String> = (0..=last)
        .map(|i| {
            let (kafka, repl, raft) = (base + i, base + REPLICATION_PORT_OFFSET + i, base + RAFT_PORT_OFFSET + i);
            format!("{i}={},{},{}", addr(kafka), addr(repl), addr(raft))
        })
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..=last {
        let dir = format!("{root}/node-{i}");
        let mut a = vec!["serve".to_string(), "--node-id".into(), i.to_string()];
        a.extend(["--data-dir".into(), format!("{dir}/data"), "--listen".into(), addr(base + i)]);
        if let Some(c) = args.cores {
            a.extend(["--cores".into(), c.to_string()]);
        }
        if let Some(m) = args.metrics_base_port {
            let clash = [0, REPLICATION_PORT_OFFSET, RAFT_PORT_OFFSET]
                .iter()
                .any(|&offset| (base + offset..=base + offset + last).contains(&(m + i)));
            ensure!(!clash, "--metrics-base-port: port {} is also a cluster listener", m + i);
            a.extend(["--metrics".into(), addr(m + i)]);
        }
        for p in &peers {
            a.extend(["--peer".into(), p.clone()]);
        }
        let kafka = SocketAddr::from(([127, 0, 0, 1], base + i));
        nodes.push(Node { id: i32::from(i), dir: PathBuf::from(dir), kafka, args: a, child: None });
    }
    Ok(nodes)
}

/// The pid in the node's pid file if that process is alive and is this node's broker (an argument
/// of its command line is the node's data directory); a stale file (dead or reused pid) is none.
fn live_broker_pid(node: &Node) -> anyhow::Result<Option<libc::pid_t>> {
    let path = node.pid_file();
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(pid) = text.trim().parse::<libc::pid_t>().ok().filter(|&p| p > 0) else {
        warn!(file = %path.display(), "unreadable pid file: replacing it");
        return Ok(None);
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return Ok(None);
    }
    // The pid may have been reused by an unrelated process since the broker died.
    let data_dir = node.dir.join("data");
    let ours = match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|&b| b == 0).any(|arg| Path::new(&*String::from_utf8_lossy(arg)) == data_dir),
        Err(_) => true,
    };
    Ok(ours.then_some(pid))
}

/// An exclusive flock on `DIR/dev-cluster.lock` for as long as the file is open: a second dev-cluster
/// on the same directory is refused even while the first is still starting.
fn lock_dir(root: &Path) -> anyhow::Result<File> {
    let path = root.join("dev-cluster.lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("another dev-cluster runs on {}", root.display());
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// Writes the node's `cmdline`, starts its broker (output to `broker.log`) and writes its `pid`.
fn start(node: &mut Node, exe: &str, line: &str) -> anyhow::Result<()> {
    fs::create_dir_all(&node.dir).with_context(|| format!("creating {}", node.dir.display()))?;
    write_atomically(&node.dir.join("cmdline"), &format!("{line}\n"))?;
    let log_path = node.dir.join("broker.log");
    let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(exe);
    cmd.args(&node.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own process group, so that Ctrl-C reaches only this supervisor, which stops the brokers
    // in order; and SIGTERM if the supervisor dies, so that no broker outlives it unnoticed.
    cmd.process_group(0);
    // SAFETY: between fork and exec only prctl (async-signal-safe) runs.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting node {}", node.id))?;
    let pid = child.id();
    node.child = Some(child);
    write_atomically(&node.pid_file(), &format!("{pid}\n"))?;
    info!(node = node.id, pid, log = %log_path.display(), "started");
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Waits until every broker answers ApiVersions and its Metadata lists every broker of the cluster
/// and a controller (each registered through the Raft metadata): true when they do, false on a
/// signal; an error if one exits or `READY_TIMEOUT` passes.
fn wait_ready(nodes: &mut [Node], stop: &AtomicBool) -> anyhow::Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; nodes.len()];
    let mut last_error = vec![String::from("no attempt yet"); nodes.len()];
    let nodes_len = nodes.len();
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            reap_if_exited(node);
            if node.child.is_none() {
                bail!("node {} exited before it was ready (see {})", node.id, node.dir.join("broker.log").display());
            }
            let expected = nodes_len;
            match probe(node.kafka) {
                Ok((brokers, controller)) if brokers == expected && controller >= 0 => ready[i] = true,
                Ok((brokers, controller)) => {
                    last_error[i] = format!("Metadata lists {brokers} of {expected} brokers, controller {controller}")
                }
                Err(e) => last_error[i] = e,
            }
        }
        if ready.iter().all(|&r| r) {
            return Ok(true);
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = nodes
                .iter()
                .zip(&ready)
                .zip(&last_error)
                .filter(|((_, r), _)| !**r)
                .map(|((n, _), e)| format!("node {} ({}): {e}", n.id, n.kafka))
                .collect();
            bail!("not ready within {READY_TIMEOUT:?}: {}", waiting.join("; "));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// If the node's broker has exited, reports it (status and the end of its log), forgets it and
/// removes its pid file. It is not restarted.
fn reap_if_exited(node: &mut Node) {
    let Some(child) = node.child.as_mut() else { return };
    let status = match child.try_wait() {
        Ok(None) => return,
        Ok(Some(status)) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let pid = child.id();
    node.child = None;
    remove_pid_file_of(node, pid);
    let log = node.dir.join("broker.log");
    warn!(
        node = node.id,
        pid,
        status = %status,
        "broker exited on its own; not restarted (its command line is in {})",
        node.dir.join("cmdline").display()
    );
    eprintln!(
        "--- node {} ({}), last lines ---\n{}\n--- end of node {} log ---",
        node.id,
        log.display(),
        log_tail(&log),
        node.id
    );
}

/// Removes the pid file if it still names `pid` (whoever restarted the node may have replaced it).
fn remove_pid_file_of(node: &Node, pid: u32) {
    let path = node.pid_file();
    if fs::read_to_string(&path).is_ok_and(|t| t.trim() == pid.to_string()) {
        if let Err(e) = fs::remove_file(&path) {
            warn!(file = %path.display(), error = %e, "cannot remove pid file");
        }
    }
}

/// The last `LOG_TAIL_LINES` lines of a log (from its last `LOG_TAIL_BYTES`).
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        f.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The readiness probe, on a fresh connection with `PROBE_TIMEOUT` for each step: ApiVersions v0 must
/// answer error code 0, then Metadata v1 (no topics) gives the number of brokers listed and the
/// controller id.
fn probe(addr: SocketAddr) -> Result<(usize, i32), String> {
    const METADATA_VERSION: i16 = 1;
    let options =
        ConnectOptions::new("sluice-dev-cluster").io_timeout(PROBE_TIMEOUT).max_frame_bytes(MAX_PROBE_RESPONSE_BYTES);
    let mut conn = Connection::connect_addr(addr, &options).map_err(|e| e.to_string())?;
    let m =
        conn.call_at(&requests::metadata(Some(&[]), METADATA_VERSION), METADATA_VERSION).map_err(|e| e.to_string())?;
    Ok((m.brokers.len(), m.controller_id.0))
}

/// The started brokers; stopped on `stop` or, on an error path, when dropped.
struct Cluster {
    nodes: Vec<Node>,
    stopped: bool,
}

impl Cluster {
    /// SIGTERM to every broker this dev-cluster started and still runs, up to `STOP_TIMEOUT` for
    /// them to exit, then SIGKILL for the rest; removes their pid files.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for node in &self.nodes {
            if let Some(child) = &node.child {
                signal(child, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let mut running = 0;
            for node in &mut self.nodes {
                let Some(child) = node.child.as_mut() else { continue };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        info!(node = node.id, status = %status, "stopped");
                        let pid = child.id();
                        node.child = None;
                        remove_pid_file_of(node, pid);
                    }
                    Ok(None) => running += 1,
                    Err(e) => {
                        warn!(node = node.id, error = %e, "cannot wait for the broker");
                        running += 1;
                    }
                }
            }
            if running == 0 {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL_INTERVAL);
        }
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            warn!(node = node.id, pid = child.id(), "still running {STOP_TIMEOUT:?} after SIGTERM: SIGKILL");
            let _ = child.kill();
            let _ = child.wait();
            remove_pid_file_of(node, child.id());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) on a child this process has not reaped yet, so the pid is still its.
    if unsafe { libc::kill(pid, sig) } != 0 {
        warn!(pid, sig, error = %io::Error::last_os_error(), "kill failed");
    }
}

/// A word as POSIX sh reads it back: as is when only safe characters, else single-quoted.
fn shell_quote(word: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_-+=:,./@%".contains(&b);
    if !word.is_empty() && word.bytes().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: usize, base_port: u16) -> DevClusterArgs {
        DevClusterArgs { brokers, data_dir: "/d".into(), base_port, cores: Some(1), metrics_base_port: None }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("127.0.0.1:9092"), "127.0.0.1:9092");
        assert_eq!(shell_quote("0=a:1,b:2,c:3"), "0=a:1,b:2,c:3");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn plan_ports_and_limits() {
        let nodes = plan(&args(3, 20000), Path::new("/d")).expect("plan");
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].kafka.port(), 20002);
        let line = nodes[1].args.join(" ");
        assert!(line.starts_with("serve --node-id 1 --data-dir /d/node-1/data --listen 127.0.0.1:20001 --cores 1"));
        assert!(line.contains("--peer 2=127.0.0.1:20002,127.0.0.1:20102,127.0.0.1:20202"), "{line}");
        assert!(plan(&args(0, 20000), Path::new("/d")).is_err());
        assert!(plan(&args(MAX_BROKERS + 1, 20000), Path::new("/d")).is_err());
        assert!(plan(&args(3, 65535 - 202), Path::new("/d")).is_ok());
        assert!(plan(&args(3, 65535 - 201), Path::new("/d")).is_err());
        assert!(plan(&args(3, 0), Path::new("/d")).is_err());
        let mut clash = args(3, 20000);
        clash.metrics_base_port = Some(20101);
        assert!(plan(&clash, Path::new("/d")).is_err());
    }
}
