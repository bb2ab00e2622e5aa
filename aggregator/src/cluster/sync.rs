//! Taking other nodes' updates in: live, and by catch-up after (re)connecting.
//!
//! Live updates arrive on `<prefix>.host.>`; this node's own come back too
//! and are skipped (never re-published, never delivered twice). The hub drops
//! anything at or below a topic's seq, which also covers an agent that failed
//! over and resends what a peer already published.
//!
//! Catch-up: on every connect, the node sends the seq it holds for every host
//! topic to `<prefix>._cluster.catchup`, in as many chunks as that list
//! needs ([`chunk::request`]); every other node answers with its own hosts'
//! history above those seqs (topics the asker lacks: all of it), streamed in
//! chunks ([`super::answer`]) that are applied as they arrive, and ends
//! with a marker saying how many chunks and updates it sent. Live updates
//! are held back from the moment the connection drops until the answers are
//! in, so the hub takes each topic in seq order. The catch-up ends:
//! - once every peer known from presence, and every peer that began an
//!   answer, has sent its end marker (at least one peer must be known; a
//!   node that knew none when it asked, having just started, first listens
//!   to presence for one and a half `presence_interval_ms`, so that a peer
//!   whose answer has not reached it yet is known to be missing); or
//! - once nothing of any answer has arrived for `catchup_wait_ms` (an idle
//!   timeout: a long answer that keeps arriving is waited for); or
//! - after `catchup_max_ms` in all, whatever is still arriving; or
//! - at once when the broker says no other node takes requests at all
//!   ("no responders": a node alone goes live without waiting).
//!
//! A peer known from presence that has not begun answering a second after
//! the request (it reconnected to the broker after the request went by, as
//! after a broker restart) is asked again by name, up to three times.
//! A node back from losing the broker says so in its request: what it could
//! not publish meanwhile (its export queue overflowed) is only in its
//! history, and a peer that reconnected before it asked while it was still
//! away. So each node hearing such a request catches up once in turn
//! ([`super::answer`]); that request does not say so, so no round starts
//! another.
//! A gap in a peer's numbering of its live updates (see [`super::gaps`])
//! holds live updates from that message on and starts a catch-up asked of
//! that peer only (or, if one runs, another after it, still holding), so the
//! hole is filled from the peer's history before anything newer is taken,
//! and no other node spends time answering it.
//! An end marker counting more chunks than arrived means chunks were lost
//! on the way (a slow consumer): logged, and the updates counted dropped.
//! If the link drops again before a catch-up ends, what arrived is applied
//! but live updates stay held until the catch-up after the next connect.
//! What no peer holds any more (beyond its history) stays missing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::chunk;
use super::failures::PublishKind;
use super::gaps::Gaps;
use super::presence::Peers;
use super::{Shared, wire};
use crate::hub::Command;
use crate::update::Update;

/// Updates handed to the hub in one command, at most.
const HUB_BATCH: usize = 512;

/// How often a catch-up checks whether it is complete while nothing arrives.
const RECHECK: Duration = Duration::from_millis(250);

/// A peer known from presence that has not begun answering this long after
/// the request is asked again, by name (it may have reconnected to the
/// broker after the request went by, as after a broker restart)...
const REASK_AFTER: Duration = Duration::from_secs(1);
/// ...at most this many times.
const MAX_REASKS: u32 = 3;

struct Catchup {
    /// `link_epoch` when it was asked for.
    epoch: u64,
    inbox: Subscriber,
    /// Its subject, and the request's chunks (to ask again).
    reply_to: String,
    request: Vec<bytes::Bytes>,
    /// Times asked again, of [`MAX_REASKS`].
    reasked: u32,
    started: Instant,
    /// When the last message of any answer arrived (or it began).
    progress: Instant,
    /// Answers by the peer sending them.
    answers: BTreeMap<String, Answer>,
    /// Updates recovered so far.
    recovered: usize,
    /// The broker said no other node is there to answer.
    nobody: bool,
    /// Peers were known from presence when it was asked for.
    knew_peers: bool,
    /// Asked of these peers only (a gap in their numbering), not of all.
    only: Option<BTreeSet<String>>,
}

/// What the next catch-up is to ask, and of whom.
#[derive(Debug, Default)]
enum Want {
    /// No catch-up wanted.
    #[default]
    Nothing,
    /// Of every peer (a (re)connect here, or a peer back from losing the
    /// broker).
    All,
    /// Of the peers whose numbering showed a gap: only they answer.
    Peers(BTreeSet<String>),
}

impl Want {
    fn all(&mut self) {
        *self = Want::All;
    }

    fn peer(&mut self, peer: &str) {
        match self {
            Want::All => {}
            Want::Peers(s) => {
                s.insert(peer.to_string());
            }
            Want::Nothing => *self = Want::Peers(BTreeSet::from([peer.to_string()])),
        }
    }

