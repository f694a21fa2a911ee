//! Page data read into a task by the task itself: `pread` injected into it,
//! from its descriptors of the memory files to the pages' addresses. Every
//! area the eager fill does not copy goes this way (`mm`), and anonymous
//! memory too where userfaultfd is refused (`fill`).

use super::ctx::TaskCtx;
use super::pages::Piece;
use crate::error::{ChkptError, Result};

/// `pread` of `pieces` from the memory files into place, inside the task.
pub(super) fn read_pieces(c: &TaskCtx, pieces: &[Piece]) -> Result<()> {
    for p in pieces {
        let fd = (c.data_fds + p.file as i32) as u64;
        let mut done = 0u64;
        while done < p.len {
            let n = c.inj.call(
                "pread64",
                libc::SYS_pread64,
                [fd, p.addr + done, p.len - done, p.off + done, 0, 0],
            )?;
            if n == 0 {
                let path = c
                    .files
                    .get(p.file)
                    .map(|f| f.path.clone())
                    .unwrap_or_default();
                return Err(ChkptError::bad_image(path, "page data ends early"));
            }
            done += n;
        }
    }
    Ok(())
}
