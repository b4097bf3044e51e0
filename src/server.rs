//! Process start-up and shutdown: one glommio executor pinned per core, each with its own listener
//! on the same port (SO_REUSEPORT, so a connection stays on the core that accepted it), its share
//! of the partitions, and channel meshes to the other cores. SIGTERM/SIGINT: stop accepting, let
//! connections finish their in-flight requests, close every partition (flush + checkpoint), exit 0.
//! That graceful path is bounded by `shutdown_timeout_ms`, enforced from plain threads (signals,
//! watchdog) that no stuck or spinning core can hold up; a second signal exits at once.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::cluster::{BasicNode, ControlPlane, ControlPlaneConfig};
use crate::config::BrokerConfig;
use crate::core::{Envelope, ReplyEnvelope, Shard};
use crate::groups::offsets_log::OFFSETS_TOPIC;
use crate::topics::{self, Catalog};

/// How often each core looks at the signal flag.
const SIGNAL_POLL_MS: u64 = 50;
/// How long a cluster broker's shutdown may spend moving its partition leaderships elsewhere.
const CONTROLLED_SHUTDOWN_MS: u64 = 5_000;
/// How long shutdown waits for open connections to finish their in-flight requests.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Exit code when the graceful shutdown did not finish within `shutdown_timeout_ms`.
const EXIT_SHUTDOWN_TIMED_OUT: i32 = 3;
/// A second SIGTERM/SIGINT exits with 128 + its number, the code a shell reports for a death by it.
const EXIT_SIGNAL_BASE: i32 = 128;
/// How long the watchdog lets `syncfs` of the data directory run before it exits anyway.
const SHUTDOWN_SYNC_GRACE_MS: u64 = 1_000;
/// First pause after a failed `accept` (out of descriptors, ...); doubled on each further failure.
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
/// Longest pause between `accept` attempts while they keep failing.
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

