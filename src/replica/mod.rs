//! Replication connections between brokers (cluster mode), over the frames of
//! [`crate::replication`]:
//!
//! - `server`: every core listens on the broker's replication address; a follower's connection
//!   says in its Hello which core it wants and is handed to that core (one connection per broker
//!   pair per core, multiplexing that core's partitions). Fetches are answered from the stored
//!   batches as they are (DMA buffers written to the socket, no re-encoding).
//! - `fetcher`: on every core, one task per leader broker fetches this core's followed partitions
//!   from it, appends the batches at the leader's offsets, and truncates a diverging tail.

pub mod fetcher;
pub mod server;

use futures_lite::AsyncReadExt;

use crate::replication::{encode_head, Frame, FrameDecoder, Message, WireError};

/// Bytes read from a socket at a time (the decoder buffers what it needs).
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Pieces smaller than this are copied into one write.
const COALESCE_BYTES: usize = 16 << 10;

/// Why a replication connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("no answer within {0} ms")]
    TimedOut(u64),
}

/// Reads the next frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    r: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, ConnError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let want = decoder.missing()?.clamp(4096, READ_CHUNK_BYTES);
        let buf = decoder.buffer_mut();
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            decoder.finish()?;
            return Ok(None);
        }
    }
}

/// Writes one frame: its head, then the raw pieces as they are (small ones coalesced).
pub async fn write_frame<W: futures_lite::AsyncWrite + Unpin, B: AsRef<[u8]>>(
    w: &mut W,
    correlation_id: u32,
    msg: &Message,
    raw: &[B],
) -> Result<(), ConnError> {
    let head = encode_head(correlation_id, msg, raw)?;
    let pieces = std::iter::once(&head[..]).chain(raw.iter().map(|p| p.as_ref()));
    crate::socket_write::write_coalesced(w, pieces, COALESCE_BYTES).await?;
    Ok(())
}
