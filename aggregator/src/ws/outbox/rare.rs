//! What few connections' outboxes use, kept behind one pointer that is
//! allocated on first use and freed once empty: throttles (an update held
//! until its topic's interval ends, newest wins), topics blocked while a
//! replay of them runs, and a lag.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lag::Lag;
use super::topics::TopicHasher;
use super::{Item, TopicMap};
use crate::update::Update;

/// One topic's throttle.
#[derive(Debug)]
struct Throttle {
    interval: Duration,
    next_at: Instant,
    pending: Option<Arc<Update>>,
}

/// Throttles, blocked topics and a lag.
#[derive(Debug, Default)]
pub(super) struct Rare {
    throttles: TopicMap<Throttle>,
    /// Topics being replayed: live updates of them are not queued until the
    /// replay joins (the join sends what was published meanwhile).
    pub(super) blocked: HashSet<Arc<str>, TopicHasher>,
    pub(super) lag: Option<Lag>,
}

impl Rare {
    /// Whether nothing is held (then the outbox frees it).
    pub(super) fn is_empty(&self) -> bool {
        self.throttles.is_empty() && self.blocked.is_empty() && self.lag.is_none()
    }

    /// Applies `interval` to `update`: `None` if it may go now (its topic's
    /// next interval starts), else `Some` (held, newest wins) with the time
    /// to be woken at if it is the first one held.
    pub(super) fn throttle(
        &mut self,
        update: &Arc<Update>,
        interval: Duration,
    ) -> Option<Option<Instant>> {
        let now = Instant::now();
        let t = self
            .throttles
            .entry(update.topic.clone())
            .or_insert_with(|| Throttle {
                interval,
                next_at: now,
                pending: None,
            });
        t.interval = interval;
        if t.pending.is_some() || now < t.next_at {
            let first = t.pending.is_none().then_some(t.next_at);
            // Newest wins (an older one never replaces it).
            if t.pending.as_ref().is_none_or(|p| p.seq < update.seq) {
                t.pending = Some(update.clone());
            }
            return Some(first);
        }
        t.next_at = now + interval;
        None
    }

    /// Moves the held updates now due into `out` (recording them in
    /// `sent`); returns when the next of the others is due.
    pub(super) fn release_due(
        &mut self,
        sent: &mut TopicMap<u64>,
        out: &mut Vec<Item>,
    ) -> Option<Instant> {
        let mut next_due: Option<Instant> = None;
        let mut now = None;
        for (topic, t) in self.throttles.iter_mut() {
            if t.pending.is_none() {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            if now >= t.next_at {
                let update = t.pending.take().expect("checked");
                // Whatever of its topic went out since dropped it if newer.
                debug_assert!(sent.get(topic).is_none_or(|&n| update.seq > n));
                sent.insert(topic.clone(), update.seq);
                out.push(Item::Update(update));
                t.next_at = now + t.interval;
            } else {
                next_due = Some(next_due.map_or(t.next_at, |d| d.min(t.next_at)));
            }
        }
        next_due
    }

    /// Drops a throttled update of `update`'s topic pending at or below it
    /// (it would go out after a newer one).
    pub(super) fn drop_pending_at_or_below(&mut self, update: &Update) {
        if let Some(t) = self.throttles.get_mut(&*update.topic)
            && t.pending.as_ref().is_some_and(|p| p.seq <= update.seq)
        {
            t.pending = None;
        }
    }

    /// Keeps only the throttles of topics `keep` accepts.
    pub(super) fn retain_throttles(&mut self, keep: impl Fn(&str) -> bool) {
        self.throttles.retain(|t, _| keep(t));
        self.throttles.shrink_to_fit();
    }

    /// Forgets `topic`'s throttle (and a held update of it).
    pub(super) fn forget_throttle(&mut self, topic: &str) {
        self.throttles.remove(topic);
    }

    /// Throttles held.
    pub(super) fn throttles(&self) -> usize {
        self.throttles.len()
    }
}