    fn is_nothing(&self) -> bool {
        matches!(self, Want::Nothing)
    }
}

/// One peer's answer so far.
#[derive(Debug, Default)]
struct Answer {
    chunks: u64,
    updates: u64,
    /// `(chunks, updates)` it says it sent, once it is done.
    done: Option<(u64, u64)>,
}

/// How a catch-up ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// Every peer known and answering said it was done.
    Complete,
    /// Nothing arrived for `catchup_wait_ms`.
    Idle,
    /// `catchup_max_ms` passed.
    Cap,
    /// No other node is there (the broker said "no responders").
    Alone,
}

impl Catchup {
    fn deadline(&self, shared: &Shared) -> (Instant, Ended) {
        let idle = self.progress + Duration::from_millis(shared.config.catchup_wait_ms);
        let cap = self.started + Duration::from_millis(shared.config.catchup_max_ms);
        if idle < cap {
            (idle, Ended::Idle)
        } else {
            (cap, Ended::Cap)
        }
    }

    /// Every peer known from presence, and every one answering, is done
    /// (and at least one is known). A node that knew no peer when it asked
    /// (it just started) first listens to presence for one and a half
    /// intervals, so every live peer has announced itself.
    fn complete(&self, shared: &Shared, peers: &Peers) -> bool {
        let listened = Duration::from_millis(shared.config.presence_interval_ms * 3 / 2);
        if !self.knew_peers && self.started.elapsed() < listened {
            return false;
        }
        let done = |n: &String| self.answers.get(n).is_some_and(|a| a.done.is_some());
        let asked = match &self.only {
            Some(only) => only.iter().all(done),
            None => {
                let known = peers.names();
                !known.is_empty() && known.iter().all(done)
            }
        };
        asked && self.answers.values().all(|a| a.done.is_some())
    }

    /// Takes one message of an answer; returns its updates.
    fn take(&mut self, shared: &Shared, m: &Message) -> Vec<Update> {
        // The broker's own notices carry a status and no node. "No
        // responders": no other node is subscribed to requests at all.
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            self.nobody = true;
        }
        let Some(from) = wire::node_of(m.headers.as_ref()).filter(|_| m.status.is_none()) else {
            return Vec::new();
        };
        self.progress = Instant::now();
        let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name));
        let answer = self.answers.entry(from.to_string()).or_default();
        if let Some(done) = header(chunk::DONE) {
            let mut counts = done.as_str().split(' ').map(|n| n.parse().unwrap_or(0));
            let sent = (counts.next().unwrap_or(0), counts.next().unwrap_or(0));
            answer.done = Some(sent);
            if sent.0 > answer.chunks {
                let lost = sent.1.saturating_sub(answer.updates);
                shared.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(peer = %from, sent_chunks = sent.0, got_chunks = answer.chunks, lost_updates = lost, "catch-up answer arrived with chunks missing");
            }
            return Vec::new();
        }
        if header(chunk::BEGIN).is_some() {
            return Vec::new();
        }
        let origin: Arc<str> = from.into();
        let updates = wire::unchunk(&m.payload, &origin);
        answer.chunks += 1;
        answer.updates += updates.len() as u64;
        self.recovered += updates.len();
        updates
    }
}

