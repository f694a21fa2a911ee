//! On the application's node: a part's SN copied into the application's
//! directory (`parts/<NODE>/<PID>/`), with every SN of its chain the
//! copy does not have yet, oldest first. Each SN goes through the store's
//! staging directory and commit ([`crate::store`]): a copy cut short
//! leaves no SN, and the next copy of that SN removes what it left. The
//! SN numbers are the part's node's: nothing here is a tombstone.
//!
//! `checkpoint` runs as the application's owner or as root; as root it
//! writes in the owner's directory through [`CheckedDir`] descriptors and
//! hands every file to the owner, as a checkpoint does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::Names;
use crate::store;

use super::serve::Listing;

/// Where the bytes come from: the node that saved the part (through
/// krgd, `ProcRequest::ReadSaved`).
pub trait Source: Send + Sized {
    /// The files of SN `sn` and its parent.
    fn list(&mut self, sn: u32) -> Result<Listing>;
    /// Up to `len` bytes of `name` of SN `sn` from `offset`.
    fn read(&mut self, sn: u32, name: &str, offset: u64, len: u32) -> Result<Vec<u8>>;
    /// Another source of the same part (a reader of its own).
    fn another(&self) -> Result<Self>;
}

/// Bytes asked for at once.
const CHUNK: u64 = 4 << 20;
/// Pieces fetched at once.
const READERS: usize = 4;

/// What [`copy_in`] did.
#[derive(Debug)]
pub struct Copied {
    /// The copy's directory.
    pub dir: PathBuf,
    /// The SNs copied, oldest first (none: it had them all).
    pub sns: Vec<u32>,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copy SN `sn` of the part node `node` saved as application `host_pid`
/// (and the SNs of its chain the copy lacks) from `src` into `app`, the
/// application's directory.
pub fn copy_in(
    app: &CheckedDir,
    (node, host_pid, sn): (u32, i32, u32),
    src: &mut impl Source,
) -> Result<Copied> {
    let st = app.stat()?;
    let owner = (st.st_uid, st.st_gid);
    let parts = sub_dir(app, super::PARTS_DIR, owner)?;
    let of_node = sub_dir(&parts, &node.to_string(), owner)?;
    let copy = sub_dir(&of_node, &host_pid.to_string(), owner)?;
    let _lock = store::lock(&copy)?;
    let have = store::committed_sns(&copy);
    let mut todo = Vec::new();
    let mut next = Some(sn);
    while let Some(s) = next {
        if have.contains(&s) || todo.iter().any(|(t, _)| *t == s) {
            break;
        }
        let listing = src.list(s)?;
        next = listing.parent;
        todo.push((s, listing.files));
    }
    let mut copied = Copied {
        dir: copy.path().to_path_buf(),
        sns: Vec::new(),
        bytes: 0,
    };
    for (s, files) in todo.into_iter().rev() {
        copied.bytes += copy_sn(&copy, s, &files, src, owner)?;
        copied.sns.push(s);
    }
    Ok(copied)
}

/// The subdirectory `name` of `parent` (made if missing): a directory,
/// not a symlink, its owner's (or this process's own), 0700.
fn sub_dir(parent: &CheckedDir, name: &str, (uid, gid): (u32, u32)) -> Result<CheckedDir> {
    parent.make_dir(name, 0o700)?;
    let d = parent.open_dir(name)?;
    let st = d.stat()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != uid && st.st_uid != me {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {}, not to the application's owner (uid {uid})",
            d.path().display(),
            st.st_uid
        )));
    }
    if me == 0 {
        d.set_owner(uid, gid, 0o700)?;
    }
    Ok(d)
}

/// Copy the files of SN `sn` into `copy` and commit it: the bytes copied.
/// [`READERS`] readers fetch its pieces at once, each on a connection of
/// its own (one round trip at a time left the copy at a quarter of the
/// disk's speed: the transfer, sealing and the reads there overlap now).
fn copy_sn<S: Source>(
    copy: &CheckedDir,
    sn: u32,
    files: &[(String, u64)],
    src: &mut S,
    (uid, gid): (u32, u32),
) -> Result<u64> {
    let global = Names { sn }.global();
    if !files.iter().any(|(name, _)| *name == global) {
        return Err(ChkptError::Permission(format!(
            "SN {sn} listed without its {global}"
        )));
    }
    if let Some((name, _)) = files.iter().find(|(name, _)| !super::is_file_of(name, sn)) {
        return Err(ChkptError::Permission(format!(
            "{name}: not a file of SN {sn}"
        )));
    }
    // (a copy cut short by a kill left its staging directory)
    store::forget_attempt(copy, sn)?;
    let staging = store::stage(copy, sn)?;
    let outs = files
        .iter()
        .map(|(name, _)| staging.dir.create_file(name))
        .collect::<Result<Vec<File>>>()?;
    let pieces: Vec<Piece> = files
        .iter()
        .enumerate()
        .flat_map(|(file, &(_, len))| {
            (0..len.div_ceil(CHUNK)).map(move |i| Piece {
                file,
                off: i * CHUNK,
                len: (len - i * CHUNK).min(CHUNK) as u32,
            })
        })
        .collect();
    let job = Job {
        sn,
        files,
        outs: &outs,
        dir: &staging.dir,
        pieces: &pieces,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    };
    let mut others = Vec::new();
    for _ in 1..READERS.min(pieces.len()) {
        others.push(src.another()?);
    }
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter_mut()
            .map(|other| scope.spawn(|| job.fetch_all(other)))
            .collect();
        let mut results = vec![job.fetch_all(src)];
        for h in handles {
            results.push(h.join().unwrap_or_else(|_| {
                Err(ChkptError::Thread("a reader of the copy panicked".into()))
            }));
        }
        results
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let bytes = files.iter().map(|(_, len)| len).sum();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        staging.chown_all(uid, gid)?;
    }
    staging.commit(copy, &global)?;
    Ok(bytes)
}

/// `len` bytes of file `file` (index in the listing) from `off`.
struct Piece {
    file: usize,
    off: u64,
    len: u32,
}

/// The pieces of one SN, shared by its readers.
struct Job<'a> {
    sn: u32,
    files: &'a [(String, u64)],
    outs: &'a [File],
    dir: &'a CheckedDir,
    pieces: &'a [Piece],
    next: AtomicUsize,
    failed: AtomicBool,
}

impl Job<'_> {
    /// Fetch pieces with `src` until none is left (or a reader failed).
    fn fetch_all(&self, src: &mut impl Source) -> Result<()> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(piece) = self.pieces.get(i) else {
                return Ok(());
            };
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(e) = self.fetch(src, piece) {
                self.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }

    /// Fetch one piece and write it in place.
    fn fetch(&self, src: &mut impl Source, p: &Piece) -> Result<()> {
        let (name, len) = &self.files[p.file];
        let path = || self.dir.join(name);
        let mut done: u32 = 0;
        while done < p.len {
            let at = p.off + u64::from(done);
            let want = p.len - done;
            let got = src.read(self.sn, name, at, want)?;
            if got.len() as u64 > u64::from(want) {
                return Err(ChkptError::bad_image(
                    path(),
                    format!("its source sent {} bytes for {want}", got.len()),
                ));
            }
            if got.is_empty() {
                return Err(ChkptError::bad_image(
                    path(),
                    format!("its source ended at {at} of {len} bytes"),
                ));
            }
            self.outs[p.file]
                .write_all_at(&got, at)
                .map_err(|e| ChkptError::io(path(), e))?;
            done += got.len() as u32;
        }
        Ok(())
    }
}
