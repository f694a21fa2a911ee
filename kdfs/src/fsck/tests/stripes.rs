//! Copies of striped files' units in `DIR/stripes/`: kept while their
//! file names them, removed (with every store given) once it is gone.

use krg_proto::kdfs::{KdfsRequest as Q, StripeLayout};

use super::*;

fn stripe(fs: &Fs, name: &str) -> InodeId {
    let a = fs.create(1, fs.root, name, FileKind::File);
    let layout = StripeLayout {
        unit: 4096,
        nodes: vec![1, 2],
    };
    fs.ask(1, Q::SetLayout { ino: a.ino, layout });
    for (node, offset) in [(1, 0), (2, 4096)] {
        let q = Q::StripeWrite {
            ino: a.ino,
            offset,
            data: b"unit".to_vec().into(),
        };
        fs.ask(node, q);
    }
    a.ino
}

#[test]
fn a_copy_whose_striped_file_is_gone_is_removed_with_every_store() {
    let mut fs = Fs::new();
    let kept = stripe(&fs, "kept");
    let gone = stripe(&fs, "gone");
    // Removed on node 1; the drop never reached node 2 (its krgd would
    // have been told by node 1's).
    fs.ask(
        1,
        Q::Unlink {
            dir: fs.root,
            name: b"gone".to_vec(),
        },
    );
    fs.stop();
    let copy = |ino: InodeId| fs.dirs[1].join("stripes").join(format!("{ino:016x}"));
    assert!(copy(gone).exists() && copy(kept).exists());
    // Node 2 alone cannot know the file is gone.
    assert_eq!(fs.fsck(&[2], false).exit_code(), EXIT_CLEAN);
    let r = fs.fsck(&[1, 2], false);
    assert_eq!(kinds(&r), [Problem::OrphanCopy], "{r:#?}");
    assert!(r.findings[0].message.contains(&format!("{gone:x}")));
    repair_then_clean(&fs, &[1, 2]);
    assert!(!copy(gone).exists(), "the orphan copy stayed");
    assert_eq!(std::fs::read(copy(kept)).unwrap()[4096..], *b"unit");
}

#[test]
fn a_name_in_stripes_that_is_no_copy_is_reported_and_left() {
    let mut fs = Fs::new();
    fs.stop();
    let odd = fs.dirs[1].join("stripes").join("notes.txt");
    std::fs::write(&odd, b"x").unwrap();
    let r = fs.fsck(&[1, 2], true);
    assert_eq!(kinds(&r), [Problem::Stray], "{r:#?}");
    assert_eq!(r.exit_code(), EXIT_LEFT);
    assert!(odd.exists());
}
