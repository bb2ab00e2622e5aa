//! The hub: one task owns every topic and its live subscribers, and appends
//! to each topic's history.
//!
//! Ingest publishes updates and WebSocket sessions subscribe over one bounded
//! command channel. The hub routes live updates only: a subscription that
//! asks for history (`history`, `since`) gets a [`Replay`] back, which its
//! session reads from the topics' [`TopicHistory`] on its own, paced by its
//! own socket, while the hub goes on publishing. When the session has caught
//! up it sends [`Command::Join`] with where it got to in each topic; the hub
//! then sends the few updates published since and delivers live from there,
//! so the seam has no gap and no duplicate, and no replay ever runs in the
//! hub task.
//!
//! Updates that no sample numbers (the `hosts` topic's events) are numbered
//! here, in the order they reach the hub: the hub is the one place that
//! orders them, so none can be taken for a duplicate of a later one.
//!
//! Departed hosts are forgotten on request ([`Command::Forget`]): their
//! topics, history and every connection's throttle state for them go, so
//! memory follows the fleet as it is, not every host ever seen.
//!
//! Routing is kept per topic: each topic holds the list of connections whose
//! patterns match it, maintained when subscriptions change, so a publish costs
//! one push per interested connection and nothing for the others. A push never
//! waits: a connection whose outbox is full is marked overflowed and closed by
//! its own task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Grant;
use crate::history::{Histories, HistoryStats, TopicHistory};
use crate::outbox::{Outbox, Pushed};
use crate::topic;
use crate::update::{SysMessage, Unnumbered, Update};

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// Where a resume starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// One seq, for a subscription to one exact topic (a single number on a
    /// wildcard pattern is refused by the protocol: see `since_needs_topics`).
    All(u64),
    /// A seq per topic; topics not named start live.
    PerTopic(HashMap<String, u64>),
}

impl Since {
    fn for_topic(&self, topic: &str) -> Option<u64> {
        match self {
            Since::All(s) => Some(*s),
            Since::PerTopic(m) => m.get(topic).copied(),
        }
    }

    /// Keeps only the resume points still needed: those of topics `wanted`
    /// that the hub does not hold yet (`known`), whose updates have still to
    /// be kept at or below the point when they appear. `None` when nothing
    /// is left.
    fn still_needed(
        self,
        pattern: &str,
        wanted: impl Fn(&str) -> bool,
        known: impl Fn(&str) -> bool,
    ) -> Option<Since> {
        match self {
            Since::All(s) => (!known(pattern)).then_some(Since::All(s)),
            Since::PerTopic(mut m) => {
                m.retain(|t, _| wanted(t) && !known(t));
                m.shrink_to_fit();
                (!m.is_empty()).then_some(Since::PerTopic(m))
            }
        }
    }
}

/// A validated subscribe request.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Topic or pattern.
    pub pattern: String,
    /// Echoed in the reply.
    pub id: Option<Value>,
    /// Resume point.
    pub since: Option<Since>,
    /// Send the last N of each topic first (when not resuming).
    pub history: Option<usize>,
    /// At most one update per topic per this interval (zero: no throttle).
    pub throttle: Duration,
    /// What the connection's token may watch (`None`: everything).
    pub grant: Option<Grant>,
}

/// A per-topic rate limit from the configuration.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Topics it applies to (wildcards allowed).
    pub pattern: String,
    /// Updates closer than this to the last accepted one are not published.
    pub min_interval: Duration,
}

/// How the hub behaves.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Updates kept per topic.
    pub history_len: usize,
    /// Bytes of history kept over all topics; beyond it the topics holding
    /// the most are trimmed, oldest first (see [`crate::history`]).
    pub history_max_bytes: usize,
    /// Commands queued before publishers wait.
    pub queue: usize,
    /// Per-topic rate limits, first match wins.
    pub rate_limits: Vec<RateLimit>,
    /// In cluster mode, where host updates produced here go to be published
    /// to the broker. Never waited on: when it is full the update is not
    /// exported and `export_dropped` counts it.
    pub export: Option<mpsc::Sender<Arc<Update>>>,
}

