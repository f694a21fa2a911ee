//! Mutual challenge-response on the cluster key, run at the start of every TCP
//! connection before any other message is read.
//!
//! ```text
//! client -> Hello     { version, session, node, role, nonce_c }
//! server -> Challenge { version, session, node, nonce_s, mac_s = HMAC(key, "server" | ids | nonce_c | nonce_s) }
//! client -> Proof     { mac_c = HMAC(key, "client" | ids | nonce_s | nonce_c) }
//! server -> Accepted | Refused { reason }
//! ```
//!
//! The server proves it knows the key before the client does, and neither side
//! ever sends the key. MACs are compared in constant time. Every handshake
//! frame is read with a 4 KiB limit, and the whole handshake has
//! [`HANDSHAKE_TIMEOUT`].
//!
//! Once both sides are authenticated, each derives the connection's frame
//! keys from the cluster key and both nonces ([`FrameKeys`]): every later
//! frame is [`seal`](crate::seal)ed.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{read_frame_limited, write_frame, MAX_HANDSHAKE_FRAME_LEN};
pub use crate::identity::{Identity, Role};
use crate::seal::{FrameKeys, Side};
use crate::{ProtoError, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest accepted cluster key.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello {
        version: u16,
        who: Identity,
        nonce: [u8; 32],
    },
    Challenge {
        version: u16,
        who: Identity,
        nonce: [u8; 32],
        mac: Vec<u8>,
    },
    Proof {
        mac: Vec<u8>,
    },
    Accepted,
    Refused {
        reason: String,
    },
}

/// The other end of a connection once the handshake succeeded: who it is,
/// and the keys that seal the frames of this connection.
pub struct Authenticated {
    /// The authenticated identity of the other end.
    pub peer: Identity,
    /// This end's sealer and opener for the rest of the connection.
    pub keys: FrameKeys,
}

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// Wrap a key's bytes; refuses keys shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, ProtoError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(ProtoError::Auth(format!(
                "cluster key is {} bytes, at least {MIN_KEY_LEN} are required",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    fn hmac(&self) -> HmacSha256 {
        // new_from_slice only fails for fixed-size-key MACs; HMAC takes any length.
        <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// HMAC-SHA256 tag of `data`, for datagrams that cannot run a handshake
    /// (presence broadcasts).
    pub fn sign(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.hmac();
        mac.update(b"krg-datagram-v1 ");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Check a tag made by [`ClusterKey::sign`], in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.hmac();
        mac.update(b"krg-datagram-v1 ");
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    fn mac(
        &self,
        label: &[u8],
        client: &Identity,
        server: &Identity,
        first: &[u8; 32],
        second: &[u8; 32],
    ) -> HmacSha256 {
        let mut mac = self.hmac();
        mac.update(b"krg-auth-v1 ");
        mac.update(label);
        for who in [client, server] {
            mac.update(&who.session.to_be_bytes());
            mac.update(&who.node.to_be_bytes());
            mac.update(&[who.role as u8]);
        }
        mac.update(first);
        mac.update(second);
        mac
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey(<{} bytes>)", self.0.len())
    }
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rng().fill_bytes(&mut n);
    n
}

async fn within<T>(
    fut: impl std::future::Future<Output = Result<T, ProtoError>>,
) -> Result<T, ProtoError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| ProtoError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Run the client side. Returns the authenticated identity of the server
/// and this end's frame keys.
pub async fn client_handshake<S>(
    stream: &mut S,
    key: &ClusterKey,
    me: Identity,
) -> Result<Authenticated, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within(async {
        let nonce_c = nonce();
        write_frame(
            stream,
            &Handshake::Hello {
                version: PROTOCOL_VERSION,
                who: me,
                nonce: nonce_c,
            },
        )
        .await?;
        let (server, nonce_s, mac_s) = match read_handshake(stream).await? {
            Handshake::Challenge {
                version,
                who,
                nonce,
                mac,
            } => {
                check_version(version)?;
                (who, nonce, mac)
            }
            Handshake::Refused { reason } => return Err(ProtoError::Refused(reason)),
            other => {
                return Err(ProtoError::Unexpected(format!(
                    "{other:?} instead of a challenge"
                )))
            }
        };
        if key
            .mac(b"server", &me, &server, &nonce_c, &nonce_s)
            .verify_slice(&mac_s)
            .is_err()
        {
            // Tell the server why, so both logs name the cause.
            refuse(stream, "wrong cluster key".into()).await;
            return Err(ProtoError::Auth(format!(
                "node {} does not hold this cluster key",
                server.node
            )));
        }
        let mac_c = key
            .mac(b"client", &me, &server, &nonce_s, &nonce_c)
            .finalize()
            .into_bytes()
            .to_vec();
        write_frame(stream, &Handshake::Proof { mac: mac_c }).await?;
        match read_handshake(stream).await? {
            Handshake::Accepted => Ok(Authenticated {
                peer: server,
                keys: FrameKeys::derive(&key.0, &me, &server, &nonce_c, &nonce_s, Side::Client),
            }),
            Handshake::Refused { reason } => Err(ProtoError::Refused(reason)),
            other => Err(ProtoError::Unexpected(format!(
                "{other:?} instead of accepted"
            ))),
        }
    })
    .await
}

