//! The format's own tests: round trips, CRCs, truncation, and files of
//! every older version.

use super::*;

fn sample() -> GlobalImage {
    GlobalImage {
        app_id: 42,
        sn: 3,
        node_mask: 2,
        created_unix: 1,
        uid: 0,
        kernel: "6.18".into(),
        frozen_us: 1234,
        parent: Some(2),
        pidns: vec![(81234, 2), (81235, 3)],
    }
}

#[test]
fn roundtrip_and_crc() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.bin");
    let d = CheckedDir::open(dir.path()).unwrap();
    write_small(&d, "g.bin", FileKind::Global, &sample()).unwrap();
    let d: Decoded<GlobalImage> = read_file(&p, FileKind::Global).unwrap();
    assert_eq!(d.meta, sample());
    assert_eq!(d.version, FORMAT_VERSION);
    // flip one byte of metadata: CRC must catch it
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let e = read_file::<GlobalImage>(&p, FileKind::Global)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("CRC"), "{e}");
}

#[test]
fn version_kind_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.bin");
    let mut b = encode(FileKind::Global, &sample()).unwrap();
    b[8] = 99;
    std::fs::write(&p, &b).unwrap();
    assert!(read_file::<GlobalImage>(&p, FileKind::Global)
        .err()
        .unwrap()
        .to_string()
        .contains("version 99"));
    b[8] = FORMAT_VERSION as u8;
    std::fs::write(&p, &b[..b.len() - 2]).unwrap();
    assert!(read_file::<GlobalImage>(&p, FileKind::Global)
        .err()
        .unwrap()
        .to_string()
        .contains("truncated"));
    std::fs::write(&p, &b).unwrap();
    assert!(read_file::<GlobalImage>(&p, FileKind::Task)
        .err()
        .unwrap()
        .to_string()
        .contains("kind"));
    // a file with data: metadata after it; cut anywhere, it is refused
    let f = File::create(&p).unwrap();
    f.write_all_at(&[7u8; 8192], PAGE).unwrap();
    let len = finish_with_data(&f, &p, FileKind::Mm, &sample(), PAGE, 8192).unwrap();
    let d = read_file::<GlobalImage>(&p, FileKind::Mm).unwrap();
    assert_eq!((d.data_off, d.data_len), (PAGE, 8192));
    f.set_len(len - 1).unwrap();
    assert!(read_file::<GlobalImage>(&p, FileKind::Mm)
        .err()
        .unwrap()
        .to_string()
        .contains("truncated"));
}

/// A file as version 1 wrote it (48-byte header, CRC over 40 bytes and
/// the metadata) still decodes, into the current types.
#[test]
fn version_1_files_are_read() {
    let old = v1::MmV1 {
        vmas: vec![v1::VmaV1 {
            start: 0x1000,
            end: 0x3000,
            prot: 3,
            shared: false,
            kind: VmaKind::Anon,
            runs: vec![v1::RunV1 {
                addr: 0x1000,
                pages: 2,
                data_off: 0,
            }],
        }],
        params: MmParams::default(),
        shared_pending: vec![],
    };
    let body = postcard::to_stdvec(&old).unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(FileKind::Mm as u32).to_le_bytes());
    h.extend_from_slice(&(body.len() as u64).to_le_bytes());
    h.extend_from_slice(&PAGE.to_le_bytes());
    h.extend_from_slice(&(2 * PAGE).to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&h);
    c.update(&body);
    h.extend_from_slice(&c.finalize().to_le_bytes());
    h.extend_from_slice(&[0u8; 4]);
    h.extend_from_slice(&body);
    h.resize(3 * PAGE as usize, 5);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.bin");
    std::fs::write(&p, &h).unwrap();
    let d = read_file::<MmImage>(&p, FileKind::Mm).unwrap();
    assert_eq!(d.version, 1);
    assert_eq!((d.data_off, d.data_len), (PAGE, 2 * PAGE));
    assert_eq!(
        d.meta.vmas[0].runs[0].data,
        RunData::Here {
            off: 0,
            crcs: vec![]
        }
    );
    assert_eq!(d.meta.parent, None);
}