/// What the hub is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Publish updates, in order.
    Publish(Vec<Update>),
    /// Number updates (each its topic's next seq, in arrival order) and
    /// publish them.
    PublishNext(Vec<Unnumbered>),
    /// Add a subscription; the `$sys.subscribed` reply goes to `outbox`,
    /// and what the session has to replay from history to `replay`.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// What it asked for.
        request: SubscribeRequest,
        /// Where the replay to run goes (empty when there is none).
        replay: tokio::sync::oneshot::Sender<Replay>,
    },
    /// A session has replayed a subscription's history up to `reached`:
    /// send what followed and deliver live from there.
    Join {
        /// The connection.
        conn: ConnId,
        /// The subscription ([`Replay::token`]).
        token: u64,
        /// Per topic, the history read and the last seq sent from it.
        reached: Vec<ReplayTopic>,
    },
    /// Remove a subscription.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// Exactly the pattern given to subscribe.
        pattern: String,
        /// Echoed in the reply.
        id: Option<Value>,
    },
    /// The connection is gone.
    Disconnect {
        /// The connection.
        conn: ConnId,
    },
    /// Sends a `$sys` notice to every connection (cluster state changes).
    Broadcast(SysMessage),
    /// The history of every host topic produced here, above `floors` (a
    /// topic missing from `floors` is sent whole): a peer's catch-up. The
    /// answer names what to read; the caller reads it, not the hub.
    Export {
        /// Topic → the last seq the peer holds.
        floors: HashMap<String, u64>,
        /// Where the answer goes: each topic's history and the seq to read after.
        reply: tokio::sync::oneshot::Sender<Vec<ReplayTopic>>,
    },
    /// The current seq of every host topic, to ask peers for what is newer.
    Floors {
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<HashMap<String, u64>>,
    },
    /// Forgets every host whose `host.<h>.*` topics have all been idle for
    /// `idle` or longer, except the hosts in `keep`: their topics, history
    /// and throttle state go. Replies with the hosts forgotten.
    Forget {
        /// Hosts (topic segments) still attached, or departed too recently.
        keep: HashSet<String>,
        /// How long every topic of a host must have gone without an update.
        idle: Duration,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
    /// The latest update of every topic starting with `prefix`.
    Latest {
        /// Topic prefix, e.g. `host.` or `host.web-01.`.
        prefix: String,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<Arc<Update>>>,
    },
}

/// Counters of the hub, read by `/healthz` and tests.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Updates accepted into topics.
    pub updates_published: AtomicU64,
    /// Updates dropped because their topic already held that seq.
    pub updates_duplicate: AtomicU64,
    /// Update frames queued to connections.
    pub deliveries: AtomicU64,
    /// Updates held back (throttled or conflated) for a connection.
    pub held: AtomicU64,
    /// Updates refused by an outbox being closed.
    pub overflow_drops: AtomicU64,
    /// Updates not published because of a topic rate limit.
    pub rate_limited: AtomicU64,
    /// Topics known.
    pub topics: AtomicU64,
    /// Hosts forgotten (with their topics) since start.
    pub hosts_forgotten: AtomicU64,
    /// What history holds (bytes, updates, trimmed, sealed).
    pub history: Arc<HistoryStats>,
    /// Live subscriptions.
    pub subscriptions: AtomicU64,
    /// Updates handed to the broker publisher (cluster mode).
    pub exported: AtomicU64,
    /// Updates not handed to the broker publisher because its queue was full.
    pub export_dropped: AtomicU64,
    /// `updates_published` by topic kind (index in [`topic::KINDS`]).
    pub published_by_kind: [AtomicU64; topic::KINDS.len()],
    /// `deliveries` by topic kind (index in [`topic::KINDS`]).
    pub deliveries_by_kind: [AtomicU64; topic::KINDS.len()],
}

/// The hub's closed: the aggregator is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the hub has stopped")]
pub struct HubClosed;

/// One topic of a replay: its history, and the seq after which to read.
#[derive(Debug, Clone)]
pub struct ReplayTopic {
    /// The topic.
    pub topic: Arc<str>,
    /// Its history, read by the session with no help from the hub.
    pub history: Arc<TopicHistory>,
    /// Updates above this seq are to be sent (then: the last one sent).
    pub after: u64,
}

/// What a subscription's session replays before it joins live delivery.
#[derive(Debug, Default)]
pub struct Replay {
    /// Names the subscription in [`Command::Join`].
    pub token: u64,
    /// Topics with history to send, by name.
    pub topics: Vec<ReplayTopic>,
}

/// Cheap handle to send commands to the hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Command>,
    /// Shared counters.
    pub stats: Arc<HubStats>,
}

impl HubHandle {
    /// How full the command queue is, from 0 (empty) to 1 (publishers wait).
    pub fn queue_fill(&self) -> f64 {
        1.0 - self.tx.capacity() as f64 / self.tx.max_capacity() as f64
    }

