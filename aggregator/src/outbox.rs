//! A connection's outgoing queue: bounded, throttled, conflating.
//!
//! The hub pushes into it without ever waiting (a mutex held for a push,
//! never across `.await`); the connection's task drains everything due at
//! each wake-up and writes it with one flush. Three policies live here:
//!
//! * **Throttle** (per subscription `throttle_ms`): at most one update per
//!   topic per interval; an update arriving sooner replaces the pending one
//!   (newest wins) and goes out when the interval ends. Its seq shows what was
//!   skipped.
//! * **Conflation** (slow clients): once more than `max_bytes` are queued the
//!   client is lagging; new updates then only replace the newest pending one
//!   per topic, so memory stays bounded by one update per topic. When the
//!   queue has drained the client gets `$sys.lagged` naming the skipped seqs
//!   of each topic, then the newest update of each, and is live again.
//! * **Disconnect**: a client still lagging after `grace` is marked overflowed;
//!   its session closes it with 1013 (try again later, resume with `since`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::update::{SysMessage, Update};

/// One queued item.
#[derive(Debug, Clone)]
pub enum Item {
    /// A topic update, shared with every other subscriber.
    Update(Arc<Update>),
    /// A reply or notice for this connection only.
    Sys(SysMessage),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Update(u) => u.json.len(),
            Item::Sys(m) => m.size(),
        }
    }
}

/// What happened to a pushed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for sending.
    Queued,
    /// Held back by a throttle or by conflation (newest wins).
    Held,
    /// Refused: the connection is being closed.
    Refused,
}

#[derive(Debug)]
struct Throttle {
    interval: Duration,
    next_at: Instant,
    pending: Option<Arc<Update>>,
}

#[derive(Debug)]
struct Conflated {
    newest: Arc<Update>,
    /// Seqs replaced before being sent: first, last and how many.
    skipped: Option<(u64, u64, u64)>,
}

#[derive(Debug)]
struct Lag {
    since: Instant,
    order: Vec<Arc<str>>,
    topics: HashMap<Arc<str>, Conflated>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Item>,
    bytes: usize,
    /// The session has drained everything and waits for a wake-up. Only the
    /// first push after that wakes it: the rest of a burst (or of a batching
    /// window) is picked up by the drain it is already going to do.
    idle: bool,
    throttles: HashMap<Arc<str>, Throttle>,
    lag: Option<Lag>,
    overflowed: bool,
}

/// Counters shared by every outbox of a server.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Times a client started lagging (conflation began).
    pub lag_episodes: AtomicU64,
    /// Updates replaced by a newer one while lagging.
    pub conflated: AtomicU64,
    /// Clients marked for disconnection after the grace period.
    pub lag_disconnects: AtomicU64,
    /// Largest queue seen on any connection, bytes.
    pub peak_queue_bytes: AtomicU64,
}

/// Bounded queue from the hub to one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Fired once when the outbox overflows, to interrupt a blocked write.
    doomed: Notify,
    max_bytes: usize,
    grace: Duration,
    stats: Arc<OutboxStats>,
}

#[derive(Serialize)]
struct Skipped<'a> {
    topic: &'a str,
    from: u64,
    to: u64,
    count: u64,
}

