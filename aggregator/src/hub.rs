//! The hub: one task owns every topic, its history and its subscribers.
//!
//! Ingest publishes updates and WebSocket sessions subscribe over one bounded
//! command channel, so publishing, replaying history and registering a
//! subscriber are serialised: a resume sees history up to a point and live
//! updates from exactly that point, with no gap and no duplicate at the seam.
//!
//! Routing is kept per topic: each topic holds the list of connections whose
//! patterns match it, maintained when subscriptions change, so a publish costs
//! one push per interested connection and nothing for the others. A push never
//! waits: a connection whose outbox is full is marked overflowed and closed by
//! its own task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::history::History;
use crate::outbox::{Frame, Outbox};
use crate::topic;
use crate::update::{Update, sys_message};

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// Where a resume starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// The same seq for every topic the pattern matches.
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
}

/// What the hub is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Publish updates, in order.
    Publish(Vec<Update>),
    /// Add a subscription; the reply and any replay go to `outbox`.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// What it asked for.
        request: SubscribeRequest,
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
    /// Frames refused by a full outbox.
    pub overflow_drops: AtomicU64,
    /// Topics known.
    pub topics: AtomicU64,
    /// Bytes of encoded updates held in history.
    pub history_bytes: AtomicU64,
    /// Live subscriptions.
    pub subscriptions: AtomicU64,
}

/// The hub's closed: the aggregator is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the hub has stopped")]
pub struct HubClosed;

/// Cheap handle to send commands to the hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Command>,
    /// Shared counters.
    pub stats: Arc<HubStats>,
}

impl HubHandle {
    /// Sends a command, waiting for room (the channel is bounded).
    pub async fn send(&self, command: Command) -> Result<(), HubClosed> {
        self.tx.send(command).await.map_err(|_| HubClosed)
    }
}

/// Starts the hub task. It ends when every handle is dropped.
pub fn spawn(history_len: usize, queue: usize) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue);
    let stats = Arc::new(HubStats::default());
    let hub = Hub {
        topics: HashMap::new(),
        conns: HashMap::new(),
        history_len,
        stats: stats.clone(),
    };
    let task = tokio::spawn(hub.run(rx));
    (HubHandle { tx, stats }, task)
}

struct Subscriber {
    conn: ConnId,
    outbox: Arc<Outbox>,
    /// Only seqs above this are delivered (the resume point), so an update
    /// re-sent by an agent after an aggregator restart is not seen twice.
    floor: u64,
}

struct Topic {
    seq: u64,
    history: History,
    subscribers: Vec<Subscriber>,
}

struct Subscription {
    pattern: String,
    since: Option<Since>,
}

struct Conn {
    outbox: Arc<Outbox>,
    subscriptions: Vec<Subscription>,
}

struct Hub {
    topics: HashMap<Arc<str>, Topic>,
    conns: HashMap<ConnId, Conn>,
    history_len: usize,
    stats: Arc<HubStats>,
}

#[derive(Serialize)]
struct TopicInfo<'a> {
    topic: &'a str,
    seq: u64,
    history_start: Option<u64>,
}

