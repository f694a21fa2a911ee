//! Directory listings: the kernel's `readdir`, served from the snapshot
//! the directory's owner took at `opendir`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{FileHandle, FileType, INodeNo, ReplyDirectory};

use super::super::convert::{err, file_type, fuse_ino};
use super::{KdfsFs, READDIR_BATCH};

impl KdfsFs {
    pub(super) fn do_readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (ops, id) = (self.ops.clone(), self.id(ino));
        self.spawn(async move {
            // Offsets 1 and 2 are "." and ".."; entry i of the snapshot is i + 3.
            let mut off = offset;
            if off == 0 {
                if reply.add(ino, 1, FileType::Directory, ".") {
                    return reply.ok();
                }
                off = 1;
            }
            if off == 1 {
                if reply.add(ino, 2, FileType::Directory, "..") {
                    return reply.ok();
                }
                off = 2;
            }
            let mut idx = off - 2;
            loop {
                let batch = match ops.readdir(id, fh.0, idx, READDIR_BATCH).await {
                    Ok(b) => b,
                    Err(e) => return reply.error(err(e)),
                };
                if batch.is_empty() {
                    return reply.ok();
                }
                for e in batch {
                    idx += 1;
                    let full = reply.add(
                        fuse_ino(ops.root.get(), e.ino),
                        idx + 2,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    );
                    if full {
                        return reply.ok();
                    }
                }
            }
        });
    }
}
