//! Where a carried session's events go across a splice: the joined
//! stream, with the stdin acknowledgements rebased for the joining node
//! ([`Acks`]); and, until the old path ended, the old stream too, which
//! still gets them as they are (its relay's window).

use krg_proto::proc::Down;
use krg_proto::{NodeId, ProtoError};

use super::super::sealed::Outgoing;
use super::reader::OldPath;

/// A count of the job's stdin as this node's session sees it, rebased
/// for the joining node: `sent` bytes it had sent on the old path, `old`
/// bytes that path brought here in all (known once it ended). For the
/// joining node, this session's count `t` is `sent + t - old`; below
/// `old` it acknowledges nothing new.
#[derive(Debug, Clone, Copy)]
pub struct Acks {
    sent: u64,
    old: Option<u64>,
}

impl Acks {
    pub fn new(sent: u64) -> Self {
        Acks { sent, old: None }
    }

    /// The old path brought `old` bytes in all.
    pub fn old_ended(&mut self, old: u64) {
        self.old = Some(old);
    }

    /// This session's count `t` for the joining node, if it tells it
    /// anything yet.
    pub fn rebase(&self, t: u64) -> Option<u64> {
        let old = self.old?;
        (t >= old).then(|| self.sent + (t - old))
    }
}

/// The session's way out: one stream, or two across a splice.
pub struct EventPath {
    wr: Outgoing,
    /// The old stream, until its path ended (after a splice).
    old: Option<Outgoing>,
    /// How the joining node counts stdin (after a splice).
    acks: Option<Acks>,
    /// The session's last stdin count.
    last_ack: u64,
}

impl EventPath {
    pub fn new(wr: Outgoing) -> Self {
        EventPath {
            wr,
            old: None,
            acks: None,
            last_ack: 0,
        }
    }

    /// Send `ev` the way it goes now.
    pub async fn send(&mut self, ev: Down) -> Result<(), ProtoError> {
        let Down::StdinAck { job, bytes } = ev else {
            return self.wr.send(&ev).await;
        };
        self.last_ack = self.last_ack.max(bytes);
        if let Some(old) = &mut self.old {
            let _ = old.send(&ev).await;
        }
        match self.acks {
            None => self.wr.send(&ev).await,
            Some(acks) => match acks.rebase(bytes) {
                Some(bytes) => self.wr.send(&Down::StdinAck { job, bytes }).await,
                None => Ok(()),
            },
        }
    }

    /// Send `evs` in order.
    pub async fn send_all(&mut self, evs: Vec<Down>) -> Result<(), ProtoError> {
        for ev in evs {
            self.send(ev).await?;
        }
        Ok(())
    }

    /// Joined: events go on `wr`, acknowledgements counted from `sent`;
    /// the old stream keeps getting them until [`Self::old_path_ended`].
    pub fn spliced(&mut self, wr: Outgoing, sent: u64) {
        self.old = Some(std::mem::replace(&mut self.wr, wr));
        self.acks = Some(Acks::new(sent));
    }

    /// The old path, through node `left`, ended: close it, and tell the
    /// joining node what is acknowledged by now — and, if it broke, that
    /// input may be lost.
    pub async fn old_path_ended(&mut self, old: OldPath, left: NodeId) -> Result<(), ProtoError> {
        if let Some(o) = self.old.take() {
            o.shutdown().await;
        }
        if old.clean {
            tracing::info!(left, "node {left} passed on the last input of a joined session: it is out of the job's path");
        } else {
            tracing::warn!(
                left,
                "node {left} left a joined session's path before it passed on all its input"
            );
            let note = format!("krg: node {left} was lost while it passed the job's input on: some of it may not have reached the job\n");
            self.wr
                .send(&Down::Stderr {
                    job: 0,
                    data: note.into_bytes(),
                })
                .await?;
        }
        let Some(acks) = self.acks.as_mut() else {
            return Ok(());
        };
        acks.old_ended(old.stdin);
        match acks.rebase(self.last_ack) {
            Some(bytes) => self.wr.send(&Down::StdinAck { job: 0, bytes }).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Acks;

    #[test]
    fn nothing_is_acknowledged_before_the_old_path_ended() {
        let a = Acks::new(100);
        assert_eq!(a.rebase(0), None);
        assert_eq!(a.rebase(1000), None);
    }

    #[test]
    fn counts_are_rebased_on_what_the_joiner_sent() {
        // the joiner sent 100 bytes on the old path; 30 of them were read
        // where the job was, 70 came here through the old path
        let mut a = Acks::new(100);
        a.old_ended(70);
        assert_eq!(a.rebase(69), None, "some of the old path's bytes wait");
        assert_eq!(a.rebase(70), Some(100), "all it sent is taken");
        assert_eq!(a.rebase(75), Some(105), "and 5 sent on the joined stream");
    }
}
