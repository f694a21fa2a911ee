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
    /// Asked not to read (a stand-in whose part is held for a checkpoint).
    paused: bool,
    /// The reader is between a read and the send of what it read.
    reading: bool,
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

    /// Whether the reader may read now (it says when it sent what it
    /// read, [`Credit::read_done`]); while paused, wait until resumed or
    /// stopped and say no, so that the reader looks again whether input
    /// is there.
    fn may_read(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.paused {
            s.reading = true;
            return true;
        }
        while s.paused && !s.stop {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        false
    }

    fn read_done(&self) {
        self.with(|s| s.reading = false);
    }

    /// Stop reading: once this returns (or `limit` passed, for a reader
    /// blocked in a read that does not look first), everything read is
    /// sent and nothing more is read until [`Credit::resume`].
    pub fn pause(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.paused = true;
        while s.reading {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Read again after [`Credit::pause`].
    pub fn resume(&self) {
        self.with(|s| s.paused = false);
    }
}

/// Waits until input is there to read (true) or a while passed (false),
/// so that the reader reads only then: a reader paused meanwhile takes
/// nothing.
pub type Ready = Box<dyn FnMut() -> bool + Send>;

/// Read `source` into `Up::Stdin` frames on a thread of its own, ending
/// with `Up::StdinEof` at its end; with `ready`, it waits for input
/// before each read, so that [`Credit::pause`] takes effect at once.
pub fn spawn(
    mut source: Box<dyn Read + Send>,
    mut ready: Option<Ready>,
    credit: Arc<Credit>,
    tx: UnboundedSender<Up>,
) {
    let _ = std::thread::Builder::new()
        .name("krg-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            while let Some(room) = credit.room() {
                if let Some(wait) = &mut ready {
                    if !wait() {
                        continue;
                    }
                }
                if !credit.may_read() {
                    continue;
                }
                let read = source.read(&mut buf[..room]);
                let n = match read {
                    Ok(0) => {
                        let _ = tx.send(Up::StdinEof);
                        return;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        credit.read_done();
                        continue;
                    }
                    Err(e) => {
                        eprintln!("krg: reading input: {e}");
                        let _ = tx.send(Up::StdinEof);
                        return;
                    }
                };
                credit.sent(n);
                let sent = tx.send(Up::Stdin(buf[..n].to_vec().into()));
                credit.read_done();
                if sent.is_err() {
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

    #[test]
    fn a_paused_reader_reads_nothing_until_resumed() {
        let c = Credit::new(1);
        assert!(c.may_read(), "not paused");
        let c2 = c.clone();
        let pausing = std::thread::spawn(move || c2.pause(std::time::Duration::from_secs(5)));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!pausing.is_finished(), "a read is on its way: pause waits");
        c.read_done();
        pausing.join().unwrap();
        let c3 = c.clone();
        let reader = std::thread::spawn(move || c3.may_read());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "paused: the reader waits");
        c.resume();
        assert!(!reader.join().unwrap(), "resumed: it looks for input again");
        assert!(c.may_read());
    }
}