/// Pauses between failing `accept` calls: `ACCEPT_BACKOFF_MIN_MS` doubling up to
/// `ACCEPT_BACKOFF_MAX_MS`, back to the start after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next_pause(&mut self) -> Duration {
        let ms = ACCEPT_BACKOFF_MIN_MS.saturating_mul(1u64 << self.failures.min(20)).min(ACCEPT_BACKOFF_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        debug_assert!((ACCEPT_BACKOFF_MIN_MS..=ACCEPT_BACKOFF_MAX_MS).contains(&ms), "accept pause {ms} ms");
        Duration::from_millis(ms)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Runs the broker until a signal; returns when every core has shut down cleanly.
pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    config.validate()?;
    // Signals are taken before anything is opened: one during start-up begins the shutdown (and
    // its deadline) like any other.
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = ShutdownWatchdog::start(Duration::from_millis(config.shutdown_timeout_ms), stop.clone())?;
    watch_signals(watchdog.clone())?;
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let available = core_ids.len().max(1);
    let cores = config.cores.unwrap_or(available);
    anyhow::ensure!(cores >= 1 && cores <= available, "--cores {cores}: this machine has {available} cores");
    let mut config = config;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", config.data_dir.display()))?;
    // glommio's directory operations misbehave on relative paths: work with an absolute one.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("resolving data dir {}: {e}", config.data_dir.display()))?;

    // Cluster mode: the control plane (Raft) starts first; the catalog comes from its state.
    let control = if config.cluster.is_cluster() { Some(Arc::new(start_control_plane(&config)?)) } else { None };
    // Load (and, if the core count changed, rebalance) the catalog before the cores start.
    let data_dir = config.data_dir.clone();
    let clustered = control.is_some();
    let offsets_partitions = config.offsets_topic_partitions;
    let table: Catalog = LocalExecutorBuilder::new(Placement::Unbound)
        .name("sluice-startup")
        .io_memory(1 << 20)
        .spawn(move || async move {
            if clustered {
                return anyhow::Ok(Catalog::default());
            }
            let mut table = topics::load(&data_dir).await?;
            if table.rebalance_missing_cores(cores) {
                warn!(cores, "core count changed: partitions of missing cores were reassigned");
            }
            // Committed offsets: fsync'ed per batch, compacted (the latest commit per group and
            // partition stays; tombstones from expiry and deletes go after a day).
            let offsets_configs = crate::groups::offsets_log::topic_configs();
            if let Some(meta) = table.topics.get(OFFSETS_TOPIC) {
                // Created by an older version: add what it lacks.
                let mut configs = meta.configs.clone();
                for (k, v) in &offsets_configs {
                    if !configs.iter().any(|(ck, _)| ck == k) {
                        configs.push((k.clone(), v.clone()));
                    }
                }
                if configs != meta.configs {
                    let meta = topics::TopicMeta { configs, ..(**meta).clone() };
                    table.topics.insert(OFFSETS_TOPIC.into(), Arc::new(meta));
                }
            }
            if !table.topics.contains_key(OFFSETS_TOPIC) {
                let partition_cores = table.assign(offsets_partitions, cores);
                let configs = offsets_configs;
                let id = *uuid::Uuid::new_v4().as_bytes();
                let meta = topics::TopicMeta { name: OFFSETS_TOPIC.into(), id, partition_cores, configs };
                table.topics.insert(OFFSETS_TOPIC.into(), Arc::new(meta));
            }
            topics::save(&data_dir, &table).await?;
            anyhow::Ok(table)
        })
        .map_err(|e| anyhow::anyhow!("starting executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("startup executor: {e}"))??;
    let table = match &control {
        Some(cp) => {
            let view = topics::ClusterView {
                node_id: config.node_id,
                controller: cp.current_leader().map(|n| n as i32),
                applied_index: cp.metrics().last_applied.map_or(0, |l| l.index),
                state: cp.state(),
            };
            Catalog::from_cluster(view, cores, 0)
        }
        None => table,
    };
    let table = Arc::new(table);
    let config = Arc::new(config);
    info!(cores, topics = table.topics.len(), "starting");
    crate::startup_log::log_config(&config);
    crate::startup_log::log_layout(&table, cores);

    watchdog.set_data_dir(&config.data_dir);
    let metrics = crate::metrics::BrokerMetrics::new(cores);
    if let Some(addr) = &config.metrics_listen {
        crate::metrics::exporter::start(addr, metrics.clone())?;
    }
    let ready = Arc::new(AtomicUsize::new(0));
    let startup = Arc::new(std::sync::Barrier::new(cores));
    let requests = MeshBuilder::<Envelope, _>::full(cores, config.cross_core_channel_capacity);
    let replies = MeshBuilder::<ReplyEnvelope, _>::full(cores, config.cross_core_channel_capacity);
    let mut handles = Vec::with_capacity(cores);
    for i in 0..cores {
        let placement = match core_ids.get(i) {
            Some(c) => Placement::Fixed(c.id),
            None => Placement::Unbound,
        };
        let (config, table, stop, ready, startup) =
            (config.clone(), table.clone(), stop.clone(), ready.clone(), startup.clone());
        let watchdog = watchdog.clone();
        let (requests, replies) = (requests.clone(), replies.clone());
        let core_metrics = metrics.core(i);
        let control = control.clone();
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("sluice-core-{i}"))
            .io_memory(config.io_memory_bytes)
            .spawn(move || async move {
                let mesh = (requests, replies);
                let res =
                    core_main(i, cores, config, table, mesh, core_metrics, control, stop.clone(), ready, startup).await;
                if let Err(e) = &res {
                    error!(core = i, error = %e, "core failed; stopping the broker");
                    watchdog.begin("a core failed");
                }
                res
            })
            .map_err(|e| anyhow::anyhow!("starting core {i}: {e}"))?;
        handles.push(h);
    }
    let mut failed = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => failed = failed.or(Some(anyhow::anyhow!("core {i} panicked: {e}"))),
        }
    }
    watchdog.finished();
    match failed {
        Some(e) => Err(e),
        None => {
            info!("shut down cleanly");
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn core_main(
    id: usize,
    cores: usize,
    config: Arc<BrokerConfig>,
    table: Arc<Catalog>,
    (requests, replies): (
        MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
        MeshBuilder<ReplyEnvelope, glommio::channels::channel_mesh::Full>,
    ),
    metrics: Arc<crate::metrics::CoreMetrics>,
    control: Option<Arc<ControlPlane>>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
    startup: Arc<std::sync::Barrier>,
) -> anyhow::Result<()> {
    // Before any partition opens: this core's cache of sealed segment files, sized against the
    // descriptor limit as raised.
    crate::topic_limits::raise_descriptor_limit();
    sluice_io::set_segment_file_limits(sluice_io::SegmentFileLimits {
        max_open_files: crate::topic_limits::segment_files_per_core(&config, cores as u64),
        idle_close_ms: config.segment_file_idle_close_ms,
    })?;
    let (req_tx, req_rx) = requests.join().await.map_err(|_| anyhow::anyhow!("joining the request mesh"))?;
    let (rep_tx, rep_rx) = replies.join().await.map_err(|_| anyhow::anyhow!("joining the reply mesh"))?;
    let shard = Shard::new(id, cores, config.clone(), table.clone(), req_tx, rep_tx, metrics, control.clone());
    shard.start_mesh_tasks(req_rx, rep_rx);
    crate::groups::service::install(&shard);
    shard.apply_catalog(table).await;
    crate::groups::service::load_offsets(&shard).await?;
    // No core takes client connections before every core has opened its partitions and loaded
    // its groups: a request forwarded to a core still starting would see a half-built state.
    // Nothing else runs on the cores yet, so blocking this thread here is harmless.
    startup.wait();
    if let Some(cp) = &control {
        // Replication: the listener followers fetch from, this core's fetchers, its ISR watch, and
        // on core 0 the metadata sync, registration and controller.
        let addr = config.replication_listen().unwrap_or_default().to_string();
        let s = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = crate::replica::server::listen(s.clone(), addr).await {
                error!(core = s.id, error = %e, "replication listener failed; stopping the broker");
                s.begin_shutdown();
            }
        })
        .detach();
        crate::replica::fetcher::start(&shard);
        crate::metadata::controller::start_isr_watch(&shard, cp.clone());
        if id == 0 {
            crate::metadata::controller::start(&shard, cp.clone());
        }
    }
    let listener = TcpListener::bind(&config.listen).map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    if ready.fetch_add(1, Ordering::SeqCst) + 1 == cores {
        info!(cores, "listening on {}", config.listen);
    }

    // Signals arrive as a flag (set by the signal-hook thread): look at it periodically.
    let s = shard.clone();
    glommio::spawn_local(async move {
        while !stop.load(Ordering::SeqCst) && !s.shutting_down() {
            glommio::timer::sleep(Duration::from_millis(SIGNAL_POLL_MS)).await;
        }
        s.begin_shutdown();
    })
    .detach();
    crate::core::tasks::start(&shard);

    let open = Rc::new(Cell::new(0usize));
    let closed = Rc::new(Event::new());
    let memory = crate::kafka::RequestMemory::new(config.queued_max_request_bytes);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = shard.unless_shutdown(listener.accept()).await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => {
                backoff.reset();
                s
            }
            Some(Err(e)) => {
                // EMFILE, ENFILE, ENOBUFS...: retrying at once cannot succeed and spins the core.
                let pause = backoff.next_pause();
                crate::warn_limited!(core = id, error = %e, pause_ms = pause.as_millis() as u64, "accept failed: pausing");
                if shard.unless_shutdown(glommio::timer::sleep(pause)).await.is_none() {
                    break;
                }
                continue;
            }
        };
        if open.get() >= config.max_connections_per_core {
            crate::warn_limited!(
                core = id,
                limit = config.max_connections_per_core,
                "connection limit reached: refusing"
            );
            shard.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        shard.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
        shard.metrics.connections_open.store(open.get() as i64, Ordering::Relaxed);
        let (s, open, closed, memory) = (shard.clone(), open.clone(), closed.clone(), memory.clone());
        glommio::spawn_local(async move {
            crate::kafka::serve_connection(s.clone(), stream, memory).await;
            open.set(open.get() - 1);
            s.metrics.connections_open.store(open.get() as i64, Ordering::Relaxed);
            closed.notify(usize::MAX);
        })
        .detach();
    }
    drop(listener);
    if let (Some(cp), 0) = (&control, id) {
        crate::metadata::controller::controlled_shutdown(&shard, cp, Duration::from_millis(CONTROLLED_SHUTDOWN_MS))
            .await;
    }
    // Let connections finish what they are doing (each stops reading at shutdown).
    let drained = glommio::timer::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), async {
        while open.get() > 0 {
            let l = closed.listen();
            if open.get() > 0 {
                l.await;
            }
        }
        Ok(())
    })
    .await;
    if drained.is_err() {
        warn!(core = id, open = open.get(), "connections still open after the drain timeout");
    }
    shard.close_all().await;
    Ok(())
}

