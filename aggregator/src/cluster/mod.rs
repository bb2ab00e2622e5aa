//! Cluster mode: several aggregators share their updates through NATS.
//!
//! Off unless `[cluster] nats_url` is set. When on, each aggregator:
//! - publishes every host update it produces from its own agents on
//!   `<prefix>.<topic>` ([`publish`]): the hub hands them over through a
//!   bounded queue it never waits on, so a slow or absent broker cannot slow
//!   ingest (what does not fit is counted as dropped);
//! - consumes every other node's host updates into its hub ([`sync`]), so
//!   history, resume and REST are complete on every node, with the seqs the
//!   agents gave them; its own updates coming back are skipped;
//! - announces the hosts attached to it and learns the others' ([`presence`]);
//! - after (re)connecting, asks the other nodes for what it missed while
//!   away ([`sync`]), holding live updates back meanwhile so subscribers see
//!   them in order; answers the others' requests, streamed and paced
//!   ([`answer`]).
//!
//! Every message stays under the `max_payload` the broker announces:
//! presence and catch-up requests and answers are cut into numbered chunks
//! ([`chunk`]). A publish that fails anyway is counted by kind and logged
//! once per episode ([`failures`]).
//!
//! NATS connection changes are logged, counted for `/metrics` and sent to
//! every WebSocket client as `$sys.cluster`. The client reconnects by itself
//! with the backoff set here; local agents and clients are served throughout.

pub mod answer;
pub mod chunk;
pub mod failures;
mod gaps;
pub mod presence;
pub mod publish;
pub mod sync;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{Command, HubHandle};
use crate::ingest::registry::Registry;
use crate::update::{SysMessage, Update};

/// `[cluster]` in `aggregator.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server(s) to share updates through, e.g. `nats://127.0.0.1:4222`
    /// (several separated by commas). Unset: one aggregator, no broker.
    pub nats_url: Option<String>,
    /// This aggregator's name in the cluster (letters, digits, `-`, `_`);
    /// shown with every host attached to it. Required with `nats_url`.
    pub node: String,
    /// Subjects are `<subject_prefix>.<topic>`; aggregators sharing a prefix
    /// form one cluster.
    pub subject_prefix: String,
    /// Updates queued towards NATS before new ones are dropped (and counted).
    pub publish_queue: usize,
    /// How often each node announces its hosts, in milliseconds (also at
    /// once when one attaches or leaves).
    pub presence_interval_ms: u64,
    /// A node not heard from for this long has its hosts shown offline, in
    /// milliseconds.
    pub peer_timeout_ms: u64,
    /// After (re)connecting, a catch-up ends once every peer known has said
    /// its answer is complete; failing that, once nothing of any answer has
    /// arrived for this long, in milliseconds (an idle timeout: an answer
    /// that keeps arriving is waited for, up to `catchup_max_ms`).
    pub catchup_wait_ms: u64,
    /// The longest a catch-up holds live updates back, however much is
    /// still arriving, in milliseconds.
    pub catchup_max_ms: u64,
    /// Pace of the answer to one asking node, in bytes of history per
    /// second (a token bucket one chunk deep), so a catch-up cannot take
    /// the broker or this node's link from live traffic.
    pub catchup_answer_bytes_per_sec: u64,
    /// Catch-up answers sent at once (each to a different node); more wait
    /// their turn. A node asking again while its answer runs replaces it.
    pub catchup_answers: usize,
    /// Live updates held back during a catch-up, at most; beyond it the
    /// oldest are dropped (and counted).
    pub catchup_buffer: usize,
    /// Longest wait between reconnect attempts to NATS, in milliseconds
    /// (delays double from 100 ms up to this).
    pub reconnect_max_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            node: String::new(),
            subject_prefix: "hostpulse".into(),
            publish_queue: 8192,
            presence_interval_ms: 1_000,
            peer_timeout_ms: 5_000,
            catchup_wait_ms: 3_000,
            catchup_max_ms: 120_000,
            catchup_answer_bytes_per_sec: 16 << 20,
            catchup_answers: 4,
            catchup_buffer: 65_536,
            reconnect_max_ms: 5_000,
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// The first thing wrong with it, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let url = self.nats_url.as_ref()?;
        if url.trim().is_empty() {
            return Some(("cluster.nats_url", "must not be empty".into()));
        }
        if !is_token(&self.node) {
            return Some((
                "cluster.node",
                "must be set with nats_url: 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        if !self.subject_prefix.split('.').all(is_token) {
            return Some((
                "cluster.subject_prefix",
                "must be dot-separated tokens of letters, digits, '-' or '_' (no wildcards)".into(),
            ));
        }
        for (key, v) in [
            ("cluster.publish_queue", self.publish_queue as u64),
            ("cluster.presence_interval_ms", self.presence_interval_ms),
            ("cluster.catchup_buffer", self.catchup_buffer as u64),
            ("cluster.catchup_wait_ms", self.catchup_wait_ms),
            (
                "cluster.catchup_answer_bytes_per_sec",
                self.catchup_answer_bytes_per_sec,
            ),
            ("cluster.catchup_answers", self.catchup_answers as u64),
            ("cluster.reconnect_max_ms", self.reconnect_max_ms),
        ] {
            if v == 0 {
                return Some((key, "must be positive".into()));
            }
        }
        if self.catchup_max_ms < self.catchup_wait_ms {
            return Some((
                "cluster.catchup_max_ms",
                "must be at least cluster.catchup_wait_ms".into(),
            ));
        }
        if self.peer_timeout_ms <= self.presence_interval_ms {
            return Some((
                "cluster.peer_timeout_ms",
                "must be longer than cluster.presence_interval_ms".into(),
            ));
        }
        None
    }

    /// The URL with any password replaced, fit to print.
    pub fn redacted_url(&self) -> Option<String> {
        self.nats_url.as_ref().map(|u| redact_url(u))
    }
}

