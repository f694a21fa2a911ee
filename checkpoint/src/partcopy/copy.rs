//! On the application's node: a part's SN copied into the application's
//! directory (`parts/<NODE>/<PID>/`), with every SN of its chain the
//! copy does not have yet, oldest first. Each SN goes through the store's
//! staging directory and commit ([`crate::store`]): a copy cut short
//! leaves no SN, and the next copy cleans it up.
//!
//! `checkpoint` runs as the application's owner or as root; as root it
//! writes in the owner's directory through [`CheckedDir`] descriptors and
//! hands every file to the owner, as a checkpoint does.

use std::io::Write;
use std::path::PathBuf;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::Names;
use crate::store;

use super::serve::Listing;

/// Where the bytes come from: the node that saved the part (through
/// krgd, `ProcRequest::ReadSaved`).
pub trait Source {
    /// The files of SN `sn` and its parent.
    fn list(&mut self, sn: u32) -> Result<Listing>;
    /// Up to `len` bytes of `name` of SN `sn` from `offset`.
    fn read(&mut self, sn: u32, name: &str, offset: u64, len: u32) -> Result<Vec<u8>>;
}

/// Bytes asked for at once.
const CHUNK: u64 = 4 << 20;

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
    store::cleanup(&copy);
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
fn copy_sn(
    copy: &CheckedDir,
    sn: u32,
    files: &[(String, u64)],
    src: &mut impl Source,
    (uid, gid): (u32, u32),
) -> Result<u64> {
    let global = Names { sn }.global();
    if !files.iter().any(|(name, _)| *name == global) {
        return Err(ChkptError::Permission(format!(
            "SN {sn} listed without its {global}"
        )));
    }
    let staging = store::stage(copy, sn)?;
    let mut bytes = 0;
    for (name, len) in files {
        if !super::is_file_of(name, sn) {
            return Err(ChkptError::Permission(format!(
                "{name}: not a file of SN {sn}"
            )));
        }
        let mut out = staging.dir.create_file(name)?;
        let mut off = 0;
        while off < *len {
            let want = (len - off).min(CHUNK) as u32;
            let got = src.read(sn, name, off, want)?;
            if got.len() as u64 > u64::from(want) {
                return Err(ChkptError::bad_image(
                    staging.dir.join(name),
                    format!("its source sent {} bytes for {want}", got.len()),
                ));
            }
            if got.is_empty() {
                return Err(ChkptError::bad_image(
                    staging.dir.join(name),
                    format!("its source ended at {off} of {len} bytes"),
                ));
            }
            out.write_all(&got)
                .map_err(|e| ChkptError::io(staging.dir.join(name), e))?;
            off += got.len() as u64;
        }
        bytes += len;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        staging.chown_all(uid, gid)?;
    }
    staging.commit(copy, &global)?;
    Ok(bytes)
}
