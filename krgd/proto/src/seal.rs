//! Sealed frames: what a peer connection carries once the handshake has
//! authenticated both ends. Every frame is encrypted and authenticated with
//! AES-256-GCM (ring's implementation: AES-NI/VAES and carry-less multiply,
//! several times faster here than a portable one, see `benches/seal.rs`)
//! under a key of its own connection and direction.
//!
//! ```text
//! [len: u32 BE][ciphertext of the postcard payload][tag: 16 bytes]
//!  `len` counts ciphertext + tag; it is the AEAD's associated data
//! ```
//!
//! * Keys: HKDF-SHA256 over the cluster key, salted with both handshake
//!   nonces, with both identities and the direction in the info string
//!   ([`FrameKeys::derive`]). Each connection and each direction has its own
//!   key; without the cluster key nobody can derive them.
//! * Nonces: a 64-bit counter per direction (frame 0, 1, 2, … of that
//!   direction), never sent: the receiver expects the next one. A frame
//!   that was altered, injected, replayed, reordered or dropped fails
//!   authentication, and the connection is closed
//!   ([`ProtoError::Forged`]). A direction that would run out of counter
//!   values is closed instead ([`ProtoError::NonceExhausted`]).
//! * Nothing is decoded before the tag is checked; decoding never panics.

use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::frame::{encode_after, read_header, read_payload_whole, MAX_FRAME_LEN};
use crate::identity::Identity;
use crate::ProtoError;

/// Size of a sealed frame's header (the length).
pub const SEALED_HEADER_LEN: usize = 4;

/// Size of the authentication tag at the end of every sealed frame.
pub const TAG_LEN: usize = 16;

/// Largest `len` of a sealed frame: the largest payload plus its tag.
pub const MAX_SEALED_LEN: usize = MAX_FRAME_LEN + TAG_LEN;

/// Which end of the connection derives the keys: the end that connected
/// (client) seals with the client-to-server key, the other with the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that opened the TCP connection and sent `Hello`.
    Client,
    /// The end that accepted it.
    Server,
}

/// The two halves of a connection's protection: one seals what this end
/// sends, the other opens what it receives.
pub struct FrameKeys {
    /// Seals outgoing frames.
    pub sealer: Sealer,
    /// Opens incoming frames.
    pub opener: Opener,
}

impl FrameKeys {
    /// Derive both directions' keys from the cluster key `secret`, the
    /// authenticated identities and both handshake nonces.
    pub fn derive(
        secret: &[u8],
        client: &Identity,
        server: &Identity,
        nonce_c: &[u8; 32],
        nonce_s: &[u8; 32],
        side: Side,
    ) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(nonce_c);
        salt[32..].copy_from_slice(nonce_s);
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
        let key = |direction: &[u8]| {
            let mut info = Vec::with_capacity(64);
            info.extend_from_slice(b"krg-frame-v1 ");
            info.extend_from_slice(direction);
            for who in [client, server] {
                info.extend_from_slice(&who.session.to_be_bytes());
                info.extend_from_slice(&who.node.to_be_bytes());
                info.push(who.role as u8);
            }
            let mut okm = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
            hk.expand(&info, &mut okm)
                .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
            // AES-256 takes exactly these 32 bytes.
            let key = UnboundKey::new(&AES_256_GCM, &okm)
                .unwrap_or_else(|_| unreachable!("a 32-byte key is a valid AES-256 key"));
            LessSafeKey::new(key)
        };
        let (c2s, s2c) = (key(b"client-to-server"), key(b"server-to-client"));
        let (send, recv) = match side {
            Side::Client => (c2s, s2c),
            Side::Server => (s2c, c2s),
        };
        Self {
            sealer: Sealer {
                key: send,
                counter: Counter::default(),
            },
            opener: Opener {
                key: recv,
                counter: Counter::default(),
            },
        }
    }
}

/// The per-direction frame counter that makes each frame's nonce.
#[derive(Default)]
struct Counter(u64);

