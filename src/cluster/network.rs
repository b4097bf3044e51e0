//! Raft RPCs between control planes over TCP: AppendEntries, Vote and (chunked) InstallSnapshot.
//! One request/response exchange at a time per connection; a client keeps one connection per
//! peer and drops it on any failure (the next call reconnects). Payloads are bincode; each frame
//! is
//!
//! ```text
//! offset  size  field
//!      0     4  magic   "SLRF"
//!      4     1  kind    RpcKind (a response echoes its request's)
//!      5     3  zero
//!      8     4  payload length <= MAX_RPC_FRAME_BYTES
//!     12     4  CRC32C of the payload
//!     16     n  payload: the request, or Result<response, RaftError> for a response
//! ```
//!
//! Nothing read from a socket is trusted: lengths are bounded before allocating, CRCs checked,
//! decode failures close the connection.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::types::{ClusterCommand, CommandResult, NodeId, TypeConfig};

/// When each peer last answered one of this node's AppendEntries (heartbeats included): the
/// controller's view of which brokers are alive.
pub type PeerHeartbeats = Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, std::time::Instant>>>;

const MAGIC: u32 = u32::from_le_bytes(*b"SLRF");
const HEADER_BYTES: usize = 16;
/// Limit on one RPC frame (snapshot chunks are openraft's `snapshot_max_chunk_size`, 3 MiB).
pub const MAX_RPC_FRAME_BYTES: usize = 16 << 20;
/// How long a client waits for a TCP connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Inbound RPC connections served at once; more are closed at accept.
pub const MAX_RPC_CONNECTIONS: usize = 64;

/// Which RPC a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum RpcKind {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
    /// A write forwarded by a non-leader: a `ClusterCommand`, answered with [`ForwardedAnswer`].
    ClientWrite = 4,
}

/// The leader's answer to a forwarded write: `(log index, result)`, or why it was not taken (the
/// sender retries: e.g. the node is no longer the leader).
pub type ForwardedAnswer = Result<(u64, CommandResult), String>;

impl RpcKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::AppendEntries),
            2 => Some(Self::Vote),
            3 => Some(Self::InstallSnapshot),
            4 => Some(Self::ClientWrite),
            _ => None,
        }
    }
}

/// Why an RPC exchange failed; the connection is closed after any of them.
#[derive(Debug, thiserror::Error)]
pub enum RpcWireError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("bad frame: {0}")]
    BadFrame(String),
    #[error("codec: {0}")]
    Codec(#[from] bincode::Error),
}