impl Outbox {
    /// An outbox that starts conflating beyond `max_bytes` queued and gives up
    /// on a client still lagging after `grace`.
    pub fn new(max_bytes: usize, grace: Duration, stats: Arc<OutboxStats>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                idle: true,
                throttles: HashMap::new(),
                lag: None,
                overflowed: false,
            }),
            notify: Notify::new(),
            doomed: Notify::new(),
            max_bytes,
            grace,
            stats,
        })
    }

    /// Queues an update, applying `throttle` (zero for none) and conflation.
    pub fn push_update(&self, update: &Arc<Update>, throttle: Duration) -> Pushed {
        let now = Instant::now();
        let mut s = self.state.lock().expect("outbox lock");
        if s.overflowed {
            return Pushed::Refused;
        }
        if let Some(lag) = &mut s.lag {
            let overdue = now.duration_since(lag.since) > self.grace;
            conflate(lag, update, &self.stats);
            if overdue {
                s.overflowed = true;
                self.stats.lag_disconnects.fetch_add(1, Ordering::Relaxed);
                drop(s);
                self.notify.notify_one();
                self.doomed.notify_one();
                return Pushed::Refused;
            }
            return Pushed::Held;
        }
        if !throttle.is_zero() {
            let t = s
                .throttles
                .entry(update.topic.clone())
                .or_insert_with(|| Throttle {
                    interval: throttle,
                    next_at: now,
                    pending: None,
                });
            t.interval = throttle;
            if t.pending.is_some() || now < t.next_at {
                t.pending = Some(update.clone());
                drop(s);
                // The session re-computes its wake-up time.
                self.notify.notify_one();
                return Pushed::Held;
            }
            t.next_at = now + throttle;
        }
        self.enqueue(&mut s, Item::Update(update.clone()), now);
        let wake = std::mem::replace(&mut s.idle, false);
        drop(s);
        if wake {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a reply or notice (never conflated; counted in the bound).
    pub fn push_sys(&self, message: SysMessage) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.overflowed {
            return;
        }
        self.enqueue(&mut s, Item::Sys(message), Instant::now());
        let wake = std::mem::replace(&mut s.idle, false);
        drop(s);
        if wake {
            self.notify.notify_one();
        }
    }

    fn enqueue(&self, s: &mut State, item: Item, now: Instant) {
        s.bytes += item.size();
        s.queue.push_back(item);
        self.stats
            .peak_queue_bytes
            .fetch_max(s.bytes as u64, Ordering::Relaxed);
        if s.bytes > self.max_bytes && s.lag.is_none() {
            self.stats.lag_episodes.fetch_add(1, Ordering::Relaxed);
            s.lag = Some(Lag {
                since: now,
                order: Vec::new(),
                topics: HashMap::new(),
            });
        }
    }

    /// Moves everything due into `out`; returns when throttled updates are
    /// next due, if any are waiting.
    pub fn drain_into(&self, out: &mut Vec<Item>) -> Option<Instant> {
        let now = Instant::now();
        let mut s = self.state.lock().expect("outbox lock");
        out.extend(s.queue.drain(..));
        s.bytes = 0;
        s.idle = true;
        if let Some(lag) = s.lag.take() {
            // The backlog is out: report what was skipped, then the newest.
            let skipped: Vec<Skipped> = lag
                .order
                .iter()
                .filter_map(|t| {
                    let c = &lag.topics[t];
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
            for t in &lag.order {
                out.push(Item::Update(lag.topics[t].newest.clone()));
            }
        }
        let mut next_due: Option<Instant> = None;
        for t in s.throttles.values_mut() {
            if t.pending.is_some() {
                if now >= t.next_at {
                    out.push(Item::Update(t.pending.take().expect("checked")));
                    t.next_at = now + t.interval;
                } else {
                    next_due = Some(next_due.map_or(t.next_at, |d| d.min(t.next_at)));
                }
            }
        }
        next_due
    }

    /// Whether the client must be disconnected (lagging past the grace period).
    pub fn overflowed(&self) -> bool {
        self.state.lock().expect("outbox lock").overflowed
    }

    /// Whether the client is currently lagging (conflated).
    pub fn lagging(&self) -> bool {
        self.state.lock().expect("outbox lock").lag.is_some()
    }

    /// Forgets the throttle state of topics no longer subscribed.
    pub fn forget_throttle(&self, keep: impl Fn(&str) -> bool) {
        let mut s = self.state.lock().expect("outbox lock");
        s.throttles.retain(|t, _| keep(t));
    }

    /// Waits until something is pushed (or was pushed since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Waits until the outbox overflows (the client must go).
    pub async fn doomed(&self) {
        self.doomed.notified().await
    }

    /// Whether anything is queued.
    pub fn has_queued(&self) -> bool {
        let s = self.state.lock().expect("outbox lock");
        !s.queue.is_empty() || s.lag.is_some()
    }
}

fn conflate(lag: &mut Lag, update: &Arc<Update>, stats: &OutboxStats) {
    match lag.topics.get_mut(&update.topic) {
        Some(c) => {
            let old = c.newest.seq;
            c.skipped = Some(match c.skipped {
                None => (old, old, 1),
                Some((from, _, n)) => (from, old, n + 1),
            });
            c.newest = update.clone();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Payload;
    use std::time::SystemTime;

    fn up(topic: &str, seq: u64, pad: usize) -> Arc<Update> {
        let now = SystemTime::now();
        Arc::new(Update::new(
            topic.into(),
            seq,
            now,
            now,
            Payload::Other(serde_json::json!("x".repeat(pad))),
        ))
    }

    fn seqs(items: &[Item]) -> Vec<(String, u64)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Update(u) => Some((u.topic.to_string(), u.seq)),
                Item::Sys(_) => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_client_is_conflated_then_told_what_it_skipped() {
        let stats = Arc::new(OutboxStats::default());
        // Five updates of this size exceed the bound: the fifth starts the lag.
        let size = up("a", 1, 300).json.len();
        let o = Outbox::new(size * 5 - 1, Duration::from_secs(5), stats.clone());
        for seq in 1..=5 {
            assert_eq!(
                o.push_update(&up("a", seq, 300), Duration::ZERO),
                Pushed::Queued
            );
        }
        assert!(o.lagging());
        for seq in 6..=9 {
            assert_eq!(
                o.push_update(&up("a", seq, 300), Duration::ZERO),
                Pushed::Held
            );
        }
        o.push_update(&up("b", 1, 10), Duration::ZERO);
        let mut out = Vec::new();
        o.drain_into(&mut out);
        let got = seqs(&out);
        assert_eq!(
            got[..5].iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(&got[5..], &[("a".into(), 9), ("b".into(), 1)]);
        let Item::Sys(notice) = &out[5] else {
            panic!("notice before the newest")
        };
        assert_eq!(notice.topic, "$sys.lagged");
        assert_eq!(
            notice.payload["skipped"][0],
            serde_json::json!({"topic": "a", "from": 6, "to": 8, "count": 3})
        );
        assert!(!o.lagging());
        assert_eq!(stats.conflated.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_lagging_past_the_grace_period_is_refused() {
        let stats = Arc::new(OutboxStats::default());
        let o = Outbox::new(100, Duration::from_millis(500), stats.clone());
        o.push_update(&up("a", 1, 200), Duration::ZERO);
        assert!(o.lagging());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            o.push_update(&up("a", 2, 10), Duration::ZERO),
            Pushed::Refused
        );
        assert!(o.overflowed());
        assert_eq!(stats.lag_disconnects.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_sends_at_most_one_per_interval_and_the_newest() {
        let o = Outbox::new(1 << 20, Duration::from_secs(5), Arc::default());
        let t = Duration::from_millis(100);
        assert_eq!(o.push_update(&up("a", 1, 0), t), Pushed::Queued);
        assert_eq!(o.push_update(&up("a", 2, 0), t), Pushed::Held);
        assert_eq!(o.push_update(&up("a", 3, 0), t), Pushed::Held);
        let mut out = Vec::new();
        let due = o.drain_into(&mut out).expect("a pending update");
        assert_eq!(seqs(&out), vec![("a".into(), 1)]);
        out.clear();
        tokio::time::advance(due - Instant::now()).await;
        assert!(o.drain_into(&mut out).is_none());
        assert_eq!(seqs(&out), vec![("a".into(), 3)]);
    }
}
