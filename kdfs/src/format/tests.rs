//! The meta-files' encoding, mkfs, and what they refuse.

use super::*;
use std::fs;

/// A store formatted before replication (layout 1, no `replicas` in
/// its superblock) still opens, as one copy.
#[test]
fn a_layout_1_superblock_reads_as_one_copy() {
    #[derive(Serialize)]
    struct V1 {
        fs_id: u128,
        node: NodeId,
        root_node: NodeId,
        layout: u32,
        created: u64,
    }
    let payload = postcard::to_stdvec(&V1 {
        fs_id: 7,
        node: 2,
        root_node: 1,
        layout: 1,
        created: 5,
    })
    .unwrap();
    let mut image = SB_MAGIC.to_vec();
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend_from_slice(&payload);
    let crc = crc32fast::hash(&image);
    image.extend_from_slice(&crc.to_le_bytes());
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join(SUPERBLOCK), &image).unwrap();
    let sb = StoreDir::open(d.path()).unwrap().read_superblock().unwrap();
    assert_eq!((sb.fs_id, sb.node, sb.root_node, sb.replicas), (7, 2, 1, 1));
    // And one claiming four copies is refused.
    let mut four = sb.clone();
    four.replicas = 4;
    StoreDir::open(d.path())
        .unwrap()
        .write_superblock(&four)
        .unwrap();
    let e = StoreDir::open(d.path())
        .unwrap()
        .read_superblock()
        .unwrap_err();
    assert!(e.to_string().contains("4 replicas"), "{e}");
}

#[test]
fn superblock_roundtrip_and_corruption() {
    let d = tempfile::tempdir().unwrap();
    let sb = mkfs(&MkfsOptions {
        dir: d.path().into(),
        node: 1,
        root_node: 1,
        force: false,
        replicas: 1,
    })
    .unwrap();
    assert_eq!(read_superblock(d.path()).unwrap(), sb);
    let meta = StoreDir::open(d.path()).unwrap().read_root_meta().unwrap();
    assert_eq!(meta.fs_id, sb.fs_id);
    // Flip one byte: refused.
    let p = d.path().join(SUPERBLOCK);
    let mut bytes = fs::read(&p).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    let err = read_superblock(d.path()).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn mkfs_refuses_non_empty_without_force() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("x"), b"x").unwrap();
    let opts = MkfsOptions {
        dir: d.path().into(),
        node: 2,
        root_node: 1,
        force: false,
        replicas: 1,
    };
    assert!(mkfs(&opts).unwrap_err().to_string().contains("not empty"));
    let sb = mkfs(&MkfsOptions {
        force: true,
        replicas: 1,
        ..opts.clone()
    })
    .unwrap();
    assert_eq!(sb.fs_id, 0);
    assert!(!d.path().join(ROOT_META).exists());
    assert!(mkfs(&opts)
        .unwrap_err()
        .to_string()
        .contains("already formatted"));
}

#[test]
fn mkfs_makes_the_store_private_even_over_an_open_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = tempfile::tempdir().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    // As a pre-fix mkfs left it: world-readable, an old inode inside.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::create_dir(d.path().join(INODES)).unwrap();
    fs::write(d.path().join(INODES).join("2"), b"old").unwrap();
    let opts = MkfsOptions {
        dir: d.path().into(),
        node: 1,
        root_node: 1,
        force: true,
        replicas: 1,
    };
    mkfs(&opts).unwrap();
    assert_eq!(mode(d.path()), 0o700);
    assert_eq!(mode(&d.path().join(INODES)), 0o700);
    assert_eq!(fs::metadata(d.path()).unwrap().uid(), STORE_OWNER);
    assert!(!d.path().join(INODES).join("2").exists());
    let sd = StoreDir::open(d.path()).unwrap();
    sd.check_private().unwrap();
    sd.open_inodes().unwrap();
    // A store opened up again is refused, saying how to fix it.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o750)).unwrap();
    let e = StoreDir::open(d.path())
        .unwrap()
        .check_private()
        .unwrap_err();
    assert!(
        e.to_string().contains("mode 0750 lets other users in"),
        "{e}"
    );
    assert!(e
        .to_string()
        .ends_with(&format!("chmod 700 {}", d.path().display())));
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(d.path().join(INODES), Some(1000), None).unwrap();
    let e = StoreDir::open(d.path()).unwrap().open_inodes().unwrap_err();
    assert!(e.to_string().contains("owned by uid 1000, not root"), "{e}");
}

#[test]
fn decode_never_panics_on_garbage() {
    for len in 0..64 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
        let _ = decode::<Superblock>(SB_MAGIC, &bytes, Path::new("x"));
    }
}
