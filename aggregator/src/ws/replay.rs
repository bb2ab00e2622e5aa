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
//!
//! A thinned replay (`history_every_ms`) sends, per topic, at most one update
//! per interval of sample time (intervals aligned to Unix time, so hosts'
//! points line up), the newest of each: while a topic is read, the newest
//! update of the current interval is held back and pushed when a later
//! interval begins or the topic's history runs out. Skipped updates still
//! move the topic's position on, so the join sends only what came after.
//! With `history: N` only the last N intervals, counted back from the
//! topic's newest update, are sent. A pass after the first may add one more
//! update in the interval the previous pass ended in: the seam to live.

use std::sync::Arc;

use crate::hub::{Command, ConnId, Replay, ReplayTopic};
use crate::update::Update;
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
    /// JSON bytes read in this pass.
    pass_bytes: usize,
    /// Thinning interval in ms (zero: every update is sent).
    every_ms: u64,
    /// Per topic (same order as `topics`), for a thinned replay.
    thin: Vec<Thin>,
}

/// Where a thinned replay is in one topic.
#[derive(Debug, Default)]
struct Thin {
    /// Seq read up to (`None`: the topic's `after`).
    read: Option<u64>,
    /// The newest update read of the current interval, not sent yet.
    pending: Option<(Arc<Update>, i64)>,
    /// Intervals below this are skipped (`history: N`); set on first read.
    from: Option<i64>,
}

impl Replaying {
    /// `None` when there is nothing to replay.
    pub fn new(replay: Replay) -> Option<Self> {
        let n = replay.topics.len();
        (!replay.topics.is_empty()).then(|| Self {
            token: replay.token,
            topics: replay.topics,
            at: 0,
            pass: 1,
            pass_bytes: 0,
            every_ms: replay.every_ms,
            thin: if replay.every_ms > 0 {
                (0..n).map(|_| Thin::default()).collect()
            } else {
                Vec::new()
            },
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
            if self.every_ms > 0 {
                let (read, more) = self.fill_thinned(outbox, budget - pushed)?;
                pushed += read;
                self.pass_bytes += read;
                if !more {
                    self.at += 1;
                }
                continue;
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

    /// Reads about `budget` bytes of the current topic, thinned. Returns the
    /// bytes read and whether more of the topic follows; `None` when the
    /// outbox refused an update.
    fn fill_thinned(&mut self, outbox: &Outbox, budget: usize) -> Option<(usize, bool)> {
        let every = self.every_ms as i64;
        let (t, thin) = (&mut self.topics[self.at], &mut self.thin[self.at]);
        if thin.from.is_none() {
            thin.from = Some(match (t.intervals, t.history.last()) {
                (Some(n), Some(newest)) => newest
                    .taken_ms()
                    .map_or(i64::MIN, |ms| ms.div_euclid(every) - (n as i64 - 1)),
                _ => i64::MIN,
            });
        }
        let from = thin.from.expect("set above");
        let (updates, more) = t.history.read_after(thin.read.unwrap_or(t.after), budget);
        let mut read = 0;
        for u in updates {
            read += u.json.len();
            thin.read = Some(u.seq);
            let at = u.taken_ms().map_or(i64::MAX, |ms| ms.div_euclid(every));
            if at < from {
                // Before the window asked for: never sent, and nothing
                // was sent before it either.
                t.after = u.seq;
                continue;
            }
            match thin.pending.take() {
                Some((p, p_at)) if p_at != at || at == i64::MAX => {
                    if outbox.push_replay(&p) == Pushed::Refused {
                        thin.read = Some(p.seq);
                        thin.pending = Some((p, p_at));
                        return None;
                    }
                    t.after = p.seq;
                }
                _ => {}
            }
            thin.pending = Some((u, at));
        }
        if !more && let Some((p, p_at)) = thin.pending.take() {
            if outbox.push_replay(&p) == Pushed::Refused {
                thin.pending = Some((p, p_at));
                return None;
            }
            t.after = p.seq;
        }
        Some((read, more))
    }
}