impl Hub {
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
            Command::Subscribe {
                conn,
                outbox,
                request,
            } => self.subscribe(conn, outbox, request),
            Command::Unsubscribe { conn, pattern, id } => self.unsubscribe(conn, pattern, id),
            Command::Disconnect { conn } => self.disconnect(conn),
        }
    }

    fn publish(&mut self, update: Update) {
        let update = Arc::new(update);
        if !self.topics.contains_key(&update.topic) {
            let subscribers = self.matching_subscribers(&update.topic);
            self.topics.insert(
                update.topic.clone(),
                Topic {
                    seq: 0,
                    history: History::default(),
                    subscribers,
                },
            );
            self.stats.topics.fetch_add(1, Ordering::Relaxed);
        }
        let t = self.topics.get_mut(&update.topic).expect("inserted above");
        if update.seq <= t.seq {
            self.stats.updates_duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        t.seq = update.seq;
        let delta = t.history.push(update.clone(), self.history_len);
        self.stats
            .history_bytes
            .fetch_add(delta as u64, Ordering::Relaxed);
        self.stats.updates_published.fetch_add(1, Ordering::Relaxed);
        let mut delivered = 0;
        let mut dropped = 0;
        for s in &t.subscribers {
            if update.seq > s.floor {
                if s.outbox.push(Frame::Update(update.clone())) {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats
            .overflow_drops
            .fetch_add(dropped, Ordering::Relaxed);
    }

    /// Every connection with a pattern matching `topic`, once each.
    fn matching_subscribers(&self, topic: &str) -> Vec<Subscriber> {
        let mut out = Vec::new();
        for (id, c) in &self.conns {
            let mut floor = None;
            for s in c
                .subscriptions
                .iter()
                .filter(|s| topic::matches(&s.pattern, topic))
            {
                let f = s
                    .since
                    .as_ref()
                    .and_then(|x| x.for_topic(topic))
                    .unwrap_or(0);
                floor = Some(floor.map_or(f, |g: u64| g.min(f)));
            }
            if let Some(floor) = floor {
                out.push(Subscriber {
                    conn: *id,
                    outbox: c.outbox.clone(),
                    floor,
                });
            }
        }
        out
    }

    fn subscribe(&mut self, conn: ConnId, outbox: Arc<Outbox>, request: SubscribeRequest) {
        let c = self.conns.entry(conn).or_insert_with(|| Conn {
            outbox: outbox.clone(),
            subscriptions: Vec::new(),
        });
        match c
            .subscriptions
            .iter_mut()
            .find(|s| s.pattern == request.pattern)
        {
            Some(existing) => existing.since = request.since.clone(),
            None => {
                c.subscriptions.push(Subscription {
                    pattern: request.pattern.clone(),
                    since: request.since.clone(),
                });
                self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
        }

        let mut names: Vec<&Arc<str>> = self
            .topics
            .keys()
            .filter(|t| topic::matches(&request.pattern, t))
            .collect();
        names.sort();
        let names: Vec<Arc<str>> = names.into_iter().cloned().collect();

        let mut infos = Vec::with_capacity(names.len());
        let mut replay: Vec<Arc<Update>> = Vec::new();
        let mut complete = true;
        for name in &names {
            let t = self.topics.get_mut(name).expect("listed above");
            let since = request.since.as_ref().and_then(|s| s.for_topic(name));
            match since {
                Some(since) => {
                    let r = t.history.since(since, t.seq);
                    complete &= r.complete;
                    replay.extend(r.updates.into_iter().cloned());
                }
                None => {
                    if let Some(n) = request.history {
                        replay.extend(t.history.last(n).cloned());
                    }
                }
            }
            // Live delivery continues right after what was replayed (and never
            // at or below the resume point, should an agent resend it).
            if !t.subscribers.iter().any(|s| s.conn == conn) {
                t.subscribers.push(Subscriber {
                    conn,
                    outbox: outbox.clone(),
                    floor: since.unwrap_or(0).max(t.seq),
                });
            }
            infos.push(TopicInfo {
                topic: name,
                seq: t.seq,
                history_start: t.history.first_seq(),
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
        let reply = sys_message(
            "$sys.subscribed",
            &Subscribed {
                id: &request.id,
                topic: &request.pattern,
                topics: infos,
                complete,
            },
        );
        outbox.push(Frame::Sys(reply));
        for u in replay {
            outbox.push(Frame::Update(u));
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
        let remaining: Vec<String> = c.subscriptions.iter().map(|s| s.pattern.clone()).collect();
        for (name, t) in self.topics.iter_mut() {
            if topic::matches(&pattern, name) && !remaining.iter().any(|p| topic::matches(p, name))
            {
                t.subscribers.retain(|s| s.conn != conn);
            }
        }
        #[derive(Serialize)]
        struct Unsubscribed<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: &'a Option<Value>,
            topic: &'a str,
        }
        outbox.push(Frame::Sys(sys_message(
            "$sys.unsubscribed",
            &Unsubscribed {
                id: &id,
                topic: &pattern,
            },
        )));
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
