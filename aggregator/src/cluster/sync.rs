//! Taking other nodes' updates in: live, and by catch-up after (re)connecting.
//!
//! Live updates arrive on `<prefix>.host.>`; this node's own come back too
//! and are skipped (never re-published, never delivered twice). The hub drops
//! anything at or below a topic's seq, which also covers an agent that failed
//! over and resends what a peer already published.
//!
//! Catch-up: on every connect, the node sends the seq it holds for every host
//! topic to `<prefix>._cluster.catchup`; every other node answers with its
//! own hosts' history above those seqs (topics the asker lacks: all of it),
//! in chunks (applied as they arrive), the last one marked done. Live
//! updates are held back from the moment the connection drops until the
//! answers are in (all known peers done, or `catchup_wait_ms`), so the hub
//! takes each topic in seq order.
//! If the link drops again before a catch-up ends, what arrived is applied
//! but live updates stay held until the catch-up after the next connect.
//! What no peer holds any more (beyond its history) stays missing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::presence::Peers;
use super::{Shared, wire};
use crate::hub::Command;
use crate::update::Update;

/// Updates handed to the hub in one command, at most.
const HUB_BATCH: usize = 512;

struct Catchup {
    /// `link_epoch` when it was asked for.
    epoch: u64,
    inbox: Subscriber,
    deadline: Instant,
    expected: usize,
    done: usize,
    /// Updates recovered so far.
    recovered: usize,
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
    let mut wanted = false;
    loop {
        let deadline = catchup.as_ref().map(|c| c.deadline);
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(()) = catchup_rx.recv() => {
                if catchup.is_some() {
                    wanted = true;
                } else {
                    catchup = begin(&shared, &peers).await;
                }
            }
            chunk = live.next() => {
                let Some(messages) = chunk else { break };
                let updates = take(&shared, messages);
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
                    let from: Arc<str> = wire::node_of(m.headers.as_ref()).unwrap_or("?").into();
                    // Applied chunk by chunk, so memory holds one chunk, not
                    // every peer's history: a peer sends each topic's history
                    // in seq order, and live updates are held meanwhile.
                    let updates = wire::unchunk(&m.payload, &from);
                    c.recovered += updates.len();
                    let _ = shared.hub.send(Command::Publish(updates)).await;
                    if m.headers.as_ref().and_then(|h| h.get(wire::DONE)).is_some() {
                        c.done += 1;
                    }
                }
                if c.expected > 0 && c.done >= c.expected {
                    finish(&shared, catchup.take().expect("guarded"), &mut held).await;
                }
            }
            _ = async { sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                finish(&shared, catchup.take().expect("guarded"), &mut held).await;
            }
        }
        if catchup.is_none() && wanted {
            wanted = false;
            catchup = begin(&shared, &peers).await;
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

/// Decodes live messages, skipping this node's own.
fn take(shared: &Shared, messages: Vec<Message>) -> Vec<Update> {
    let mut out = Vec::with_capacity(messages.len());
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
        match wire::decode_update(topic, m.headers.as_ref(), m.payload, &origin) {
            Ok(u) => out.push(u),
            Err(e) => {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cause = %e, "refused a message from NATS");
            }
        }
    }
    out
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

/// Asks every other node for what this one lacks.
async fn begin(shared: &Shared, peers: &Peers) -> Option<Catchup> {
    shared.holding.store(true, Ordering::SeqCst);
    let epoch = shared.link_epoch.load(Ordering::SeqCst);
    let floors = shared
        .hub
        .ask(|reply| Command::Floors { reply })
        .await
        .unwrap_or_default();
    let mut request = serde_json::to_vec(&wire::CatchupRequest {
        node: shared.node.to_string(),
        floors,
    })
    .expect("a catch-up request serialises");
    if request.len() > shared.client.max_payload().max(64 << 10) {
        // Too many topics to list: ask for everything (answers are chunked).
        request = serde_json::to_vec(&wire::CatchupRequest {
            node: shared.node.to_string(),
            floors: HashMap::new(),
        })
        .expect("a catch-up request serialises");
    }
    let inbox = shared.client.new_inbox();
    let subscribed = shared.client.subscribe(inbox.clone()).await;
    let sent = match subscribed {
        Ok(sub) => shared
            .client
            .publish_with_reply(shared.subjects.catchup(), inbox, request.into())
            .await
            .map(|()| sub)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(inbox) => Some(Catchup {
            epoch,
            inbox,
            deadline: Instant::now()
                + std::time::Duration::from_millis(shared.config.catchup_wait_ms),
            expected: peers.live(),
            done: 0,
            recovered: 0,
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

/// Ends a catch-up (its answers are applied as they arrive): applies what
/// was held back and goes live.
async fn finish(shared: &Shared, mut c: Catchup, held: &mut VecDeque<Update>) {
    let _ = c.inbox.unsubscribe().await;
    let recovered = c.recovered;
    shared
        .stats
        .caught_up
        .fetch_add(recovered as u64, Ordering::Relaxed);
    tracing::info!(
        node = %shared.node,
        answers = c.done,
        expected = c.expected,
        updates = recovered,
        held = held.len(),
        "catch-up applied"
    );
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

/// Answers other nodes' catch-up requests with this node's own hosts.
pub(crate) async fn answer(shared: Shared, mut requests: Subscriber) {
    loop {
        let m = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = m.reply else { continue };
        let Ok(request) = serde_json::from_slice::<wire::CatchupRequest>(&m.payload) else {
            tracing::debug!("malformed catch-up request");
            continue;
        };
        if request.node == *shared.node {
            continue;
        }
        let floors = request.floors;
        let topics = shared
            .hub
            .ask(|reply| Command::Export { floors, reply })
            .await
            .unwrap_or_default();
        // Read here, not in the hub: a large answer delays no live update.
        let updates: Vec<_> = topics
            .iter()
            .flat_map(|t| t.history.all_after(t.after))
            .collect();
        let max = (shared.client.max_payload() / 2).clamp(16 << 10, 512 << 10);
        let chunks = wire::chunk(&updates, max);
        tracing::info!(to = %request.node, updates = updates.len(), chunks = chunks.len(), "answering a catch-up");
        // The chunks, then an empty message marked done.
        let n = chunks.len();
        let mut failed = false;
        for (i, payload) in chunks
            .into_iter()
            .chain(std::iter::once(bytes::Bytes::new()))
            .enumerate()
        {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(wire::NODE, &*shared.node);
            if i == n {
                headers.insert(wire::DONE, "1");
            }
            // Shutdown is not held up by a broker that stopped taking data.
            let sent = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = shared.client.publish_with_headers(reply.clone(), headers, payload) => r,
            };
            if let Err(e) = sent {
                failed = true;
                tracing::warn!(cause = %e, "catch-up answer not sent");
                break;
            }
        }
        if !failed {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = shared.client.flush() => {}
            }
        }
    }
}
