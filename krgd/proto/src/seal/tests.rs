//! Sealed frames: round trips, and every way of tampering with a frame
//! (a flipped bit, a replay, a reorder, a frame made with another key, a
//! truncation) is refused as forged; arbitrary bytes never make decoding
//! panic.

use super::*;
use crate::auth::Role;
use proptest::prelude::*;

fn id(node: u32) -> Identity {
    Identity {
        session: 7,
        node,
        role: Role::Node,
    }
}

/// Both ends of one connection.
fn pair(secret: &[u8], nc: [u8; 32], ns: [u8; 32]) -> (FrameKeys, FrameKeys) {
    let c = FrameKeys::derive(secret, &id(1), &id(2), &nc, &ns, Side::Client);
    let s = FrameKeys::derive(secret, &id(1), &id(2), &nc, &ns, Side::Server);
    (c, s)
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Msg {
    Ping(u64),
    Data(Vec<u8>),
}

#[test]
fn frames_round_trip_both_ways_and_hide_the_payload() {
    let (mut c, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let secret = Msg::Data(b"kdfs block: the quick brown fox".to_vec());
    let frame = c.sealer.seal_msg(&secret).unwrap();
    assert!(
        !frame.windows(9).any(|w| w == b"brown fox"),
        "payload in clear"
    );
    let (back, used): (Msg, usize) = s.opener.decode(&frame).unwrap().unwrap();
    assert_eq!((back, used), (secret, frame.len()));
    let frame = s.sealer.seal_msg(&Msg::Ping(3)).unwrap();
    assert_eq!(
        c.opener.decode::<Msg>(&frame).unwrap().unwrap().0,
        Msg::Ping(3)
    );
}

#[test]
fn the_same_message_twice_seals_differently() {
    let (mut c, _) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let a = c.sealer.seal_msg(&Msg::Ping(1)).unwrap();
    let b = c.sealer.seal_msg(&Msg::Ping(1)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn a_flipped_bit_anywhere_is_refused() {
    let (mut c, _) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let frame = c.sealer.seal_msg(&Msg::Data(vec![9; 40])).unwrap();
    for i in 0..frame.len() {
        for bit in [0x01u8, 0x80] {
            let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
            let mut bad = frame.clone();
            bad[i] ^= bit;
            let got = s.opener.decode::<Msg>(&bad);
            assert!(
                matches!(
                    got,
                    Err(ProtoError::Forged) | Err(ProtoError::FrameTooLarge { .. }) | Ok(None)
                ),
                "byte {i} bit {bit:#x}: {got:?}"
            );
        }
    }
}

#[test]
fn replayed_reordered_and_foreign_frames_are_refused() {
    let (mut c, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let f0 = c.sealer.seal_msg(&Msg::Ping(0)).unwrap();
    let f1 = c.sealer.seal_msg(&Msg::Ping(1)).unwrap();
    // Reordered: frame 1 where frame 0 is due.
    assert!(matches!(
        s.opener.decode::<Msg>(&f1),
        Err(ProtoError::Forged)
    ));
    // On a fresh connection, in order, frame 0 opens...
    let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    assert_eq!(
        s.opener.decode::<Msg>(&f0).unwrap().unwrap().0,
        Msg::Ping(0)
    );
    // ...and a replay of frame 0 is refused.
    assert!(matches!(
        s.opener.decode::<Msg>(&f0),
        Err(ProtoError::Forged)
    ));
    // A frame sealed on another connection (other nonces) or with another key.
    let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let (mut other, _) = pair(b"0123456789abcdef0123", [1; 32], [3; 32]);
    let foreign = other.sealer.seal_msg(&Msg::Ping(0)).unwrap();
    assert!(matches!(
        s.opener.decode::<Msg>(&foreign),
        Err(ProtoError::Forged)
    ));
    let (mut other, _) = pair(b"another cluster's key", [1; 32], [2; 32]);
    let foreign = other.sealer.seal_msg(&Msg::Ping(0)).unwrap();
    assert!(matches!(
        s.opener.decode::<Msg>(&foreign),
        Err(ProtoError::Forged)
    ));
    // A frame reflected back to its sender (the other direction's key).
    let (mut c, _) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let mine = c.sealer.seal_msg(&Msg::Ping(0)).unwrap();
    assert!(matches!(
        c.opener.decode::<Msg>(&mine),
        Err(ProtoError::Forged)
    ));
}

#[test]
fn a_direction_that_would_wrap_is_closed() {
    let (mut c, _) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    c.sealer.counter.set(u64::MAX);
    assert!(matches!(
        c.sealer.seal_msg(&Msg::Ping(0)),
        Err(ProtoError::NonceExhausted)
    ));
}

#[test]
fn lengths_are_checked_before_reading() {
    let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    assert!(matches!(
        s.opener.decode::<Msg>(&huge),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    // Shorter than a tag: cannot be a sealed frame.
    let tiny = [0, 0, 0, 3, 1, 2, 3];
    assert!(matches!(
        s.opener.decode::<Msg>(&tiny),
        Err(ProtoError::Forged)
    ));
}

#[tokio::test]
async fn frames_over_a_stream_and_a_clean_close() {
    let (mut c, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let big = Msg::Data(vec![0xab; 200_000]);
    let sent = Msg::Data(vec![0xab; 200_000]);
    let writer = tokio::spawn(async move {
        c.sealer.write(&mut a, &sent).await.unwrap();
        c.sealer.write(&mut a, &Msg::Ping(5)).await.unwrap();
    });
    assert_eq!(s.opener.read::<Msg, _>(&mut b).await.unwrap(), big);
    assert_eq!(s.opener.read::<Msg, _>(&mut b).await.unwrap(), Msg::Ping(5));
    writer.await.unwrap();
    assert!(matches!(
        s.opener.read::<Msg, _>(&mut b).await,
        Err(ProtoError::Closed)
    ));
}

proptest! {
    // Any bytes offered as a sealed frame: Ok(None) or an error, never a
    // panic, and never a message (nobody without the key can make one).
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
        let got = s.opener.decode::<crate::peer::PeerMessage>(&bytes);
        prop_assert!(!matches!(got, Ok(Some(_))));
    }

    // A valid frame with a well-formed header and any body bytes of the
    // announced length: refused as forged, never a panic.
    #[test]
    fn any_body_under_a_valid_header_is_forged(body in proptest::collection::vec(any::<u8>(), 16..2048)) {
        let (_, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        prop_assert!(matches!(s.opener.decode::<crate::peer::PeerMessage>(&frame), Err(ProtoError::Forged)));
    }

    // Any sealed payload, authenticated, that is not a valid message:
    // a decode error, never a panic.
    #[test]
    fn garbage_sealed_with_the_right_key_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (mut c, mut s) = pair(b"0123456789abcdef0123", [1; 32], [2; 32]);
        let mut buf = vec![0u8; SEALED_HEADER_LEN];
        buf.extend_from_slice(&payload);
        let frame = c.sealer.seal(Encoded(buf)).unwrap();
        let _ = s.opener.decode::<crate::peer::PeerMessage>(&frame);
    }
}