fn encode_frame<T: Serialize>(kind: RpcKind, value: &T) -> Result<Vec<u8>, RpcWireError> {
    let payload = bincode::serialize(value)?;
    if payload.len() > MAX_RPC_FRAME_BYTES {
        return Err(RpcWireError::BadFrame(format!(
            "{} bytes over the {MAX_RPC_FRAME_BYTES}-byte limit",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads one frame: its kind and checked payload. `Ok(None)` on a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> Result<Option<(RpcKind, Vec<u8>)>, RpcWireError> {
    let mut header = [0u8; HEADER_BYTES];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != MAGIC {
        return Err(RpcWireError::BadFrame(format!("magic {:#010x}", word(0))));
    }
    let kind = RpcKind::from_u8(header[4]).ok_or_else(|| RpcWireError::BadFrame(format!("kind {}", header[4])))?;
    let len = word(8) as usize;
    if len > MAX_RPC_FRAME_BYTES {
        return Err(RpcWireError::BadFrame(format!("length {len} over the {MAX_RPC_FRAME_BYTES}-byte limit")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    if crc32c::crc32c(&payload) != word(12) {
        return Err(RpcWireError::BadFrame("CRC32C mismatch".into()));
    }
    Ok(Some((kind, payload)))
}

/// Serves Raft RPCs for `raft` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, raft: Raft<TypeConfig>) {
    let slots = Arc::new(Semaphore::new(MAX_RPC_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "raft rpc: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_RPC_CONNECTIONS, "raft rpc: too many connections, closing");
            continue;
        };
        let raft = raft.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &raft).await {
                tracing::debug!(%peer, error = %e, "raft rpc: connection closed");
            }
            drop(slot);
        });
    }
}

async fn serve_connection(mut stream: TcpStream, raft: &Raft<TypeConfig>) -> Result<(), RpcWireError> {
    stream.set_nodelay(true)?;
    while let Some((kind, payload)) = read_frame(&mut stream).await? {
        let answer = match kind {
            RpcKind::AppendEntries => encode_frame(kind, &raft.append_entries(bincode::deserialize(&payload)?).await)?,
            RpcKind::Vote => encode_frame(kind, &raft.vote(bincode::deserialize(&payload)?).await)?,
            RpcKind::InstallSnapshot => {
                encode_frame(kind, &raft.install_snapshot(bincode::deserialize(&payload)?).await)?
            }
            RpcKind::ClientWrite => {
                let cmd: ClusterCommand = bincode::deserialize(&payload)?;
                let answer: ForwardedAnswer = match raft.client_write(cmd).await {
                    Ok(resp) => Ok((resp.log_id.index, resp.data)),
                    Err(e) => Err(e.to_string()),
                };
                encode_frame(kind, &answer)?
            }
        };
        stream.write_all(&answer).await?;
    }
    Ok(())
}

/// Makes [`PeerClient`]s for openraft.
pub struct PeerClients {
    pub heartbeats: PeerHeartbeats,
    /// This node's own address book (its configuration): the membership records the addresses the
    /// initializing node was given, which need not be how this node reaches its peers.
    pub addrs: std::collections::BTreeMap<NodeId, String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerClients {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = self.addrs.get(&target).cloned().unwrap_or_else(|| node.addr.clone());
        PeerClient { target, addr, conn: None, heartbeats: self.heartbeats.clone() }
    }
}

/// Sends `cmd` to the Raft leader at `addr` on a connection of its own (forwarded writes are rare:
/// metadata changes proposed by brokers that do not lead the Raft group).
pub async fn forward_write(addr: &str, cmd: &ClusterCommand, ttl: Duration) -> Result<ForwardedAnswer, RpcWireError> {
    let mut client = PeerClient {
        target: 0,
        addr: addr.to_owned(),
        conn: None,
        heartbeats: Arc::new(std::sync::Mutex::new(Default::default())),
    };
    client.exchange(RpcKind::ClientWrite, cmd, ttl).await
}

/// The RPC client of one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    conn: Option<TcpStream>,
    heartbeats: PeerHeartbeats,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn connect(&mut self) -> Result<&mut TcpStream, RpcWireError> {
        if self.conn.is_none() {
            let connect =
                tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect(&self.addr));
            let stream = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(RpcWireError::Connect { addr: self.addr.clone(), reason: e.to_string() }),
                Err(_) => return Err(RpcWireError::Connect { addr: self.addr.clone(), reason: "timed out".into() }),
            };
            stream.set_nodelay(true)?;
            self.conn = Some(stream);
        }
        // Set just above.
        Ok(self.conn.as_mut().expect("connection present"))
    }

    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcWireError> {
        let frame = encode_frame(kind, req)?;
        let stream = self.connect().await?;
        let round_trip = async {
            stream.write_all(&frame).await?;
            match read_frame(stream).await? {
                Some((k, payload)) if k == kind => Ok(bincode::deserialize(&payload)?),
                Some((k, _)) => Err(RpcWireError::BadFrame(format!("answer of kind {k:?} to {kind:?}"))),
                None => Err(RpcWireError::BadFrame("connection closed before the answer".into())),
            }
        };
        tokio::time::timeout(ttl, round_trip).await.unwrap_or(Err(RpcWireError::TimedOut(ttl)))
    }

    /// One RPC; any failure drops the connection so the next call reconnects.
    async fn call<Req, Resp, E>(&mut self, kind: RpcKind, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match self.exchange::<Req, Result<Resp, RaftError<NodeId, E>>>(kind, req, option.hard_ttl()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e) => {
                self.conn = None;
                match e {
                    RpcWireError::Connect { .. } => Err(RPCError::Unreachable(Unreachable::new(&e))),
                    _ => Err(RPCError::Network(NetworkError::new(&e))),
                }
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let r = self.call(RpcKind::AppendEntries, &rpc, &option).await;
        if r.is_ok() {
            let mut replies = self.heartbeats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            replies.insert(self.target, std::time::Instant::now());
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_damage() {
        let frame = encode_frame(RpcKind::Vote, &(7u64, "x".to_string())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut damaged = frame.clone();
            *damaged.last_mut().unwrap() ^= 1;
            let writer = tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&frame).await.unwrap();
                s.write_all(&damaged).await.unwrap();
            });
            let (mut s, _) = listener.accept().await.unwrap();
            let (kind, payload) = read_frame(&mut s).await.unwrap().unwrap();
            assert_eq!(kind, RpcKind::Vote);
            assert_eq!(bincode::deserialize::<(u64, String)>(&payload).unwrap(), (7, "x".to_string()));
            assert!(matches!(read_frame(&mut s).await, Err(RpcWireError::BadFrame(_))));
            writer.await.unwrap();
        });
    }
}
