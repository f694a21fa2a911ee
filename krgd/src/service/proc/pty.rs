//! Pseudo-terminals for jobs run with a terminal (`krg run` from a
//! terminal, as `ssh -t`): krgd keeps the master, the job gets the slave,
//! owned by the job's user (group tty, mode 0620, as sshd does).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use krg_proto::proc::WinSize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The master side of a job's terminal.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Open a terminal of size `ws` for a job of `uid`: (master, slave).
pub fn open(ws: WinSize, uid: u32) -> io::Result<(Pty, OwnedFd)> {
    // SAFETY: posix_openpt, grantpt and unlockpt take a flag / our new
    // descriptor; ptsname_r writes at most buf.len() bytes into buf; the
    // slave is opened from the NUL-terminated name it wrote.
    let (master, slave) = unsafe {
        let m = cvt(libc::posix_openpt(
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        ))?;
        let master = OwnedFd::from_raw_fd(m);
        cvt(libc::grantpt(m))?;
        cvt(libc::unlockpt(m))?;
        let mut buf = [0 as libc::c_char; 128];
        let rc = libc::ptsname_r(m, buf.as_mut_ptr(), buf.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let s = cvt(libc::open(
            buf.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        (master, OwnedFd::from_raw_fd(s))
    };
    let tty_gid = nix::unistd::Group::from_name("tty")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    // SAFETY: changing owner and mode of the slave we just opened.
    unsafe {
        cvt(libc::fchown(
            slave.as_raw_fd(),
            uid,
            tty_gid.unwrap_or(u32::MAX),
        ))?;
        cvt(libc::fchmod(slave.as_raw_fd(), 0o620))?;
    }
    let pty = Pty {
        master: super::fdio::register(master)?,
    };
    pty.resize(ws)?;
    Ok((pty, slave))
}

impl Pty {
    /// Set the window size (the kernel sends SIGWINCH to the job's
    /// foreground process group).
    pub fn resize(&self, ws: WinSize) -> io::Result<()> {
        let w = libc::winsize {
            ws_row: ws.rows,
            ws_col: ws.cols,
            ws_xpixel: ws.xpixel,
            ws_ypixel: ws.ypixel,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
        cvt(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &w) })?;
        Ok(())
    }

    /// Read output; Ok(0) once every slave descriptor is closed (the
    /// kernel answers EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = self
                .master
                .async_io(Interest::READABLE, |fd| {
                    // SAFETY: reading into a buffer we hold.
                    let n =
                        unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await;
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Write all of `data` (input typed at the job's terminal).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .master
                .async_io(Interest::WRITABLE, |fd| {
                    // SAFETY: writing from a buffer we hold.
                    let n =
                        unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }
}
