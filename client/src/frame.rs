//! Kafka's framing: every request and response is an `int32` size then that many bytes. A request
//! is a header (at the header version its API and version call for, kafka-protocol's `HeaderVersion`)
//! then the body; a response is a header (correlation id, tagged fields when flexible) then the body.
//! The raw functions build frames by hand and read frames without decoding them, for tests that must
//! send what no client would (unknown APIs, bad bodies, lies) and look at what comes back.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::{ClientError, Result};

/// Bytes of the size prefix of every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// Largest response frame read by default: a guard against reading garbage as a length.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Request header version 1 (non-flexible APIs) and 2 (flexible: adds a tagged-fields section).
pub const REQUEST_HEADER_V1: i16 = 1;
pub const REQUEST_HEADER_V2: i16 = 2;

/// One request as a size-prefixed frame: header (`R::KEY`, `version`, `correlation_id`, `client_id`) at
/// the header version `version` calls for, then the body.
pub fn encode_request<R: Request>(request: &R, version: i16, correlation_id: i32, client_id: &str) -> Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0; SIZE_PREFIX_BYTES]);
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| ClientError::Invalid(format!("encoding a request header: {e}")))?;
    request.encode(&mut buf, version).map_err(|e| ClientError::Invalid(format!("encoding {:?}: {e}", R::KEY)))?;
    let len =
        i32::try_from(buf.len() - SIZE_PREFIX_BYTES).map_err(|_| ClientError::Invalid("request over 2 GiB".into()))?;
    buf[..SIZE_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Raw mode: a size-prefixed request with a hand-made header v1 (`flexible_header == false`) or v2
/// (adds an empty tagged-fields section), then `body` as given: any API key, version or body. For tests
/// building frames by hand: panics if `client_id` is over 32767 bytes or the frame over 2 GiB.
pub fn raw_request(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    client_id: &str,
    flexible_header: bool,
    body: &[u8],
) -> Vec<u8> {
    let client_id_len = i16::try_from(client_id.len()).expect("a client id of at most 32767 bytes");
    let mut payload = Vec::with_capacity(10 + client_id.len() + 1 + body.len());
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&api_version.to_be_bytes());
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&client_id_len.to_be_bytes());
    payload.extend_from_slice(client_id.as_bytes());
    if flexible_header {
        payload.push(0); // no tagged fields
    }
    payload.extend_from_slice(body);
    size_prefixed(&payload).expect("a raw frame under 2 GiB")
}

/// Raw mode: `payload` (a header and body, or any bytes) behind its size.
pub fn size_prefixed(payload: &[u8]) -> Result<Vec<u8>> {
    let size = i32::try_from(payload.len()).map_err(|_| ClientError::Invalid("frame over 2 GiB".into()))?;
    let mut frame = Vec::with_capacity(SIZE_PREFIX_BYTES + payload.len());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Reads one size-prefixed frame and returns it without its size; a size below 0 or above
/// `max_frame_bytes` is a protocol error (nothing more is read).
pub fn read_frame(stream: &mut impl Read, max_frame_bytes: usize, peer: &str) -> Result<Bytes> {
    let mut size = [0u8; SIZE_PREFIX_BYTES];
    stream.read_exact(&mut size).map_err(|e| ClientError::io(format!("reading from {peer}"), e))?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= max_frame_bytes)
        .ok_or_else(|| ClientError::protocol(peer, format!("response frame size {size}")))?;
    let mut frame = vec![0u8; size];
    stream.read_exact(&mut frame).map_err(|e| ClientError::io(format!("reading from {peer}"), e))?;
    Ok(Bytes::from(frame))
}

/// Writes a whole frame (or any bytes, in raw mode).
pub fn write_frame(stream: &mut impl Write, frame: &[u8], peer: &str) -> Result<()> {
    stream.write_all(frame).map_err(|e| ClientError::io(format!("writing to {peer}"), e))
}

