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
//! Routing is kept per topic: each topic lists the subscription groups that
//! match it ([`routing`]), so a publish costs one push per interested
//! connection and nothing for the others, and a connection's own changes
//! touch only its groups. A push never waits: a connection whose outbox is
//! full is marked overflowed and closed by its own task.

pub use config::{HubConfig, RateLimitConfig};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

mod config;
mod routing;

use crate::auth::Grant;
use crate::history::{Histories, HistoryStats, TopicHistory};
use crate::topic;
use crate::update::{Subscribed, SysMessage, SysPayload, TopicInfo, Unnumbered, Update};
use crate::ws::outbox::{Outbox, Pushed};
use routing::{GroupId, Routing};

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
    /// Routing groups (subscriptions that route alike share one).
    pub groups: AtomicU64,
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

struct Topic {
    /// Index in [`topic::KINDS`], for the per-kind counters.
    kind: usize,
    seq: u64,
    history: Arc<TopicHistory>,
    /// Groups delivering it.
    groups: Vec<GroupId>,
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
    group: GroupId,
    since: Option<Since>,
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
    routing: Routing,
    /// Topic names in order, to find a pattern's topics by its literal
    /// prefix.
    names: BTreeSet<Arc<str>>,
    /// Topic not held yet → connections with a resume point for it.
    pending_since: HashMap<String, Vec<ConnId>>,
}

/// The topics a pattern can match, from the sorted names: those under its
/// literal prefix (every name when it starts with a wildcard).
fn candidates<'a>(
    names: &'a BTreeSet<Arc<str>>,
    pattern: &str,
) -> impl Iterator<Item = &'a Arc<str>> {
    let literal: Vec<&str> = pattern
        .split('.')
        .take_while(|seg| *seg != "*" && *seg != ">")
        .collect();
    let exact = literal.len() == pattern.split('.').count();
    let mut prefix = literal.join(".");
    if !exact && !prefix.is_empty() {
        prefix.push('.');
    }
    let start: Arc<str> = prefix.clone().into();
    names
        .range(start..)
        .take_while(move |n| n.starts_with(&prefix))
        .filter(move |n| topic::matches(pattern, n))
}