/// `nats://user:secret@host` → `nats://user:<redacted>@host` (each of a
/// comma-separated list).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            match rest.split_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:<redacted>@{host}")
                }
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Counters and state of the broker link, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// Reconnections after a lost connection.
    pub reconnects: AtomicU64,
    /// Host updates published to NATS.
    pub published: AtomicU64,
    /// Host updates from other nodes taken into the hub.
    pub received: AtomicU64,
    /// Updates lost on the broker path: publish failures, catch-up buffer
    /// overflow, messages refused as malformed, slow-consumer events.
    pub dropped: AtomicU64,
    /// Updates recovered from other nodes after (re)connecting.
    pub caught_up: AtomicU64,
    /// Peers' updates found missing from the live stream by their
    /// numbering (each gap then filled by a catch-up).
    pub gaps: AtomicU64,
    /// Other nodes heard from within the peer timeout.
    pub peers: AtomicU64,
    /// Publishes to NATS that failed, by kind.
    pub publish_errors: failures::PublishErrors,
    /// Presence announcements published whole (each one or more chunks).
    pub presence_announcements: AtomicU64,
    /// Presence chunks published.
    pub presence_chunks: AtomicU64,
    /// Bytes of this node's last presence announcement, all chunks.
    pub presence_bytes: AtomicU64,
    /// Peers' presence announcements dropped unfinished (a chunk missing).
    pub presence_incomplete: AtomicU64,
    /// Host names found held here and, by an agent with another id, on a peer.
    pub host_conflicts: AtomicU64,
    /// Catch-up answers sent to peers, in full.
    pub answers_sent: AtomicU64,
    /// Catch-up answers stopped because the asker asked again.
    pub answers_replaced: AtomicU64,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS URL or options were refused.
    #[error("NATS connection: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// A subscription could not be made.
    #[error("NATS subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// What the tasks share.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) node: Arc<str>,
    pub(crate) subjects: wire::Subjects,
    pub(crate) config: ClusterConfig,
    pub(crate) hub: HubHandle,
    pub(crate) registry: Arc<Registry>,
    pub(crate) stats: Arc<ClusterStats>,
    /// Set from the moment the connection drops until the catch-up after
    /// the next connect is applied: live updates wait meanwhile.
    pub(crate) holding: Arc<AtomicBool>,
    /// Counts connection losses: a catch-up begun before a loss must not
    /// release what was held after it.
    pub(crate) link_epoch: Arc<AtomicU64>,
    /// This node's run in the numbering of its updates ([`wire::LINK`]).
    pub(crate) run: u64,
    /// Connected again after losing the broker, and not yet said so in a
    /// catch-up request (peers then catch up from this node in turn).
    pub(crate) reconnected: Arc<AtomicBool>,
    /// Asks the catch-up task for a catch-up (merged with one pending):
    /// a peer is back from losing the broker.
    pub(crate) peer_back: mpsc::Sender<()>,
    pub(crate) shutdown: CancellationToken,
}

