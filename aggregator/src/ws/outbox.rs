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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::update::{SysMessage, Update};
use crate::ws::ticks::Wheel;
use lag::{Lag, conflate};

mod lag;

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
    /// Not sent: the connection already has this seq of the topic or a newer
    /// one (queued or sent), so sending it would go backwards.
    Stale,
}

#[derive(Debug)]
struct Throttle {
    interval: Duration,
    next_at: Instant,
    pending: Option<Arc<Update>>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Item>,
    bytes: usize,
    /// The session has drained everything and waits for a wake-up. Only the
    /// first push after that wakes it (at once, or at the end of the
    /// batching window): the rest of a burst (or of the window) is picked up
    /// by the drain it is already going to do.
    idle: bool,
    /// Wake the session at once, whatever the batching window (while it
    /// replays history, which goes at the pace of the socket).
    immediate: bool,
    throttles: HashMap<Arc<str>, Throttle>,
    /// Per topic, the newest seq queued or sent: nothing at or below it is
    /// queued again.
    sent: HashMap<Arc<str>, u64>,
    /// Topics being replayed: live updates of them are not queued until the
    /// replay joins (the join sends what was published meanwhile).
    blocked: HashSet<Arc<str>>,
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
                queue: VecDeque::new(),
                bytes: 0,
                idle: true,
                immediate: false,
                throttles: HashMap::new(),
                sent: HashMap::new(),
                blocked: HashSet::new(),
                lag: None,
                overflowed: false,
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

    /// When the session is to drain what was just queued in an idle outbox:
    /// when the window closes on the wheel's clock (aligned, so connections
    /// with the same window drain together; see [`Wheel::window_close`]).
    fn due(&self, s: &State, now: Instant) -> Option<Instant> {
        if s.immediate || self.window.is_zero() {
            return None;
        }
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
        s.blocked.insert(topic.clone());
    }

    /// Ends [`Outbox::block`].
    pub fn unblock(&self, topic: &str) {
        let mut s = self.state.lock().expect("outbox lock");
        s.blocked.remove(topic);
        if s.blocked.is_empty() {
            s.blocked.shrink_to_fit();
        }
    }

    /// Nothing of `topic` at or below `seq` is to be sent (the client's
    /// resume point for a topic that appears after it subscribed).
    pub fn prime(&self, topic: &Arc<str>, seq: u64) {
        let mut s = self.state.lock().expect("outbox lock");
        let n = s.sent.entry(topic.clone()).or_insert(0);
        *n = (*n).max(seq);
    }

    fn push(&self, update: &Arc<Update>, throttle: Duration, replay: bool) -> Pushed {
        let now = Instant::now();
        let mut guard = self.state.lock().expect("outbox lock");
        let s = &mut *guard;
        if s.overflowed {
            return Pushed::Refused;
        }
        if !replay && !s.blocked.is_empty() && s.blocked.contains(&*update.topic) {
            return Pushed::Stale;
        }
        // At or below what the connection has: sending it would go backwards.
        let stale = s.sent.get(&*update.topic).is_some_and(|&n| update.seq <= n);
        if let Some(lag) = &mut s.lag {
            let overdue = now.duration_since(lag.since) > self.grace;
            if !stale {
                conflate(lag, update, &self.stats);
            }
            if overdue {
                s.overflowed = true;
                self.stats.lag_disconnects.fetch_add(1, Ordering::Relaxed);
                drop(guard);
                self.notify.notify_one();
                self.doomed.notify_one();
                return Pushed::Refused;
            }
            return if stale { Pushed::Stale } else { Pushed::Held };
        }
        if stale {
            return Pushed::Stale;
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
                // The first held update asks for a wake-up when it falls
                // due; the ones replacing it ride on that.
                let first = t.pending.is_none().then_some(t.next_at);
                // Newest wins (an older one never replaces it).
                if t.pending.as_ref().is_none_or(|p| p.seq < update.seq) {
                    t.pending = Some(update.clone());
                }
                drop(guard);
                if let Some(at) = first {
                    self.wake_at(at);
                }
                return Pushed::Held;
            }
            t.next_at = now + throttle;
        }
        mark_sent(s, update);
        self.enqueue(s, Item::Update(update.clone()), now);
        let wake = std::mem::replace(&mut s.idle, false);
        let due = self.due(s, now);
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
        let now = Instant::now();
        self.enqueue(&mut s, Item::Sys(message), now);
        let wake = std::mem::replace(&mut s.idle, false);
        let due = self.due(&s, now);
        drop(s);
        if wake {
            self.woken(due);
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
            s.lag = Some(Lag::new(now));
        }
    }

    /// Moves everything due into `out`; returns when throttled updates are
    /// next due, if any are waiting (with a wheel, it wakes the session
    /// then by itself).
    pub fn drain_into(&self, out: &mut Vec<Item>) -> Option<Instant> {
        let now = Instant::now();
        let mut s = self.state.lock().expect("outbox lock");
        // The queue's buffer goes with its items: an idle connection holds
        // none, and a burst (a replay, a lag's end) leaves no large one behind.
        out.extend(std::mem::take(&mut s.queue));
        s.bytes = 0;
        s.idle = true;
        if let Some(lag) = s.lag.take() {
            lag.end(&mut s, out);
        }
        let mut next_due: Option<Instant> = None;
        let State {
            throttles, sent, ..
        } = &mut *s;
        for (topic, t) in throttles.iter_mut() {
            if t.pending.is_some() {
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

    /// Forgets the throttle and ordering state of topics no longer
    /// subscribed.
    pub fn forget_throttle(&self, keep: impl Fn(&str) -> bool) {
        let mut s = self.state.lock().expect("outbox lock");
        s.throttles.retain(|t, _| keep(t));
        s.sent.retain(|t, _| keep(t));
        s.throttles.shrink_to_fit();
        s.sent.shrink_to_fit();
    }

    /// Forgets the throttle and ordering state of a topic the hub forgot
    /// (its host departed long ago): a held update of it is dropped, and a
    /// topic of that name made later starts fresh.
    pub fn forget_topic(&self, topic: &str) {
        let mut s = self.state.lock().expect("outbox lock");
        s.throttles.remove(topic);
        s.sent.remove(topic);
    }

    /// Entries of per-topic state held: throttles plus ordering marks.
    pub fn tracked_topics(&self) -> usize {
        let s = self.state.lock().expect("outbox lock");
        s.throttles.len() + s.sent.len()
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
        !s.queue.is_empty() || s.lag.is_some()
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
    if let Some(t) = s.throttles.get_mut(&*update.topic)
        && t.pending.as_ref().is_some_and(|p| p.seq <= update.seq)
    {
        t.pending = None;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod property;
