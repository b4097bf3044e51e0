//! Shared harness for the broker's integration tests: runs the real `sluice` binary on a free
//! 127.0.0.1 port with a data directory under `target/` (never tmpfs: the storage engine uses O_DIRECT),
//! and drives external clients (kafka-python through `python3 -c`, kcat) with a time limit each.
//! It builds nothing: cargo builds the binary for integration tests (`CARGO_BIN_EXE_sluice`).
//! Raw Kafka framing for the tests that must send bytes no real client would send is in `wire`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started broker has to answer an ApiVersions round-trip.
pub const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a broker has to exit after SIGTERM (flush, checkpoint, close).
pub const BROKER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of one python3 or kcat invocation.
pub const CLIENT_PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the broker's log shown when a test fails because of the broker.
const LOG_TAIL_LINES: usize = 60;
/// How often a process is checked for having exited (not a synchronisation with the broker).
const PROCESS_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A `sluice serve` process with its own data directory and port; SIGKILLed on drop if still running.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    cores: usize,
    config_file: Option<PathBuf>,
    data_dir: PathBuf,
    log_path: PathBuf,
    // Last: the directory goes away after the process is killed.
    _dir: tempfile::TempDir,
}

/// What to start a broker with.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// `--cores`. Two by default so that partitions land on different cores and forwarding is used.
    pub cores: usize,
    /// Contents of a TOML file passed as `--config`, if any.
    pub config_toml: Option<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions { cores: 2, config_toml: None }
    }
}

impl Broker {
    /// Starts a broker with default options and waits until it answers.
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(options: BrokerOptions) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("sluice-broker-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a temp dir under target/");
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("broker.log");
        let config_file = options.config_toml.map(|toml| {
            let path = dir.path().join("sluice.toml");
            fs::write(&path, toml).expect("write broker config");
            path
        });
        let mut broker =
            Broker { child: None, port: free_port(), cores: options.cores, config_file, data_dir, log_path, _dir: dir };
        broker.spawn_and_wait_ready();
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait on broker").is_none(),
            None => false,
        }
    }

    /// Panics (with the log tail) unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().expect("try_wait on broker") {
                panic!("broker exited unexpectedly ({status}); log tail:\n{}", self.log_tail());
            }
        } else {
            panic!("broker is not started");
        }
    }

    /// SIGKILL: no flush, no checkpoint, as a power cut is to the process.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: broker is not running");
        child.kill().expect("SIGKILL the broker");
        let status = child.wait().expect("wait for the killed broker");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "broker ended otherwise than by SIGKILL: {status}");
    }

    /// SIGTERM, then waits for the exit and asserts it was clean (exit code 0).
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("terminate: broker is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", io::Error::last_os_error());
        match wait_with_deadline(&mut child, BROKER_EXIT_TIMEOUT) {
            Some(status) => {
                assert_eq!(
                    status.code(),
                    Some(0),
                    "broker exit after SIGTERM: {status}; log tail:\n{}",
                    self.log_tail()
                )
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker still running {BROKER_EXIT_TIMEOUT:?} after SIGTERM (killed); log tail:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// Starts the broker again on the same data directory and port, after `kill9` or `terminate`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: stop the broker first (kill9 or terminate)");
        self.spawn_and_wait_ready();
    }

    /// The last lines of the broker's stdout+stderr (all its runs, appended).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<cannot read broker log: {e}>"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn spawn_and_wait_ready(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open broker log");
        let log_err = log.try_clone().expect("clone broker log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--cores")
            .arg(self.cores.to_string());
        if let Some(config) = &self.config_file {
            cmd.arg("--config").arg(config);
        }
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        self.child = Some(cmd.spawn().expect("spawn the sluice binary"));

        let deadline = Instant::now() + BROKER_READY_TIMEOUT;
        let mut last_error = String::from("no attempt yet");
        while Instant::now() < deadline {
            self.assert_running();
            match wire::api_versions_v0_round_trip(self.addr(), Duration::from_secs(2)) {
                Ok(response) if response.error_code == 0 => return,
                Ok(response) => last_error = format!("ApiVersions v0 error_code {}", response.error_code),
                Err(e) => last_error = e,
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mut child = self.child.take().expect("child just spawned");
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "broker not ready within {BROKER_READY_TIMEOUT:?} on {} (last: {last_error}); log tail:\n{}",
            self.bootstrap(),
            self.log_tail()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- broker {} log tail ---\n{}\n--- end of broker log ---", self.bootstrap(), self.log_tail());
        }
    }
}

