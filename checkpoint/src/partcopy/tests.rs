//! A part's SNs copied from one store into an application directory:
//! the chain the copy lacks, whole and committed; what a hostile owner
//! may have put in the part's directory is refused.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::copy::{copy_in, Source};
use super::serve::{self, Listing};
use crate::checked_dir::CheckedDir;
use crate::error::Result;
use crate::image::{write_small, FileKind, GlobalImage, Names};
use crate::store;

/// Reads the part's directory as krgd would for `caller` (in pieces of
/// at most 5 bytes, so that files take several reads).
struct Local<'a> {
    dir: &'a Path,
    caller: u32,
    reads: usize,
}

impl Source for Local<'_> {
    fn list(&mut self, sn: u32) -> Result<Listing> {
        serve::list(self.dir, sn, self.caller)
    }
    fn read(&mut self, sn: u32, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.reads += 1;
        serve::read(self.dir, sn, name, offset, len.min(5), self.caller)
    }
    fn another(&self) -> Result<Self> {
        Ok(Local {
            dir: self.dir,
            caller: self.caller,
            reads: 0,
        })
    }
}

/// Commit SN `sn` (incremental on `parent`) in `dir` with one more file.
fn commit_sn(dir: &Path, sn: u32, parent: Option<u32>) {
    let d = CheckedDir::open(dir).unwrap();
    let g = GlobalImage {
        app_id: 7,
        sn,
        node_mask: 1 << 2,
        created_unix: 1,
        uid: 0,
        kernel: "6.18".into(),
        frozen_us: 1,
        parent,
        pidns: vec![(7, 1)],
    };
    std::fs::write(
        dir.join(format!("task_mm_7_v{sn}.bin")),
        format!("pages of SN {sn}"),
    )
    .unwrap();
    write_small(&d, &Names { sn }.global(), FileKind::Global, &g).unwrap();
}

fn part_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let part = t.path().join("7");
    std::fs::create_dir(&part).unwrap();
    (t, part)
}