/// Consumes live updates and runs catch-ups until shutdown.
pub(crate) async fn consume(
    shared: Shared,
    live: Subscriber,
    mut catchup_rx: mpsc::Receiver<()>,
    peers: Peers,
) {
    let mut live = live.ready_chunks(HUB_BATCH);
    let mut held: VecDeque<Update> = VecDeque::new();
    let mut catchup: Option<Catchup> = None;
    let mut wanted = Want::Nothing;
    let mut gaps = Gaps::default();
    // A gap was found during a catch-up: what is held waits for the next.
    let mut refill = false;
    loop {
        let deadline = catchup.as_ref().map(|c| c.deadline(&shared));
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(()) = catchup_rx.recv() => {
                if catchup.is_some() {
                    wanted.all();
                } else {
                    catchup = begin(&shared, &peers, Want::All).await;
                }
            }
            chunk = live.next() => {
                let Some(messages) = chunk else { break };
                let (mut updates, gap, from) = take(&shared, messages, &mut gaps);
                for peer in &from {
                    wanted.peer(peer);
                }
                if let Some(at) = gap {
                    // What came before the gap goes in; from it on, held
                    // until a catch-up has filled it.
                    if !shared.holding.load(Ordering::SeqCst) {
                        let rest = updates.split_off(at);
                        publish(&shared, std::mem::replace(&mut updates, rest)).await;
                        shared.holding.store(true, Ordering::SeqCst);
                    }
                    if catchup.is_some() {
                        refill = true;
                    }
                }
                if shared.holding.load(Ordering::SeqCst) {
                    for u in updates {
                        if held.len() >= shared.config.catchup_buffer {
                            held.pop_front();
                            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        held.push_back(u);
                    }
                } else {
                    publish(&shared, updates).await;
                }
            }
            answer = async { catchup.as_mut().expect("guarded").inbox.next().await }, if catchup.is_some() => {
                let c = catchup.as_mut().expect("guarded");
                if let Some(m) = answer {
                    // Applied chunk by chunk, so memory holds one chunk, not
                    // every peer's history: a peer sends each topic's history
                    // in seq order, and live updates are held meanwhile.
                    let updates = c.take(&shared, &m);
                    if !updates.is_empty() {
                        let _ = shared.hub.send(Command::Publish(updates)).await;
                    }
                }
                if c.complete(&shared, &peers) {
                    finish(&shared, catchup.take().expect("guarded"), &mut held, &peers, Ended::Complete, !refill).await;
                } else if c.nobody && c.answers.is_empty() {
                    finish(&shared, catchup.take().expect("guarded"), &mut held, &peers, Ended::Alone, !refill).await;
                }
            }
            // Also wakes now and then: peers learnt from presence meanwhile
            // may have finished already.
            _ = async { sleep_until(deadline.expect("guarded").0.min(Instant::now() + RECHECK)).await }, if deadline.is_some() => {
                let c = catchup.as_mut().expect("guarded");
                let (at, ended) = deadline.expect("guarded");
                reask(&shared, c, &peers).await;
                if c.complete(&shared, &peers) {
                    finish(&shared, catchup.take().expect("guarded"), &mut held, &peers, Ended::Complete, !refill).await;
                } else if Instant::now() >= at {
                    finish(&shared, catchup.take().expect("guarded"), &mut held, &peers, ended, !refill).await;
                }
            }
        }
        if catchup.is_none() && !wanted.is_nothing() {
            refill = false;
            catchup = begin(&shared, &peers, std::mem::take(&mut wanted)).await;
        }
        // A catch-up that could not even be asked for goes live at once.
        if catchup.is_none() && !held.is_empty() && !shared.holding.load(Ordering::SeqCst) {
            while !held.is_empty() {
                let n = held.len().min(HUB_BATCH);
                publish(&shared, held.drain(..n).collect()).await;
            }
        }
    }
}

