//! The `sluice topic ...` commands' admin calls, over `sluice-client` (the workspace's one Kafka
//! client): the same protocol as any other client, so they work against any broker.

use std::time::Duration;

use kafka_protocol::messages::MetadataResponse;
use sluice_client::requests::{self, NewTopic};
use sluice_client::{ConnectOptions, Connection};

/// Connect, read and write limit of one admin call.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// `timeout_ms` of CreateTopics and DeleteTopics.
const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// The versions these commands send (tested against Sluice; every Kafka since 2.4 speaks them).
const CREATE_TOPICS_VERSION: i16 = 5;
const DELETE_TOPICS_VERSION: i16 = 4;
const METADATA_VERSION: i16 = 12;

pub struct AdminClient {
    conn: Connection,
}

impl AdminClient {
    pub fn connect(bootstrap: &str) -> anyhow::Result<Self> {
        let options = ConnectOptions::new("sluice-admin").io_timeout(ADMIN_IO_TIMEOUT).fixed_versions();
        let conn = Connection::connect(bootstrap, &options)?;
        Ok(AdminClient { conn })
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(String, String)]) -> anyhow::Result<()> {
        let configs: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let topic = NewTopic { name, partitions, replication_factor: -1, configs: &configs };
        let request = requests::create_topics(&[topic], ADMIN_TIMEOUT_MS);
        let resp = self.conn.call_at(&request, CREATE_TOPICS_VERSION)?;
        for t in resp.topics {
            if t.error_code != 0 {
                anyhow::bail!("{}: error {} {}", t.name.0, t.error_code, t.error_message.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }

    pub fn delete_topic(&mut self, name: &str) -> anyhow::Result<()> {
        let resp = self.conn.call_at(&requests::delete_topics(&[name], ADMIN_TIMEOUT_MS), DELETE_TOPICS_VERSION)?;
        for t in resp.responses {
            if t.error_code != 0 {
                anyhow::bail!("{name}: error {} {}", t.error_code, t.error_message.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }

    /// Metadata of `topics` (all when `None`), without auto-creation.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> anyhow::Result<MetadataResponse> {
        let names: Option<Vec<&str>> = topics.map(|ts| ts.iter().map(String::as_str).collect());
        Ok(self.conn.call_at(&requests::metadata(names.as_deref(), METADATA_VERSION), METADATA_VERSION)?)
    }
}