impl Counter {
    /// The nonce for the next frame; refuses to wrap around.
    fn next(&mut self) -> Result<Nonce, ProtoError> {
        let n = self.0;
        self.0 = n.checked_add(1).ok_or(ProtoError::NonceExhausted)?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        // Unique per key: the counter never repeats and each direction of
        // each connection has its own key.
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    #[cfg(test)]
    fn set(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A message encoded and ready to be sealed: encoding can happen anywhere,
/// sealing must happen in the order the frames are written.
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// Encode `msg` (postcard), leaving room for the header.
    pub fn new<T: Serialize>(msg: &T) -> Result<Self, ProtoError> {
        // Room for the tag too, which sealing appends.
        Ok(Self(encode_after(msg, SEALED_HEADER_LEN, TAG_LEN)?))
    }
}

/// Seals the frames one end sends, in order.
pub struct Sealer {
    key: LessSafeKey,
    counter: Counter,
}

impl Sealer {
    /// Seal an encoded message into a complete frame (header, ciphertext,
    /// tag), encrypting in place.
    pub fn seal(&mut self, msg: Encoded) -> Result<Vec<u8>, ProtoError> {
        let mut buf = msg.0;
        let len = buf.len() - SEALED_HEADER_LEN + TAG_LEN;
        let header = (len as u32).to_be_bytes();
        buf[..SEALED_HEADER_LEN].copy_from_slice(&header);
        let nonce = self.counter.next()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut buf[SEALED_HEADER_LEN..])
            .map_err(|_| ProtoError::Encode("frame too long to seal".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf)
    }

    /// Encode and seal `msg`.
    pub fn seal_msg<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, ProtoError> {
        self.seal(Encoded::new(msg)?)
    }

    /// Seal `msg` and write it to `w`.
    pub async fn write<T, W>(&mut self, w: &mut W, msg: &T) -> Result<(), ProtoError>
    where
        T: Serialize,
        W: AsyncWrite + Unpin,
    {
        let frame = self.seal_msg(msg)?;
        w.write_all(&frame).await?;
        w.flush().await?;
        Ok(())
    }
}

/// Opens the frames the other end sends, in order.
pub struct Opener {
    key: LessSafeKey,
    counter: Counter,
}

impl Opener {
    /// Read and open one frame from `r` (its byte strings decoded into
    /// `Bytes` share the frame's buffer: `bytestr::decode_sharing`). A
    /// clean end of stream before a frame is [`ProtoError::Closed`].
    pub async fn read<T, R>(&mut self, r: &mut R) -> Result<T, ProtoError>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; SEALED_HEADER_LEN];
        read_header(r, &mut header).await?;
        let len = parse_len(&header)?;
        // Both ends authenticated: the announced length is allocated whole.
        let body = read_payload_whole(r, len).await?;
        self.open(&header, body)
    }

    /// Decode one frame from the start of `buf`: `Ok(None)` while `buf`
    /// does not hold a whole frame, else the message and the bytes used.
    pub fn decode<T: DeserializeOwned>(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(T, usize)>, ProtoError> {
        let Some(h) = buf.get(..SEALED_HEADER_LEN) else {
            return Ok(None);
        };
        let mut header = [0u8; SEALED_HEADER_LEN];
        header.copy_from_slice(h);
        let len = parse_len(&header)?;
        let Some(body) = buf.get(SEALED_HEADER_LEN..SEALED_HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = self.open(&header, body.to_vec())?;
        Ok(Some((msg, SEALED_HEADER_LEN + len)))
    }

    /// Check and decrypt `body` (ciphertext and tag) under `header`, then
    /// decode the payload.
    fn open<T: DeserializeOwned>(
        &mut self,
        header: &[u8; SEALED_HEADER_LEN],
        mut body: Vec<u8>,
    ) -> Result<T, ProtoError> {
        let plain_len = body.len().checked_sub(TAG_LEN).ok_or(ProtoError::Forged)?;
        let nonce = self.counter.next()?;
        self.key
            .open_in_place(nonce, Aad::from(*header), &mut body)
            .map_err(|_| ProtoError::Forged)?;
        body.truncate(plain_len);
        crate::bytestr::decode_sharing(body.into())
    }
}

/// The length a sealed header announces, checked before anything is read.
fn parse_len(header: &[u8; SEALED_HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_SEALED_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_SEALED_LEN,
        });
    }
    if len < TAG_LEN {
        return Err(ProtoError::Forged);
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
