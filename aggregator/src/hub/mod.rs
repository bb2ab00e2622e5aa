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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;

mod config;
mod handle;
mod routing;
mod subscribe;
mod task;

use crate::auth::Grant;
use crate::history::{Histories, HistoryStats, TopicHistory};
use crate::topic;
use crate::update::Update;
use crate::ws::outbox::Outbox;
pub use handle::{Command, HubClosed, HubHandle};
use handle::{Queued, queue};
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
    /// Thins the replay (`history`, `since`) to at most one update per topic
    /// per this interval of sample time, the newest of each (zero: exact).
    /// With `history: N`, N counts intervals rather than updates.
    pub history_every: Duration,
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
    /// Bytes of updates queued before publishers wait (one command can
    /// carry thousands of updates, so commands alone do not bound memory).
    pub queue_bytes: usize,
    /// Per-topic rate limits, first match wins.
    pub rate_limits: Vec<RateLimit>,
    /// In cluster mode, where host updates produced here go to be published
    /// to the broker. Never waited on: when it is full the update is not
    /// exported and `export_dropped` counts it.
    /// Each goes with its number: how many host updates were offered to
    /// the queue so far, this one included (peers see a gap in it).
    pub export: Option<mpsc::Sender<(u64, Arc<Update>)>>,
    /// Where host updates taken from cluster peers are stored (local ones
    /// are stored by ingest, from their samples).
    pub store: Option<crate::store::StoreHandle>,
    /// With remote-write export on, where every host update the hub
    /// accepts goes (from this aggregator's agents and from peers alike):
    /// the export's bounded queue. Never waited on: when it is full the
    /// update is not exported and `remote_write_dropped` counts it.
    pub remote_write: Option<mpsc::Sender<Arc<Update>>>,
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
    /// Host updates not queued for remote-write export because its queue
    /// was full.
    pub remote_write_dropped: AtomicU64,
    /// `updates_published` by topic kind (index in [`topic::KINDS`]).
    pub published_by_kind: [AtomicU64; topic::KINDS.len()],
    /// `deliveries` by topic kind (index in [`topic::KINDS`]).
    pub deliveries_by_kind: [AtomicU64; topic::KINDS.len()],
}

/// One topic of a replay: its history, and the seq after which to read.
#[derive(Debug, Clone)]
pub struct ReplayTopic {
    /// The topic.
    pub topic: Arc<str>,
    /// Its history, read by the session with no help from the hub.
    pub history: Arc<TopicHistory>,
    /// Updates above this seq are to be sent (then: the last one sent).
    pub after: u64,
    /// A thinned `history: N` replay: only the last N intervals (counted
    /// back from the topic's newest update) are sent.
    pub intervals: Option<usize>,
}

/// What a subscription's session replays before it joins live delivery.
#[derive(Debug, Default)]
pub struct Replay {
    /// Names the subscription in [`Command::Join`].
    pub token: u64,
    /// Topics with history to send, by name.
    pub topics: Vec<ReplayTopic>,
    /// Thinning interval in ms (`history_every_ms`; zero: every update).
    pub every_ms: u64,
}

/// Starts the hub task. It ends when every handle is dropped.
pub fn spawn(settings: HubSettings) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (handle, rx) = queue(&settings);
    let stats = handle.stats.clone();
    // Derived from the start time, like agents' sample seqs, so a topic the
    // hub numbers starts each aggregator run above the previous run's.
    let numbered_from = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 / 10)
        .unwrap_or(0);
    let hub = Hub::new(settings, numbered_from, stats.clone());
    let task = tokio::spawn(hub.run(rx));
    (handle, task)
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
    /// Host updates offered to the export queue so far.
    exports: u64,
    /// Taking history back from the store ([`Command::Restore`]).
    restoring: bool,
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

#[cfg(test)]
mod tests;
