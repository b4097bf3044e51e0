//! A small blocking Kafka admin client for `sluice topic ...`: it speaks the same protocol as any
//! other client (kafka-protocol encode/decode over a TCP socket), so it works against any broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest response this client reads.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

pub struct AdminClient {
    stream: TcpStream,
    correlation: i32,
}

impl AdminClient {
    pub fn connect(bootstrap: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(bootstrap).map_err(|e| anyhow::anyhow!("connecting to {bootstrap}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(AdminClient { stream, correlation: 0 })
    }

    fn call<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<R::Response>
    where
        R::Response: Decodable + HeaderVersion,
    {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-admin")));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        self.stream.write_all(&(body.len() as i32).to_be_bytes())?;
        self.stream.write_all(&body)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = i32::from_be_bytes(len);
        anyhow::ensure!(len > 0 && (len as usize) <= MAX_RESPONSE_BYTES, "bad response size {len}");
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        let mut buf = bytes::Bytes::from(buf);
        let rh = ResponseHeader::decode(&mut buf, R::Response::header_version(version))?;
        anyhow::ensure!(rh.correlation_id == self.correlation, "correlation id mismatch");
        let resp = R::Response::decode(&mut buf, version)?;
        anyhow::ensure!(!buf.has_remaining(), "trailing bytes in response");
        Ok(resp)
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(String, String)]) -> anyhow::Result<()> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let resp = self.call(&CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000), 5)?;
        for t in resp.topics {
            if t.error_code != 0 {
                anyhow::bail!("{}: error {} {}", t.name.0, t.error_code, t.error_message.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }

    pub fn delete_topic(&mut self, name: &str) -> anyhow::Result<()> {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.into()))])
            .with_timeout_ms(30_000);
        let resp = self.call(&req, 4)?;
        for t in resp.responses {
            if t.error_code != 0 {
                anyhow::bail!("{name}: error {} {}", t.error_code, t.error_message.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }

    /// Metadata of `topics` (all when `None`), without auto-creation.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> anyhow::Result<MetadataResponse> {
        let req = MetadataRequest::default().with_allow_auto_topic_creation(false).with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.clone())))))
                .collect()
        }));
        self.call(&req, 12)
    }
}
