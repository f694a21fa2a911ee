//! A part's stdio while it is held for its application's checkpoint (see
//! `krg_proto::proc`, *Output marks*).
//!
//! `checkpoint` saves each part on its node and holds it stopped, then
//! saves the tree. What was on its way between the part and its stand-in
//! at that moment would be in neither image: the part's output not yet
//! written by the stand-in, the input the stand-in had read but the part
//! had not. So the node that holds the part
//!
//! * [`output`]: has its session's pumps read its pipes empty, sends an
//!   output mark after the last bytes, and waits until the stand-in
//!   answers that it wrote everything before the mark — and stopped
//!   reading its stdin, after the input it sent before its answer;
//! * [`input`]: then takes what the part has not read out of its stdin
//!   (all of it is there or queued once the answer came) and keeps it
//!   with the part's SN: written back first when the part runs on (the
//!   stand-in is told to read again), or when its SN is restarted.
//!
//! `checkpoint` freezes the tree only once both are done.

pub mod input;
pub mod output;

use krg_proto::proc::Down;
use tokio::sync::mpsc;

pub use input::StdinCtl;
pub use output::{FlushRequest, Marks, WRITE_LIMIT};

/// A running job's stdio as its node holds it for a checkpoint: a request
/// channel to each of its output pumps and to its stdin pump, and its
/// session's events.
#[derive(Debug)]
pub struct HeldStdio {
    job: u32,
    pumps: Vec<mpsc::UnboundedSender<FlushRequest>>,
    /// Its stdin pump, and the inode of the pipe it writes (a job on a
    /// terminal has none).
    stdin: Option<(mpsc::UnboundedSender<StdinCtl>, u64)>,
    /// Weak: a job's entry outlives its session, whose reader must see
    /// the events end when the session does.
    events: mpsc::WeakSender<Down>,
}

impl HeldStdio {
    /// Job `job` of a session whose events go to `events`, read by the
    /// output pumps `pumps`, its stdin written by the pump `stdin`.
    pub fn new(
        job: u32,
        pumps: Vec<mpsc::UnboundedSender<FlushRequest>>,
        stdin: Option<(mpsc::UnboundedSender<StdinCtl>, u64)>,
        events: &mpsc::Sender<Down>,
    ) -> HeldStdio {
        HeldStdio {
            job,
            pumps,
            stdin,
            events: events.downgrade(),
        }
    }
}
