//! One client connection: a reader that takes size-prefixed frames off the socket and starts a
//! handler task per request (up to `max_inflight_requests_per_connection` not yet answered), and a
//! writer task that writes the answers in request order, as Kafka requires.
//!
//! Everything a connection holds is released as soon as it is dead: when the writer ends (the peer
//! went away, or a protocol violation closes the connection) or the connection has been idle for
//! `connections_max_idle_ms`, both sides stop at once, the queued answers are dropped and the
//! socket is closed. Before a request's body is read, its size is reserved from the core's
//! `RequestMemory` (`queued_max_request_bytes`): when that is used up, connections stop reading
//! (the peers' TCP windows fill) until handlers finish and give bytes back.
//!
//! Answers computed and not yet written are bounded per connection too
//! (`max_queued_answer_bytes_per_connection`), as Kafka mutes a channel until its answer is sent:
//! while they exceed the limit the reader reads no further request, and the connection's Fetches
//! start one at a time, in request order, each when the queued answers are within the limit or
//! when every earlier answer is written (so one answer is always allowed, however large, and an
//! answer waiting to start never waits for answers behind it). So a client that pipelines large Fetches and never reads holds about
//! the limit plus one Fetch answer, not `max_inflight_requests_per_connection` of them.
//!
//! This module touches the socket, the core's request memory and the metrics; requests are
//! dispatched by `super::handle_frame` and never look at the connection.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use tracing::debug;

use super::{handle_frame, Outcome};
use crate::core::latch::Latch;
use crate::core::Shard;
use crate::warn_limited;

/// Bytes read from the socket per read call while assembling a frame.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Pieces smaller than this are coalesced into one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// Smallest frame: api key, api version, correlation id.
const MIN_FRAME_BYTES: usize = 8;
/// Kafka's Fetch API key: the request whose answer can be as large as the client asks.
const FETCH_API_KEY: i16 = 1;

/// The bytes of requests being received or handled on one core, bounded by
/// `queued_max_request_bytes` (Kafka `queued.max.request.bytes`). A request's announced size is
/// reserved before its body is read and given back when its handler has finished with it.
#[derive(Debug)]
pub struct RequestMemory {
    capacity_bytes: usize,
    available_bytes: Cell<usize>,
    released: Event,
}

/// Bytes reserved from a `RequestMemory`; given back on drop.
#[derive(Debug)]
pub struct RequestBytes {
    memory: Rc<RequestMemory>,
    bytes: usize,
}

impl RequestMemory {
    pub fn new(capacity_bytes: usize) -> Rc<RequestMemory> {
        Rc::new(RequestMemory { capacity_bytes, available_bytes: Cell::new(capacity_bytes), released: Event::new() })
    }

    /// Waits until `bytes` are free and reserves them. `bytes` must not exceed the capacity
    /// (`BrokerConfig::validate` keeps `max_request_size_bytes` within it).
    pub async fn reserve(self: &Rc<Self>, bytes: usize) -> RequestBytes {
        assert!(bytes <= self.capacity_bytes, "a {bytes}-byte request can never fit in {} bytes", self.capacity_bytes);
        loop {
            if let Some(left) = self.available_bytes.get().checked_sub(bytes) {
                self.available_bytes.set(left);
                return RequestBytes { memory: self.clone(), bytes };
            }
            let released = self.released.listen();
            if self.available_bytes.get() >= bytes {
                continue;
            }
            released.await;
        }
    }
}

impl Drop for RequestBytes {
    fn drop(&mut self) {
        let m = &self.memory;
        let available = m.available_bytes.get() + self.bytes;
        assert!(available <= m.capacity_bytes, "request memory given back twice: {available} > {}", m.capacity_bytes);
        m.available_bytes.set(available);
        m.released.notify(usize::MAX);
    }
}

/// What the reader and the writer of one connection share.
struct ConnectionState {
    /// Last time bytes moved on the socket or a handler finished.
    last_activity: Cell<Instant>,
    /// Handlers running plus waits for request memory: the connection is not idle meanwhile.
    busy: Cell<usize>,
    /// The connection is over: the writer ended or it was idle too long. Both sides stop.
    aborted: Latch,
    /// Bytes of answers computed and not yet written (`max_queued_answer_bytes_per_connection`).
    queued_answer_bytes: Cell<usize>,
    /// The Fetch (by its number among the connection's Fetches) that may start next; a Fetch
    /// moves it on when it ends, so Fetches run one at a time, in request order.
    next_fetch: Cell<u64>,
    /// Answers the writer is done with (written, silent or dropped): the number of the request
    /// (counting every request of the connection) whose answer it waits for.
    answers_done: Cell<u64>,
    /// Notified when queued answers are written (or dropped) and when a Fetch handler ends.
    answer_room: Event,
}

