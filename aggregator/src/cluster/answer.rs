//! Answering other nodes' catch-up requests with this node's own hosts.
//!
//! A request arrives in chunks (it lists the asker's floor for every topic,
//! see [`super::chunk`]); the answer starts once the last one is in. It is
//! streamed: one chunk of history is read, published and let go before the
//! next is read, so memory holds one chunk per answer, never the whole
//! history. Each answer is paced by its own token bucket
//! (`catchup_answer_bytes_per_sec`, a [`TokenBucket`] in bytes), its chunks no larger than an
//! eighth of a second's worth (at least 16 KiB), so a slow pace still shows
//! the asker steady progress; up to `catchup_answers` run
//! at once, the rest wait for a slot. A node that asks again while its
//! answer runs (it reconnected meanwhile) replaces that answer: the old one
//! stops at its next chunk; the same request asked again leaves it running. At most [`MAX_ASKERS`] askers are tracked.
//!
//! On the wire, to the asker's inbox: a [`chunk::BEGIN`] marker as soon as
//! the request is complete (before waiting for a slot), the chunks (header [`chunk::CHUNK`]: index from 0), then a
//! last message with [`chunk::DONE`]: `<chunks> <updates>` sent, so the
//! asker knows it has everything, or what it missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chunk::{self, Assembly, RequestChunk};
use super::failures::PublishKind;
use super::{Shared, wire};
use crate::hub::Command;
use crate::limit::TokenBucket;

/// Askers tracked at once (requests being assembled or answered); a
/// request from one more is dropped (the asker's catch-up then ends on its
/// idle timeout).
pub const MAX_ASKERS: usize = 64;

/// One asker's state.
#[derive(Default)]
struct Asker {
    /// Its latest request, as its chunks arrive.
    request: Option<Assembly<HashMap<String, u64>>>,
    /// The answer running for it, if any: its number, the request it
    /// answers, and what stops it.
    running: Option<(u64, u64, CancellationToken)>,
}

/// Takes requests and runs answers until shutdown.
pub(crate) async fn run(shared: Shared, mut requests: Subscriber) {
    let slots = Arc::new(Semaphore::new(shared.config.catchup_answers.max(1)));
    let mut askers: HashMap<String, Asker> = HashMap::new();
    let mut answers: JoinSet<(String, u64)> = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let m = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(done) = answers.join_next(), if !answers.is_empty() => {
                if let Ok((asker, id)) = done
                    && let Some(a) = askers.get_mut(&asker)
                    && a.running.as_ref().is_some_and(|(running, _, _)| *running == id)
                {
                    a.running = None;
                }
                askers.retain(|_, a| a.running.is_some() || a.request.is_some());
                continue;
            }
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = m.reply else { continue };
        // Asked again of some peers only.
        if let Some(to) = m.headers.as_ref().and_then(|h| h.get(chunk::TO))
            && !to.as_str().split(',').any(|n| n == &*shared.node)
        {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<RequestChunk>(&m.payload) else {
            tracing::debug!("malformed catch-up request");
            continue;
        };
        if r.node == *shared.node {
            continue;
        }
        if !askers.contains_key(&r.node) && askers.len() >= MAX_ASKERS {
            tracing::warn!(asker = %r.node, limit = MAX_ASKERS, "too many nodes catching up at once; request dropped");
            continue;
        }
        let asker = askers.entry(r.node.clone()).or_default();
        let floors = match Assembly::take(&mut asker.request, r.request, r.index, r.count, r.floors)
        {
            Ok(Some(parts)) => parts.into_iter().flatten().collect::<HashMap<_, _>>(),
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(asker = %r.node, cause = %e, "catch-up request incomplete; not answered");
                continue;
            }
        };
        // The asker is back from losing the broker: what it could not
        // publish meanwhile is in its history only, so this node catches up
        // too (from everyone, merged with any catch-up pending).
        if r.reconnect
            && asker
                .running
                .as_ref()
                .is_none_or(|(_, req, _)| *req != r.request)
        {
            tracing::info!(peer = %r.node, "a peer is back from losing the broker; catching up from it");
            let _ = shared.peer_back.try_send(());
        }
        // The same request asked again (its answer's start was slow to
        // reach the asker): the answer running goes on.
        if asker
            .running
            .as_ref()
            .is_some_and(|(_, req, _)| *req == r.request)
        {
            continue;
        }
        if let Some((_, _, old)) = asker.running.take() {
            old.cancel();
            shared
                .stats
                .answers_replaced
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(asker = %r.node, "asked again: the answer running is replaced");
        }
        let token = shared.shutdown.child_token();
        next_id += 1;
        asker.running = Some((next_id, r.request, token.clone()));
        let (shared, slots, id) = (shared.clone(), slots.clone(), next_id);
        answers.spawn(async move {
            answer(&shared, &r.node, reply, (floors, r.count), slots, token).await;
            (r.node, id)
        });
    }
    for (_, _, t) in askers.values().filter_map(|a| a.running.as_ref()) {
        t.cancel();
    }
}

/// Why an answer stopped before its end.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    /// Replaced by a newer request, or shutdown.
    #[error("cancelled")]
    Cancelled,
}

