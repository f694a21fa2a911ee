//! Plain framing: `[len: u32 BE][crc32(payload): u32 BE][payload: len bytes]`,
//! used by the handshake of a TCP connection and on the admin Unix socket
//! (after the handshake, peer connections carry [`seal`](crate::seal)ed frames).
//!
//! The payload is a postcard-encoded message. The length is checked against
//! the reader's limit before anything is read ([`MAX_HANDSHAKE_FRAME_LEN`]
//! while the sender is not authenticated), the buffer grows only as bytes
//! actually arrive (an announced length reserves nothing), and the checksum is
//! checked before the payload is decoded: garbage on a socket costs at most
//! what its sender really sent, up to the limit.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ProtoError;

/// Size of the frame header (length + checksum).
pub const HEADER_LEN: usize = 8;

/// Largest payload accepted: enough for a 16 MiB kDFS data block plus headers.
pub const MAX_FRAME_LEN: usize = 17 * 1024 * 1024;

/// Largest payload read from a peer that has not authenticated yet: a
/// handshake message is under 200 bytes (a refusal reason included).
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 4 * 1024;

/// First allocation for a payload being read; the buffer then doubles as
/// bytes arrive, never beyond the announced length.
const FIRST_CHUNK: usize = 16 * 1024;

/// Serialize `msg` into one complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    Ok(finish_frame(encode_after(msg, HEADER_LEN, 0)?))
}

/// `msg` encoded (postcard) after `header` zero bytes, in a buffer with
/// room for `trailer` more. The message is sized first, so that one over
/// [`MAX_FRAME_LEN`] is refused before anything is allocated or written,
/// and the buffer is allocated once: grown as postcard wrote, a 256 KiB
/// frame was copied by every reallocation on its way.
pub(crate) fn encode_after<T: Serialize>(
    msg: &T,
    header: usize,
    trailer: usize,
) -> Result<Vec<u8>, ProtoError> {
    let encode = |e: postcard::Error| ProtoError::Encode(e.to_string());
    let len = postcard::experimental::serialized_size(msg).map_err(encode)?;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut buf = Vec::with_capacity(header + len + trailer);
    buf.resize(header, 0);
    postcard::serialize_with_flavor(msg, AppendTo(buf)).map_err(encode)
}

/// A postcard output that appends to a `Vec` and copies byte strings
/// whole. postcard's own `to_extend` pushes them a byte at a time
/// (through `Extend`), which cost a relay of `krg push` two thirds of
/// what sealing the same bytes cost.
struct AppendTo(Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Fill in the header of `out` (header room, then a payload of at most
/// [`MAX_FRAME_LEN`] bytes, as [`encode_after`] makes it).
fn finish_frame(mut out: Vec<u8>) -> Vec<u8> {
    let len = out.len() - HEADER_LEN;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    out[4..8].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Parse a frame header, returning `(payload length, expected crc)`.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(usize, u32), ProtoError> {
    parse_header_limited(header, MAX_FRAME_LEN)
}

fn parse_header_limited(header: &[u8; HEADER_LEN], max: usize) -> Result<(usize, u32), ProtoError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    Ok((len, crc))
}

/// Check a payload against its header checksum and decode it.
pub fn decode_payload<T: DeserializeOwned>(
    payload: &[u8],
    expected_crc: u32,
) -> Result<T, ProtoError> {
    check_crc(payload, expected_crc)?;
    postcard::from_bytes(payload).map_err(|e| ProtoError::Decode(e.to_string()))
}

fn check_crc(payload: &[u8], expected: u32) -> Result<(), ProtoError> {
    let actual = crc32fast::hash(payload);
    if actual != expected {
        return Err(ProtoError::BadChecksum { expected, actual });
    }
    Ok(())
}

/// Decode one frame from the start of `buf`. Returns the message and the number
/// of bytes consumed, or `Ok(None)` if `buf` does not yet hold a whole frame.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, ProtoError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let (len, crc) = parse_header(&h)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let msg = decode_payload(payload, crc)?;
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Read one frame of at most [`MAX_FRAME_LEN`] bytes from `r`. A clean end
/// of stream before the header is reported as [`ProtoError::Closed`].
pub async fn read_frame<T, R>(r: &mut R) -> Result<T, ProtoError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    read_frame_limited(r, MAX_FRAME_LEN).await
}

/// Read one frame whose payload may be at most `max` bytes: a longer
/// announced length is refused before anything else is read.
pub async fn read_frame_limited<T, R>(r: &mut R, max: usize) -> Result<T, ProtoError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    read_header(r, &mut header).await?;
    let (len, crc) = parse_header_limited(&header, max.min(MAX_FRAME_LEN))?;
    let payload = read_payload(r, len).await?;
    check_crc(&payload, crc)?;
    // Byte strings decoded into `Bytes` share the payload's buffer.
    crate::bytestr::decode_sharing(payload.into())
}

