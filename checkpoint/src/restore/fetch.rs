//! Page data that may not be here yet: `restart --fetch-fd FD` (a
//! post-copy migration). The memory files of the image are complete but
//! for their page data, which krgd is still receiving from the origin;
//! before reading any page data, restart (for the pages it copies in
//! itself) and then its page server (for each block it loads) ask krgd on
//! FD for the byte ranges they are about to read, and wait for its answer.
//!
//! The exchange is text, one line each way per batch:
//!
//! ```text
//! need task_mm_4242_v1.bin 65536 262144     (file name, offset, length)
//! need task_mm_4243_v1.bin 0 4096
//! sync                                      (or: poll)
//!                                             ok   (every range is there)
//!                                             all  (and everything else too)
//!                                             no   (poll: not yet)
//!                                             err <why>
//! ```
//!
//! `sync` waits for the ranges (krgd pulls them first); `poll` only asks
//! whether they are in yet (the page server's background loading takes
//! what krgd's own background pulls brought, and does not race them).
//!
//! krgd answers `ok` once every range named since the last `sync` is in
//! the files (`all` once every byte of the image is: nothing is asked
//! again), or `err` when it cannot be had (the origin failed): restart
//! then fails (the origin takes the process back), and the page server
//! kills the tree it serves (its memory cannot be completed).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::error::{ChkptError, Result};

use super::pages::{checks_in, Check, DataFile};

/// A range longer than this in one `need` is refused by krgd.
pub const MAX_NEED: u64 = 1 << 30;

/// One line a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Bytes `[off, off + len)` of image file `name` are about to be read.
    Need { name: String, off: u64, len: u64 },
    /// Answer once everything needed since the last `Sync` is there.
    Sync,
    /// Answer at once whether it is there (`no` if not).
    Poll,
}

impl Line {
    /// Parse a line as sent (without its newline); `None` if it is not one.
    pub fn parse(s: &str) -> Option<Line> {
        let mut w = s.split(' ');
        let line = match w.next()? {
            "sync" => Line::Sync,
            "poll" => Line::Poll,
            "need" => {
                let name = w.next()?.to_string();
                let off = w.next()?.parse().ok()?;
                let len: u64 = w.next()?.parse().ok()?;
                if name.is_empty() || len > MAX_NEED {
                    return None;
                }
                Line::Need { name, off, len }
            }
            _ => return None,
        };
        w.next().is_none().then_some(line)
    }
}

/// restart's (and its page server's) side of the exchange.
pub struct Fetch {
    sock: UnixStream,
    /// krgd said every byte is in.
    all_in: std::cell::Cell<bool>,
}

impl Fetch {
    /// Use `fd`, a connected Unix stream socket to krgd, from now on
    /// closed on exec.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Fetch> {
        // SAFETY: fstat into a zeroed struct the call fills.
        let is_socket = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
        };
        if !is_socket {
            return Err(ChkptError::Usage(format!(
                "--fetch-fd {fd}: not an open socket"
            )));
        }
        // SAFETY: the caller hands the descriptor over (it is open).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Fetch {
            sock: UnixStream::from(owned),
            all_in: std::cell::Cell::new(false),
        })
    }

    /// Wait until every `(data file, offset, length)` of `ranges` is in
    /// `files`, and the rest of each CRC block of `checks` they touch (a
    /// block is checked whole).
    pub fn need(
        &self,
        files: &[DataFile],
        checks: &[Check],
        ranges: &[(usize, u64, u64)],
    ) -> Result<()> {
        self.ask(files, checks, ranges, "sync").map(|_| ())
    }

    /// Whether all of `ranges` (as for [`Fetch::need`]) is in already.
    pub fn ready(
        &self,
        files: &[DataFile],
        checks: &[Check],
        ranges: &[(usize, u64, u64)],
    ) -> Result<bool> {
        self.ask(files, checks, ranges, "poll")
    }

    fn ask(
        &self,
        files: &[DataFile],
        checks: &[Check],
        ranges: &[(usize, u64, u64)],
        end: &str,
    ) -> Result<bool> {
        if ranges.is_empty() || self.all_in.get() {
            return Ok(true);
        }
        let whole: Vec<(usize, u64, u64)> = ranges
            .iter()
            .map(|&(file, off, len)| {
                let blocks = checks_in(checks, file, off, len);
                let start = blocks.first().map_or(off, |c| c.off.min(off));
                let end = blocks
                    .last()
                    .map_or(off + len, |c| (c.off + c.len).max(off + len));
                (file, start, end - start)
            })
            .collect();
        let mut text = String::new();
        for &(file, off, len) in merged(&whole).iter() {
            let name = files
                .get(file)
                .and_then(|f| f.path.file_name())
                .and_then(|n| n.to_str())
                .ok_or_else(|| ChkptError::Inconsistent(format!("no data file {file}")))?;
            text.push_str(&format!("need {name} {off} {len}\n"));
        }
        text.push_str(end);
        text.push('\n');
        let lost = |e: std::io::Error| ChkptError::Fetch(format!("krgd: {e}"));
        (&self.sock).write_all(text.as_bytes()).map_err(lost)?;
        let reply = self.reply().map_err(lost)?;
        match reply.trim_end() {
            "ok" => Ok(true),
            "no" => Ok(false),
            "all" => {
                self.all_in.set(true);
                Ok(true)
            }
            other => match other.split_once(' ') {
                Some(("err", why)) => Err(ChkptError::Fetch(why.to_string())),
                _ => Err(ChkptError::Fetch(format!("unexpected answer {other:?}"))),
            },
        }
    }
}