/// Decodes live messages, skipping this node's own; with the index of the
/// first that comes after a gap in its origin's numbering, if any, and the
/// origins whose numbering showed one.
fn take(
    shared: &Shared,
    messages: Vec<Message>,
    gaps: &mut Gaps,
) -> (Vec<Update>, Option<usize>, Vec<Arc<str>>) {
    let mut out = Vec::with_capacity(messages.len());
    let mut gap = None;
    let mut from: Vec<Arc<str>> = Vec::new();
    let epoch = shared.link_epoch.load(Ordering::SeqCst);
    for m in messages {
        let origin = wire::node_of(m.headers.as_ref());
        if origin == Some(&*shared.node) {
            continue;
        }
        let Some(origin) = origin.map(Arc::<str>::from) else {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(topic) = shared.subjects.topic_of(m.subject.as_str()) else {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some(link) = wire::link_of(m.headers.as_ref()) {
            let lost = gaps.check(epoch, &origin, link);
            if lost > 0 {
                shared.stats.gaps.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(node = %shared.node, peer = %origin, lost, "updates of a peer were lost on the way; catching up from its history");
                gap.get_or_insert(out.len());
                if !from.contains(&origin) {
                    from.push(origin.clone());
                }
            }
        }
        match wire::decode_update(topic, m.headers.as_ref(), m.payload, &origin) {
            Ok(u) => out.push(u),
            Err(e) => {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cause = %e, "refused a message from NATS");
            }
        }
    }
    (out, gap, from)
}

async fn publish(shared: &Shared, updates: Vec<Update>) {
    if updates.is_empty() {
        return;
    }
    shared
        .stats
        .received
        .fetch_add(updates.len() as u64, Ordering::Relaxed);
    let _ = shared.hub.send(Command::Publish(updates)).await;
}

/// Asks every other node (or, for a gap, only the peers that showed one)
/// for what this one lacks.
async fn begin(shared: &Shared, peers: &Peers, want: Want) -> Option<Catchup> {
    let only = match want {
        Want::Peers(p) => Some(p),
        Want::All | Want::Nothing => None,
    };
    let knew_peers = only.is_some() || peers.live() > 0;
    shared.holding.store(true, Ordering::SeqCst);
    let epoch = shared.link_epoch.load(Ordering::SeqCst);
    let floors = shared
        .hub
        .ask(|reply| Command::Floors { reply })
        .await
        .unwrap_or_default();
    // Every floor is listed, in as many chunks as it takes: a topic left
    // out would be sent whole.
    // Tells this request's chunks from an earlier one's (a restart included).
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let chunks = chunk::request(
        &shared.node,
        id,
        &floors,
        chunk::budget(shared.client.max_payload()),
        // Only a catch-up of everyone says this node is back.
        only.is_none() && shared.reconnected.swap(false, Ordering::SeqCst),
    );
    let to = only
        .as_ref()
        .map(|o| o.iter().cloned().collect::<Vec<_>>().join(","));
    let inbox = shared.client.new_inbox();
    let sent = match shared.client.subscribe(inbox.clone()).await {
        Ok(sub) => ask(shared, &inbox, &chunks, to.as_deref())
            .await
            .map(|()| sub),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(sub) => Some(Catchup {
            epoch,
            inbox: sub,
            reply_to: inbox,
            request: chunks,
            reasked: 0,
            started: Instant::now(),
            progress: Instant::now(),
            answers: BTreeMap::new(),
            recovered: 0,
            nobody: false,
            knew_peers,
            only,
        }),
        Err(cause) if link_unchanged(shared, epoch) => {
            tracing::warn!(%cause, "cannot ask peers to catch up; going live without");
            shared.holding.store(false, Ordering::SeqCst);
            None
        }
        Err(cause) => {
            // The link dropped: the next connect asks again.
            tracing::debug!(%cause, "catch-up not asked: NATS link lost");
            None
        }
    }
}

/// Publishes a request's chunks (to the peers named in `to` only, if any).
async fn ask(
    shared: &Shared,
    inbox: &str,
    chunks: &[bytes::Bytes],
    to: Option<&str>,
) -> Result<(), String> {
    for payload in chunks {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(to) = to {
            headers.insert(chunk::TO, to);
        }
        let r = shared
            .client
            .publish_with_reply_and_headers(
                shared.subjects.catchup(),
                inbox.to_string(),
                headers,
                payload.clone(),
            )
            .await;
        shared
            .stats
            .publish_errors
            .record(PublishKind::CatchupRequest, &shared.node, &r);
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Asks again the peers known from presence that have not begun answering.
async fn reask(shared: &Shared, c: &mut Catchup, peers: &Peers) {
    if c.reasked >= MAX_REASKS || c.started.elapsed() < REASK_AFTER * (c.reasked + 1) {
        return;
    }
    let silent: Vec<String> = peers
        .names()
        .into_iter()
        .filter(|n| !c.answers.contains_key(n))
        .filter(|n| c.only.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    if silent.is_empty() {
        return;
    }
    c.reasked += 1;
    tracing::info!(node = %shared.node, peers = ?silent, "asking again for a catch-up: no answer begun");
    let _ = ask(shared, &c.reply_to, &c.request, Some(&silent.join(","))).await;
}

/// Ends a catch-up (its answers are applied as they arrive): applies what
/// was held back and goes live.
async fn finish(
    shared: &Shared,
    mut c: Catchup,
    held: &mut VecDeque<Update>,
    peers: &Peers,
    ended: Ended,
    release: bool,
) {
    let _ = c.inbox.unsubscribe().await;
    let recovered = c.recovered;
    shared
        .stats
        .caught_up
        .fetch_add(recovered as u64, Ordering::Relaxed);
    let unfinished: Vec<&str> = c
        .answers
        .iter()
        .filter(|(_, a)| a.done.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !unfinished.is_empty() {
        tracing::warn!(node = %shared.node, ?ended, peers = ?unfinished, "catch-up ended before these peers finished answering");
    }
    tracing::info!(
        node = %shared.node,
        answers = c.answers.values().filter(|a| a.done.is_some()).count(),
        expected = peers.names().len(),
        updates = recovered,
        chunks = c.answers.values().map(|a| a.chunks).sum::<u64>(),
        held = held.len(),
        took_ms = c.started.elapsed().as_millis() as u64,
        ended = ?ended,
        "catch-up applied"
    );
    if !release {
        // A gap found meanwhile: the next catch-up fills it first.
        tracing::info!(node = %shared.node, held = held.len(), "a gap was found during the catch-up; catching up again before going live");
        return;
    }
    if !link_unchanged(shared, c.epoch) {
        // Lost the link meanwhile: what peers sent after that is unknown, so
        // going live now could put newer seqs before older ones for good.
        tracing::info!(node = %shared.node, "NATS link lost during the catch-up; holding until the next one");
        return;
    }
    while !held.is_empty() {
        let n = held.len().min(HUB_BATCH);
        publish(shared, held.drain(..n).collect()).await;
    }
    shared.holding.store(false, Ordering::SeqCst);
}

/// Whether the NATS link is up and has not dropped since `epoch`.
fn link_unchanged(shared: &Shared, epoch: u64) -> bool {
    shared.stats.connected.load(Ordering::SeqCst)
        && shared.link_epoch.load(Ordering::SeqCst) == epoch
}