/// The keys of a resume point still waiting for its topic.
fn since_keys<'a>(pattern: &'a str, since: &'a Since) -> Vec<&'a str> {
    match since {
        Since::All(_) => vec![pattern],
        Since::PerTopic(m) => m.keys().map(String::as_str).collect(),
    }
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
            routing: Routing::default(),
            names: BTreeSet::new(),
            pending_since: HashMap::new(),
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
            let groups = self.routing.matching(&update.topic);
            self.resume_points_for(&update.topic);
            self.names.insert(update.topic.clone());
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
                    groups,
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
        for g in t.groups.iter().filter_map(|id| self.routing.get(*id)) {
            for outbox in g.members.values() {
                match outbox.push_update(&update, g.throttle) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Held => held += 1,
                    Pushed::Refused => dropped += 1,
                    // Already had through another of its groups, at or below
                    // its resume point, or its topic is being replayed.
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
            self.names.remove(&name);
            for g in t.groups.iter().filter_map(|id| self.routing.get(*id)) {
                for outbox in g.members.values() {
                    outbox.forget_topic(&name);
                }
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
        // A subscription to the same pattern again replaces the old one.
        if let Some(old) = self.conns.get_mut(&conn).and_then(|c| {
            let i = c
                .subscriptions
                .iter()
                .position(|s| s.pattern == request.pattern)?;
            Some(c.subscriptions.swap_remove(i))
        }) {
            self.drop_subscription(conn, old);
        } else {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        let (group, new) = self.routing.join(
            conn,
            &outbox,
            &request.pattern,
            request.throttle,
            request.grant.as_ref(),
        );
        if new {
            let g = self.routing.get(group).expect("just made");
            for name in candidates(&self.names, &request.pattern) {
                if g.wants(name) {
                    self.topics
                        .get_mut(name)
                        .expect("names are topics")
                        .groups
                        .push(group);
                }
            }
            self.stats
                .groups
                .store(self.routing.len() as u64, Ordering::Relaxed);
        }
        if let Some(since) = &kept_since {
            for key in since_keys(&request.pattern, since) {
                self.pending_since
                    .entry(key.to_string())
                    .or_default()
                    .push(conn);
            }
        }
        self.conns
            .entry(conn)
            .or_insert_with(|| Conn {
                outbox: outbox.clone(),
                subscriptions: Vec::new(),
            })
            .subscriptions
            .push(Subscription {
                pattern: request.pattern.clone(),
                token,
                group,
                since: kept_since,
                grant: request.grant.clone(),
            });

        let names: Vec<Arc<str>> = candidates(&self.names, &request.pattern)
            .filter(|t| request.grant.as_ref().is_none_or(|g| g.allows(t)))
            .cloned()
            .collect();
        let mut infos = Vec::with_capacity(names.len());
        let mut replay = Replay {
            token,
            topics: Vec::new(),
        };
        let mut complete = true;
        for name in &names {
            let t = &self.topics[name];
            let first_seq = t.history.first_seq();
            let since = request.since.as_ref().and_then(|s| s.for_topic(name));
            let after = match since {
                Some(since) => {
                    complete &= since >= t.seq || first_seq.is_some_and(|f| f <= since + 1);
                    // Never at or below the resume point, should an agent
                    // resend it.
                    outbox.prime(name, since);
                    Some(since)
                }
                None => request
                    .history
                    .filter(|n| *n > 0)
                    .map(|n| t.history.before_last(n)),
            };
            if let Some(after) = after.filter(|a| *a < t.seq) {
                // The session reads it from history, then joins; until then
                // live updates of the topic wait (the join sends them).
                outbox.block(name);
                replay.topics.push(ReplayTopic {
                    topic: name.clone(),
                    history: t.history.clone(),
                    after,
                });
            }
            infos.push(TopicInfo {
                topic: name.clone(),
                seq: t.seq,
                history_start: first_seq,
                min_interval_ms: t.min_interval.as_millis() as u64,
            });
        }

        let reply = SysMessage::with(
            "$sys.subscribed",
            SysPayload::Subscribed(Arc::new(Subscribed {
                id: request.id,
                topic: request.pattern,
                topics: infos,
                complete,
            })),
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
        // Unsubscribed (or replaced) meanwhile: nothing more of it is sent,
        // but its topics flow again for the connection's other subscriptions.
        let current = c.subscriptions.iter().any(|s| s.token == token);
        let outbox = c.outbox.clone();
        for r in reached {
            outbox.unblock(&r.topic);
            match self.topics.get(&r.topic) {
                Some(t) if Arc::ptr_eq(&t.history, &r.history) => {
                    if current {
                        for u in t.history.all_after(r.after) {
                            outbox.push_replay(&u);
                        }
                    }
                }
                // Forgotten while replaying (and perhaps made again, its
                // seqs starting afresh): so is what was sent of it.
                _ => outbox.forget_topic(&r.topic),
            }
        }
    }

    /// A topic appears: the resume points waiting for it are applied to
    /// their connections' outboxes, and kept no longer.
    fn resume_points_for(&mut self, topic: &Arc<str>) {
        let Some(waiting) = self.pending_since.remove(&**topic) else {
            return;
        };
        for conn in waiting {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let mut floor: Option<u64> = None;
            for s in c.subscriptions.iter_mut().filter(|s| s.wants(topic)) {
                if let Some(f) = s.since.as_ref().and_then(|x| x.for_topic(topic)) {
                    floor = Some(floor.map_or(f, |g| g.min(f)));
                }
                if let Some(since) = s.since.take() {
                    s.since = since.still_needed(&s.pattern, |_| true, |t| t == &**topic);
                }
            }
            if let Some(f) = floor {
                c.outbox.prime(topic, f);
            }
        }
    }

    /// Undoes a subscription's routing: leaves its group (gone from its
    /// topics when it was the last member) and its waiting resume points.
    fn drop_subscription(&mut self, conn: ConnId, s: Subscription) {
        if let Some(g) = self.routing.leave(s.group, conn) {
            for name in candidates(&self.names, &g.pattern) {
                if let Some(t) = self.topics.get_mut(name) {
                    t.groups.retain(|id| *id != s.group);
                }
            }
            self.stats
                .groups
                .store(self.routing.len() as u64, Ordering::Relaxed);
        }
        if let Some(since) = &s.since {
            for key in since_keys(&s.pattern, since) {
                if let Some(waiting) = self.pending_since.get_mut(key) {
                    waiting.retain(|c| *c != conn);
                    if waiting.is_empty() {
                        self.pending_since.remove(key);
                    }
                }
            }
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, pattern: String, id: Option<Value>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(i) = c.subscriptions.iter().position(|s| s.pattern == pattern) else {
            // The session checks this before asking; nothing to undo.
            return;
        };
        let gone = c.subscriptions.swap_remove(i);
        let outbox = c.outbox.clone();
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        self.drop_subscription(conn, gone);
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
        let c = &self.conns[&conn];
        outbox.forget_throttle(|t| c.subscriptions.iter().any(|s| s.wants(t)));
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.stats
            .subscriptions
            .fetch_sub(c.subscriptions.len() as u64, Ordering::Relaxed);
        for s in c.subscriptions {
            self.drop_subscription(conn, s);
        }
    }
}

#[cfg(test)]
mod tests;
