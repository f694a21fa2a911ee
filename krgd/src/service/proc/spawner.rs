//! The thread that starts every init: the spawner.
//!
//! One dedicated thread does every `clone`: a child's parent-death signal
//! (SIGKILL, so a krgd killed with -9 takes its jobs with it) fires when the
//! *thread* that created it exits, and tokio's blocking threads come and
//! go. The thread keeps every signal blocked, so the init starts with all
//! of them blocked and no handler of krgd's can run in between.
//!
//! It starts the [zygote](super::zygote) (in krgd's own PID namespace),
//! which then forks each job's init for it; executing `krg-init` per job
//! ([`spawn::clone_init`](super::spawn::clone_init)) is what is left when
//! no zygote runs.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::spawn::{InitProcess, MAX_FDS};
use super::zygote::client::InitStarter;

struct Order {
    init: CString,
    fds: Vec<OwnedFd>,
    reply: oneshot::Sender<io::Result<InitProcess>>,
}

/// The thread that starts inits.
pub struct Spawner {
    tx: std::sync::Mutex<mpsc::Sender<Order>>,
}

impl Spawner {
    /// Start the spawner thread (it lives as long as krgd).
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Order>();
        std::thread::Builder::new()
            .name("krgd-spawner".into())
            .spawn(move || {
                block_all_signals();
                let mut starter = InitStarter::default();
                for order in rx {
                    let result = starter.start(&order.init, &order.fds);
                    drop(order.fds);
                    let _ = order.reply.send(result);
                }
            })?;
        Ok(Spawner {
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Start `init` in a new PID namespace with `fds` as its descriptors
    /// 0, 1, 2, ... (every other descriptor closed). The descriptors are
    /// closed in krgd once the init holds them.
    pub async fn spawn(&self, init: CString, fds: Vec<OwnedFd>) -> io::Result<InitProcess> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (reply, rx) = oneshot::channel();
        crate::sync::lock(&self.tx)
            .send(Order { init, fds, reply })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

fn block_all_signals() {
    // SAFETY: sigfillset fills a local set; pthread_sigmask only reads it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
