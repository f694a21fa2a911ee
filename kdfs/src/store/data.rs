//! The data path of an open file: `pread`, `pwrite`, `fsync`. krgd serves
//! them on its handles; the FUSE client calls the same on its own node's
//! files when the kernel does not do their I/O itself (no passthrough).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::error::Res;

/// Read up to `len` bytes of `f` at `offset` (short only at end of file).
pub fn read_at(f: &File, offset: u64, len: u32) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Write all of `data` to `f` at `offset`.
pub fn write_at(f: &File, offset: u64, data: &[u8]) -> Res<u32> {
    f.write_all_at(data, offset)?;
    Ok(data.len() as u32)
}

/// fsync (or, with `datasync`, fdatasync) `f`.
pub fn sync_file(f: &File, datasync: bool) -> Res<()> {
    Ok(if datasync {
        f.sync_data()
    } else {
        f.sync_all()
    }?)
}