/// A version 3 task file (no POSIX timers at the end of its
/// attributes) decodes into today's type, with none.
#[test]
fn version_3_task_files_are_read() {
    let mut t = task::sample_task(1000, 1000, vec![1000]);
    t.attrs = TaskAttrs {
        saved: true,
        oom_score_adj: 300,
        may_write: vec![0x7000],
        ..TaskAttrs::default()
    };
    let now = postcard::to_stdvec(&t).unwrap();
    // the empty timer and seccomp lists and the unshared fd table are
    // the last three bytes
    assert_eq!(&now[now.len() - 3..], &[0, 0, 0]);
    let v3 = &now[..now.len() - 3];
    assert_eq!(TaskImage::decode_v3(v3).unwrap(), t);
    t.attrs.posix_timers.push(PosixTimer::default());
    assert_ne!(postcard::to_stdvec(&t).unwrap().len(), now.len());
}

/// A node file of versions 2 to 4 (nothing in flight and no closing
/// TCP connection at its end) decodes into today's type, with none.
#[test]
fn node_files_before_version_5_are_read() {
    let n = NodeImage {
        pipes: vec![PipeImage {
            ino: 7,
            data: b"queued".to_vec(),
        }],
        ..NodeImage::empty(3)
    };
    let now = postcard::to_stdvec(&n).unwrap();
    assert_eq!(&now[now.len() - 3..], &[0, 0, 0]);
    let old = &now[..now.len() - 3];
    assert_eq!(NodeImage::decode_v4(old).unwrap(), n);
    assert_eq!(NodeImage::decode_v3(old).unwrap(), n);
    assert_eq!(NodeImage::decode_v2(old).unwrap(), n);
    assert!(postcard::from_bytes::<NodeImage>(old).is_err());
}

/// A node file of versions 5 and 6 (no stand-ins at its end) decodes
/// into today's type, with none; today's keeps its stand-ins.
#[test]
fn node_files_before_version_7_are_read() {
    let mut n = NodeImage::empty(1);
    let now = postcard::to_stdvec(&n).unwrap();
    let old = &now[..now.len() - 1];
    assert_eq!(NodeImage::decode_v6(old).unwrap(), n);
    assert_eq!(NodeImage::decode_v5(old).unwrap(), n);
    n.stand_ins.push(StandInEntry {
        pid: 4243,
        ppid: 4242,
        pgid: 4242,
        sid: 4000,
        argv: vec![b"python3".to_vec(), b"sim.py".to_vec()],
        stdio: vec![FdImage {
            fd: 1,
            flags: 1,
            kind: FdKind::Pipe {
                ino: 99,
                write_end: true,
            },
        }],
        part: PartRef {
            node: 2,
            pid: 4243,
            host_pid: 81234,
            sn: 1,
        },
    });
    let now = postcard::to_stdvec(&n).unwrap();
    assert_eq!(postcard::from_bytes::<NodeImage>(&now).unwrap(), n);
}

/// A global file of versions 2 to 5 (no PID namespace map at its end)
/// decodes into today's type, with an empty map.
#[test]
fn global_files_before_version_6_are_read() {
    let g = GlobalImage {
        pidns: vec![],
        ..sample()
    };
    let now = postcard::to_stdvec(&g).unwrap();
    assert_eq!(now.last(), Some(&0));
    let old = &now[..now.len() - 1];
    for decode in [
        GlobalImage::decode_v2,
        GlobalImage::decode_v3,
        GlobalImage::decode_v4,
        GlobalImage::decode_v5,
    ] {
        assert_eq!(decode(old).unwrap(), g);
    }
    assert!(postcard::from_bytes::<GlobalImage>(old).is_err());
}

proptest::proptest! {
    /// Any bytes: decoding fails cleanly or succeeds, never panics.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), flip in 0usize..600) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_file::<MmImage>(&p, FileKind::Mm);
        // a valid file with one byte changed is refused
        let mut good = encode(FileKind::Global, &sample()).unwrap();
        let i = flip % good.len();
        good[i] ^= 0x01;
        std::fs::write(&p, &good).unwrap();
        let r = read_file::<GlobalImage>(&p, FileKind::Global);
        proptest::prop_assert!(r.is_err() || (52..64).contains(&i));
    }
}
