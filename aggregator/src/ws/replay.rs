//! A subscription's replay (`history`, `since`), run by its own session.
//!
//! The hub answers a subscribe with a [`Replay`]: each topic's history and
//! the seq after which to send. The session reads it a chunk at a time, only
//! when its outbox has room, so the replay goes at the pace of its own socket
//! and never makes the connection lag. Reading copies `Arc`s under a short
//! per-topic lock and decodes sealed blocks with no lock held: nothing of it
//! runs in the hub task, so other clients' live updates never wait for it.
//!
//! Live updates keep being published meanwhile, and appended to the same
//! histories, so a replay makes passes over its topics until a pass finds
//! little new (or after [`MAX_PASSES`]); then it hands the hub where it got to
//! in each topic ([`Command::Join`]), and the hub sends the few updates
//! published since and delivers live from there: no gap, no duplicate.

use crate::hub::{Command, ConnId, Replay, ReplayTopic};
use crate::ws::outbox::{Outbox, Pushed};

/// Passes over a replay's topics before it joins whatever is left.
pub const MAX_PASSES: u32 = 4;

/// A replay in progress.
#[derive(Debug)]
pub struct Replaying {
    token: u64,
    topics: Vec<ReplayTopic>,
    /// The topic being read in this pass.
    at: usize,
    pass: u32,
    /// JSON bytes pushed in this pass.
    pass_bytes: usize,
}

impl Replaying {
    /// `None` when there is nothing to replay.
    pub fn new(replay: Replay) -> Option<Self> {
        (!replay.topics.is_empty()).then(|| Self {
            token: replay.token,
            topics: replay.topics,
            at: 0,
            pass: 1,
            pass_bytes: 0,
        })
    }

    /// Pushes about `budget` bytes of JSON into `outbox`. Returns the
    /// command that joins live delivery once the replay has caught up:
    /// send it to the hub, and the replay is over.
    pub fn fill(&mut self, conn: ConnId, outbox: &Outbox, budget: usize) -> Option<Command> {
        let mut pushed = 0;
        while pushed < budget {
            if self.at == self.topics.len() {
                if self.pass_bytes < budget || self.pass >= MAX_PASSES {
                    return Some(Command::Join {
                        conn,
                        token: self.token,
                        reached: std::mem::take(&mut self.topics),
                    });
                }
                self.pass += 1;
                self.at = 0;
                self.pass_bytes = 0;
            }
            let t = &mut self.topics[self.at];
            let (updates, more) = t.history.read_after(t.after, budget - pushed);
            for u in &updates {
                // Replay is exact: no throttle. Stale: already sent live by
                // another subscription of this connection.
                if outbox.push_replay(u) == Pushed::Refused {
                    return None;
                }
                t.after = u.seq;
                pushed += u.json.len();
            }
            self.pass_bytes += updates.iter().map(|u| u.json.len()).sum::<usize>();
            if !more {
                self.at += 1;
            }
        }
        None
    }
}
