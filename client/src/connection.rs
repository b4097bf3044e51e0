//! One connection to one broker: correlation ids, the API versions negotiated with it, blocking calls
//! (`call`), pipelined ones (`send_at` several, then `receive_at` in order, as Kafka answers them), and
//! the raw mode (`send_raw`, `read_raw_frame`) for tests.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::Request;

use crate::error::{ClientError, Result};
use crate::frame;
use crate::versions::ApiVersionTable;

/// Connect, read and write limit of one socket operation unless the caller says otherwise.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// ApiVersions v0: the version every broker answers, so that it can be asked first.
const API_VERSIONS_PROBE_VERSION: i16 = 0;

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `client_id` of every request header.
    pub client_id: String,
    /// Connect, read and write timeout of the socket.
    pub io_timeout: Duration,
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
    /// Ask ApiVersions first and pick versions for `call`; without it only `call_at` (explicit versions)
    /// and the raw mode work.
    pub negotiate_versions: bool,
}

impl ConnectOptions {
    pub fn new(client_id: &str) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.to_string(),
            io_timeout: DEFAULT_IO_TIMEOUT,
            max_frame_bytes: frame::MAX_FRAME_BYTES,
            negotiate_versions: true,
        }
    }

    pub fn io_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.io_timeout = timeout;
        self
    }

    pub fn max_frame_bytes(mut self, bytes: usize) -> ConnectOptions {
        self.max_frame_bytes = bytes;
        self
    }

    /// No ApiVersions exchange: the caller names every version (`call_at`).
    pub fn fixed_versions(mut self) -> ConnectOptions {
        self.negotiate_versions = false;
        self
    }
}

/// A connection to one broker with the API versions it speaks.
pub struct Connection {
    stream: TcpStream,
    broker: String,
    options: ConnectOptions,
    correlation_id: i32,
    versions: Arc<ApiVersionTable>,
}

impl Connection {
    /// Connects to `broker` (`host:port`) and, if the options say so, negotiates API versions.
    pub fn connect(broker: &str, options: &ConnectOptions) -> Result<Connection> {
        let addr = broker
            .to_socket_addrs()
            .map_err(|e| ClientError::io(format!("resolving {broker}"), e))?
            .next()
            .ok_or_else(|| ClientError::NoBroker(broker.to_string()))?;
        Connection::open(addr, broker.to_string(), options)
    }

    /// Connects to `addr` (no name to resolve).
    pub fn connect_addr(addr: SocketAddr, options: &ConnectOptions) -> Result<Connection> {
        Connection::open(addr, addr.to_string(), options)
    }

    /// Connects to the first bootstrap broker that answers.
    pub fn connect_any(bootstrap: &[String], options: &ConnectOptions) -> Result<Connection> {
        let mut last = None;
        for broker in bootstrap {
            match Connection::connect(broker, options) {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::NoBroker(bootstrap.join(","))))
    }

    /// A connection over a socket the caller set up (special socket options); timeouts are the caller's.
    pub fn from_stream(stream: TcpStream, broker: &str, options: &ConnectOptions) -> Result<Connection> {
        Connection::handshake(stream, broker.to_string(), options)
    }

    fn open(addr: SocketAddr, broker: String, options: &ConnectOptions) -> Result<Connection> {
        let stream = frame::connect_stream(addr, options.io_timeout, &broker)?;
        Connection::handshake(stream, broker, options)
    }

    fn handshake(stream: TcpStream, broker: String, options: &ConnectOptions) -> Result<Connection> {
        let mut conn = Connection {
            stream,
            broker,
            options: options.clone(),
            correlation_id: 0,
            versions: Arc::new(ApiVersionTable::default()),
        };
        if options.negotiate_versions {
            let response = conn.call_at(&ApiVersionsRequest::default(), API_VERSIONS_PROBE_VERSION)?;
            if response.error_code != 0 {
                return Err(ClientError::Broker {
                    broker: conn.broker.clone(),
                    api: "ApiVersions",
                    code: response.error_code,
                    detail: None,
                });
            }
            conn.versions = Arc::new(ApiVersionTable::from_response(&response));
        }
        Ok(conn)
    }

    /// The broker's address as given.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    pub fn versions(&self) -> Arc<ApiVersionTable> {
        self.versions.clone()
    }

    /// The negotiated version of `key`.
    pub fn version(&self, key: ApiKey) -> Result<i16> {
        self.versions.version(key, &self.broker)
    }

    /// A second handle on the same socket (one thread writes, another reads).
    pub fn try_clone_stream(&self) -> Result<TcpStream> {
        self.stream.try_clone().map_err(|e| ClientError::io(format!("cloning the socket to {}", self.broker), e))
    }

    /// The socket itself, for raw-mode tests (timeouts, half-close, reset).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        self.correlation_id
    }

    /// Sends `request` at the negotiated version and waits for its answer.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| ClientError::Invalid(format!("api key {}", R::KEY)))?;
        let version = self.version(key)?;
        self.call_at(request, version)
    }

    /// Sends `request` at `version` and waits for its answer.
    pub fn call_at<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let correlation_id = self.send_at(request, version)?;
        self.receive_at::<R>(correlation_id, version)
    }

    /// Sends `request` at `version` without waiting; its correlation id, for `receive_at`.
    pub fn send_at<R: Request>(&mut self, request: &R, version: i16) -> Result<i32> {
        let (correlation_id, frame) = self.encode_next(request, version)?;
        frame::write_frame(&mut self.stream, &frame, &self.broker)?;
        Ok(correlation_id)
    }

    /// The frame of `request` at `version` with the next correlation id, not sent: for a caller that
    /// writes several at once (`send_raw`) and reads their answers with `receive_at`.
    pub fn encode_next<R: Request>(&mut self, request: &R, version: i16) -> Result<(i32, Bytes)> {
        let correlation_id = self.next_correlation_id();
        let frame = frame::encode_request(request, version, correlation_id, &self.options.client_id)?;
        Ok((correlation_id, frame))
    }

    /// Reads the next answer, which must be the one to `correlation_id` (sent at `version`).
    pub fn receive_at<R: Request>(&mut self, correlation_id: i32, version: i16) -> Result<R::Response> {
        let response = self.read_raw_frame()?;
        frame::decode_response::<R>(response, version, correlation_id, &self.broker)
    }

    /// Raw mode: writes `bytes` as they are (a hand-made frame, part of one, or garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        frame::write_frame(&mut self.stream, bytes, &self.broker)
    }

    /// Raw mode: reads one response frame (without its size), undecoded.
    pub fn read_raw_frame(&mut self) -> Result<Bytes> {
        frame::read_frame(&mut self.stream, self.options.max_frame_bytes, &self.broker)
    }
}