/// One answer's progress.
struct Sender<'a> {
    shared: &'a Shared,
    reply: Subject,
    cancel: &'a CancellationToken,
    pace: TokenBucket,
    chunks: u64,
    updates: u64,
    bytes: u64,
    failed: u64,
}

impl Sender<'_> {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(wire::NODE, &*self.shared.node);
        h
    }

    async fn publish(&self, headers: HeaderMap, payload: Bytes) -> Result<bool, Stopped> {
        let sent = tokio::select! {
            _ = self.cancel.cancelled() => return Err(Stopped::Cancelled),
            r = self.shared.client.publish_with_headers(self.reply.clone(), headers, payload) => r,
        };
        let ok = sent.is_ok();
        self.shared.stats.publish_errors.record(
            PublishKind::CatchupAnswer,
            &self.shared.node,
            &sent,
        );
        Ok(ok)
    }

    /// Paces, then publishes one chunk of `n` updates.
    async fn chunk(&mut self, payload: Vec<u8>, n: u64) -> Result<(), Stopped> {
        tokio::select! {
            _ = self.cancel.cancelled() => return Err(Stopped::Cancelled),
            _ = self.pace.wait_for(payload.len() as f64) => {}
        }
        let mut h = self.headers();
        h.insert(chunk::CHUNK, self.chunks.to_string());
        let len = payload.len() as u64;
        if self.publish(h, Bytes::from(payload)).await? {
            self.chunks += 1;
            self.updates += n;
            self.bytes += len;
        } else {
            self.failed += n;
        }
        Ok(())
    }
}

/// Streams the answer to `asker` (after waiting for a slot).
async fn answer(
    shared: &Shared,
    asker: &str,
    reply: Subject,
    (floors, chunks): (HashMap<String, u64>, u32),
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    // Say at once who answers, even before a slot is free.
    let mut h = HeaderMap::new();
    h.insert(wire::NODE, &*shared.node);
    h.insert(chunk::BEGIN, "1");
    let r = shared
        .client
        .publish_with_headers(reply.clone(), h, Bytes::new())
        .await;
    shared
        .stats
        .publish_errors
        .record(PublishKind::CatchupAnswer, &shared.node, &r);
    let _slot = tokio::select! {
        _ = cancel.cancelled() => return,
        s = slots.acquire_owned() => match s { Ok(s) => s, Err(_) => return },
    };
    let started = Instant::now();
    tracing::info!(to = %asker, request_chunks = chunks, floors = floors.len(), "answering a catch-up");
    let outcome = stream(shared, &reply, floors, &cancel).await;
    match outcome {
        Ok(s) => {
            shared.stats.answers_sent.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                to = %asker,
                updates = s.updates,
                chunks = s.chunks,
                bytes = s.bytes,
                failed = s.failed,
                took_ms = started.elapsed().as_millis() as u64,
                "catch-up answered"
            );
        }
        Err(Stopped::Cancelled) => {
            tracing::debug!(to = %asker, "catch-up answer stopped");
        }
    }
}

/// Counts of a finished answer.
struct Sent {
    chunks: u64,
    updates: u64,
    bytes: u64,
    failed: u64,
}

async fn stream(
    shared: &Shared,
    reply: &Subject,
    floors: HashMap<String, u64>,
    cancel: &CancellationToken,
) -> Result<Sent, Stopped> {
    let topics = shared
        .hub
        .ask(|reply| Command::Export { floors, reply })
        .await
        .unwrap_or_default();
    let rate = shared.config.catchup_answer_bytes_per_sec;
    // Under a slow pace, smaller chunks: one leaves at least every eighth
    // of a second, so the asker sees progress well within its idle timeout.
    let budget = chunk::budget(shared.client.max_payload()).min(
        usize::try_from(rate / 8)
            .unwrap_or(usize::MAX)
            .max(16 << 10),
    );
    let mut s = Sender {
        shared,
        reply: reply.clone(),
        cancel,
        pace: TokenBucket::new(rate.max(1) as f64, budget as f64),
        chunks: 0,
        updates: 0,
        bytes: 0,
        failed: 0,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(budget.min(1 << 20));
    let mut in_buf = 0u64;
    for t in topics {
        let mut after = t.after;
        loop {
            // One chunk's worth at a time: only Arcs are copied.
            let (updates, more) = t
                .history
                .read_after(after, budget.max(buf.len()) - buf.len());
            for u in &updates {
                if !buf.is_empty() && buf.len() + u.json.len() + 1 > budget {
                    s.chunk(std::mem::take(&mut buf), in_buf).await?;
                    in_buf = 0;
                }
                buf.extend_from_slice(u.json.as_bytes());
                buf.push(b'\n');
                in_buf += 1;
                after = u.seq;
            }
            if !more || updates.is_empty() {
                break;
            }
        }
    }
    if !buf.is_empty() {
        s.chunk(buf, in_buf).await?;
    }
    let mut h = s.headers();
    h.insert(chunk::DONE, format!("{} {}", s.chunks, s.updates));
    s.publish(h, Bytes::new()).await?;
    tokio::select! {
        _ = cancel.cancelled() => return Err(Stopped::Cancelled),
        _ = shared.client.flush() => {}
    }
    Ok(Sent {
        chunks: s.chunks,
        updates: s.updates,
        bytes: s.bytes,
        failed: s.failed,
    })
}