impl Fetch {
    /// krgd's one-line answer (it sends nothing else, so nothing is read
    /// past its newline).
    fn reply(&self) -> std::io::Result<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while !out.ends_with(b"\n") {
            let n = (&self.sock).read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "it closed the connection",
                ));
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() > 64 * 1024 {
                return Err(std::io::Error::other("an answer without its end"));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// `ranges` sorted, those of one file that touch or overlap merged, each
/// at most [`MAX_NEED`] long.
fn merged(ranges: &[(usize, u64, u64)]) -> Vec<(usize, u64, u64)> {
    let mut v: Vec<(usize, u64, u64)> = ranges.iter().filter(|r| r.2 > 0).copied().collect();
    v.sort_unstable();
    // (file, start, end), merged
    let mut spans: Vec<(usize, u64, u64)> = Vec::new();
    for (f, off, len) in v {
        let end = off.saturating_add(len);
        match spans.last_mut() {
            Some(l) if l.0 == f && off <= l.2 => l.2 = l.2.max(end),
            _ => spans.push((f, off, end)),
        }
    }
    let mut out = Vec::new();
    for (f, mut at, end) in spans {
        while at < end {
            let n = (end - at).min(MAX_NEED);
            out.push((f, at, n));
            at += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_garbage_is_refused() {
        assert_eq!(
            Line::parse("need task_mm_1_v1.bin 4096 8192"),
            Some(Line::Need {
                name: "task_mm_1_v1.bin".into(),
                off: 4096,
                len: 8192
            })
        );
        assert_eq!(Line::parse("sync"), Some(Line::Sync));
        assert_eq!(Line::parse("poll"), Some(Line::Poll));
        for bad in [
            "",
            "need",
            "need a 1",
            "need a -1 2",
            "need a 1 2 3",
            "sync now",
            "need  1 2",
            "need a 0 99999999999",
            "fetch a 0 1",
        ] {
            assert_eq!(Line::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_are_merged_per_file() {
        let r = [
            (1, 100, 50),
            (0, 0, 10),
            (1, 150, 10),
            (1, 300, 1),
            (0, 5, 20),
            (2, 7, 0),
        ];
        assert_eq!(merged(&r), vec![(0, 0, 25), (1, 100, 60), (1, 300, 1)]);
    }

    #[test]
    fn a_need_waits_for_the_answer_and_an_error_fails_it() {
        use std::io::{BufRead, BufReader};
        use std::os::fd::IntoRawFd;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let files = vec![DataFile {
            file: file.reopen().unwrap(),
            path: file.path().to_path_buf(),
            map: None,
        }];
        let name = file
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let krgd = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            let mut got = Vec::new();
            for answer in ["ok\n", "err the origin is gone\n", "no\n", "all\n"] {
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    let l = Line::parse(l.trim_end()).unwrap();
                    got.push(l.clone());
                    if l == Line::Sync || l == Line::Poll {
                        break;
                    }
                }
                w.write_all(answer.as_bytes()).unwrap();
            }
            got
        });
        // SAFETY: a fresh descriptor handed over.
        let f = unsafe { Fetch::from_raw_fd(ours.into_raw_fd()) }.unwrap();
        let checks = [Check {
            file: 0,
            off: 65536,
            len: 65536,
            crc: 0,
        }];
        f.need(&files, &checks, &[(0, 0, 4096), (0, 4096, 4096)])
            .unwrap();
        // a range inside a CRC block asks for the whole block
        let e = f.need(&files, &checks, &[(0, 70000, 1)]).unwrap_err();
        assert_eq!(e.to_string(), "fetching page data: the origin is gone");
        assert!(
            f.need(&files, &[], &[(5, 0, 1)]).is_err(),
            "an unknown file"
        );
        assert!(
            !f.ready(&files, &checks, &[(0, 0, 1)]).unwrap(),
            "not in yet"
        );
        f.need(&files, &checks, &[(0, 0, 1)]).unwrap();
        // everything is in: nothing more is asked (krgd is gone by now)
        f.need(&files, &checks, &[(0, 8192, 1)]).unwrap();
        let got = krgd.join().unwrap();
        assert_eq!(
            got,
            vec![
                Line::Need {
                    name: name.clone(),
                    off: 0,
                    len: 8192
                },
                Line::Sync,
                Line::Need {
                    name: name.clone(),
                    off: 65536,
                    len: 65536
                },
                Line::Sync,
                Line::Need {
                    name: name.clone(),
                    off: 0,
                    len: 1
                },
                Line::Poll,
                Line::Need {
                    name,
                    off: 0,
                    len: 1
                },
                Line::Sync,
            ]
        );
    }
}