impl ConnectionState {
    fn new() -> Rc<ConnectionState> {
        Rc::new(ConnectionState {
            last_activity: Cell::new(Instant::now()),
            busy: Cell::new(0),
            aborted: Latch::default(),
            queued_answer_bytes: Cell::new(0),
            next_fetch: Cell::new(0),
            answers_done: Cell::new(0),
            answer_room: Event::new(),
        })
    }

    /// Queued answers are within `limit`; for a Fetch (`Some((its number among the Fetches, its
    /// number among all requests))`), also: it is the next Fetch, and the answers are within the
    /// limit or its own is the one the writer waits for.
    fn answer_room_now(&self, limit: usize, fetch: Option<(u64, u64)>) -> bool {
        let within = self.queued_answer_bytes.get() <= limit;
        match fetch {
            None => within,
            Some((fetch, request)) => fetch == self.next_fetch.get() && (within || request == self.answers_done.get()),
        }
    }

    /// Returns once [`Self::answer_room_now`] holds. Not busy meanwhile: a client that stopped
    /// reading leaves its connection idle, and the idle timeout closes it.
    async fn wait_answer_room(&self, limit: usize, fetch: Option<(u64, u64)>) {
        loop {
            if self.answer_room_now(limit, fetch) {
                return;
            }
            let listener = self.answer_room.listen();
            if self.answer_room_now(limit, fetch) {
                return;
            }
            listener.await;
        }
    }

    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    fn abort(&self) {
        self.aborted.set();
    }

    async fn wait_abort(&self) {
        self.aborted.wait().await
    }

    /// `work`, unless the connection is aborted first (then None; `work` is dropped).
    async fn unless_aborted<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        self.aborted.unless_set(work).await
    }

    /// Marks the connection busy until the guard is dropped.
    fn busy(self: &Rc<Self>) -> BusyGuard {
        self.busy.set(self.busy.get() + 1);
        BusyGuard(self.clone())
    }

    /// Returns once the connection has had no socket activity and nothing busy for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let since = self.last_activity.get().elapsed();
            if since >= idle && self.busy.get() == 0 {
                return;
            }
            glommio::timer::sleep(idle.saturating_sub(since).max(idle / 4).max(Duration::from_millis(1))).await;
        }
    }
}

/// An answer counted in `queued_answer_bytes` until it is written or dropped.
struct QueuedAnswer {
    state: Rc<ConnectionState>,
    bytes: usize,
}

impl QueuedAnswer {
    fn new(state: &Rc<ConnectionState>, bytes: usize) -> QueuedAnswer {
        state.queued_answer_bytes.set(state.queued_answer_bytes.get() + bytes);
        QueuedAnswer { state: state.clone(), bytes }
    }
}

impl Drop for QueuedAnswer {
    fn drop(&mut self) {
        let queued = self.state.queued_answer_bytes.get();
        assert!(queued >= self.bytes, "queued answer bytes given back twice: {queued} < {}", self.bytes);
        self.state.queued_answer_bytes.set(queued - self.bytes);
        self.state.answer_room.notify(usize::MAX);
    }
}

/// The one Fetch of a connection allowed to run (number `.1` among its Fetches); the next may
/// start when it is dropped.
struct FetchTurn(Rc<ConnectionState>, u64);

impl Drop for FetchTurn {
    fn drop(&mut self) {
        assert_eq!(self.0.next_fetch.get(), self.1, "the connection's Fetches run one at a time, in order");
        self.0.next_fetch.set(self.1 + 1);
        self.0.answer_room.notify(usize::MAX);
    }
}

/// What a handler task hands the writer: the outcome, and its bytes counted as queued.
type Answer = (Outcome, Option<QueuedAnswer>);

struct BusyGuard(Rc<ConnectionState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let busy = self.0.busy.get();
        debug_assert!(busy > 0, "busy count underflow");
        self.0.busy.set(busy.saturating_sub(1));
        // The idle clock starts when the last piece of work ends.
        self.0.touch();
    }
}

/// A socket half that records every byte moved as activity.
struct Metered<T> {
    inner: T,
    state: Rc<ConnectionState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.state.touch();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.state.touch();
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    /// The peer closed or reset the connection: a normal end, not worth a warning.
    #[error("peer disconnected: {0}")]
    Disconnected(std::io::Error),
    #[error("frame size {0} outside [{MIN_FRAME_BYTES}, {1}]")]
    BadSize(i64, usize),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if is_disconnect(&e) {
            FrameError::Disconnected(e)
        } else {
            FrameError::Io(e)
        }
    }
}