/// Starts this broker's member of the cluster-metadata Raft group and, on a brand-new cluster, makes
/// the configured peers its members (every broker tries; all but the first find it initialized).
fn start_control_plane(config: &BrokerConfig) -> anyhow::Result<ControlPlane> {
    use std::net::ToSocketAddrs;
    let raft = config.raft_listen().ok_or_else(|| anyhow::anyhow!("no raft address for node {}", config.node_id))?;
    let rpc_addr = raft
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("raft address {raft}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("raft address {raft} resolves to nothing"))?;
    let mut cfg = ControlPlaneConfig::new(config.node_id as u64, config.data_dir.join("__raft"), rpc_addr);
    cfg.peer_addrs = config.cluster.peers.iter().map(|p| (p.id as u64, p.raft.clone())).collect();
    let cp = ControlPlane::start(cfg).map_err(|e| anyhow::anyhow!("cluster control plane: {e}"))?;
    let members: std::collections::BTreeMap<u64, BasicNode> =
        config.cluster.peers.iter().map(|p| (p.id as u64, BasicNode { addr: p.raft.clone() })).collect();
    match block_on_reply(cp.initialize(members)) {
        Some(Ok(())) => info!("initialized a new cluster"),
        Some(Err(e)) => tracing::debug!(error = %e, "cluster already initialized"),
        None => anyhow::bail!("control plane stopped while starting"),
    }
    Ok(cp)
}

/// Waits for a control-plane reply from this (non-executor) thread.
fn block_on_reply<T>(rx: futures_channel::oneshot::Receiver<T>) -> Option<T> {
    futures_lite::future::block_on(rx).ok()
}

/// Sleeps `ms`, or less if shutdown begins; true when it did.
/// Shutdown's bound. Once asked to stop (the first signal, or a core that failed) the process ends
/// within `timeout`, whatever the cores are doing: the graceful path runs on the executors, and a
/// core that spins, waits forever or never reaches its signal check would hold it up without end.
/// This runs on a plain thread instead, so nothing on a core can delay it.
///
/// Exiting without finishing the graceful path is safe for acknowledged data: a produce is
/// acknowledged only after its batch was written (O_DIRECT: the bytes are out of this process) and,
/// per the topic's flush policy, fdatasync'ed. What the graceful path adds (a sync of what the policy
/// had not synced yet, index files, checkpoints) is what recovery handles after a kill -9: the log is
/// scanned up to the last batch whose CRC32C is valid, indexes and checkpoints are rebuilt when
/// missing or stale. The forced exit is a kill -9 with a log line and a `syncfs` first.
struct ShutdownWatchdog {
    timeout: Duration,
    stop: Arc<AtomicBool>,
    state: Mutex<WatchdogState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchdogState {
    /// When and why shutdown began.
    began: Option<(Instant, &'static str)>,
    /// The graceful path finished: the watchdog stands down.
    finished: bool,
    /// Synced (best effort) before a forced exit; unset until the data directory exists.
    data_dir: Option<std::path::PathBuf>,
}

impl ShutdownWatchdog {
    /// Starts the watchdog thread; it does nothing until `begin`.
    fn start(timeout: Duration, stop: Arc<AtomicBool>) -> anyhow::Result<Arc<ShutdownWatchdog>> {
        let dog = Arc::new(ShutdownWatchdog { timeout, stop, state: Mutex::default(), changed: Condvar::new() });
        let d = dog.clone();
        std::thread::Builder::new()
            .name("sluice-shutdown-watchdog".into())
            .spawn(move || d.watch())
            .map_err(|e| anyhow::anyhow!("starting the shutdown watchdog: {e}"))?;
        Ok(dog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchdogState> {
        // The state is a few plain fields: a panic while it was held cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_data_dir(&self, dir: &std::path::Path) {
        self.lock().data_dir = Some(dir.to_path_buf());
    }

    /// Begins the shutdown (idempotent): the cores see `stop`, the deadline starts.
    fn begin(&self, why: &'static str) {
        self.stop.store(true, Ordering::SeqCst);
        let mut st = self.lock();
        if st.began.is_none() {
            st.began = Some((Instant::now(), why));
            self.changed.notify_all();
        }
    }

    /// The graceful path finished (every core returned): no forced exit from here on.
    fn finished(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }

    fn watch(&self) {
        let mut st = self.lock();
        let (began, why) = loop {
            if st.finished {
                return;
            }
            match st.began {
                Some(b) => break b,
                None => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        };
        let deadline = began + self.timeout;
        loop {
            if st.finished {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        let data_dir = st.data_dir.clone();
        drop(st);
        error!(
            reason = why,
            shutdown_timeout_ms = self.timeout.as_millis() as u64,
            "graceful shutdown did not finish within shutdown_timeout_ms: exiting now \
             (recovery on the next start handles it like a kill -9; acknowledged data is on disk)"
        );
        if let Some(dir) = data_dir {
            sync_filesystem_bounded(&dir, Duration::from_millis(SHUTDOWN_SYNC_GRACE_MS));
        }
        hard_exit(EXIT_SHUTDOWN_TIMED_OUT);
    }
}

/// SIGTERM/SIGINT on a plain thread: the first begins the shutdown, a second exits at once.
fn watch_signals(watchdog: Arc<ShutdownWatchdog>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            let mut signalled = false;
            for signal in signals.forever() {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                if signalled {
                    error!(signal = name, "second signal: exiting at once, without finishing the shutdown");
                    hard_exit(EXIT_SIGNAL_BASE + signal);
                }
                info!(
                    signal = name,
                    shutdown_timeout_ms = watchdog.timeout.as_millis() as u64,
                    "shutting down: stop accepting, drain connections, flush and checkpoint partitions \
                     (a second signal exits at once)"
                );
                signalled = true;
                watchdog.begin(name);
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the signal thread: {e}"))?;
    Ok(())
}

/// `syncfs` of the filesystem holding `dir`, waited for at most `grace` (a stuck disk must not
/// keep the process alive): what a graceful shutdown would have fsynced reaches the disk if it can.
fn sync_filesystem_bounded(dir: &std::path::Path, grace: Duration) {
    let Ok(file) = std::fs::File::open(dir) else { return };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("sluice-syncfs".into()).spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs(2) on a descriptor this closure owns for the duration of the call.
        let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
        let _ = done_tx.send(rc);
    });
    if spawned.is_ok() && done_rx.recv_timeout(grace).is_err() {
        warn!(grace_ms = grace.as_millis() as u64, "syncfs of the data directory did not finish in time");
    }
}

/// Ends the process now: no destructor, no atexit handler, nothing that a stuck thread could hold.
fn hard_exit(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; it touches no memory of this program.
    unsafe { libc::_exit(code) }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        for _ in 0..100 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), Duration::from_millis(ACCEPT_BACKOFF_MAX_MS));
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(ACCEPT_BACKOFF_MIN_MS));
    }
}