/// The queue between the hub and the publisher.
pub fn export_queue(config: &ClusterConfig) -> (mpsc::Sender<(u64, Arc<Update>)>, ExportQueue) {
    let (tx, rx) = mpsc::channel(config.publish_queue);
    (tx, ExportQueue(rx))
}

/// Receiving end of [`export_queue`].
pub struct ExportQueue(mpsc::Receiver<(u64, Arc<Update>)>);

/// Connects (in the background: an absent broker does not stop the
/// aggregator from serving its own agents) and starts every cluster task.
pub async fn start(
    config: &ClusterConfig,
    hub: HubHandle,
    registry: Arc<Registry>,
    export: ExportQueue,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Arc<ClusterStats>, ClusterError> {
    let url = config.nats_url.clone().unwrap_or_default();
    let stats = Arc::new(ClusterStats::default());
    // Held until the first catch-up is applied.
    let holding = Arc::new(AtomicBool::new(true));
    let link_epoch = Arc::new(AtomicU64::new(0));
    let (events_tx, events_rx) = mpsc::channel(64);
    // Capacity one: triggers that arrive while one is pending merge.
    let (catchup_tx, catchup_rx) = mpsc::channel(1);
    let max = Duration::from_millis(config.reconnect_max_ms);
    let cb_holding = holding.clone();
    let cb_epoch = link_epoch.clone();
    let cb_stats = stats.clone();
    let reconnected = Arc::new(AtomicBool::new(false));
    let cb_reconnected = reconnected.clone();
    let peer_back = catchup_tx.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("hostpulse-aggregator {}", config.node))
        .retry_on_initial_connect()
        // The server does not send a node its own messages back; the origin
        // header check in `sync` stays as the guard against loops.
        .no_echo()
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(5))
        .reconnect_delay_callback(move |attempts| {
            let exp = attempts.min(16) as u32;
            (Duration::from_millis(100) * 2u32.saturating_pow(exp.saturating_sub(1))).min(max)
        })
        .event_callback(move |event| {
            match &event {
                async_nats::Event::Disconnected => {
                    cb_holding.store(true, Ordering::SeqCst);
                    cb_epoch.fetch_add(1, Ordering::SeqCst);
                    cb_stats.connected.store(false, Ordering::SeqCst);
                }
                async_nats::Event::Connected => {
                    cb_stats.connected.store(true, Ordering::SeqCst);
                    if cb_epoch.load(Ordering::SeqCst) > 0 {
                        cb_reconnected.store(true, Ordering::SeqCst);
                    }
                    // Straight from here, not through the event queue, so a
                    // full queue or a busy hub cannot lose or delay it.
                    let _ = catchup_tx.try_send(());
                }
                async_nats::Event::SlowConsumer(_) => {
                    cb_stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let _ = events_tx.try_send(event);
            async {}
        })
        .connect(url.as_str())
        .await?;
    let shared = Shared {
        client,
        node: config.node.as_str().into(),
        subjects: wire::Subjects::new(&config.subject_prefix),
        config: config.clone(),
        hub,
        registry,
        stats: stats.clone(),
        holding,
        link_epoch,
        run: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        reconnected,
        peer_back,
        shutdown,
    };
    let live = shared.client.subscribe(shared.subjects.all_hosts()).await?;
    let requests = shared.client.subscribe(shared.subjects.catchup()).await?;
    let peers = shared
        .client
        .subscribe(shared.subjects.all_presence())
        .await?;
    let peer_table = presence::Peers::default();
    tracing::info!(nats = %redact_url(&url), node = %config.node, prefix = %config.subject_prefix, "cluster mode: sharing updates through NATS");
    tasks.spawn(watch(shared.clone(), events_rx));
    tasks.spawn(publish::run(shared.clone(), export.0));
    tasks.spawn(sync::consume(
        shared.clone(),
        live,
        catchup_rx,
        peer_table.clone(),
    ));
    tasks.spawn(answer::run(shared.clone(), requests));
    tasks.spawn(presence::run(shared, peers, peer_table));
    Ok(stats)
}

#[derive(Serialize)]
struct ClusterNotice<'a> {
    /// `connected` or `disconnected`.
    state: &'a str,
    /// This aggregator's node name.
    node: &'a str,
    /// What it means for the client.
    detail: &'a str,
}

