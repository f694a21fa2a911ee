//! The handshake: keys, sessions and versions, and that the sealed frames
//! of an established connection refuse anything the other end did not send.

use super::*;
use crate::frame::{encode, read_frame};
use crate::peer::{PeerBody, PeerMessage, PeerRequest};
use crate::{NodeId, SessionId};
use tokio::io::AsyncWriteExt;

fn id(node: NodeId, session: SessionId) -> Identity {
    Identity {
        session,
        node,
        role: Role::Node,
    }
}

type Ends = (
    Result<Authenticated, ProtoError>,
    Result<Authenticated, ProtoError>,
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
);

async fn pair(ckey: &ClusterKey, skey: &ClusterKey, cid: Identity, sid: Identity) -> Ends {
    let (mut c, mut s) = tokio::io::duplex(1 << 16);
    let (ckey, skey) = (ckey.clone(), skey.clone());
    let server = tokio::spawn(async move {
        let r = server_handshake(&mut s, &skey, sid, |_| Ok(())).await;
        (r, s)
    });
    let client = client_handshake(&mut c, &ckey, cid).await;
    if client.is_err() {
        // A client that gave up closes its end.
        drop(c);
        let (server, s) = server.await.unwrap();
        let (c, _) = tokio::io::duplex(1);
        return (client, server, c, s);
    }
    let (server, s) = server.await.unwrap();
    (client, server, c, s)
}

fn ping(n: u64) -> PeerMessage {
    PeerMessage {
        id: n,
        body: PeerBody::Request(PeerRequest::Kdfs(crate::kdfs::KdfsRequest::Statfs)),
    }
}

#[tokio::test]
async fn same_key_authenticates_both_ways_and_frames_flow() {
    let k = ClusterKey::new(vec![7; 32]).unwrap();
    let (c, s, mut cs, mut ss) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(c.peer.node, 2);
    assert_eq!(s.peer.node, 1);
    c.keys.sealer.write(&mut cs, &ping(1)).await.unwrap();
    let got: PeerMessage = s.keys.opener.read(&mut ss).await.unwrap();
    assert_eq!(got.id, 1);
    s.keys.sealer.write(&mut ss, &ping(2)).await.unwrap();
    let got: PeerMessage = c.keys.opener.read(&mut cs).await.unwrap();
    assert_eq!(got.id, 2);
}

#[tokio::test]
async fn modified_injected_and_replayed_frames_are_refused() {
    let k = ClusterKey::new(vec![7; 32]).unwrap();
    // A frame altered on the way (one bit of its ciphertext).
    let (c, s, mut cs, mut ss) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let mut frame = c.keys.sealer.seal_msg(&ping(1)).unwrap();
    frame[6] ^= 0x20;
    cs.write_all(&frame).await.unwrap();
    let got = s.keys.opener.read::<PeerMessage, _>(&mut ss).await;
    assert!(matches!(got, Err(ProtoError::Forged)), "{got:?}");

    // A frame injected by someone without the keys: a plain CRC frame as
    // before version 3, and a frame sealed on another connection.
    let (_, s, mut cs, mut ss) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let mut s = s.unwrap();
    cs.write_all(&encode(&ping(66)).unwrap()).await.unwrap();
    assert!(matches!(
        s.keys.opener.read::<PeerMessage, _>(&mut ss).await,
        Err(ProtoError::Forged) | Err(ProtoError::FrameTooLarge { .. })
    ));
    let (other, _, _, _) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let forged = other.unwrap().keys.sealer.seal_msg(&ping(66)).unwrap();
    let (_, s, mut cs2, mut ss2) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let mut s2 = s.unwrap();
    cs2.write_all(&forged).await.unwrap();
    assert!(matches!(
        s2.keys.opener.read::<PeerMessage, _>(&mut ss2).await,
        Err(ProtoError::Forged)
    ));

    // A genuine frame, replayed: the copy is refused.
    let (c, s, mut cs, mut ss) = pair(&k, &k, id(1, 9), id(2, 9)).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let frame = c.keys.sealer.seal_msg(&ping(3)).unwrap();
    cs.write_all(&frame).await.unwrap();
    cs.write_all(&frame).await.unwrap();
    assert_eq!(
        s.keys
            .opener
            .read::<PeerMessage, _>(&mut ss)
            .await
            .unwrap()
            .id,
        3
    );
    assert!(matches!(
        s.keys.opener.read::<PeerMessage, _>(&mut ss).await,
        Err(ProtoError::Forged)
    ));
}

#[tokio::test]
async fn wrong_key_is_refused_on_both_sides() {
    let k1 = ClusterKey::new(vec![7; 32]).unwrap();
    let k2 = ClusterKey::new(vec![8; 32]).unwrap();
    let (c, s, _, _) = pair(&k1, &k2, id(1, 9), id(2, 9)).await;
    assert!(c.is_err());
    assert!(s.is_err());
}

#[tokio::test]
async fn other_session_is_refused() {
    let k = ClusterKey::new(vec![7; 32]).unwrap();
    let (c, s, _, _) = pair(&k, &k, id(1, 9), id(2, 10)).await;
    assert!(matches!(c, Err(ProtoError::Refused(r)) if r.contains("session")));
    assert!(s.is_err());
}

#[tokio::test]
async fn another_version_is_refused_naming_both() {
    let k = ClusterKey::new(vec![7; 32]).unwrap();
    let (mut c, mut s) = tokio::io::duplex(4096);
    let server =
        tokio::spawn(async move { server_handshake(&mut s, &k, id(2, 9), |_| Ok(())).await });
    let old = PROTOCOL_VERSION - 1;
    write_frame(
        &mut c,
        &Handshake::Hello {
            version: old,
            who: id(1, 9),
            nonce: [0; 32],
        },
    )
    .await
    .unwrap();
    let answer: Handshake = read_frame(&mut c).await.unwrap();
    let expected = format!("protocol version {old}, this node speaks {PROTOCOL_VERSION}");
    assert!(
        matches!(&answer, Handshake::Refused { reason } if *reason == expected),
        "{answer:?}"
    );
    assert!(server.await.unwrap().is_err());
}

#[test]
fn short_key_is_rejected() {
    assert!(ClusterKey::new(vec![1; 4]).is_err());
}