/// Fill `header`, reporting an end of stream before its first byte as
/// [`ProtoError::Closed`].
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    header: &mut [u8],
) -> Result<(), ProtoError> {
    match r.read_exact(header).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProtoError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Read exactly `len` bytes, growing the buffer as they arrive: a sender
/// that announces 17 MiB and sends nothing costs [`FIRST_CHUNK`] bytes, and
/// one that sends n bytes costs at most 2n.
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, ProtoError> {
    let mut buf = Vec::new();
    read_payload_into(r, len, &mut buf).await?;
    Ok(buf)
}

/// Read exactly `len` bytes into a buffer allocated whole at once: only
/// for senders that authenticated (sealed frames), whose announced length
/// is trusted. Growing as bytes arrived cost a copy of most of every large
/// frame (each doubling moved what had come so far).
pub(crate) async fn read_payload_whole<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, ProtoError> {
    let mut buf = Vec::with_capacity(len);
    read_payload_into(r, len, &mut buf).await?;
    Ok(buf)
}

async fn read_payload_into<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    buf: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    while buf.len() < len {
        let start = buf.len();
        if buf.capacity() == start {
            buf.reserve_exact(start.max(FIRST_CHUNK).min(len - start));
        }
        // Into the spare capacity, never past the frame: no zeroing of
        // the buffer first (it was a pass over every byte received).
        let room = (buf.capacity() - start).min(len - start);
        let n = (&mut *r).take(room as u64).read_buf(buf).await?;
        if n == 0 {
            // Part of the payload may have come; it is dropped with the
            // connection.
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(())
}

/// Write `msg` as one frame to `w` and flush it.
pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Sample {
        A(u32),
        B { name: String, data: Vec<u8> },
    }

    #[test]
    fn roundtrip() {
        let msg = Sample::B {
            name: "node".into(),
            data: vec![1, 2, 3],
        };
        let bytes = encode(&msg).unwrap();
        let (back, used): (Sample, usize) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn partial_frame_is_not_an_error() {
        let bytes = encode(&Sample::A(7)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Sample>(&bytes[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn flipped_bit_is_caught_by_crc() {
        let mut bytes = encode(&Sample::A(7)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(ProtoError::BadChecksum { .. })
        ));
    }

    #[tokio::test]
    async fn limited_read_refuses_a_long_announcement_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Announces 5000 bytes and sends none: refused from the header alone.
        a.write_all(&[0, 0, 0x13, 0x88, 0, 0, 0, 0]).await.unwrap();
        let got = read_frame_limited::<Sample, _>(&mut b, MAX_HANDSHAKE_FRAME_LEN).await;
        assert!(matches!(
            got,
            Err(ProtoError::FrameTooLarge {
                len: 5000,
                max: MAX_HANDSHAKE_FRAME_LEN
            })
        ));
    }

    #[tokio::test]
    async fn payload_buffer_grows_with_what_arrives() {
        // 17 MiB announced, 100 KiB sent, then the sender stops: the reader
        // holds a buffer of what came (plus at most as much again), not 17 MiB.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0u8; 100 * 1024]).await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        let got = read_payload_into(&mut b, MAX_FRAME_LEN, &mut buf).await;
        assert!(got.is_err(), "a truncated payload is an error");
        assert!(buf.capacity() <= 256 * 1024, "{}", buf.capacity());
        // The growth rule itself: capacities stay within 2x what was read.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let data = vec![7u8; 300_000];
        let sent = data.clone();
        tokio::spawn(async move { a.write_all(&sent).await.unwrap() });
        let got = read_payload(&mut b, data.len()).await.unwrap();
        assert_eq!(got, data);
        assert!(got.capacity() <= 2 * data.len(), "{}", got.capacity());
    }

    #[tokio::test]
    async fn async_roundtrip_and_clean_close() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &Sample::A(42)).await.unwrap();
        drop(a);
        let got: Sample = read_frame(&mut b).await.unwrap();
        assert_eq!(got, Sample::A(42));
        assert!(matches!(
            read_frame::<Sample, _>(&mut b).await,
            Err(ProtoError::Closed)
        ));
    }

    proptest! {
        // Any byte string: decode returns Ok(None), Ok(Some) or Err, never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<Sample>(&bytes);
            let _ = decode::<crate::peer::PeerMessage>(&bytes);
            let _ = decode::<crate::admin::AdminRequest>(&bytes);
        }

        // Garbage payloads with a valid header and CRC still fail cleanly.
        #[test]
        fn valid_crc_garbage_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut frame = vec![0u8; HEADER_LEN];
            frame.extend_from_slice(&payload);
            let frame = finish_frame(frame);
            let _ = decode::<crate::peer::PeerMessage>(&frame);
            let _ = decode::<crate::admin::AdminRequest>(&frame);
            let _ = decode::<crate::admin::AdminResponse>(&frame);
        }
    }
}
