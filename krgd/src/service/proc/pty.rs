//! Pseudo-terminals for jobs run with a terminal (`krg run` from a
//! terminal, as `ssh -t`): krgd keeps the master, the job gets the slave,
//! owned by the job's user (group tty, mode 0620, as sshd does).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use krg_proto::migrate::TermSettings;
use krg_proto::proc::WinSize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The master side of a job's terminal.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

/// read(2) of `fd` into `buf`.
pub fn read_fd(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a buffer we hold, at most its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// write(2) of `data` to `fd`.
fn write_fd(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a buffer we hold, at most its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
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
                .async_io(Interest::READABLE, |fd| read_fd(fd, buf))
                .await;
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Read what output there is now, without waiting (WouldBlock: none;
    /// a read with nothing to give first pushes what was written on the
    /// slave's side through the line discipline).
    pub fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.master.get_ref(), buf)
    }

    /// Write all of `data` (input typed at the job's terminal).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .master
                .async_io(Interest::WRITABLE, |fd| write_fd(fd, data))
                .await?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// `TIOCGPTPEER` (not in libc for every target): a new descriptor of a
/// master's own slave, without going through a path.
const TIOCGPTPEER: libc::c_ulong = 0x5441;

impl Pty {
    /// Its window size.
    pub fn winsize(&self) -> io::Result<WinSize> {
        // SAFETY: a zeroed winsize is a valid value.
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize to the pointer.
        cvt(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCGWINSZ, &mut w) })?;
        Ok(WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
            xpixel: w.ws_xpixel,
            ypixel: w.ws_ypixel,
        })
    }

    /// The terminal's settings (on a master, Linux reads its slave's).
    pub fn settings(&self) -> io::Result<TermSettings> {
        settings(self.master.get_ref())
    }

    /// A new descriptor of this terminal's slave (non-blocking): krgd's
    /// own way to it, whatever the job did with its descriptors.
    pub fn slave(&self) -> io::Result<OwnedFd> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: TIOCGPTPEER returns a new descriptor or -1.
        let fd = cvt(unsafe { libc::ioctl(self.master.as_raw_fd(), TIOCGPTPEER, flags) })?;
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The settings of the terminal `fd`.
pub fn settings(fd: &impl AsRawFd) -> io::Result<TermSettings> {
    // SAFETY: a zeroed termios is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes a termios to the pointer.
    cvt(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) })?;
    Ok(TermSettings {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    })
}

/// Give the terminal `fd` settings `s` (special characters beyond this
/// system's are left out).
pub fn set_settings(fd: &impl AsRawFd, s: &TermSettings) -> io::Result<()> {
    // SAFETY: a zeroed termios is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    t.c_iflag = s.iflag;
    t.c_oflag = s.oflag;
    t.c_cflag = s.cflag;
    t.c_lflag = s.lflag;
    t.c_line = s.line;
    for (to, from) in t.c_cc.iter_mut().zip(&s.cc) {
        *to = *from;
    }
    t.c_ispeed = s.ispeed;
    t.c_ospeed = s.ospeed;
    // SAFETY: tcsetattr reads a termios from the pointer.
    cvt(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) })?;
    Ok(())
}

/// Make the terminal `fd` pass bytes through untouched (no echo, no line
/// editing, no signals, no output processing): a job's terminal on the
/// node it left, between its user and the terminal it has now.
pub fn make_raw(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: a zeroed termios is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes, cfmakeraw edits, tcsetattr reads the
    // termios we hold.
    unsafe {
        cvt(libc::tcgetattr(fd.as_raw_fd(), &mut t))?;
        libc::cfmakeraw(&mut t);
        cvt(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t))?;
    }
    Ok(())
}

/// One end of a terminal (a slave krgd holds) as a tokio stream.
pub struct TtyEnd {
    fd: AsyncFd<OwnedFd>,
}

impl TtyEnd {
    /// Watch `fd` (non-blocking).
    pub fn new(fd: OwnedFd) -> io::Result<TtyEnd> {
        Ok(TtyEnd {
            fd: super::fdio::register(fd)?,
        })
    }
}

impl tokio::io::AsyncRead for TtyEnd {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.fd.poll_read_ready(cx))?;
            let room = buf.initialize_unfilled();
            let r = guard.try_io(|fd| read_fd(fd, room));
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // the other side is gone: the end of the input
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return std::task::Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for TtyEnd {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.fd.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| write_fd(fd, data));
            match r {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