/// Follows connection events: logs and `$sys.cluster` notices (the
/// catch-up is triggered from the event callback itself).
async fn watch(shared: Shared, mut events: mpsc::Receiver<async_nats::Event>) {
    let mut ever_connected = false;
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            e = events.recv() => match e { Some(e) => e, None => break },
        };
        match event {
            async_nats::Event::Connected => {
                if ever_connected {
                    shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    let down_ms = down_since.map_or(0, |t| t.elapsed().as_millis() as u64);
                    tracing::info!(node = %shared.node, down_ms, "reconnected to NATS; catching up");
                } else {
                    tracing::info!(node = %shared.node, "connected to NATS");
                }
                ever_connected = true;
                down_since = None;
                notify(
                    &shared,
                    "connected",
                    "updates from other aggregators flow again",
                )
                .await;
            }
            async_nats::Event::Disconnected => {
                down_since = Some(tokio::time::Instant::now());
                tracing::warn!(node = %shared.node, "lost NATS; serving local agents only and reconnecting with backoff");
                notify(
                    &shared,
                    "disconnected",
                    "only hosts attached to this aggregator are live until the broker is back",
                )
                .await;
            }
            async_nats::Event::SlowConsumer(_) => {
                tracing::warn!(node = %shared.node, "NATS dropped messages: this aggregator consumes too slowly");
            }
            other => tracing::info!(node = %shared.node, event = %other, "NATS event"),
        }
    }
}

async fn notify(shared: &Shared, state: &str, detail: &str) {
    let message = SysMessage::new(
        "$sys.cluster",
        &ClusterNotice {
            state,
            node: &shared.node,
            detail,
        },
    );
    let _ = shared.hub.send(Command::Broadcast(message)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_bad_names_refused() {
        assert_eq!(
            redact_url("nats://u:pw@a:4222,nats://b:4222"),
            "nats://u:<redacted>@a:4222,nats://b:4222"
        );
        let mut c = ClusterConfig {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..ClusterConfig::default()
        };
        assert_eq!(c.problem().unwrap().0, "cluster.node");
        c.node = "agg.1".into();
        assert_eq!(c.problem().unwrap().0, "cluster.node");
        c.node = "agg-1".into();
        assert!(c.problem().is_none());
        c.subject_prefix = "hp.>".into();
        assert_eq!(c.problem().unwrap().0, "cluster.subject_prefix");
    }
}
