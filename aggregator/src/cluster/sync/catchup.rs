//! A catch-up's state on the asking side: what is wanted and of whom, the
//! request's chunks (asked again of silent peers), each peer's answer as
//! it arrives, and when and how the catch-up ends and live updates go
//! through again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use tokio::time::Instant;

use super::{HUB_BATCH, publish};
use crate::cluster::chunk;
use crate::cluster::failures::PublishKind;
use crate::cluster::presence::Peers;
use crate::cluster::{Shared, wire};
use crate::hub::Command;
use crate::update::Update;

/// A peer known from presence that has not begun answering this long after
/// the request is asked again, by name (it may have reconnected to the
/// broker after the request went by, as after a broker restart)...
const REASK_AFTER: Duration = Duration::from_secs(1);
/// ...at most this many times.
const MAX_REASKS: u32 = 3;

pub(super) struct Catchup {
    /// `link_epoch` when it was asked for.
    epoch: u64,
    pub(super) inbox: Subscriber,
    /// Its subject, and the request's chunks (to ask again).
    reply_to: String,
    request: Vec<bytes::Bytes>,
    /// Times asked again, of [`MAX_REASKS`].
    reasked: u32,
    started: Instant,
    /// When the last message of any answer arrived (or it began).
    progress: Instant,
    /// Answers by the peer sending them.
    pub(super) answers: BTreeMap<String, Answer>,
    /// Updates recovered so far.
    recovered: usize,
    /// The broker said no other node is there to answer.
    pub(super) nobody: bool,
    /// Peers were known from presence when it was asked for.
    knew_peers: bool,
    /// Asked of these peers only (a gap in their numbering), not of all.
    only: Option<BTreeSet<String>>,
}

/// What the next catch-up is to ask, and of whom.
#[derive(Debug, Default)]
pub(super) enum Want {
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
    pub(super) fn all(&mut self) {
        *self = Want::All;
    }

    pub(super) fn peer(&mut self, peer: &str) {
        match self {
            Want::All => {}
            Want::Peers(s) => {
                s.insert(peer.to_string());
            }
            Want::Nothing => *self = Want::Peers(BTreeSet::from([peer.to_string()])),
        }
    }

    pub(super) fn is_nothing(&self) -> bool {
        matches!(self, Want::Nothing)
    }
}

/// One peer's answer so far.
#[derive(Debug, Default)]
pub(super) struct Answer {
    chunks: u64,
    updates: u64,
    /// `(chunks, updates)` it says it sent, once it is done.
    done: Option<(u64, u64)>,
}

/// How a catch-up ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ended {
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
    pub(super) fn deadline(&self, shared: &Shared) -> (Instant, Ended) {
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
    pub(super) fn complete(&self, shared: &Shared, peers: &Peers) -> bool {
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
    pub(super) fn take(&mut self, shared: &Shared, m: &Message) -> Vec<Update> {
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

/// Asks every other node (or, for a gap, only the peers that showed one)
/// for what this one lacks.
pub(super) async fn begin(shared: &Shared, peers: &Peers, want: Want) -> Option<Catchup> {
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
pub(super) async fn reask(shared: &Shared, c: &mut Catchup, peers: &Peers) {
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
pub(super) async fn finish(
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
