//! `krg-proto`: everything that crosses a socket between krg programs.
//!
//! * [`frame`]: length-prefixed, CRC32-checked frames carrying postcard
//!   payloads (the handshake, the admin socket).
//! * [`auth`]: the mutual HMAC-SHA256 challenge-response every TCP link starts with;
//!   [`identity`]: who one end of a link is.
//! * [`seal`]: the encrypted and authenticated frames (AEGIS-256X4,
//!   keys per connection and direction) every TCP link carries after it.
//! * [`admin`]: requests a local tool (krgadm, checkpoint, krgcapset, mount.kdfs)
//!   sends to its node's krgd over the Unix socket.
//! * [`peer`]: requests one krgd sends another over TCP.
//! * [`cluster`], [`chkpt`], [`sched`], [`kdfs`], [`proc`]: the per-service message types;
//!   [`credentials`]: whose a job is; [`refusal`]: how every service says no.
//! * `bytestr`: byte strings in frames, decoded as slices of the frame.
//! * [`client`]: async clients for both sockets.
//! * [`keyfile`]: the cluster key file and the default paths of every program.
//! * [`nodeset`]: node ids and node lists as command lines spell them.
//! * [`term`]: terminals: a window size, a moving job's terminal state.
//!
//! Decoding never panics, whatever the bytes on the wire, and a frame's
//! buffer grows only as its bytes arrive, never beyond [`frame::MAX_FRAME_LEN`]
//! (4 KiB before the sender is authenticated).

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub(crate) mod bytestr;
pub mod chkpt;
pub mod client;
pub mod cluster;
pub mod credentials;
pub mod error;
pub mod frame;
pub mod identity;
pub mod kdfs;
pub mod keyfile;
pub mod migrate;
pub mod nodeset;
pub mod peer;
pub mod proc;
pub mod refusal;
pub mod sched;
pub mod seal;
pub mod term;

pub use error::ProtoError;

/// Identifier of a node in a cluster (LinuxSSI's `node_id`).
pub type NodeId = u32;

/// Identifier of a cluster session: nodes only talk to nodes of the same session.
pub type SessionId = u32;

/// Version of the message set. A peer announcing another version is refused at
/// the handshake with a message naming both versions.
///
/// 2: the membership messages are nested as `PeerRequest::Cluster(..)` /
/// `PeerResponse::Cluster(..)`, like those of the other services, which
/// renumbered every peer variant on the wire.
///
/// 3: every frame after the handshake is sealed (AES-256-GCM, see
/// [`seal`]) instead of CRC-checked; presence datagrams carry a timestamp
/// and a nonce under their MAC; `Welcome` and `Evict` carry the sender's
/// epoch and `ClusterStatus` the Raft term; the process service
/// (`proc`) and migration (`migrate`) messages are new.
///
/// 4: `Welcome` and `Evict` carry the sender's Raft term too.
///
/// 5: the Raft log has a command an older krgd cannot apply (`Place`: a
/// migration's placement, with `ClusterPeerRequest::Place`), and kDFS lock
/// leases are answered with the manager's epoch (`LockEpoch`, for
/// `ReclaimLock`), and a mount's opens come as `HeldBy` (its handles
/// closed when its leases stop).
///
/// 6: an application's parts on other nodes (`ProcRequest::RestoreParts`,
/// `RemoveSaved` and `ReleaseHeld`, `ProcPeerRequest::AdoptSaved`,
/// `RemoveSaved` and `ReleaseHeld`, `CheckpointAt::hold`), which an older
/// krgd cannot decode.
///
/// 7: the parts' copies in the application's directory
/// (`ProcRequest::ReadSaved`, `ProcPeerRequest::ReadSaved`), which an
/// older krgd cannot decode.
///
/// 8: the mirroring of kDFS stores (`KdfsRequest::Mirror`, `FromMirror`,
/// `Replication`; [`kdfs::MirrorChange`] with the striped files' units),
/// which an older krgd cannot decode.
///
/// 9: kDFS replica counts per inode and directory (`GetReplicas`,
/// `SetInodeReplicas`, `MakeInode::replicas`, `Stripe::replicas`), and a
/// single-copy store converted while mounted (`Conversion`).
///
/// 10: kDFS directories lent to a node's sole mount (`Lend`, `Lent`,
/// `Inval::Recall`).
///
/// 11: `Inval::NotSole`, told to a node's first mount when a second one
/// registers.
///
/// 12: sealed frames under AEGIS-256X4 instead of AES-256-GCM
/// ([`seal`]).
pub const PROTOCOL_VERSION: u16 = 12;

pub use keyfile::{
    KeyFileError, DEFAULT_CLUSTER_KEY, DEFAULT_KRG_MOUNT, DEFAULT_PLUGIN_REGISTRY,
    DEFAULT_SCHEDULER_MOUNT, DEFAULT_SOCKET,
};

/// Default TCP port krgd listens on for peers.
pub const DEFAULT_PORT: u16 = 7600;

/// Default UDP port used for presence broadcasts.
pub const DEFAULT_DISCOVERY_PORT: u16 = 7601;