#[test]
fn a_chain_is_copied_oldest_first_and_only_what_is_missing() {
    let (_t, part) = part_dir();
    let app_t = tempfile::tempdir().unwrap();
    let app = CheckedDir::open(app_t.path()).unwrap();
    commit_sn(&part, 1, None);
    commit_sn(&part, 2, Some(1));
    let mut src = Local {
        dir: &part,
        caller: 0,
        reads: 0,
    };
    let first = copy_in(&app, (2, 7, 2), &mut src).unwrap();
    assert_eq!(first.sns, vec![1, 2]);
    let copy = super::copies_of(app_t.path(), 2).join("7");
    assert_eq!(first.dir, copy);
    assert_eq!(
        std::fs::read_to_string(copy.join("task_mm_7_v1.bin")).unwrap(),
        "pages of SN 1"
    );
    let d = CheckedDir::open(&copy).unwrap();
    assert_eq!(store::committed_sns(&d), vec![1, 2]);
    assert!(src.reads > 4, "files came in several reads: {}", src.reads);
    // SN 3 on top: only it is copied
    commit_sn(&part, 3, Some(2));
    let next = copy_in(&app, (2, 7, 3), &mut src).unwrap();
    assert_eq!(next.sns, vec![3]);
    assert_eq!(store::committed_sns(&d), vec![1, 2, 3]);
    assert_eq!(
        super::copies(app_t.path()),
        vec![(2, 7, vec![1, 2, 3])],
        "what inspect lists"
    );
    // nothing left of the staging
    let hidden: Vec<_> = d
        .entries()
        .unwrap()
        .into_iter()
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn a_symlink_or_a_second_name_in_the_part_is_refused() {
    let (t, part) = part_dir();
    commit_sn(&part, 1, None);
    let secret = t.path().join("secret");
    std::fs::write(&secret, "not theirs").unwrap();
    std::os::unix::fs::symlink(&secret, part.join("task_9_v1.bin")).unwrap();
    let e = serve::list(&part, 1, 0)
        .err()
        .expect("a symlink is refused");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = serve::read(&part, 1, "task_9_v1.bin", 0, 100, 0)
        .expect_err("read through a symlink is refused");
    assert!(!e.to_string().contains("not theirs"), "{e}");
    std::fs::remove_file(part.join("task_9_v1.bin")).unwrap();
    std::fs::hard_link(&secret, part.join("task_9_v1.bin")).unwrap();
    assert!(
        serve::list(&part, 1, 0).is_err(),
        "a second name is refused"
    );
    assert!(serve::read(&part, 1, "task_9_v1.bin", 0, 100, 0).is_err());
}

#[test]
fn names_outside_the_sn_are_refused() {
    let (_t, part) = part_dir();
    commit_sn(&part, 1, None);
    for name in ["../7/global_v1.bin", ".lock", "global_v2.bin", ""] {
        assert!(
            serve::read(&part, 1, name, 0, 10, 0).is_err(),
            "{name:?} was read"
        );
    }
    assert!(serve::list(&part, 2, 0).is_err(), "an SN that is not");
}

#[test]
fn another_user_reads_nothing() {
    let (_t, part) = part_dir();
    commit_sn(&part, 1, None);
    let owner = std::fs::metadata(&part).unwrap().uid();
    let e = serve::list(&part, 1, owner + 1).err().expect("refused");
    assert!(e.to_string().contains("belongs to uid"), "{e}");
    assert!(serve::read(&part, 1, "global_v1.bin", 0, 10, owner + 1).is_err());
}

#[test]
fn a_source_that_ends_early_leaves_no_sn() {
    struct Short<'a>(Local<'a>);
    impl Source for Short<'_> {
        fn list(&mut self, sn: u32) -> Result<Listing> {
            let mut l = self.0.list(sn)?;
            for f in &mut l.files {
                f.1 += 10; // says more than there is
            }
            Ok(l)
        }
        fn read(&mut self, sn: u32, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
            self.0.read(sn, name, offset, len)
        }
        fn another(&self) -> Result<Self> {
            Ok(Short(self.0.another()?))
        }
    }
    let (_t, part) = part_dir();
    commit_sn(&part, 1, None);
    let app_t = tempfile::tempdir().unwrap();
    let app = CheckedDir::open(app_t.path()).unwrap();
    let mut src = Short(Local {
        dir: &part,
        caller: 0,
        reads: 0,
    });
    let e = copy_in(&app, (2, 7, 1), &mut src).expect_err("cut short");
    assert!(e.to_string().contains("ended at"), "{e}");
    let d = CheckedDir::open(&super::copies_of(app_t.path(), 2).join("7")).unwrap();
    assert!(store::committed_sns(&d).is_empty());
    // the next copy cleans up and succeeds
    let mut good = Local {
        dir: &part,
        caller: 0,
        reads: 0,
    };
    assert_eq!(copy_in(&app, (2, 7, 1), &mut good).unwrap().sns, vec![1]);
}

/// A copy killed half way leaves its staging directory. Taken for an
/// attempt of this directory's own, it became a tombstone, and the SN
/// copied again under that number lost its files at the next copy.
#[test]
fn a_copy_cut_short_by_a_kill_leaves_nothing_that_harms_the_next() {
    let (_t, part) = part_dir();
    commit_sn(&part, 1, None);
    commit_sn(&part, 2, Some(1));
    let app_t = tempfile::tempdir().unwrap();
    let app = CheckedDir::open(app_t.path()).unwrap();
    let copy = super::copies_of(app_t.path(), 2).join("7");
    std::fs::create_dir_all(copy.join(".tmp-v1")).unwrap();
    std::fs::write(copy.join(".tmp-v1/task_mm_7_v1.bin"), "half").unwrap();
    let mut src = Local {
        dir: &part,
        caller: 0,
        reads: 0,
    };
    assert_eq!(copy_in(&app, (2, 7, 1), &mut src).unwrap().sns, vec![1]);
    assert_eq!(copy_in(&app, (2, 7, 2), &mut src).unwrap().sns, vec![2]);
    let d = CheckedDir::open(&copy).unwrap();
    assert_eq!(store::committed_sns(&d), vec![1, 2]);
    assert_eq!(
        std::fs::read_to_string(copy.join("task_mm_7_v1.bin")).unwrap(),
        "pages of SN 1"
    );
    assert!(!copy.join(".dead-v1").exists() && !copy.join(".tmp-v1").exists());
}