/// True for I/O errors that only mean the peer went away (closed, reset, or closed mid-frame).
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected)
}

async fn read_size<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let size = i64::from(i32::from_be_bytes(len));
    match usize::try_from(size) {
        Ok(s) if (MIN_FRAME_BYTES..=max).contains(&s) => Ok(s),
        _ => Err(FrameError::BadSize(size, max)),
    }
}

async fn read_body<R: AsyncRead + Unpin>(r: &mut R, size: usize) -> Result<Bytes, FrameError> {
    // The size is reserved, so the whole buffer may be allocated now; it is filled (and its pages
    // touched) only as the bytes arrive.
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let want = (size - buf.len()).min(READ_CHUNK_BYTES);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated frame").into());
        }
    }
    debug_assert_eq!(buf.len(), size, "frame read past its size");
    Ok(buf.freeze())
}

/// Serves one client connection until it closes, misbehaves, idles, or the broker shuts down.
/// Returns once the socket is closed and nothing of the connection is left but handlers that are
/// finishing (their answers are dropped).
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream, memory: Rc<RequestMemory>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let state = ConnectionState::new();
    let (reader, writer) = futures_lite::io::split(stream);
    let reader = Metered { inner: reader, state: state.clone() };
    let writer = Metered { inner: writer, state: state.clone() };
    let (tx, rx) =
        local_channel::new_bounded::<JoinHandle<Option<Answer>>>(shard.config.max_inflight_requests_per_connection);
    let writer_task =
        glommio::spawn_local(write_answers(shard.clone(), state.clone(), rx, writer, peer.clone())).detach();

    let idle = Duration::from_millis(shard.config.connections_max_idle_ms);
    let reading = async {
        read_requests(&shard, &state, &memory, reader, tx, &peer).await;
        // The writer answers what was read (unless aborted), then ends the connection.
        state.wait_abort().await;
    };
    futures_lite::future::or(reading, async {
        state.idle_for(idle).await;
        debug!(peer = %peer, idle_ms = idle.as_millis() as u64, "closing idle connection");
    })
    .await;
    // Whatever ended the connection: stop the writer if it is still writing, and wait for it to
    // drop its half of the socket (then the socket is closed).
    state.abort();
    writer_task.await;
}