    /// The latest update of every topic starting with `prefix` (empty if the
    /// hub has stopped).
    pub async fn latest(&self, prefix: impl Into<String>) -> Vec<Arc<Update>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let asked = self.send(Command::Latest {
            prefix: prefix.into(),
            reply,
        });
        match asked.await {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Asks the hub; `None` if it has stopped.
    pub async fn ask<T>(
        &self,
        command: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(command(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Sends a command, waiting for room (the channel is bounded).
    pub async fn send(&self, command: Command) -> Result<(), HubClosed> {
        self.tx.send(command).await.map_err(|_| HubClosed)
    }
}

/// Starts the hub task. It ends when every handle is dropped.
pub fn spawn(settings: HubSettings) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let stats = Arc::new(HubStats::default());
    // Derived from the start time, like agents' sample seqs, so a topic the
    // hub numbers starts each aggregator run above the previous run's.
    let numbered_from = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 / 10)
        .unwrap_or(0);
    let hub = Hub::new(settings, numbered_from, stats.clone());
    let task = tokio::spawn(hub.run(rx));
    (HubHandle { tx, stats }, task)
}

struct Subscriber {
    conn: ConnId,
    outbox: Arc<Outbox>,
    /// Only seqs above this are delivered (the resume point), so an update
    /// re-sent by an agent after an aggregator restart is not seen twice.
    floor: u64,
    /// The connection's throttle for this topic.
    throttle: Duration,
}

struct Topic {
    /// Index in [`topic::KINDS`], for the per-kind counters.
    kind: usize,
    seq: u64,
    history: Arc<TopicHistory>,
    subscribers: Vec<Subscriber>,
    /// From the configured rate limits.
    min_interval: Duration,
    last_accepted: Option<Instant>,
    /// When an update was last accepted (or the topic made), for forgetting.
    last_published: Instant,
    /// Its last update was produced here (not received from a peer), so
    /// this aggregator answers peers' catch-up requests for it.
    local: bool,
}

struct Subscription {
    pattern: String,
    /// Distinguishes it from an earlier subscription to the same pattern.
    token: u64,
    since: Option<Since>,
    throttle: Duration,
    grant: Option<Grant>,
}

impl Subscription {
    /// Whether this subscription delivers `topic`.
    fn wants(&self, topic: &str) -> bool {
        topic::matches(&self.pattern, topic) && self.grant.as_ref().is_none_or(|g| g.allows(topic))
    }
}

struct Conn {
    outbox: Arc<Outbox>,
    subscriptions: Vec<Subscription>,
}

struct Hub {
    /// The seq before the first of a topic the hub numbers.
    numbered_from: u64,
    topics: HashMap<Arc<str>, Topic>,
    conns: HashMap<ConnId, Conn>,
    settings: HubSettings,
    stats: Arc<HubStats>,
    histories: Histories,
    /// The last subscription token given.
    tokens: u64,
}

#[derive(Serialize)]
struct TopicInfo<'a> {
    topic: &'a str,
    seq: u64,
    history_start: Option<u64>,
    /// Non-zero when a configured rate limit thins this topic.
    #[serde(skip_serializing_if = "is_zero")]
    min_interval_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Every connection with a pattern matching the new `topic`, once each.
/// Their resume points for it are used up here: the topic now exists, so
/// they are dropped from the subscriptions' `since`.
fn matching_subscribers(conns: &mut HashMap<ConnId, Conn>, topic: &str) -> Vec<Subscriber> {
    let mut out = Vec::new();
    for (id, c) in conns.iter_mut() {
        let mut found: Option<(u64, Duration)> = None;
        for s in c.subscriptions.iter_mut().filter(|s| s.wants(topic)) {
            let f = s
                .since
                .as_ref()
                .and_then(|x| x.for_topic(topic))
                .unwrap_or(0);
            if let Some(since) = s.since.take() {
                s.since = since.still_needed(&s.pattern, |_| true, |t| t == topic);
            }
            found = Some(match found {
                None => (f, s.throttle),
                Some((g, t)) => (g.min(f), t.min(s.throttle)),
            });
        }
        if let Some((floor, throttle)) = found {
            out.push(Subscriber {
                conn: *id,
                outbox: c.outbox.clone(),
                floor,
                throttle,
            });
        }
    }
    out
}

impl Hub {
    fn new(settings: HubSettings, numbered_from: u64, stats: Arc<HubStats>) -> Self {
        let histories = Histories::new(
            settings.history_len,
            settings.history_max_bytes,
            stats.history.clone(),
        );
        Hub {
            numbered_from,
            topics: HashMap::new(),
            conns: HashMap::new(),
            settings,
            stats,
            histories,
            tokens: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Publish(updates) => {
                for u in updates {
                    self.publish(u);
                }
            }
            Command::PublishNext(updates) => {
                for u in updates {
                    let current = self.topics.get(&*u.topic).map_or(0, |t| t.seq);
                    let seq = current.max(self.numbered_from) + 1;
                    self.publish(u.number(seq));
                }
            }
            Command::Subscribe {
                conn,
                outbox,
                request,
                replay,
            } => {
                let _ = replay.send(self.subscribe(conn, outbox, request));
            }
            Command::Join {
                conn,
                token,
                reached,
            } => self.join(conn, token, reached),
            Command::Unsubscribe { conn, pattern, id } => self.unsubscribe(conn, pattern, id),
            Command::Disconnect { conn } => self.disconnect(conn),
            Command::Broadcast(message) => {
                for c in self.conns.values() {
                    c.outbox.push_sys(message.clone());
                }
            }
            Command::Export { floors, reply } => {
                let out = self
                    .topics
                    .iter()
                    .filter(|(name, t)| t.local && name.starts_with("host."))
                    .map(|(name, t)| ReplayTopic {
                        topic: name.clone(),
                        history: t.history.clone(),
                        after: floors.get(&**name).copied().unwrap_or(0),
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::Floors { reply } => {
                let floors = self
                    .topics
                    .iter()
                    .filter(|(name, _)| name.starts_with("host."))
                    .map(|(name, t)| (name.to_string(), t.seq))
                    .collect();
                let _ = reply.send(floors);
            }
            Command::Forget { keep, idle, reply } => {
                let _ = reply.send(self.forget(&keep, idle));
            }
            Command::Latest { prefix, reply } => {
                let latest = self
                    .topics
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .filter_map(|(_, t)| t.history.last())
                    .collect();
                let _ = reply.send(latest);
            }
        }
    }

    fn publish(&mut self, update: Update) {
        let update = Arc::new(update);
        if !self.topics.contains_key(&update.topic) {
            let subscribers = matching_subscribers(&mut self.conns, &update.topic);
            let min_interval = self
                .settings
                .rate_limits
                .iter()
                .find(|r| topic::matches(&r.pattern, &update.topic))
                .map_or(Duration::ZERO, |r| r.min_interval);
            self.topics.insert(
                update.topic.clone(),
                Topic {
                    kind: topic::kind_index(&update.topic),
                    seq: 0,
                    history: self.histories.topic(),
                    subscribers,
                    min_interval,
                    last_accepted: None,
                    last_published: Instant::now(),
                    local: false,
                },
            );
            self.stats.topics.fetch_add(1, Ordering::Relaxed);
        }
        let t = self.topics.get_mut(&update.topic).expect("inserted above");
        if update.seq <= t.seq {
            self.stats.updates_duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A peer's update was already thinned by its origin's limit; thinning
        // it again by arrival time here would make seqs differ between
        // aggregators.
        if !t.min_interval.is_zero() && update.origin.is_none() {
            let now = Instant::now();
            if t.last_accepted.is_some_and(|at| now < at + t.min_interval) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return;
            }
            t.last_accepted = Some(now);
        }
        t.seq = update.seq;
        t.last_published = Instant::now();
        t.local = update.origin.is_none();
        if t.local
            && let Some(export) = &self.settings.export
            && update.topic.starts_with("host.")
        {
            match export.try_send(update.clone()) {
                Ok(()) => self.stats.exported.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.stats.export_dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
        let over = self.histories.push(&t.history, update.clone());
        self.stats.updates_published.fetch_add(1, Ordering::Relaxed);
        self.stats.published_by_kind[t.kind].fetch_add(1, Ordering::Relaxed);
        let (mut delivered, mut held, mut dropped) = (0, 0, 0);
        for s in &t.subscribers {
            if update.seq > s.floor {
                match s.outbox.push_update(&update, s.throttle) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Held => held += 1,
                    Pushed::Refused => dropped += 1,
                    // Only a replay can be at or below what the connection has.
                    Pushed::Stale => {}
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats.deliveries_by_kind[t.kind].fetch_add(delivered, Ordering::Relaxed);
        self.stats.held.fetch_add(held, Ordering::Relaxed);
        self.stats
            .overflow_drops
            .fetch_add(dropped, Ordering::Relaxed);
        if over {
            self.histories
                .rebalance(self.topics.values().map(|t| &t.history));
        }
    }

    /// Forgets idle hosts not in `keep` (see [`Command::Forget`]).
    fn forget(&mut self, keep: &HashSet<String>, idle: Duration) -> Vec<String> {
        let now = Instant::now();
        // Host → whether every one of its topics is idle.
        let mut hosts: HashMap<&str, bool> = HashMap::new();
        for (name, t) in &self.topics {
            let Some(host) = name
                .strip_prefix("host.")
                .and_then(|rest| rest.split('.').next())
            else {
                continue;
            };
            if keep.contains(host) {
                continue;
            }
            let idle_here = now.saturating_duration_since(t.last_published) >= idle;
            *hosts.entry(host).or_insert(true) &= idle_here;
        }
        let mut gone: Vec<String> = hosts
            .into_iter()
            .filter(|(_, idle)| *idle)
            .map(|(h, _)| h.to_string())
            .collect();
        gone.sort();
        if gone.is_empty() {
            return gone;
        }
        let doomed: Vec<Arc<str>> = self
            .topics
            .keys()
            .filter(|name| {
                name.strip_prefix("host.")
                    .and_then(|rest| rest.split('.').next())
                    .is_some_and(|h| gone.binary_search_by(|g| g.as_str().cmp(h)).is_ok())
            })
            .cloned()
            .collect();
        for name in doomed {
            let t = self.topics.remove(&name).expect("listed above");
            self.histories.forget(&t.history);
            self.stats.topics.fetch_sub(1, Ordering::Relaxed);
            for s in &t.subscribers {
                s.outbox.forget_topic(&name);
            }
        }
        self.topics.shrink_to_fit();
        self.stats
            .hosts_forgotten
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        outbox: Arc<Outbox>,
        request: SubscribeRequest,
    ) -> Replay {
        // Kept with the subscription: only the resume points of topics not
        // held yet (the others are replayed and joined live).
        let kept_since = request.since.clone().and_then(|since| {
            since.still_needed(
                &request.pattern,
                |t| {
                    topic::matches(&request.pattern, t)
                        && request.grant.as_ref().is_none_or(|g| g.allows(t))
                },
                |t| self.topics.contains_key(t),
            )
        });
        self.tokens += 1;
        let token = self.tokens;
        let c = self.conns.entry(conn).or_insert_with(|| Conn {
            outbox: outbox.clone(),
            subscriptions: Vec::new(),
        });
        match c
            .subscriptions
            .iter_mut()
            .find(|s| s.pattern == request.pattern)
        {
            Some(existing) => {
                existing.since = kept_since;
                existing.throttle = request.throttle;
                existing.grant = request.grant.clone();
                existing.token = token;
            }
            None => {
                c.subscriptions.push(Subscription {
                    pattern: request.pattern.clone(),
                    token,
                    since: kept_since,
                    throttle: request.throttle,
                    grant: request.grant.clone(),
                });
                self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
        }

        let mut names: Vec<&Arc<str>> = self
            .topics
            .keys()
            .filter(|t| {
                topic::matches(&request.pattern, t)
                    && request.grant.as_ref().is_none_or(|g| g.allows(t))
            })
            .collect();
        names.sort();
        let names: Vec<Arc<str>> = names.into_iter().cloned().collect();

        let mut infos = Vec::with_capacity(names.len());
        let mut replay = Replay {
            token,
            topics: Vec::new(),
        };
        let mut complete = true;
        for name in &names {
            let t = self.topics.get_mut(name).expect("listed above");
            let first_seq = t.history.first_seq();
            let since = request.since.as_ref().and_then(|s| s.for_topic(name));
            let after = match since {
                Some(since) => {
                    complete &= since >= t.seq || first_seq.is_some_and(|f| f <= since + 1);
                    Some(since)
                }
                None => request
                    .history
                    .filter(|n| *n > 0)
                    .map(|n| t.history.before_last(n)),
            };
            let existing = t.subscribers.iter_mut().find(|s| s.conn == conn);
            match (after.filter(|a| *a < t.seq), existing) {
                // Something to replay: the session reads it, then joins.
                // (Already delivered live by another subscription of the
                // connection: the outbox drops what it has sent.)
                (Some(after), existing) => {
                    if let Some(s) = existing {
                        s.throttle = s.throttle.min(request.throttle);
                    }
                    replay.topics.push(ReplayTopic {
                        topic: name.clone(),
                        history: t.history.clone(),
                        after,
                    });
                }
                (None, Some(s)) => s.throttle = s.throttle.min(request.throttle),
                // Live from the current seq on (and never at or below the
                // resume point, should an agent resend it).
                (None, None) => t.subscribers.push(Subscriber {
                    conn,
                    outbox: outbox.clone(),
                    floor: since.unwrap_or(0).max(t.seq),
                    throttle: request.throttle,
                }),
            }
            infos.push(TopicInfo {
                topic: name,
                seq: t.seq,
                history_start: first_seq,
                min_interval_ms: t.min_interval.as_millis() as u64,
            });
        }

        #[derive(Serialize)]
        struct Subscribed<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: &'a Option<Value>,
            topic: &'a str,
            topics: Vec<TopicInfo<'a>>,
            complete: bool,
        }
        let reply = SysMessage::new(
            "$sys.subscribed",
            &Subscribed {
                id: &request.id,
                topic: &request.pattern,
                topics: infos,
                complete,
            },
        );
        outbox.push_sys(reply);
        replay
    }

    /// A replay caught up: each topic still held (the same history: not
    /// forgotten and made again meanwhile) gets what was published after
    /// what the session sent, then live delivery.
    fn join(&mut self, conn: ConnId, token: u64, reached: Vec<ReplayTopic>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(sub) = c.subscriptions.iter().find(|s| s.token == token) else {
            // Unsubscribed, or subscribed again (with a replay of its own).
            return;
        };
        let throttle = sub.throttle;
        let outbox = c.outbox.clone();
        for r in reached {
            match self.topics.get_mut(&r.topic) {
                Some(t) if Arc::ptr_eq(&t.history, &r.history) => {
                    // Replay is exact: no throttle (conflation still bounds
                    // memory).
                    for u in t.history.all_after(r.after) {
                        outbox.push_update(&u, Duration::ZERO);
                    }
                    if !t.subscribers.iter().any(|s| s.conn == conn) {
                        t.subscribers.push(Subscriber {
                            conn,
                            outbox: outbox.clone(),
                            floor: r.after.max(t.seq),
                            throttle,
                        });
                    }
                }
                // Forgotten while replaying (and perhaps made again, its
                // seqs starting afresh): so is what was sent of it.
                _ => outbox.forget_topic(&r.topic),
            }
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, pattern: String, id: Option<Value>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let outbox = c.outbox.clone();
        let before = c.subscriptions.len();
        c.subscriptions.retain(|s| s.pattern != pattern);
        if c.subscriptions.len() == before {
            // The session checks this before asking; nothing to undo.
            return;
        }
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        for (name, t) in self.topics.iter_mut() {
            if topic::matches(&pattern, name) && !c.subscriptions.iter().any(|s| s.wants(name)) {
                t.subscribers.retain(|s| s.conn != conn);
            }
        }
        #[derive(Serialize)]
        struct Unsubscribed<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: &'a Option<Value>,
            topic: &'a str,
        }
        outbox.push_sys(SysMessage::new(
            "$sys.unsubscribed",
            &Unsubscribed {
                id: &id,
                topic: &pattern,
            },
        ));
        outbox.forget_throttle(|t| c.subscriptions.iter().any(|s| s.wants(t)));
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.stats
            .subscriptions
            .fetch_sub(c.subscriptions.len() as u64, Ordering::Relaxed);
        for t in self.topics.values_mut() {
            t.subscribers.retain(|s| s.conn != conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Item, OutboxStats};
    use crate::update::Payload;
    use std::time::SystemTime;

    fn update(topic: &str, seq: u64) -> Update {
        let now = SystemTime::now();
        Update::new(
            topic.into(),
            seq,
            now,
            now,
            Payload::Other("x".repeat(100).into()),
        )
    }

    #[tokio::test]
    async fn only_local_host_updates_are_exported_and_answered_for() {
        let (export, mut exported) = mpsc::channel(2);
        let (hub, _task) = spawn(HubSettings {
            history_len: 100,
            history_max_bytes: 1 << 20,
            queue: 64,
            rate_limits: Vec::new(),
            export: Some(export),
        });
        let remote = |topic: &str, seq| {
            let u = update(topic, seq);
            Update::remote(u.topic.clone(), seq, u.json.clone(), "peer".into())
        };
        hub.send(Command::Publish(vec![
            update("host.a.cpu", 1),
            update("host.a.cpu", 2),
            remote("host.b.cpu", 7),
            update("hosts", 1),
            // Beyond the export queue: counted, not waited for.
            update("host.a.cpu", 3),
            // Already held: neither kept nor exported again.
            remote("host.a.cpu", 2),
        ]))
        .await
        .unwrap();
        let floors = hub.ask(|reply| Command::Floors { reply }).await.unwrap();
        assert_eq!(floors.get("host.a.cpu"), Some(&3));
        assert_eq!(floors.get("host.b.cpu"), Some(&7));
        assert!(!floors.contains_key("hosts"));
        let sent: Vec<u64> = [exported.recv().await, exported.recv().await]
            .into_iter()
            .map(|u| u.unwrap().seq)
            .collect();
        assert_eq!(sent, vec![1, 2]);
        assert_eq!(hub.stats.export_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(hub.stats.updates_duplicate.load(Ordering::Relaxed), 1);
        // A peer holding host.a.cpu up to 1 gets 2 and 3; nothing of host.b.
        let answer = hub
            .ask(|reply| Command::Export {
                floors: HashMap::from([("host.a.cpu".to_string(), 1)]),
                reply,
            })
            .await
            .unwrap();
        let got: Vec<(String, u64)> = answer
            .iter()
            .flat_map(|t| t.history.all_after(t.after))
            .map(|u| (u.topic.to_string(), u.seq))
            .collect();
        assert_eq!(
            got,
            vec![("host.a.cpu".to_string(), 2), ("host.a.cpu".to_string(), 3)]
        );
    }

    /// A presence event as ingest makes it: no seq until the hub gives one.
    fn presence(host: &str) -> Unnumbered {
        Unnumbered {
            topic: "hosts".into(),
            at: SystemTime::now(),
            payload: Payload::Other(serde_json::json!({"event": "online", "host": host})),
        }
    }

    #[tokio::test]
    async fn presence_events_are_numbered_in_the_order_they_reach_the_hub() {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            / 10;
        let (hub, _task) = spawn(HubSettings {
            history_len: 100,
            history_max_bytes: 1 << 20,
            queue: 64,
            rate_limits: Vec::new(),
            export: None,
        });
        // Each pair is made first-to-last and submitted in both orders, as
        // two ingest tasks racing to the hub would.
        let (a, b) = (presence("a"), presence("b"));
        hub.send(Command::PublishNext(vec![a])).await.unwrap();
        hub.send(Command::PublishNext(vec![b])).await.unwrap();
        let (c, d) = (presence("c"), presence("d"));
        hub.send(Command::PublishNext(vec![d])).await.unwrap();
        hub.send(Command::PublishNext(vec![c])).await.unwrap();

        let outbox = test_outbox();
        subscribe_replayed(
            &hub,
            1,
            &outbox,
            SubscribeRequest {
                history: Some(100),
                ..subscribe_to("hosts", None, Duration::ZERO)
            },
        )
        .await;
        let mut items = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while items.len() < 5 {
                outbox.notified().await;
                outbox.drain_into(&mut items);
            }
        })
        .await
        .expect("the reply and four events");
        let got: Vec<(u64, String)> = items
            .iter()
            .filter_map(|i| match i {
                Item::Update(u) => {
                    let v: Value = serde_json::from_str(&u.json).unwrap();
                    Some((u.seq, v["payload"]["host"].as_str().unwrap().to_string()))
                }
                Item::Sys(_) => None,
            })
            .collect();
        let hosts: Vec<&str> = got.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(hosts, ["a", "b", "d", "c"], "{got:?}");
        assert!(
            got.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "seqs not consecutive: {got:?}"
        );
        // Above any earlier run's: derived from the start time, not from 0.
        assert!(got[0].0 > started, "{got:?}");
        assert_eq!(hub.stats.updates_duplicate.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn history_stays_within_its_byte_bound_dropping_the_oldest_first() {
        let (hub, _task) = spawn(HubSettings {
            history_len: 1000,
            history_max_bytes: 20_000,
            queue: 64,
            rate_limits: Vec::new(),
            export: None,
        });
        for seq in 1..=200 {
            let updates = ["a", "b", "c"].iter().map(|t| update(t, seq)).collect();
            hub.send(Command::Publish(updates)).await.unwrap();
        }
        let outbox = test_outbox();
        subscribe_replayed(
            &hub,
            1,
            &outbox,
            SubscribeRequest {
                history: Some(1000),
                ..subscribe_to("a", None, Duration::ZERO)
            },
        )
        .await;
        let mut items = Vec::new();
        while items.len() < 2 {
            outbox.notified().await;
            outbox.drain_into(&mut items);
        }
        let seqs: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Item::Update(u) => Some(u.seq),
                Item::Sys(_) => None,
            })
            .collect();
        let held = hub.stats.history.bytes();
        assert!(held <= 20_000 && held > 15_000, "{held}");
        // Only the newest of topic `a` remain, consecutive up to the last.
        assert_eq!(*seqs.last().unwrap(), 200);
        assert!(
            seqs.len() < 200 && seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{seqs:?}"
        );
    }

    fn settings() -> HubSettings {
        HubSettings {
            history_len: 100,
            history_max_bytes: 1 << 20,
            queue: 64,
            rate_limits: Vec::new(),
            export: None,
        }
    }

    /// An outbox of 1 MiB with a 5 s grace, as a connection would have.
    fn test_outbox() -> Arc<Outbox> {
        Outbox::new(
            1 << 20,
            Duration::from_secs(5),
            Arc::new(OutboxStats::default()),
        )
    }

    /// Subscribes as a session does: the hub's reply, then the replay read
    /// from history and joined to live delivery.
    async fn subscribe_replayed(
        hub: &HubHandle,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        request: SubscribeRequest,
    ) {
        let (replay, rx) = tokio::sync::oneshot::channel();
        hub.send(Command::Subscribe {
            conn,
            outbox: outbox.clone(),
            request,
            replay,
        })
        .await
        .unwrap();
        if let Some(mut r) = crate::ws::replay::Replaying::new(rx.await.unwrap()) {
            let join = r.fill(conn, outbox, usize::MAX).expect("all read at once");
            hub.send(join).await.unwrap();
        }
    }

    fn subscribe_to(pattern: &str, since: Option<Since>, throttle: Duration) -> SubscribeRequest {
        SubscribeRequest {
            pattern: pattern.into(),
            id: None,
            since,
            history: None,
            throttle,
            grant: None,
        }
    }

    #[tokio::test]
    async fn forgetting_a_host_drops_its_topics_history_and_throttles_only() {
        let (hub, _task) = spawn(settings());
        let stats = hub.stats.clone();
        let outbox = test_outbox();
        subscribe_replayed(
            &hub,
            1,
            &outbox,
            subscribe_to(">", None, Duration::from_secs(60)),
        )
        .await;
        let floors = |hub: &HubHandle| {
            let hub = hub.clone();
            async move { hub.ask(|reply| Command::Floors { reply }).await.unwrap() }
        };
        // What stays: a host kept attached, and `hosts`.
        hub.send(Command::Publish(vec![
            update("host.b.cpu", 1),
            update("host.b.cpu", 2),
            update("hosts", 1),
        ]))
        .await
        .unwrap();
        floors(&hub).await;
        let (topics, bytes, tracked) = (
            stats.topics.load(Ordering::Relaxed),
            stats.history.bytes(),
            outbox.tracked_topics(),
        );
        hub.send(Command::Publish(
            (1..=20)
                .flat_map(|seq| [update("host.a.cpu", seq), update("host.a.memory", seq)])
                .collect(),
        ))
        .await
        .unwrap();
        floors(&hub).await;
        assert_eq!(stats.topics.load(Ordering::Relaxed), topics + 2);
        assert!(stats.history.bytes() > bytes + 20 * 100);
        assert!(
            outbox.tracked_topics() > tracked,
            "a's topics are throttled"
        );

        let forget = |keep: &[&str], idle: Duration| {
            let hub = hub.clone();
            let keep: HashSet<String> = keep.iter().map(|h| h.to_string()).collect();
            async move {
                hub.ask(|reply| Command::Forget { keep, idle, reply })
                    .await
                    .unwrap()
            }
        };
        // Not idle long enough, or kept: nothing goes.
        assert!(forget(&["b"], Duration::from_secs(3600)).await.is_empty());
        assert!(forget(&["a", "b"], Duration::ZERO).await.is_empty());
        assert_eq!(stats.topics.load(Ordering::Relaxed), topics + 2);

        assert_eq!(forget(&["b"], Duration::ZERO).await, vec!["a".to_string()]);
        assert_eq!(stats.topics.load(Ordering::Relaxed), topics);
        assert_eq!(stats.history.bytes(), bytes);
        assert_eq!(outbox.tracked_topics(), tracked);
        assert_eq!(stats.hosts_forgotten.load(Ordering::Relaxed), 1);
        let held = floors(&hub).await;
        assert!(!held.contains_key("host.a.cpu") && held.contains_key("host.b.cpu"));

        // Back again, it starts fresh: seq 1 is new, not a duplicate.
        hub.send(Command::Publish(vec![update("host.a.cpu", 1)]))
            .await
            .unwrap();
        assert_eq!(floors(&hub).await.get("host.a.cpu"), Some(&1));
        assert_eq!(stats.updates_duplicate.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_since_map_keeps_only_topics_not_held_yet_until_they_appear() {
        let mut hub = Hub::new(settings(), 0, Arc::new(HubStats::default()));
        hub.publish(update("host.a.cpu", 3));
        let outbox = test_outbox();
        let since = Since::PerTopic(HashMap::from([
            ("host.a.cpu".to_string(), 1),
            ("host.b.cpu".to_string(), 5),
            ("host.a.memory".to_string(), 9),
        ]));
        hub.subscribe(
            1,
            outbox.clone(),
            subscribe_to("host.*.cpu", Some(since), Duration::ZERO),
        );
        let kept = |hub: &Hub| hub.conns[&1].subscriptions[0].since.clone();
        // host.a.cpu is replayed and joined; host.a.memory is not matched.
        assert_eq!(
            kept(&hub),
            Some(Since::PerTopic(HashMap::from([(
                "host.b.cpu".to_string(),
                5
            )])))
        );
        let mut items = Vec::new();
        outbox.drain_into(&mut items);
        items.clear();
        // host.b.cpu appears: the resume point holds back seq 5, then goes.
        hub.publish(update("host.b.cpu", 5));
        assert_eq!(kept(&hub), None);
        hub.publish(update("host.b.cpu", 6));
        outbox.drain_into(&mut items);
        let seqs: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Item::Update(u) => Some(u.seq),
                Item::Sys(_) => None,
            })
            .collect();
        assert_eq!(seqs, vec![6]);

        // One seq on an exact topic is kept only while the topic is not held.
        hub.subscribe(
            2,
            outbox.clone(),
            subscribe_to("host.a.cpu", Some(Since::All(2)), Duration::ZERO),
        );
        hub.subscribe(
            2,
            outbox.clone(),
            subscribe_to("host.c.cpu", Some(Since::All(2)), Duration::ZERO),
        );
        let subs = &hub.conns[&2].subscriptions;
        assert_eq!(subs[0].since, None);
        assert_eq!(subs[1].since, Some(Since::All(2)));
    }
}