/// Run the server side. `admit` may refuse a correctly authenticated peer
/// (for instance a second node claiming an id already connected); its error
/// string is sent to the peer. Returns the authenticated identity of the
/// client and this end's frame keys.
pub async fn server_handshake<S>(
    stream: &mut S,
    key: &ClusterKey,
    me: Identity,
    admit: impl FnOnce(&Identity) -> Result<(), String>,
) -> Result<Authenticated, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within(async {
        let (client, nonce_c) = match read_handshake(stream).await? {
            Handshake::Hello {
                version,
                who,
                nonce,
            } => {
                if let Err(ProtoError::Refused(reason)) = check_version(version) {
                    // The reason alone: the client adds "peer refused".
                    refuse(stream, reason.clone()).await;
                    return Err(ProtoError::Refused(reason));
                }
                (who, nonce)
            }
            other => {
                return Err(ProtoError::Unexpected(format!(
                    "{other:?} instead of hello"
                )))
            }
        };
        if client.session != me.session {
            let reason = format!(
                "session {} is not this cluster's session {}",
                client.session, me.session
            );
            refuse(stream, reason.clone()).await;
            return Err(ProtoError::Refused(reason));
        }
        let nonce_s = nonce();
        let mac_s = key
            .mac(b"server", &client, &me, &nonce_c, &nonce_s)
            .finalize()
            .into_bytes()
            .to_vec();
        write_frame(
            stream,
            &Handshake::Challenge {
                version: PROTOCOL_VERSION,
                who: me,
                nonce: nonce_s,
                mac: mac_s,
            },
        )
        .await?;
        let mac_c = match read_handshake(stream).await? {
            Handshake::Proof { mac } => mac,
            Handshake::Refused { reason } => {
                return Err(ProtoError::Auth(format!(
                    "{} node {}: {reason}",
                    role_name(client.role),
                    client.node
                )))
            }
            other => {
                return Err(ProtoError::Unexpected(format!(
                    "{other:?} instead of proof"
                )))
            }
        };
        if key
            .mac(b"client", &client, &me, &nonce_s, &nonce_c)
            .verify_slice(&mac_c)
            .is_err()
        {
            let reason = "wrong cluster key".to_string();
            refuse(stream, reason.clone()).await;
            return Err(ProtoError::Auth(format!(
                "{} node {}: {reason}",
                role_name(client.role),
                client.node
            )));
        }
        if let Err(reason) = admit(&client) {
            refuse(stream, reason.clone()).await;
            return Err(ProtoError::Refused(reason));
        }
        write_frame(stream, &Handshake::Accepted).await?;
        Ok(Authenticated {
            peer: client,
            keys: FrameKeys::derive(&key.0, &client, &me, &nonce_c, &nonce_s, Side::Server),
        })
    })
    .await
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Node => "krgd",
        Role::Tool => "tool",
    }
}

fn check_version(version: u16) -> Result<(), ProtoError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtoError::Refused(format!(
            "protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        )))
    }
}

/// Read one handshake message: nothing longer than
/// [`MAX_HANDSHAKE_FRAME_LEN`] is read from a peer not yet authenticated.
async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Handshake, ProtoError> {
    read_frame_limited(stream, MAX_HANDSHAKE_FRAME_LEN).await
}

/// Longest refusal reason sent, so that it always fits a handshake frame.
const MAX_REASON_LEN: usize = 1024;

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, mut reason: String) {
    if reason.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    // Best effort: the peer may already be gone.
    let _ = write_frame(stream, &Handshake::Refused { reason }).await;
}

#[cfg(test)]
mod tests;
