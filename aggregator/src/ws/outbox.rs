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
//!
//! Whatever mix of the three, and of replays from history, each topic's seqs
//! strictly rise on the connection: the outbox remembers the newest seq per
//! topic it has queued or sent, never queues one at or below it (a replay
//! overlapping what went out live, say), and drops a throttled update still
//! pending once a newer one of its topic has gone out (the lag's newest, or a
//! replay). That state is forgotten with the throttles, when the connection
//! no longer subscribes to the topic: a later subscription starts afresh.
//!
//! What most connections never use (throttles, topics blocked for a replay,
//! a lag) lives behind one pointer, allocated on first use and freed once
//! empty, so an idle outbox is small; a drain hands the queue's buffer to the
//! session rather than copying it, and takes the lock once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::update::{SysMessage, Update};
use crate::ws::ticks::Wheel;
use lag::{Lag, conflate};
use rare::Rare;
use topics::TopicHasher;

pub use items::{Drained, Item, Pushed};

mod items;
mod lag;
mod rare;
mod topics;

/// A map keyed by topic, with the outbox's hasher (no state per map).
type TopicMap<V> = HashMap<Arc<str>, V, TopicHasher>;

#[derive(Debug)]
struct State {
    /// Pushed and drained whole (never popped one by one).
    queue: Vec<Item>,
    bytes: usize,
    /// The session has drained everything and waits for a wake-up. Only the
    /// first push after that wakes it (at once, or at the end of the
    /// batching window): the rest of a burst (or of the window) is picked up
    /// by the drain it is already going to do.
    idle: bool,
    /// Wake the session at once, whatever the batching window (while it
    /// replays history, which goes at the pace of the socket).
    immediate: bool,
    overflowed: bool,
    /// The heartbeat came and the session has not seen it yet.
    beat: bool,
    /// Per topic, the newest seq queued or sent: nothing at or below it is
    /// queued again.
    sent: TopicMap<u64>,
    rare: Option<Box<Rare>>,
}

impl State {
    /// The rare state, made if needed.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Frees the rare state once nothing is left in it.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    fn lagging(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.lag.is_some())
    }
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
    /// Wakes the session: it drains at once when woken.
    notify: Notify,
    /// Itself, for the wheel.
    me: Weak<Outbox>,
    /// Batching window, and the server's wheel that ends it (and wakes the
    /// session when a throttled update falls due). Without a wheel every
    /// wake-up is at once.
    window: Duration,
    wheel: Option<Arc<Wheel>>,
    /// Fired once when the outbox overflows, to interrupt a blocked write.
    doomed: Notify,
    max_bytes: usize,
    grace: Duration,
    stats: Arc<OutboxStats>,
}

impl Outbox {
    /// An outbox that starts conflating beyond `max_bytes` queued and gives up
    /// on a client still lagging after `grace`.
    /// The session is woken at once by every push after a drain.
    pub fn new(max_bytes: usize, grace: Duration, stats: Arc<OutboxStats>) -> Arc<Self> {
        Self::with_window(max_bytes, grace, stats, Duration::ZERO, None)
    }

