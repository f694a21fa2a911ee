//! Directory entries as the store writes them, and the names they may have.
//!
//! An entry is a symlink inside its directory's object, named as the entry,
//! whose target encodes what it names: kind letter + hex [`InodeId`]
//! (`f2000000000a3` = regular file, node 2, local inode 0xa3). Nothing else
//! is ever written there, so anything that decodes otherwise is damage.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use krg_proto::kdfs::{DirEntry, FileKind, InodeId};
use nix::sys::stat::FileStat;

use super::error::{Res, StoreError};
use crate::format::STORE_OWNER;

/// What one entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    pub ino: InodeId,
    pub kind: FileKind,
}

fn kind_letter(k: FileKind) -> char {
    match k {
        FileKind::File => 'f',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::CharDev => 'c',
        FileKind::BlockDev => 'b',
        FileKind::Socket => 's',
    }
}

fn letter_kind(c: u8) -> Option<FileKind> {
    Some(match c {
        b'f' => FileKind::File,
        b'd' => FileKind::Dir,
        b'l' => FileKind::Symlink,
        b'p' => FileKind::Fifo,
        b'c' => FileKind::CharDev,
        b'b' => FileKind::BlockDev,
        b's' => FileKind::Socket,
        _ => return None,
    })
}

impl Entry {
    pub fn new(ino: InodeId, kind: FileKind) -> Self {
        Self { ino, kind }
    }

    /// The symlink target standing for this entry.
    pub fn encode(&self) -> String {
        format!("{}{:x}", kind_letter(self.kind), self.ino)
    }

    /// The entry a symlink target stands for, if it is one.
    pub fn decode(target: &[u8]) -> Option<Entry> {
        let (&k, hex) = target.split_first()?;
        let kind = letter_kind(k)?;
        let ino = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        Some(Entry { ino, kind })
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// As the wire carries it, under `name`.
    pub fn named(&self, name: &[u8]) -> DirEntry {
        DirEntry {
            name: name.to_vec(),
            ino: self.ino,
            kind: self.kind,
        }
    }
}

/// A name an entry may have: one path component of at most 255 bytes.
pub(crate) fn check_name(name: &[u8]) -> Res<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(StoreError::BadName);
    }
    if name.len() > 255 {
        return Err(StoreError::NameTooLong);
    }
    Ok(OsStr::from_bytes(name))
}

/// May an entry of kind `new` replace one of kind `old` (rename(2) rules)?
pub(super) fn check_replace(new: FileKind, old: FileKind) -> Res<()> {
    match (new == FileKind::Dir, old == FileKind::Dir) {
        (true, false) => Err(StoreError::NotDir),
        (false, true) => Err(StoreError::IsDir),
        _ => Ok(()),
    }
}

/// Why an entry with these attributes is not one the store wrote (a
/// symlink of root's with one link), if it is not (the store's check,
/// and fsck's).
pub(crate) fn not_written_here(st: &FileStat) -> Option<String> {
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        return Some(format!("not a symlink (mode {:o})", st.st_mode));
    }
    if st.st_uid != STORE_OWNER {
        return Some(format!("made by uid {}, not by krgd", st.st_uid));
    }
    if st.st_nlink != 1 {
        return Some(format!("hard-linked {} times", st.st_nlink));
    }
    None
}

/// The entry a symlink's target encodes, exactly (no other spelling).
pub(crate) fn decoded(target: &[u8]) -> Result<Entry, String> {
    match Entry::decode(target) {
        Some(e) if e.encode().as_bytes() == target => Ok(e),
        _ => Err(format!(
            "target {:?} encodes no entry",
            String::from_utf8_lossy(target)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let e = Entry::new(0x2_0000_0000_00a3, FileKind::File);
        assert_eq!(e.encode(), "f20000000000a3");
        assert_eq!(Entry::decode(e.encode().as_bytes()), Some(e));
        for bad in [&b""[..], b"x12", b"f", b"f../a3", b"fzz"] {
            assert_eq!(Entry::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_single_components() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(matches!(check_name(bad), Err(StoreError::BadName)));
        }
        assert!(matches!(
            check_name(&[b'a'; 256]),
            Err(StoreError::NameTooLong)
        ));
        assert!(check_name(&[b'a'; 255]).is_ok());
    }
}
