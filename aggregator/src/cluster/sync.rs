//! Taking other nodes' updates in: live, and by catch-up after (re)connecting.
//!
//! Live updates arrive on `<prefix>.host.>`; this node's own come back too
//! and are skipped (never re-published, never delivered twice). The hub drops
//! anything at or below a topic's seq, which also covers an agent that failed
//! over and resends what a peer already published.
//!
//! Catch-up (the asking side's state is in `sync/catchup.rs`): on every
//! connect, the node sends the seq it holds for every host topic to
//! `<prefix>._cluster.catchup`, in as many chunks as that list needs
//! ([`super::chunk::request`]); every other node answers with its own
//! hosts' history above those seqs (topics the asker lacks: all of it),
//! streamed in chunks ([`super::answer`]) that are applied as they arrive,
//! and ends with a marker saying how many chunks and updates it sent. Live
//! updates are held back from the moment the connection drops until the
//! answers are in, so the hub takes each topic in seq order. The catch-up
//! ends:
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::gaps::Gaps;
use super::presence::Peers;
use super::{Shared, wire};
use crate::hub::Command;
use crate::update::Update;
use catchup::{Catchup, Ended, Want, begin, finish, reask};

mod catchup;

/// Updates handed to the hub in one command, at most.
const HUB_BATCH: usize = 512;

/// How often a catch-up checks whether it is complete while nothing arrives.
const RECHECK: Duration = Duration::from_millis(250);

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
