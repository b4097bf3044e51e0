//! Writing an answer made of pieces to a socket: pieces smaller than a threshold are copied together
//! into one write, larger ones (stored batches) are written as they are, then the writer is flushed.

use futures_lite::{AsyncWrite, AsyncWriteExt};

/// Writes `pieces` in order, coalescing those shorter than `coalesce_below` bytes.
pub async fn write_coalesced<'a, W: AsyncWrite + Unpin>(
    w: &mut W,
    pieces: impl IntoIterator<Item = &'a [u8]>,
    coalesce_below: usize,
) -> std::io::Result<()> {
    let mut small = Vec::new();
    for piece in pieces {
        if piece.len() < coalesce_below {
            small.extend_from_slice(piece);
            if small.len() >= coalesce_below {
                w.write_all(&small).await?;
                small.clear();
            }
        } else {
            if !small.is_empty() {
                w.write_all(&small).await?;
                small.clear();
            }
            w.write_all(piece).await?;
        }
    }
    if !small.is_empty() {
        w.write_all(&small).await?;
    }
    w.flush().await
}
