//! On the node that saved a part: the files of one of its SNs, read for
//! the caller. The directory is its user's (who may have put anything in
//! it), and krgd reads it as root: only regular files with a single name,
//! never through a symlink, owned by the directory's owner, named as
//! files of that SN; the caller must be that owner or root.

use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::sys::stat::SFlag;

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, GlobalImage, Names};
use crate::store;

/// What [`list`] finds: each file of the SN with its size, and the SN it
/// is incremental on.
pub struct Listing {
    pub files: Vec<(String, u64)>,
    pub parent: Option<u32>,
}

/// The application directory `dir`, open for `caller`, and its owner.
fn open_for(dir: &Path, caller: u32) -> Result<(CheckedDir, u32)> {
    let d = CheckedDir::open(dir)?;
    let owner = d.stat()?.st_uid;
    if caller != 0 && caller != owner {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {owner}",
            dir.display()
        )));
    }
    Ok((d, owner))
}

fn not_owned(d: &CheckedDir, name: &str) -> ChkptError {
    ChkptError::Permission(format!(
        "{} is not a regular file of the directory's owner: refusing it",
        d.join(name).display()
    ))
}

/// The files of committed SN `sn` of `dir`, for `caller`.
pub fn list(dir: &Path, sn: u32, caller: u32) -> Result<Listing> {
    let (d, owner) = open_for(dir, caller)?;
    let _lock = store::lock(&d)?;
    if !store::committed_sns(&d).contains(&sn) {
        return Err(ChkptError::NoSuchCheckpoint {
            dir: dir.to_path_buf(),
            sn,
        });
    }
    let mut files = Vec::new();
    for name in d.entries()? {
        let Some(name) = name.to_str() else { continue };
        if !super::is_file_of(name, sn) {
            continue;
        }
        let st = d.stat_entry(name)?;
        let regular =
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
        if !regular || st.st_uid != owner || st.st_nlink != 1 {
            return Err(not_owned(&d, name));
        }
        files.push((name.to_string(), st.st_size as u64));
    }
    files.sort();
    let (g, _) = image::read_in::<GlobalImage>(&d, &Names { sn }.global(), FileKind::Global)?;
    Ok(Listing {
        files,
        parent: g.meta.parent,
    })
}

/// Up to `len` bytes of file `name` of SN `sn` of `dir` from `offset`,
/// for `caller` (fewer only at its end).
pub fn read(
    dir: &Path,
    sn: u32,
    name: &str,
    offset: u64,
    len: u32,
    caller: u32,
) -> Result<Vec<u8>> {
    let (d, owner) = open_for(dir, caller)?;
    if !super::is_file_of(name, sn) {
        return Err(ChkptError::Permission(format!(
            "{name}: not a file of SN {sn}"
        )));
    }
    let f = d.open_file(name)?;
    if f.uid != owner {
        return Err(not_owned(&d, name));
    }
    let want = u64::from(len).min(f.len.saturating_sub(offset));
    let mut buf = vec![0u8; usize::try_from(want).unwrap_or(0)];
    let mut got = 0;
    while got < buf.len() {
        let n = f
            .file
            .read_at(&mut buf[got..], offset + got as u64)
            .map_err(|e| ChkptError::io(&f.path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}