/// The correlation id a response frame starts with (every response header version has it first).
pub fn correlation_id_of(frame: &[u8]) -> Option<i32> {
    frame.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes a response frame to request type `R` sent at `version`: checks the correlation id and that
/// the body is all there is.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
    peer: &str,
) -> Result<R::Response> {
    let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
        .map_err(|e| ClientError::protocol(peer, format!("{:?} response header: {e}", R::KEY)))?;
    if header.correlation_id != correlation_id {
        return Err(ClientError::protocol(
            peer,
            format!("correlation id {} in answer to {correlation_id}", header.correlation_id),
        ));
    }
    let response = R::Response::decode(&mut frame, version)
        .map_err(|e| ClientError::protocol(peer, format!("{:?} v{version} response: {e}", R::KEY)))?;
    if frame.has_remaining() {
        return Err(ClientError::protocol(
            peer,
            format!("{} trailing bytes in a {:?} response", frame.remaining(), R::KEY),
        ));
    }
    Ok(response)
}

/// A connection to `addr` with `io_timeout` for the connect and for every read and write, Nagle off.
pub fn connect_stream(addr: SocketAddr, io_timeout: Duration, peer: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, io_timeout)
        .map_err(|e| ClientError::io(format!("connecting to {peer}"), e))?;
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(io_timeout))?;
        s.set_write_timeout(Some(io_timeout))
    };
    setup(&stream).map_err(|e| ClientError::io(format!("socket options for {peer}"), e))?;
    Ok(stream)
}

/// Raw mode: waits until the peer closes `stream` (EOF or reset), reading and discarding at most
/// `max_discard_bytes` it sends first. An error if it is still open after `timeout`.
pub fn wait_for_close(stream: &mut TcpStream, timeout: Duration, max_discard_bytes: usize) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut discarded = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Invalid(format!(
                "connection still open after {timeout:?} ({discarded} bytes received)"
            )));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| ClientError::io("setting a read timeout", e))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                discarded += n;
                if discarded > max_discard_bytes {
                    return Err(ClientError::Invalid(format!(
                        "peer sent over {max_discard_bytes} bytes instead of closing"
                    )));
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                    return Ok(())
                }
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => continue,
                _ => return Err(ClientError::io("reading while waiting for the peer to close", e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};

    /// A hand-made header v1 (non-flexible Metadata v1) or v2 (flexible ApiVersions v3) is byte for byte
    /// what the encoder writes at the header version kafka-protocol picks.
    #[test]
    fn raw_headers_match_the_encoder() {
        let mut metadata_body = BytesMut::new();
        MetadataRequest::default().encode(&mut metadata_body, 1).expect("body");
        let encoded = encode_request(&MetadataRequest::default(), 1, 7, "c").expect("encode");
        assert_eq!(encoded.as_ref(), raw_request(3, 1, 7, "c", false, &metadata_body).as_slice());
        let mut api_versions_body = BytesMut::new();
        ApiVersionsRequest::default().encode(&mut api_versions_body, 3).expect("body");
        let encoded = encode_request(&ApiVersionsRequest::default(), 3, 9, "c").expect("encode");
        assert_eq!(encoded.as_ref(), raw_request(18, 3, 9, "c", true, &api_versions_body).as_slice());
    }

    #[test]
    fn oversized_and_negative_frames_are_refused() {
        let mut too_big = &(1024i32).to_be_bytes()[..];
        assert!(matches!(read_frame(&mut too_big, 1023, "t"), Err(ClientError::Protocol { .. })));
        let mut negative = &(-1i32).to_be_bytes()[..];
        assert!(matches!(read_frame(&mut negative, 1023, "t"), Err(ClientError::Protocol { .. })));
        let mut short = &[0u8, 0, 0, 4, 1][..];
        assert!(matches!(read_frame(&mut short, 1023, "t"), Err(ClientError::Io { .. })));
    }
}
