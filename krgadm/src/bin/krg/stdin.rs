//! Forwarding input to the jobs with back-pressure: a thread reads stdin
//! (or the file `krg push` sends) only while the jobs have room for it —
//! at most `STDIN_WINDOW` bytes sent but not yet taken by every job that
//! still reads — so a job that does not read stops krg from reading, as a
//! full pipe would.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};

use krg_proto::proc::{Up, MAX_CHUNK, STDIN_WINDOW};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Default)]
struct State {
    sent: u64,
    /// Bytes each job's stdin took; None once it ended.
    acked: Vec<Option<u64>>,
    stop: bool,
}

/// The window shared by the reader thread and the session loop.
pub struct Credit {
    state: Mutex<State>,
    cv: Condvar,
}

impl Credit {
    /// A window over `jobs` jobs.
    pub fn new(jobs: usize) -> Arc<Credit> {
        Arc::new(Credit {
            state: Mutex::new(State {
                acked: vec![Some(0); jobs],
                ..State::default()
            }),
            cv: Condvar::new(),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.cv.notify_all();
        r
    }

    /// Job `job`'s stdin has taken `bytes` in all.
    pub fn ack(&self, job: u32, bytes: u64) {
        self.with(|s| {
            if let Some(Some(a)) = s.acked.get_mut(job as usize) {
                *a = (*a).max(bytes);
            }
        });
    }

    /// Job `job` takes no more input.
    pub fn ended(&self, job: u32) {
        self.with(|s| {
            if let Some(a) = s.acked.get_mut(job as usize) {
                *a = None;
            }
        });
    }

    /// Stop reading.
    pub fn stop(&self) {
        self.with(|s| s.stop = true);
    }

    /// Wait until some bytes may be sent; None when reading should stop.
    fn room(&self) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if s.stop {
                return None;
            }
            let slowest = s.acked.iter().flatten().min().copied()?;
            let in_flight = s.sent.saturating_sub(slowest);
            if in_flight < STDIN_WINDOW {
                return Some(((STDIN_WINDOW - in_flight) as usize).min(MAX_CHUNK));
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn sent(&self, n: usize) {
        self.with(|s| s.sent += n as u64);
    }
}

/// Read `source` into `Up::Stdin` frames on a thread of its own, ending
/// with `Up::StdinEof` at its end.
pub fn spawn(mut source: Box<dyn Read + Send>, credit: Arc<Credit>, tx: UnboundedSender<Up>) {
    let _ = std::thread::Builder::new()
        .name("krg-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            while let Some(room) = credit.room() {
                let n = match source.read(&mut buf[..room]) {
                    Ok(0) => {
                        let _ = tx.send(Up::StdinEof);
                        return;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("krg: reading input: {e}");
                        let _ = tx.send(Up::StdinEof);
                        return;
                    }
                };
                credit.sent(n);
                if tx.send(Up::Stdin(buf[..n].to_vec().into())).is_err() {
                    return;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_the_slowest_job_still_reading() {
        let c = Credit::new(2);
        assert_eq!(c.room(), Some(MAX_CHUNK));
        c.sent(STDIN_WINDOW as usize);
        c.ack(0, STDIN_WINDOW);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.room());
        std::thread::sleep(std::time::Duration::from_millis(50));
        c.ended(1);
        assert_eq!(t.join().unwrap(), Some(MAX_CHUNK));
        c.ended(0);
        assert_eq!(c.room(), None);
    }
}
