//! `sluice`: the broker (`serve`), a local cluster of brokers for development (`dev-cluster`), a small
//! admin client (`topic ...`), host checks (`tune`) and the configuration reference (`config-reference`).

mod dev_cluster;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sluice::admin_client::AdminClient;
use sluice::config::{BrokerConfig, PeerConfig};
use sluice::tune;

/// Log filter when neither `--log-level` nor `SLUICE_LOG` is given.
const DEFAULT_LOG_FILTER: &str = "info";
/// Exit code of `sluice tune --strict` when a setting is below its recommendation.
const EXIT_TUNE_BELOW_RECOMMENDED: u8 = 1;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a thread-per-core, Kafka-compatible streaming broker")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax: `debug`, `sluice=debug,glommio=warn`); wins over the
    /// SLUICE_LOG environment variable. Default: info.
    #[arg(long, global = true, value_parser = parse_log_filter)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where the broker's configuration comes from: a file, then flags over it.
#[derive(Args)]
struct BrokerArgs {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HOST:PORT of the Kafka listener.
    #[arg(long)]
    listen: Option<String>,
    /// Cores (executors) to use.
    #[arg(long)]
    cores: Option<usize>,
}

impl BrokerArgs {
    fn load(self) -> anyhow::Result<BrokerConfig> {
        let mut cfg = match self.config {
            Some(p) => BrokerConfig::from_file(&p)?,
            None => BrokerConfig::default(),
        };
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if self.cores.is_some() {
            cfg.cores = self.cores;
        }
        Ok(cfg)
    }
}

/// A broker's place in a cluster, over the file's `node_id` and `[cluster]` table (`serve` only).
#[derive(Args)]
struct ClusterArgs {
    /// This broker's id (overrides `node_id`).
    #[arg(long)]
    node_id: Option<i32>,
    /// A broker of the cluster, this one included: ID=KAFKA,REPLICATION,RAFT, each HOST:PORT
    /// (repeatable; replaces `cluster.peers` of the file).
    #[arg(long = "peer", value_name = "ID=KAFKA,REPLICATION,RAFT")]
    peers: Vec<PeerConfig>,
}

