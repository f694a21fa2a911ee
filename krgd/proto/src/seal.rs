//! Sealed frames: what a peer connection carries once the handshake has
//! authenticated both ends. Every frame is encrypted and authenticated with
//! AEGIS-256X4 (the `aegis` crate; the AEGIS family of the IRTF CFRG's
//! draft, a 256-bit key and a 256-bit nonce, four AES lanes at once)
//! under a key of its own connection and direction. It replaced ring's
//! AES-256-GCM in protocol 12: on this machine (VAES, AVX-512) it seals
//! and opens 256 KiB in 14 µs against 58-69 µs, and a 64-byte frame in
//! 114 ns against 178 (`benches/seal.rs` prints both); a migration's
//! memory and kDFS's remote data cross these frames, on CPUs that the
//! process, the krgds and the restore share. A CPU without VAES gets the
//! crate's AES-NI or portable code, chosen when it starts.
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

use aegis::aegis256x4::Aegis256X4;
use hkdf::Hkdf;
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

/// A direction's key.
type Key = [u8; 32];
/// AEGIS-256X4's nonce.
type Nonce = [u8; 32];
/// The AEAD of a frame under `key` and `nonce`.
type Aead = Aegis256X4<TAG_LEN>;

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
            // (v2: AEGIS-256X4 keys, never the AES-256-GCM keys of v1)
            info.extend_from_slice(b"krg-frame-v2 ");
            info.extend_from_slice(direction);
            for who in [client, server] {
                info.extend_from_slice(&who.session.to_be_bytes());
                info.extend_from_slice(&who.node.to_be_bytes());
                info.push(who.role as u8);
            }
            let mut okm: Key = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
            hk.expand(&info, &mut okm)
                .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
            okm
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
        let mut nonce: Nonce = [0u8; 32];
        nonce[24..].copy_from_slice(&n.to_be_bytes());
        // Unique per key: the counter never repeats and each direction of
        // each connection has its own key.
        Ok(nonce)
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
    key: Key,
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
        let tag =
            Aead::new(&self.key, &nonce).encrypt_in_place(&mut buf[SEALED_HEADER_LEN..], &header);
        buf.extend_from_slice(&tag);
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
    key: Key,
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
        let (text, tag) = body.split_at_mut(plain_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| ProtoError::Forged)?;
        Aead::new(&self.key, &nonce)
            .decrypt_in_place(text, tag, header)
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
