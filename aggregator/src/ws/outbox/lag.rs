//! A lagging connection's state: the newest update held per topic while
//! its queue is over the bound (conflation), the seqs skipped meanwhile,
//! and what the client gets when the backlog is out: `$sys.lagged` naming
//! them, then the newest of each topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::time::Instant;

use super::{Item, OutboxStats, State};
use crate::update::{SysMessage, Update};

/// One topic's newest update held while lagging.
#[derive(Debug)]
struct Conflated {
    newest: Arc<Update>,
    /// Seqs that will not be sent: lowest, highest and how many.
    skipped: Option<(u64, u64, u64)>,
}

/// Since when a client lags, and per topic (in first-held order) what is
/// held for it.
#[derive(Debug)]
pub(super) struct Lag {
    pub(super) since: Instant,
    order: Vec<Arc<str>>,
    topics: HashMap<Arc<str>, Conflated>,
}

#[derive(Serialize)]
struct Skipped<'a> {
    topic: &'a str,
    from: u64,
    to: u64,
    count: u64,
}

impl Lag {
    /// A lag starting `since`.
    pub(super) fn new(since: Instant) -> Self {
        Lag {
            since,
            order: Vec::new(),
            topics: HashMap::new(),
        }
    }

    /// The backlog is out: reports what was skipped, then queues the
    /// newest of each topic.
    pub(super) fn end(&self, s: &mut State, out: &mut Vec<Item>) {
        let skipped: Vec<Skipped> = self
            .order
            .iter()
            .filter_map(|t| {
                let c = &self.topics[t];
                c.skipped.map(|(from, to, count)| Skipped {
                    topic: t,
                    from,
                    to,
                    count,
                })
            })
            .collect();
        if !skipped.is_empty() {
            out.push(Item::Sys(SysMessage::new(
                "$sys.lagged",
                &serde_json::json!({ "skipped": skipped }),
            )));
        }
        for t in &self.order {
            let newest = &self.topics[t].newest;
            // Conflation only took updates above what was sent.
            debug_assert!(s.sent.get(t).is_none_or(|&n| newest.seq > n));
            // A throttled update still pending is older: it is dropped.
            mark_sent(s, newest);
            out.push(Item::Update(newest.clone()));
        }
    }
}

/// Keeps `update` as its topic's newest while lagging, or counts it skipped
/// if a newer one is held already (a replay arriving during the lag).
pub(super) fn conflate(lag: &mut Lag, update: &Arc<Update>, stats: &OutboxStats) {
    match lag.topics.get_mut(&update.topic) {
        Some(c) => {
            if update.seq == c.newest.seq {
                return;
            }
            let skipped = if update.seq < c.newest.seq {
                update.seq
            } else {
                std::mem::replace(&mut c.newest, update.clone()).seq
            };
            c.skipped = Some(match c.skipped {
                None => (skipped, skipped, 1),
                Some((low, high, n)) => (low.min(skipped), high.max(skipped), n + 1),
            });
            stats.conflated.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            lag.order.push(update.topic.clone());
            lag.topics.insert(
                update.topic.clone(),
                Conflated {
                    newest: update.clone(),
                    skipped: None,
                },
            );
        }
    }
}

/// Records that `update` is queued or going out now: nothing of its topic at
/// or below its seq may follow, so a throttled update pending at or below it
/// is dropped (it would go out after a newer one).
fn mark_sent(s: &mut State, update: &Arc<Update>) {
    match s.sent.get_mut(&*update.topic) {
        Some(n) => *n = update.seq,
        None => {
            s.sent.insert(update.topic.clone(), update.seq);
        }
    }
    if let Some(r) = &mut s.rare {
        r.drop_pending_at_or_below(update);
    }
}