    /// Like [`Outbox::new`], but the session is woken by `wheel`: when the
    /// `window` open at the first push following a drain closes (at once if
    /// zero), and when a throttled update falls due.
    pub fn with_window(
        max_bytes: usize,
        grace: Duration,
        stats: Arc<OutboxStats>,
        window: Duration,
        wheel: Option<Arc<Wheel>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                bytes: 0,
                idle: true,
                immediate: false,
                overflowed: false,
                beat: false,
                sent: TopicMap::default(),
                rare: None,
            }),
            notify: Notify::new(),
            me: me.clone(),
            window,
            wheel,
            doomed: Notify::new(),
            max_bytes,
            grace,
            stats,
        })
    }

    /// The batching window (zero: every update goes out at once).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Wakes the session now: it drains what is queued.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Wakes the session at `at` (through the wheel), or now without one.
    fn wake_at(&self, at: Instant) {
        match &self.wheel {
            Some(wheel) => wheel.wake_at(at, self.me.clone()),
            None => self.wake(),
        }
    }

    /// Wakes the session for its heartbeat: the next drain says so.
    pub fn beat(&self) {
        self.state.lock().expect("outbox lock").beat = true;
        self.wake();
    }

    /// When the session is to drain what was just queued in an idle outbox:
    /// at once while replaying or lagging (the newest of each topic goes
    /// out, window or not), else when the window closes on the wheel's
    /// clock (aligned, so connections with the same window drain together;
    /// see [`Wheel::window_close`]).
    fn due(&self, s: &State) -> Option<Instant> {
        if s.immediate || self.window.is_zero() || s.lagging() {
            return None;
        }
        let now = Instant::now();
        Some(match &self.wheel {
            Some(wheel) => wheel.window_close(now, self.window),
            None => now + self.window,
        })
    }

    /// Wakes the session for a push that ended its idleness: at once, or
    /// when the window closes.
    fn woken(&self, due: Option<Instant>) {
        match due {
            Some(at) => self.wake_at(at),
            None => self.wake(),
        }
    }

    /// While on, pushes wake the session at once whatever the window (a
    /// replay runs at the pace of the socket); turning it on wakes a session
    /// that has something queued.
    pub fn set_immediate(&self, on: bool) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.immediate == on {
            return;
        }
        s.immediate = on;
        let queued = !s.idle;
        drop(s);
        if on && queued {
            self.wake();
        }
    }

    /// Queues an update, applying `throttle` (zero for none) and conflation.
    /// An update of a topic being replayed is not queued (`Stale`).
    pub fn push_update(&self, update: &Arc<Update>, throttle: Duration) -> Pushed {
        self.push(update, throttle, false)
    }

    /// Queues an update read from history for a replay (never throttled;
    /// queued even while its topic is blocked for the replay).
    pub fn push_replay(&self, update: &Arc<Update>) -> Pushed {
        self.push(update, Duration::ZERO, true)
    }

    /// Holds back live updates of `topic` while a replay of it runs.
    pub fn block(&self, topic: &Arc<str>) {
        let mut s = self.state.lock().expect("outbox lock");
        s.rare().blocked.insert(topic.clone());
    }

    /// Ends [`Outbox::block`].
    pub fn unblock(&self, topic: &str) {
        let mut s = self.state.lock().expect("outbox lock");
        if let Some(r) = &mut s.rare {
            r.blocked.remove(topic);
            if r.blocked.is_empty() {
                r.blocked.shrink_to_fit();
            }
        }
        s.tidy();
    }

    /// Nothing of `topic` at or below `seq` is to be sent (the client's
    /// resume point for a topic that appears after it subscribed).
    pub fn prime(&self, topic: &Arc<str>, seq: u64) {
        let mut s = self.state.lock().expect("outbox lock");
        let n = s.sent.entry(topic.clone()).or_insert(0);
        *n = (*n).max(seq);
    }

    fn push(&self, update: &Arc<Update>, throttle: Duration, replay: bool) -> Pushed {
        let mut guard = self.state.lock().expect("outbox lock");
        let State {
            overflowed,
            sent,
            rare,
            ..
        } = &mut *guard;
        if *overflowed {
            return Pushed::Refused;
        }
        // At or below what the connection has: sending it would go backwards.
        // (One lookup: the entry is made only for a topic's first update.)
        let seen = sent.get_mut(&*update.topic);
        let stale = seen.as_deref().is_some_and(|&n| update.seq <= n);
        if let Some(r) = rare {
            if !replay && !r.blocked.is_empty() && r.blocked.contains(&*update.topic) {
                return Pushed::Stale;
            }
            if let Some(lag) = &mut r.lag {
                let overdue = Instant::now().duration_since(lag.since) > self.grace;
                if !stale {
                    conflate(lag, update, &self.stats);
                }
                if overdue {
                    *overflowed = true;
                    self.stats.lag_disconnects.fetch_add(1, Ordering::Relaxed);
                    drop(guard);
                    self.notify.notify_one();
                    self.doomed.notify_one();
                    return Pushed::Refused;
                }
                return if stale { Pushed::Stale } else { Pushed::Held };
            }
        }
        if stale {
            return Pushed::Stale;
        }
        if !throttle.is_zero() {
            let rare = rare.get_or_insert_with(Box::default);
            if let Some(first) = rare.throttle(update, throttle) {
                drop(guard);
                // The first held update asks for a wake-up when it falls
                // due; the ones replacing it ride on that.
                if let Some(at) = first {
                    self.wake_at(at);
                }
                return Pushed::Held;
            }
        }
        match seen {
            Some(n) => *n = update.seq,
            None => {
                sent.insert(update.topic.clone(), update.seq);
            }
        }
        if let Some(r) = rare {
            r.drop_pending_at_or_below(update);
        }
        let s = &mut *guard;
        self.enqueue(s, Item::Update(update.clone()));
        // The first push after a drain wakes the session; a lag starting
        // now wakes it at once.
        let wake = std::mem::replace(&mut s.idle, false) || s.lagging();
        let due = self.due(s);
        drop(guard);
        if wake {
            self.woken(due);
        }
        Pushed::Queued
    }

    /// Queues a reply or notice (never conflated; counted in the bound).
    pub fn push_sys(&self, message: SysMessage) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.overflowed {
            return;
        }
        self.enqueue(&mut s, Item::Sys(message));
        // A lag starting now wakes the session at once.
        let wake = std::mem::replace(&mut s.idle, false) || s.lagging();
        let due = self.due(&s);
        drop(s);
        if wake {
            self.woken(due);
        }
    }

    fn enqueue(&self, s: &mut State, item: Item) {
        s.bytes += item.size();
        s.queue.push(item);
        let peak = &self.stats.peak_queue_bytes;
        if s.bytes as u64 > peak.load(Ordering::Relaxed) {
            peak.fetch_max(s.bytes as u64, Ordering::Relaxed);
        }
        if s.bytes > self.max_bytes && !s.lagging() {
            self.stats.lag_episodes.fetch_add(1, Ordering::Relaxed);
            s.rare().lag = Some(Lag::new(Instant::now()));
        }
    }

    /// Moves everything due into `out`; returns when throttled updates are
    /// next due, if any are waiting (with a wheel, it wakes the session
    /// then by itself).
    pub fn drain_into(&self, out: &mut Vec<Item>) -> Option<Instant> {
        self.drain(out).next_due
    }

    /// Moves everything due into `out` (nothing if the client must go),
    /// under one lock, and says what else the session must know.
    pub fn drain(&self, out: &mut Vec<Item>) -> Drained {
        let mut guard = self.state.lock().expect("outbox lock");
        let s = &mut *guard;
        let beat = std::mem::take(&mut s.beat);
        if s.overflowed {
            return Drained {
                overflowed: true,
                beat,
                ..Drained::default()
            };
        }
        // The queue's buffer goes to the session (no copy): an idle
        // connection holds none, and a burst (a replay, a lag's end) leaves
        // no large one behind.
        if out.is_empty() {
            std::mem::swap(out, &mut s.queue);
            s.queue = Vec::new();
        } else {
            out.append(&mut s.queue);
        }
        s.bytes = 0;
        s.idle = true;
        let Some(rare) = &mut s.rare else {
            return Drained {
                beat,
                ..Drained::default()
            };
        };
        if let Some(lag) = rare.lag.take() {
            lag.end(s, out);
        }
        let State { rare, sent, .. } = &mut *s;
        let next_due = rare.as_mut().and_then(|r| r.release_due(sent, out));
        s.tidy();
        Drained {
            next_due,
            overflowed: false,
            beat,
        }
    }

    /// Whether the client must be disconnected (lagging past the grace period).
    pub fn overflowed(&self) -> bool {
        self.state.lock().expect("outbox lock").overflowed
    }

    /// Whether the client is currently lagging (conflated).
    #[cfg(test)]
    pub fn lagging(&self) -> bool {
        self.state.lock().expect("outbox lock").lagging()
    }

    /// Forgets the throttle and ordering state of topics no longer
    /// subscribed.
    pub fn forget_throttle(&self, keep: impl Fn(&str) -> bool) {
        let mut s = self.state.lock().expect("outbox lock");
        if let Some(r) = &mut s.rare {
            r.retain_throttles(&keep);
        }
        s.sent.retain(|t, _| keep(t));
        s.sent.shrink_to_fit();
        s.tidy();
    }

    /// Forgets the throttle and ordering state of a topic the hub forgot
    /// (its host departed long ago): a held update of it is dropped, and a
    /// topic of that name made later starts fresh.
    pub fn forget_topic(&self, topic: &str) {
        let mut s = self.state.lock().expect("outbox lock");
        if let Some(r) = &mut s.rare {
            r.forget_throttle(topic);
        }
        s.sent.remove(topic);
        s.tidy();
    }

    /// Entries of per-topic state held: throttles plus ordering marks.
    pub fn tracked_topics(&self) -> usize {
        let s = self.state.lock().expect("outbox lock");
        s.rare.as_ref().map_or(0, |r| r.throttles()) + s.sent.len()
    }

    /// Waits until something is pushed (or was pushed since the last wait).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Waits until the outbox overflows (the client must go).
    pub async fn doomed(&self) {
        self.doomed.notified().await
    }

    /// Bytes queued and not drained yet.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().expect("outbox lock").bytes
    }

    /// Whether anything is queued.
    pub fn has_queued(&self) -> bool {
        let s = self.state.lock().expect("outbox lock");
        !s.queue.is_empty() || s.lagging()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod property;
