//! A held part's unread input: taken out of its stdin once its stand-in
//! stopped reading ([`HeldStdio::take_unread`]), kept with its SN
//! ([`keep`], `stdin_v<SN>.bin` in its checkpoint directory), written
//! back first when it runs on ([`HeldStdio::give_back`]) or when that SN
//! runs again ([`kept`]).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;
use checkpoint::checked_dir::CheckedDir;
use krg_proto::proc::{Down, MAX_CHUNK, STDIN_WINDOW};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::super::fdio::read_now;
use super::HeldStdio;

/// Asked of a job's stdin pump.
#[derive(Debug)]
pub enum StdinCtl {
    /// Write these bytes first (they were acknowledged before: a held
    /// part's unread input, given back).
    Refill(Bytes),
    /// Say when everything queued so far is written.
    Drain(oneshot::Sender<()>),
}

/// The most input a part can have unread: its pipe (grown up to 1 MiB)
/// and what its sender may have in flight, twice (see the session
/// stream's flow control). More is not taken.
pub const MAX_UNREAD: usize = (1 << 20) + 2 * (STDIN_WINDOW as usize + MAX_CHUNK);

/// The file of SN `sn` that holds its part's unread input.
pub fn file_name(sn: u32) -> String {
    format!("stdin_v{sn}.bin")
}

impl HeldStdio {
    /// Take what the stopped process `pid` (this job's) has not read of
    /// the input sent to it: what its stdin pipe holds, and what the
    /// stdin pump still queues (written into the pipe, read out here).
    /// Nothing when its stdin is not the job's pipe.
    pub async fn take_unread(&self, pid: i32) -> std::io::Result<Vec<u8>> {
        let Some((ctl, ino)) = &self.stdin else {
            return Ok(Vec::new());
        };
        let Some(pipe) = stdin_pipe(pid, *ino)? else {
            return Ok(Vec::new());
        };
        let mut rd = pipe::Receiver::from_owned_fd(pipe)?;
        let (done, drained) = oneshot::channel();
        let _ = ctl.send(StdinCtl::Drain(done));
        tokio::pin!(drained);
        let mut unread = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        // read while the pump writes, until it wrote all it had queued
        while unread.len() < MAX_UNREAD {
            tokio::select! {
                biased;
                _ = &mut drained => break,
                n = rd.read(&mut buf) => match n? {
                    0 => break,
                    n => unread.extend_from_slice(&buf[..n]),
                },
            }
        }
        while unread.len() < MAX_UNREAD {
            match read_now(&rd, &mut buf) {
                Ok(0) => break,
                Ok(n) => unread.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(unread)
    }

    /// Write `data` into the job's stdin before anything sent later.
    pub fn give_back(&self, data: Bytes) {
        if let (Some((ctl, _)), false) = (&self.stdin, data.is_empty()) {
            let _ = ctl.send(StdinCtl::Refill(data));
        }
    }

    /// Tell the session's reader to read its stdin again.
    pub fn resume(&self) {
        let Some(events) = self.events.upgrade() else {
            return;
        };
        let job = self.job;
        tokio::spawn(async move {
            let _ = events.send(Down::InputResume { job }).await;
        });
    }
}

/// A read end of process `pid`'s stdin, if it is the pipe of inode
/// `ino` (reopened through /proc, not blocking). Looked at first: root
/// opens nothing else the process may have as its stdin (a device whose
/// open does something), and the stopped part cannot change it between.
fn stdin_pipe(pid: i32, ino: u64) -> std::io::Result<Option<OwnedFd>> {
    let path = format!("/proc/{pid}/fd/0");
    let ours = format!("pipe:[{ino}]");
    if std::fs::read_link(&path).ok().as_deref() != Some(Path::new(&ours)) {
        return Ok(None);
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        // no stdin, or not one this node can open
        Err(_) => return Ok(None),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_fifo() || meta.ino() != ino {
        return Ok(None);
    }
    Ok(Some(OwnedFd::from(file)))
}

/// Keep `data` as SN `sn`'s unread input in its checkpoint directory
/// `dir` (the user's: a new file, never through a link), given to the
/// directory's owner.
pub fn keep(dir: &Path, sn: u32, data: &[u8]) -> checkpoint::error::Result<()> {
    let dir = CheckedDir::open(dir)?;
    let name = file_name(sn);
    let mut file = dir.create_file(&name)?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| checkpoint::error::ChkptError::io(dir.join(&name), e))?;
    let owner = dir.stat()?;
    dir.chown_file(&name, owner.st_uid, owner.st_gid)
}

/// SN `sn`'s unread input, if it has some, from its checkpoint
/// directory `dir`: a regular file of one name, the directory owner's, at
/// most [`MAX_UNREAD`] bytes. The user may have edited it (it goes only
/// into the user's own process), but not have root read for them what
/// they could not.
pub fn kept(dir: &Path, sn: u32) -> Result<Option<Bytes>, String> {
    let name = file_name(sn);
    let dir = CheckedDir::open(dir).map_err(|e| e.to_string())?;
    if !dir.contains(&name) {
        return Ok(None);
    }
    let opened = dir.open_file(&name).map_err(|e| e.to_string())?;
    let owner = dir.stat().map_err(|e| e.to_string())?.st_uid;
    if opened.uid != owner {
        // root reads it: only what the directory's owner could read
        return Err(format!(
            "{} belongs to uid {}, not to the directory's owner (uid {owner})",
            opened.path.display(),
            opened.uid
        ));
    }
    if opened.len > MAX_UNREAD as u64 {
        return Err(format!(
            "{} holds {} bytes, more than a part's unread input can be ({MAX_UNREAD})",
            opened.path.display(),
            opened.len
        ));
    }
    let mut data = Vec::with_capacity(opened.len as usize);
    Read::take(opened.file, MAX_UNREAD as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: {e}", opened.path.display()))?;
    Ok(Some(Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_input_round_trips_and_an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kept(dir.path(), 3).unwrap(), None);
        keep(dir.path(), 3, b"12\n13\n").unwrap();
        assert_eq!(kept(dir.path(), 3).unwrap().unwrap(), &b"12\n13\n"[..]);
        assert!(keep(dir.path(), 3, b"again").is_err(), "never over a file");
        let big = vec![b'x'; MAX_UNREAD + 1];
        std::fs::write(dir.path().join(file_name(4)), big).unwrap();
        let e = kept(dir.path(), 4).unwrap_err();
        assert!(e.contains("more than a part's unread input"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(file_name(5))).unwrap();
        assert!(kept(dir.path(), 5).is_err(), "a symlink is refused");
        // root's test: a file of another owner than the directory's
        let theirs = dir.path().join(file_name(6));
        std::fs::write(&theirs, b"secret").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = kept(dir.path(), 6).unwrap_err();
        assert!(e.contains("not to the directory's owner"), "{e}");
    }
}
