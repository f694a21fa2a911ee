//! `cargo bench -p krg-proto --bench seal`: CPU cost of the sealed frames
//! (AEGIS-256X4, `seal`) against the plain CRC32 frames the transport
//! used before protocol 3 (`frame`), for kDFS-sized payloads: encode and
//! decode of the same message, rounds interleaved, medians of 15 rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::time::Instant;

use krg_proto::auth::{Identity, Role};
use krg_proto::frame::{decode, encode};
use krg_proto::kdfs::{Bytes, KdfsResponse};
use krg_proto::seal::{FrameKeys, Side};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Raw AEAD throughput on 1 MiB buffers, MiB/s, for the record of why
/// this AEAD: RustCrypto's ChaCha20-Poly1305 and AES-256-GCM, ring's
/// AES-256-GCM (what `seal` used until protocol 12) and AEGIS-256X4 (what
/// it uses) on this CPU.
fn raw_aead() {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let mut buf = vec![0x5au8; 1 << 20];
    let chacha = chacha20poly1305::ChaCha20Poly1305::new(&[7u8; 32].into());
    let aes = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
    let nonce = [0u8; 12];
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
    );
    let (mut c, mut a, mut r, mut g) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        let t = Instant::now();
        for _ in 0..64 {
            let tag = ring_key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    &mut buf,
                )
                .unwrap();
            let _ = std::hint::black_box(tag);
        }
        r.push(64.0 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..64 {
            let tag = chacha
                .encrypt_in_place_detached((&nonce).into(), b"", &mut buf)
                .unwrap();
            std::hint::black_box(tag);
        }
        c.push(64.0 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..64 {
            let tag = aes
                .encrypt_in_place_detached((&nonce).into(), b"", &mut buf)
                .unwrap();
            std::hint::black_box(tag);
        }
        a.push(64.0 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..64u8 {
            let tag = aegis::aegis256x4::Aegis256X4::<16>::new(&[7u8; 32], &[i; 32])
                .encrypt_in_place(&mut buf, b"");
            std::hint::black_box(tag);
        }
        g.push(64.0 / t.elapsed().as_secs_f64());
    }
    println!(
        "raw AEAD, 1 MiB buffers: RustCrypto ChaCha20-Poly1305 {:.0} MiB/s, RustCrypto \
         AES-256-GCM {:.0} MiB/s, ring AES-256-GCM {:.0} MiB/s, AEGIS-256X4 {:.0} MiB/s",
        median(c),
        median(a),
        median(r),
        median(g)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raw_aead();
    let id = |node| Identity {
        session: 1,
        node,
        role: Role::Node,
    };
    let secret = [7u8; 32];
    println!(
        "{:<10} {:>14} {:>14} {:>8}",
        "payload", "crc MiB/s", "sealed MiB/s", "ratio"
    );
    for size in [4 << 10, 128 << 10, 1 << 20, 16 << 20] {
        let msg = KdfsResponse::Data(Bytes::from(vec![0x5a; size]));
        let total: usize = 256 << 20;
        let n = (total / size).max(4);
        let (mut plain, mut sealed) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let t = Instant::now();
            for _ in 0..n {
                let f = encode(&msg).unwrap();
                let (m, _): (KdfsResponse, usize) = decode(&f).unwrap().unwrap();
                std::hint::black_box(m);
            }
            plain.push((n * size) as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64);
            let mut c =
                FrameKeys::derive(&secret, &id(1), &id(2), &[1; 32], &[2; 32], Side::Client);
            let mut s =
                FrameKeys::derive(&secret, &id(1), &id(2), &[1; 32], &[2; 32], Side::Server);
            let t = Instant::now();
            for _ in 0..n {
                let f = c.sealer.seal_msg(&msg).unwrap();
                let (m, _): (KdfsResponse, usize) = s.opener.decode(&f).unwrap().unwrap();
                std::hint::black_box(m);
            }
            sealed.push((n * size) as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64);
        }
        let (p, s) = (median(plain), median(sealed));
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>8.2}",
            format!("{} KiB", size >> 10),
            p,
            s,
            s / p
        );
    }
}
