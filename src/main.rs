//! `sluice`: the broker (`serve`) and a small admin client (`topic ...`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::admin_client::AdminClient;
use sluice::config::BrokerConfig;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a thread-per-core, Kafka-compatible streaming broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (defaults: ./data, 127.0.0.1:9092, every core).
    Serve {
        /// TOML configuration file (flags override it).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HOST:PORT of the Kafka listener.
        #[arg(long)]
        listen: Option<String>,
        /// Cores (executors) to use.
        #[arg(long)]
        cores: Option<usize>,
    },
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, data_dir, listen, cores } => {
            let mut cfg = match config {
                Some(p) => BrokerConfig::from_file(&p)?,
                None => BrokerConfig::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if cores.is_some() {
                cfg.cores = cores;
            }
            sluice::server::run(cfg)
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
            Ok(())
        }
    }
}