/// Reads requests and queues their handlers for the writer until the peer closes, sends a bad
/// frame, the broker shuts down or the connection is aborted. Dropping `tx` on return tells the
/// writer that nothing more comes.
async fn read_requests(
    shard: &Rc<Shard>,
    state: &Rc<ConnectionState>,
    memory: &Rc<RequestMemory>,
    mut reader: Metered<futures_lite::io::ReadHalf<TcpStream>>,
    tx: LocalSender<JoinHandle<Option<Answer>>>,
    peer: &str,
) {
    let max = shard.config.max_request_size_bytes;
    let answer_limit = shard.config.max_queued_answer_bytes_per_connection;
    // Requests and Fetches read so far (numbers of the next ones).
    let (mut requests, mut fetches) = (0u64, 0u64);
    loop {
        // Muted while the answers already computed exceed the limit: the client must read first.
        if until_stopped(shard, state, state.wait_answer_room(answer_limit, None)).await.is_none() {
            return;
        }
        let size = match until_stopped(shard, state, read_size(&mut reader, max)).await {
            None => return,
            Some(Ok(size)) => size,
            Some(Err(e)) => {
                log_frame_error(e, peer);
                return;
            }
        };
        let reserved = {
            let _busy = state.busy();
            match until_stopped(shard, state, memory.reserve(size)).await {
                Some(r) => r,
                None => return,
            }
        };
        let frame = match until_stopped(shard, state, read_body(&mut reader, size)).await {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                log_frame_error(e, peer);
                return;
            }
        };
        shard.metrics.bytes_in.fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        // read_size guarantees at least 8 bytes (key, version, correlation id).
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let fetch = (key == FETCH_API_KEY).then(|| {
            fetches += 1;
            (fetches - 1, requests)
        });
        requests += 1;
        let (s, p, st) = (shard.clone(), peer.to_string(), state.clone());
        let task = glommio::spawn_local(async move {
            let turn = match fetch {
                Some((number, _)) => {
                    // Its answer may be as large as the client asks: one at a time, within the limit.
                    st.unless_aborted(st.wait_answer_room(answer_limit, fetch)).await?;
                    Some(FetchTurn(st.clone(), number))
                }
                None => None,
            };
            let busy = st.busy();
            let began = Instant::now();
            let outcome = handle_frame(&s, frame, &p).await;
            s.metrics.record_request(key, began.elapsed(), matches!(outcome, Outcome::Close(_)));
            // The request's bytes (the frame and what the decoder cut from it) are dropped by now,
            // except slices a handler kept on purpose; give the reservation back.
            drop(reserved);
            let queued = match &outcome {
                Outcome::Respond(chunks) => Some(QueuedAnswer::new(&st, chunks.iter().map(|c| c.len()).sum())),
                Outcome::Silent | Outcome::Close(_) => None,
            };
            // Counted before the next Fetch may start.
            drop(turn);
            drop(busy);
            Some((outcome, queued))
        })
        .detach();
        // Only an abort stops this wait: the writer is alive otherwise and makes room. A writer that
        // ended while the queue was full is what used to leave this `send` waiting forever (glommio's
        // bounded `send` waits for room even after the receiver is gone), holding the slot and every
        // queued answer.
        match state.unless_aborted(tx.send(task)).await {
            Some(Ok(())) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// `work`, unless the broker begins to shut down (the writer then drains) or the connection is
/// aborted first.
async fn until_stopped<T>(shard: &Shard, state: &ConnectionState, work: impl Future<Output = T>) -> Option<T> {
    shard.unless_shutdown(state.unless_aborted(work)).await.flatten()
}

fn log_frame_error(e: FrameError, peer: &str) {
    match e {
        FrameError::Disconnected(e) => debug!(peer = %peer, error = %e, "client disconnected"),
        e => warn_limited!(peer = %peer, error = %e, "bad frame: closing connection"),
    }
}

/// Writes the answers in request order until the reader is done and everything is written, or
/// the connection is aborted, or a write fails. Then aborts the connection (the reader stops too)
/// and drops every queued answer.
async fn write_answers(
    shard: Rc<Shard>,
    state: Rc<ConnectionState>,
    rx: LocalReceiver<JoinHandle<Option<Answer>>>,
    mut writer: Metered<futures_lite::io::WriteHalf<TcpStream>>,
    peer: String,
) {
    let mut clean = false;
    loop {
        let handle = match state.unless_aborted(rx.recv()).await {
            Some(Some(handle)) => handle,
            Some(None) => {
                clean = true;
                break;
            }
            None => break,
        };
        // A handler whose Fetch was aborted before it started answers nothing (`None`).
        match state.unless_aborted(handle).await.map(Option::flatten) {
            None => break,
            Some(Some((Outcome::Respond(chunks), _queued))) => {
                let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                let write =
                    crate::socket_write::write_coalesced(&mut writer, chunks.iter().map(|c| c.bytes()), COALESCE_BYTES);
                match state.unless_aborted(write).await {
                    None => break,
                    Some(Ok(())) => {
                        shard.metrics.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        if is_disconnect(&e) {
                            debug!(peer = %peer, error = %e, "client disconnected while being answered");
                        } else {
                            warn_limited!(peer = %peer, error = %e, "write failed: closing connection");
                        }
                        break;
                    }
                }
            }
            Some(Some((Outcome::Silent, _))) => {}
            Some(Some((Outcome::Close(why), _))) => {
                warn_limited!(peer = %peer, reason = %why, "closing connection");
                break;
            }
            // The handler task was cancelled or panicked: nothing sensible can follow.
            Some(None) => break,
        }
        // Done with this answer (written or silent): the next request's answer is the one the
        // writer waits for, and a Fetch there may start whatever is queued behind it.
        state.answers_done.set(state.answers_done.get() + 1);
        state.answer_room.notify(usize::MAX);
    }
    state.abort();
    // Queued answers go now (a handler still running drops its answer when it finishes).
    drop(rx);
    if clean {
        let _ = writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_memory_waits_until_bytes_are_given_back() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let memory = RequestMemory::new(100);
                let first = memory.reserve(60).await;
                let m = memory.clone();
                let second = glommio::spawn_local(async move { m.reserve(60).await }).detach();
                // The second reservation cannot be served while the first holds 60 of 100 bytes.
                glommio::executor().yield_task_queue_now().await;
                assert_eq!(memory.available_bytes.get(), 40);
                let small = memory.reserve(40).await;
                drop(small);
                drop(first);
                let second = second.await.expect("second reservation");
                assert_eq!(memory.available_bytes.get(), 40);
                drop(second);
                assert_eq!(memory.available_bytes.get(), 100);
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