/// A port that was free a moment ago: bind port 0, read it, close. The broker binds it next.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A topic name no other test (or earlier run against a kept broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(PROCESS_POLL_INTERVAL);
    }
}

/// Output of an external client process that exited by itself within its time limit.
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` with `stdin` fed to it, killing it after `timeout`. Panics if it does not finish in time.
pub fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> ClientOutput {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e} (run scripts/install-test-deps)"));
    let mut child_stdin = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    // Writer and readers on their own threads so that no pipe can fill up and stall the child.
    let writer = thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = wait_with_deadline(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    match status {
        Some(status) => ClientOutput { status, stdout, stderr },
        None => panic!(
            "{what} did not finish within {timeout:?} (killed)\nstdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&stdout)
        ),
    }
}

/// Runs an inline Python script (`python3 -c SCRIPT ARGS...`) that prints one JSON document as its
/// last line of stdout, and returns that document. Panics with the script's stderr if it fails.
/// `stdin` carries the bulk input (JSON), since one argument is limited to 128 KiB.
pub fn run_python_json(script: &str, args: &[&str], stdin: &[u8]) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    let out = run_with_timeout(cmd, stdin, CLIENT_PROCESS_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python3 failed ({}):\nstdout:\n{stdout}\nstderr:\n{}", out.status, out.stderr);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_else(|| {
        panic!("python3 printed nothing on stdout; stderr:\n{}", out.stderr);
    });
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("python3 output is not JSON ({e}): {last}\nstderr:\n{}", out.stderr))
}

/// Runs `kcat ARGS...` with `stdin`, asserting it exits 0. Returns its stdout.
pub fn run_kcat(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("kcat");
    cmd.args(args);
    let out = run_with_timeout(cmd, stdin, CLIENT_PROCESS_TIMEOUT);
    assert!(
        out.status.success(),
        "kcat {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        out.stderr
    );
    out.stdout
}

/// Drops `value` (a client whose destructor talks to the broker) on a helper thread and panics if that
/// takes longer than `timeout`: librdkafka's consumer close, for one, loops until the client is closed.
pub fn drop_within<T: Send + 'static>(value: T, timeout: Duration, what: &str) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        drop(value);
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(timeout).is_err() {
        panic!("{what} did not close within {timeout:?}");
    }
}

/// Lowercase hex, the form in which the Python helpers exchange bytes with the tests.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 2, 0, "odd-length hex: {text}");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit")).collect()
}

/// Raw Kafka framing (size-prefixed frames, request header v1/v2) for the tests that send bytes no
/// client library would: malformed frames, unsupported versions. Also the readiness probe.
pub mod wire {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
    use kafka_protocol::protocol::Request;
    use sluice_client::{frame, ClientError, ConnectOptions, Connection};

    pub const API_KEY_PRODUCE: i16 = ApiKey::Produce as i16;
    pub const API_KEY_FETCH: i16 = ApiKey::Fetch as i16;
    pub const API_KEY_METADATA: i16 = ApiKey::Metadata as i16;
    pub const API_KEY_API_VERSIONS: i16 = ApiKey::ApiVersions as i16;
    pub const ERROR_UNSUPPORTED_VERSION: i16 = sluice_client::error_code::UNSUPPORTED_VERSION;
    /// Largest response frame these helpers accept: guards against reading garbage as a length.
    pub const MAX_RESPONSE_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// Most bytes `wait_for_close` discards before it gives up on the peer closing.
    const MAX_DISCARD_BYTES: usize = 1024 * 1024;
    /// Names the broker in the client's error messages.
    const PEER: &str = "the broker";

    /// A size-prefixed request with a hand-made header (sluice-client's raw mode).
    #[allow(unused_imports)] // not every test binary sends hand-made frames
    pub use sluice_client::frame::raw_request as request_frame;

    /// Reads one size-prefixed frame and returns it without the size.
    pub fn read_frame(stream: &mut TcpStream) -> Result<Vec<u8>, ClientError> {
        frame::read_frame(stream, MAX_RESPONSE_FRAME_BYTES, PEER).map(|f| f.to_vec())
    }

    /// An ApiVersions response decoded as version 0: `correlation_id`, `error_code`,
    /// `[api_key, min_version, max_version]`.
    #[derive(Debug)]
    pub struct ApiVersionsV0 {
        pub correlation_id: i32,
        pub error_code: i16,
        pub api_keys: Vec<(i16, i16, i16)>,
    }

    impl ApiVersionsV0 {
        pub fn range_of(&self, api_key: i16) -> Option<(i16, i16)> {
            self.api_keys.iter().find(|(k, _, _)| *k == api_key).map(|&(_, min, max)| (min, max))
        }
    }

    /// Decodes a v0 ApiVersions response frame (response header v0, then error_code and a non-compact
    /// array), insisting that it is all there is: v0 has no throttle time and no tagged fields.
    pub fn parse_api_versions_v0(frame: &[u8]) -> Result<ApiVersionsV0, String> {
        let correlation_id = frame::correlation_id_of(frame)
            .ok_or_else(|| format!("ApiVersions v0 response too short: {} bytes", frame.len()))?;
        let response =
            frame::decode_response::<ApiVersionsRequest>(Bytes::copy_from_slice(frame), 0, correlation_id, PEER)
                .map_err(|e| e.to_string())?;
        let api_keys = response.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)).collect();
        Ok(ApiVersionsV0 { correlation_id, error_code: response.error_code, api_keys })
    }

    /// Sends ApiVersions v0 on `stream` and decodes the answer; checks the correlation id.
    pub fn api_versions_v0(stream: &mut TcpStream, correlation_id: i32) -> Result<ApiVersionsV0, String> {
        let frame = request_frame(API_KEY_API_VERSIONS, 0, correlation_id, "sluice-test", false, &[]);
        stream.write_all(&frame).map_err(|e| format!("send ApiVersions v0: {e}"))?;
        let response = read_frame(stream).map_err(|e| format!("read ApiVersions v0 response: {e}"))?;
        let parsed = parse_api_versions_v0(&response)?;
        if parsed.correlation_id != correlation_id {
            return Err(format!("correlation id {} in answer to {correlation_id}", parsed.correlation_id));
        }
        Ok(parsed)
    }

    /// Connects, sends ApiVersions v0, reads the answer: the readiness probe.
    pub fn api_versions_v0_round_trip(addr: SocketAddr, timeout: Duration) -> Result<ApiVersionsV0, String> {
        let mut stream = connect(addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        api_versions_v0(&mut stream, 1)
    }

    /// A loopback connection with read and write timeouts set.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
        frame::connect_stream(addr, timeout, &addr.to_string())
    }

    /// Waits until the peer closes `stream` (EOF or reset), reading and discarding whatever it sends
    /// first. Err if it is still open after `timeout`.
    pub fn wait_for_close(stream: &mut TcpStream, timeout: Duration) -> Result<(), String> {
        frame::wait_for_close(stream, timeout, MAX_DISCARD_BYTES).map_err(|e| e.to_string())
    }

    /// One sluice-client connection at explicit versions (no ApiVersions first): requests may be
    /// pipelined (`send` several, then `receive` their answers in order, as Kafka answers them). Any
    /// failure panics with what went wrong.
    pub struct RawClient {
        pub conn: Connection,
    }

    impl RawClient {
        pub fn options(client_id: &str, timeout: Duration, max_frame_bytes: usize) -> ConnectOptions {
            ConnectOptions::new(client_id).io_timeout(timeout).max_frame_bytes(max_frame_bytes).fixed_versions()
        }

        pub fn open(addr: SocketAddr, client_id: &str, timeout: Duration, max_frame_bytes: usize) -> RawClient {
            let options = RawClient::options(client_id, timeout, max_frame_bytes);
            let conn = Connection::connect_addr(addr, &options).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            RawClient { conn }
        }

        /// Over a socket set up by the caller.
        pub fn from_stream(stream: TcpStream, client_id: &str, max_frame_bytes: usize) -> RawClient {
            let options = ConnectOptions::new(client_id).max_frame_bytes(max_frame_bytes).fixed_versions();
            let conn = Connection::from_stream(stream, PEER, &options).unwrap_or_else(|e| panic!("{e}"));
            RawClient { conn }
        }

        /// Sends `request` and returns its correlation id.
        pub fn send<R: Request>(&mut self, request: &R, version: i16) -> i32 {
            self.conn.send_at(request, version).unwrap_or_else(|e| panic!("send API {} v{version}: {e}", R::KEY))
        }

        /// Reads the next answer, which must be the one to `correlation_id`, and decodes all of it.
        pub fn receive<R: Request>(&mut self, correlation_id: i32, version: i16) -> R::Response {
            self.conn
                .receive_at::<R>(correlation_id, version)
                .unwrap_or_else(|e| panic!("the answer to API {} v{version}: {e}", R::KEY))
        }

        pub fn call<R: Request>(&mut self, request: &R, version: i16) -> R::Response {
            let correlation_id = self.send(request, version);
            self.receive::<R>(correlation_id, version)
        }

        /// The frame of `request` with the next correlation id, not sent (to pipeline in one write).
        pub fn frame<R: Request>(&mut self, request: &R, version: i16) -> Bytes {
            let (_, frame) = self.conn.encode_next(request, version).unwrap_or_else(|e| panic!("{e}"));
            frame
        }

        pub fn stream(&mut self) -> &mut TcpStream {
            self.conn.stream_mut()
        }
    }
}

/// Client processes that a test acts on while they run: their stdout reaches the test line by line as
/// it is printed (a `python3 -u` consumer reporting progress), so the test can kill them mid-stream.
pub mod live {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::{mpsc, Arc, Mutex};

    /// Largest stderr kept for failure messages; older output is dropped first.
    const MAX_STDERR_BYTES: usize = 64 * 1024;

    /// A running child whose stdout lines arrive on a channel; stderr is kept for failure messages.
    /// SIGKILLed on drop if still running.
    pub struct LiveProcess {
        child: Option<Child>,
        what: String,
        lines: mpsc::Receiver<String>,
        stderr: Arc<Mutex<String>>,
    }

    impl LiveProcess {
        /// `python3 -u -c SCRIPT ARGS...` (unbuffered, so each print is seen when it happens).
        pub fn python(script: &str, args: &[&str]) -> LiveProcess {
            let mut cmd = Command::new("python3");
            cmd.arg("-u").arg("-c").arg(script).args(args);
            LiveProcess::spawn(cmd, "python3 -u -c <script>")
        }

        pub fn spawn(mut cmd: Command, what: &str) -> LiveProcess {
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {what}: {e} (run scripts/install-test-deps)"));
            let out = child.stdout.take().expect("piped stdout");
            let mut err = child.stderr.take().expect("piped stderr");
            let (line_tx, lines) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let stderr = Arc::new(Mutex::new(String::new()));
            let sink = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut kept = sink.lock().expect("stderr buffer");
                    kept.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if kept.len() > MAX_STDERR_BYTES {
                        let cut = kept.len() - MAX_STDERR_BYTES;
                        let cut = (cut..kept.len()).find(|&i| kept.is_char_boundary(i)).unwrap_or(kept.len());
                        kept.drain(..cut);
                    }
                }
            });
            LiveProcess { child: Some(child), what: what.to_string(), lines, stderr }
        }

        /// The next stdout line if one has been printed, without waiting.
        pub fn try_line(&self) -> Option<String> {
            self.lines.try_recv().ok()
        }

        /// Waits until `deadline` for the next stdout line; `None` at the deadline or once stdout is closed
        /// and drained.
        pub fn line_before(&self, deadline: Instant) -> Option<String> {
            let left = deadline.saturating_duration_since(Instant::now());
            self.lines.recv_timeout(left).ok()
        }

        /// Every line still to come, until stdout closes (the process exited or was killed) or `timeout`.
        pub fn remaining_lines(&self, timeout: Duration) -> Vec<String> {
            let deadline = Instant::now() + timeout;
            let mut rest = Vec::new();
            while let Some(line) = self.line_before(deadline) {
                rest.push(line);
            }
            rest
        }

        /// The exit status if the process has ended, without waiting.
        pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
            self.child.as_mut().and_then(|child| child.try_wait().expect("try_wait on a client process"))
        }

        /// SIGKILL and reap: the process gets no chance to close connections or leave a group cleanly.
        /// Panics if it had already exited (a test that kills a client mid-stream must find it running).
        pub fn kill9(&mut self) {
            let mut child = self.child.take().expect("kill9: process already reaped");
            if let Some(status) = child.try_wait().expect("try_wait on a client process") {
                panic!("{} exited ({status}) before it was to be killed; stderr:\n{}", self.what, self.stderr());
            }
            child.kill().expect("SIGKILL a client process");
            let status = child.wait().expect("wait for the killed client process");
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{} ended otherwise than by SIGKILL: {status}", self.what);
        }

        /// What the process wrote to stderr so far (the last `MAX_STDERR_BYTES`).
        pub fn stderr(&self) -> String {
            self.stderr.lock().expect("stderr buffer").clone()
        }
    }

    impl Drop for LiveProcess {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Appended for tests/idempotence.rs.

/// The broker's log line when the last of its cores is ready (catalog applied, partitions open,
/// listener bound). The harness's readiness probe is answered as soon as any one core listens.
const ALL_CORES_LISTENING_LOG: &str = "sluice::server: listening on";
/// The broker's first log line of each run.
const BROKER_STARTING_LOG: &str = "sluice::server: starting";

impl Broker {
    /// Waits until every core of the current run is ready: the log shows as many "listening on" lines
    /// (written by the last core to get ready) as "starting" lines (one per run). Panics with the log
    /// tail after `BROKER_READY_TIMEOUT`.
    pub fn wait_until_all_cores_listening(&mut self) {
        let deadline = Instant::now() + BROKER_READY_TIMEOUT;
        loop {
            self.assert_running();
            let text = fs::read_to_string(&self.log_path).unwrap_or_default();
            let starts = text.matches(BROKER_STARTING_LOG).count();
            if starts > 0 && text.matches(ALL_CORES_LISTENING_LOG).count() >= starts {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not all cores listening {BROKER_READY_TIMEOUT:?} after start; log tail:\n{}",
                self.log_tail()
            );
            thread::sleep(PROCESS_POLL_INTERVAL);
        }
    }

    /// Changes `--cores` for the next `restart` (the data directory stays). Partitions keep the core
    /// they were placed on, so a broker grown from one core to two has every older partition on core 0.
    pub fn set_cores_for_restart(&mut self, cores: usize) {
        assert!(self.child.is_none(), "set_cores_for_restart: stop the broker first (kill9 or terminate)");
        self.cores = cores;
    }
}

// ---------------------------------------------------------------------------------------------------
// Appended for tests/loadgen.rs.

impl Broker {
    /// Sends `signal` to the running broker process: SIGSTOP/SIGCONT freeze and thaw it (a stall that
    /// keeps every connection open, as a long GC pause or a stuck disk would).
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("signal: broker is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", io::Error::last_os_error());
    }

    /// The running broker's process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("pid: broker is not running").id()
    }
}

// ---------------------------------------------------------------------------------------------------
// Multi-broker clusters (tests/dev_cluster.rs, tests/replication.rs).

pub mod cluster;

/// Seeded PRNG, mutations and tallies for tests/fuzz.rs.
pub mod fuzz;

/// A RecordBatch v2 of `values`, uncompressed, without producer id or keys.
pub fn plain_batch(values: &[String]) -> bytes::Bytes {
    let mut batch = sluice_client::BatchBuilder::new(kafka_protocol::records::Compression::None);
    for v in values {
        batch.push(now_ms(), None, Some(bytes::Bytes::from(v.clone())));
    }
    batch.build().expect("encode record batch")
}

// ---------------------------------------------------------------------------------------------------
// Appended for tests/hardening_lifecycle.rs.

impl Broker {
    /// Waits up to `timeout` for the process to exit (after `signal`): its status, or None while it
    /// still runs (then it is SIGKILLed when the `Broker` is dropped). `restart` works after an exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("wait_exit: broker is not running");
        let status = wait_with_deadline(child, timeout)?;
        self.child = None;
        Some(status)
    }

    /// The broker's whole stdout+stderr (all its runs, appended).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<cannot read broker log: {e}>"))
    }
}