impl ClusterArgs {
    fn apply(self, cfg: &mut BrokerConfig) {
        if let Some(id) = self.node_id {
            cfg.node_id = id;
        }
        if !self.peers.is_empty() {
            cfg.cluster.peers = self.peers;
        }
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (defaults: ./data, 127.0.0.1:9092, every core).
    Serve {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Serve Prometheus metrics on http://HOST:PORT/metrics (overrides `metrics_listen`).
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
    },
    /// Run a local cluster for development and tests: one `sluice serve` process per broker on
    /// 127.0.0.1, until SIGTERM/SIGINT.
    ///
    /// Broker i (ids 0..N-1) listens for Kafka on BASE_PORT+i, replication on BASE_PORT+100+i and
    /// Raft on BASE_PORT+200+i; its data, `pid`, `cmdline` (the exact command, to restart it by hand
    /// after a kill -9) and `broker.log` are in DATA_DIR/node-<i>/. Only the processes it started
    /// are stopped at the end; a broker that dies is reported, not restarted.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Check this host's Linux settings for the broker (read-only by default).
    ///
    /// For each setting: current value, recommended value and why. Exit code 0 when the checks
    /// ran, whatever they found (1 with --strict if a setting is below its recommendation).
    Tune {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Change what can be changed at run time (sysctls, sysfs; needs root) and report each change.
        #[arg(long)]
        apply: bool,
        /// Print the commands --apply would run; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also write, sync and remove a temporary file with O_DIRECT in the data directory (check
        /// mode otherwise only reads).
        #[arg(long)]
        probe_io: bool,
        /// Exit 1 if any setting is below its recommendation.
        #[arg(long)]
        strict: bool,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Read and write /proc and /sys under this directory instead of / (for tests).
        #[arg(long, hide = true, default_value = "/")]
        root: PathBuf,
    },
    /// Print the configuration reference (Markdown): every option, default, unit, and whether it
    /// can change at run time. docs/configuration.md is this output.
    ConfigReference,
    /// Topic administration over the Kafka protocol.
    Topic {
        #[command(subcommand)]
        action: TopicAction,
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
}

#[derive(Subcommand)]
enum TopicAction {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Topic config, KEY=VALUE (repeatable), e.g. --config retention.ms=60000
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show partitions of topics (all when none given).
    Describe { names: Vec<String> },
    /// Delete a topic.
    Delete { name: String },
}

/// Blocks of this size or more get their own mapping from glibc's allocator and go back to the
/// kernel when freed. glibc raises the threshold by itself after the first large block is freed,
/// after which large request and response buffers (up to `max_request_size_bytes`) come from a heap
/// that never shrinks: a burst of 20 MiB fetch answers left RSS at 200 MiB instead of 20 MiB.
const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;

fn main() -> ExitCode {
    // SAFETY: mallopt(3) before any thread exists; it only tunes the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES);
    }
    let cli = Cli::parse();
    // The flag wins over SLUICE_LOG; both were validated (the flag by clap).
    let filter = match &cli.log_level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { broker, cluster, metrics } => {
            let mut cfg = broker.load()?;
            cluster.apply(&mut cfg);
            if metrics.is_some() {
                cfg.metrics_listen = metrics;
            }
            sluice::server::run(cfg).map(|()| ExitCode::SUCCESS)
        }
        Command::Tune { broker, apply, dry_run, probe_io, strict, json, root } => {
            let target = tune::TuneTarget { config: broker.load()?, host: tune::Host::new(root), probe_io };
            target.broker_cores().map_err(|e| anyhow::anyhow!(e))?;
            run_tune(&target, apply, dry_run, strict, json)
        }
        Command::DevCluster(args) => dev_cluster::run(&args).map(|()| ExitCode::SUCCESS),
        Command::ConfigReference => {
            print_to_stdout(&sluice::config_reference::markdown())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topic { action, bootstrap } => {
            let mut c = AdminClient::connect(&bootstrap)?;
            match action {
                TopicAction::Create { name, partitions, configs } => {
                    let configs = configs
                        .iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .ok_or_else(|| anyhow::anyhow!("--config {kv}: expected KEY=VALUE"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    c.create_topic(&name, partitions, &configs)?;
                    println!("created {name} ({partitions} partitions)");
                }
                TopicAction::List => {
                    for t in c.metadata(None)?.topics {
                        println!("{}", t.name.map(|n| n.0.to_string()).unwrap_or_default());
                    }
                }
                TopicAction::Describe { names } => {
                    let md = c.metadata(if names.is_empty() { None } else { Some(&names) })?;
                    for t in md.topics {
                        let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
                        if t.error_code != 0 {
                            println!("{name}: error {}", t.error_code);
                            continue;
                        }
                        println!("{name} id={} partitions={}", t.topic_id, t.partitions.len());
                        for p in t.partitions {
                            println!(
                                "  partition {} leader {} replicas {:?}",
                                p.partition_index,
                                p.leader_id.0,
                                p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>()
                            );
                        }
                    }
                }
                TopicAction::Delete { name } => {
                    c.delete_topic(&name)?;
                    println!("deleted {name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether changes to the real /proc and /sys can succeed (a fake `--root` is writable by anyone).
fn is_root(host: &tune::Host) -> bool {
    // SAFETY: geteuid has no preconditions.
    host.path("/") != std::path::Path::new("/") || unsafe { libc::geteuid() } == 0
}

/// Writes to stdout; a closed pipe (`sluice tune | head`) is not an error.
fn print_to_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `sluice tune`: check; with `--apply`/`--dry-run` change (or list) and check again.
fn run_tune(
    target: &tune::TuneTarget,
    apply: bool,
    dry_run: bool,
    strict: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut checks = tune::run_checks(target);
    let mut actions = None;
    if apply || dry_run {
        let done = tune::apply(target, &checks, dry_run);
        if !dry_run && !done.is_empty() {
            checks = tune::run_checks(target);
        }
        actions = Some(done);
    }
    let mut out = String::new();
    if json {
        out.push_str(&tune::report::json(&checks, actions.as_deref()));
        out.push('\n');
    } else {
        if let Some(done) = &actions {
            out.push_str(if dry_run {
                "# sluice tune --dry-run: what --apply would run (nothing was changed)\n"
            } else if is_root(&target.host) {
                "# sluice tune --apply:\n"
            } else {
                "# sluice tune --apply (not root: changes to /proc/sys and /sys will fail):\n"
            });
            out.push_str(&tune::report::applied(done));
            if !dry_run && !done.is_empty() {
                out.push_str("These last until reboot: see tuning/ for the sysctl drop-in and the systemd unit.\n");
            }
            out.push('\n');
        }
        out.push_str(&tune::report::table(&checks));
        out.push('\n');
        out.push_str(&tune::report::summary(&checks));
    }
    print_to_stdout(&out)?;
    let below = checks.iter().any(|c| c.status == tune::Status::Change);
    Ok(if strict && below { ExitCode::from(EXIT_TUNE_BELOW_RECOMMENDED) } else { ExitCode::SUCCESS })
}
