//! Output marks: all a held part wrote reaches its stand-in before the
//! tree is saved, and the stand-in stops reading the part's input.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use krg_proto::proc::{Down, OUTPUT_WRITE_LIMIT_SECS};
use tokio::sync::oneshot;

use super::HeldStdio;

/// Asked of a pump: send on what its pipe holds now, then say so.
pub type FlushRequest = oneshot::Sender<()>;

/// How long the stand-in may take to write what the part wrote before
/// its save (see [`OUTPUT_WRITE_LIMIT_SECS`]).
pub const WRITE_LIMIT: Duration = Duration::from_secs(OUTPUT_WRITE_LIMIT_SECS);

impl HeldStdio {
    /// Everything the job's pipes hold goes out, then mark `mark`; false
    /// when the session is over.
    async fn send_mark(&self, mark: u64) -> bool {
        for pump in &self.pumps {
            let (done, sent) = oneshot::channel();
            // a pump that ended (its pipe closed) sent all it read
            if pump.send(done).is_ok() {
                let _ = sent.await;
            }
        }
        let Some(events) = self.events.upgrade() else {
            return false;
        };
        let job = self.job;
        events.send(Down::OutputMark { job, mark }).await.is_ok()
    }
}

/// Marks sent whose answer is awaited, by number.
#[derive(Default)]
pub struct Marks {
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Marks {
    /// The reader of a session answered `mark` (an unknown one, which a
    /// user's tool may send, is nothing).
    pub fn written(&self, mark: u64) {
        if let Some(told) = crate::sync::lock(&self.waiting).remove(&mark) {
            let _ = told.send(());
        }
    }

    /// Send on all of the job's output and a mark after it; true once the
    /// reader wrote all of it and stopped reading its stdin, false when it
    /// did not within `limit` (or the session ended).
    pub async fn flush_and_wait(&self, flush: &HeldStdio, limit: Duration) -> bool {
        let mark: u64 = rand::random();
        let (told, answered) = oneshot::channel();
        crate::sync::lock(&self.waiting).insert(mark, told);
        let done = tokio::time::timeout(limit, async {
            flush.send_mark(mark).await && answered.await.is_ok()
        })
        .await;
        crate::sync::lock(&self.waiting).remove(&mark);
        matches!(done, Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn the_mark_comes_after_what_the_pumps_held_and_waits_for_its_answer() {
        let (events, mut seen) = mpsc::channel(8);
        let (pump, mut asked) = mpsc::unbounded_channel::<FlushRequest>();
        let pump_events = events.clone();
        tokio::spawn(async move {
            while let Some(done) = asked.recv().await {
                let data = b"last".to_vec();
                let _ = pump_events.send(Down::Stdout { job: 3, data }).await;
                let _ = done.send(());
            }
        });
        let flush = HeldStdio::new(3, vec![pump], None, &events);
        let marks = std::sync::Arc::new(Marks::default());
        let waiting = {
            let marks = marks.clone();
            tokio::spawn(async move { marks.flush_and_wait(&flush, WRITE_LIMIT).await })
        };
        let first = seen.recv().await;
        assert!(
            matches!(first, Some(Down::Stdout { job: 3, .. })),
            "{first:?}"
        );
        let Some(Down::OutputMark { job: 3, mark }) = seen.recv().await else {
            panic!("no mark after the output");
        };
        marks.written(mark.wrapping_add(1)); // another mark: nothing
        assert!(!waiting.is_finished());
        marks.written(mark);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn no_answer_within_the_limit_is_false_and_forgotten() {
        let (events, _seen) = mpsc::channel(8);
        let flush = HeldStdio::new(0, Vec::new(), None, &events);
        let marks = Marks::default();
        assert!(
            !marks
                .flush_and_wait(&flush, Duration::from_millis(50))
                .await
        );
        assert!(crate::sync::lock(&marks.waiting).is_empty());
    }
}
