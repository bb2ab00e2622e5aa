//! The agent's send loop: batches samples into the spool, keeps one stream to
//! an aggregator, sends what is unacknowledged, and reconnects with backoff.
//!
//! One task owns the spool and the link, so there is no shared state to lock:
//! samples arrive over a bounded channel from the sampler, acks arrive on the
//! link, and timers drive flushing, reconnects and the shutdown drain. The
//! [`Batcher`] keeps every batch within the aggregator's limits.
//!
//! A refusal is never answered by sending the same thing again: a batch
//! refused as invalid is given up, one refused as too large is split, and
//! an agent refused because another process holds its agent id
//! (`ALREADY_EXISTS`) says so once and backs off, growing to
//! `reconnect_max_ms`, on the same address.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_proto::Sample;
use hostpulse_proto::v1::{AgentMessage, Batch, Hello, agent_message, aggregator_message};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batcher::Batcher;
use crate::link::{self, Link, LinkError, LinkSettings};
use crate::spool::Spool;
pub use crate::status::AgentStatus;

/// What the pipeline needs to know.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Aggregator addresses, tried in order.
    pub aggregators: Vec<String>,
    /// The `Hello` sent on every stream.
    pub hello: Hello,
    /// Most samples per batch.
    pub batch_max_samples: usize,
    /// Batches are cut at about this many encoded bytes.
    pub batch_max_bytes: usize,
    /// Longest a sample waits for company; zero sends at once.
    pub flush_interval: Duration,
    /// Spool bound in bytes.
    pub spool_max_bytes: usize,
    /// Acknowledged samples kept for resending to a fresh aggregator.
    pub retain_acked_samples: u64,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Transport settings.
    pub link: LinkSettings,
    /// Bounded wait for acks on shutdown.
    pub drain_timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Link, LinkError>> + Send>>;

/// Polls `f` if there is one; otherwise never completes.
async fn maybe<F: Future>(f: Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs until `shutdown` fires (or the sample channel closes) and the drain
/// ends: the sample channel closed and every batch acknowledged, or the
/// drain timeout.
pub async fn run(
    mut settings: PipelineSettings,
    mut samples: mpsc::Receiver<Sample>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) {
    let mut spool = Spool::new(settings.spool_max_bytes, settings.retain_acked_samples);
    let mut pending = Batcher::new(settings.batch_max_samples, settings.batch_max_bytes);
    let mut flush_at: Option<Instant> = None;
    // Refused as a duplicate since the last stream: logged once.
    let mut duplicate = false;

    let mut address_index = 0usize;
    let mut link_tx: Option<mpsc::Sender<AgentMessage>> = None;
    let mut link_rx: Option<tonic::Streaming<hostpulse_proto::v1::AggregatorMessage>> = None;
    let mut link_address = String::new();
    let mut connecting: Option<Connecting> = None;
    let mut retry_at: Option<Instant> = Some(Instant::now());
    let mut drain_deadline: Option<Instant> = None;
    let mut samples_open = true;

    loop {
        // Shutting down ends once the sampler has stopped (its channel is
        // closed, so a sample it was taking when the signal came is in) and
        // the aggregator has acknowledged everything, or at the drain deadline.
        if drain_deadline.is_some() && !samples_open && pending.is_empty() && spool.unacked() == 0 {
            tracing::info!(
                last_sample_seq = status.last_sample_seq.load(Ordering::Relaxed),
                samples_taken = status.samples_taken.load(Ordering::Relaxed),
                "every batch acknowledged; exiting"
            );
            break;
        }
        let sending = link_tx.is_some() && spool.has_unsent();
        tokio::select! {
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + settings.drain_timeout);
                pending.cut(&mut spool, &status);
                flush_at = None;
                tracing::info!(batches = spool.unacked(), "shutting down: sending what is pending");
            }
            _ = maybe(drain_deadline.map(sleep_until)) => {
                tracing::warn!(
                    unacknowledged = spool.unacked(),
                    last_sample_seq = status.last_sample_seq.load(Ordering::Relaxed),
                    samples_taken = status.samples_taken.load(Ordering::Relaxed),
                    "drain timeout; exiting with batches unacknowledged"
                );
                break;
            }
            sample = samples.recv(), if samples_open => match sample {
                Some(sample) => {
                    status.last_sample_seq.store(sample.seq, Ordering::Relaxed);
                    status.samples_taken.fetch_add(1, Ordering::Relaxed);
                    pending.add(&sample, &mut spool, &status);
                    if pending.is_full() || settings.flush_interval.is_zero() {
                        // While disconnected, let samples gather into full batches.
                        if link_tx.is_some() || pending.is_full() {
                            pending.cut(&mut spool, &status);
                            flush_at = None;
                        }
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + settings.flush_interval);
                    }
                }
                None => {
                    samples_open = false;
                    pending.cut(&mut spool, &status);
                    if drain_deadline.is_none() {
                        drain_deadline = Some(Instant::now() + settings.drain_timeout);
                    }
                }
            },
            _ = maybe(flush_at.map(sleep_until)) => {
                flush_at = None;
                pending.cut(&mut spool, &status);
            }
            _ = maybe(retry_at.map(sleep_until)), if connecting.is_none() && link_tx.is_none() => {
                retry_at = None;
                let address = settings.aggregators[address_index % settings.aggregators.len()].clone();
                tracing::debug!(%address, "connecting");
                connecting = Some(Box::pin(link::connect(address, settings.hello.clone(), settings.link.clone())));
            }
            result = maybe(connecting.as_mut()) => {
                connecting = None;
                match result {
                    Ok(link) => {
                        let welcome = &link.welcome;
                        tracing::info!(address = %link.address, host = %welcome.host, last_seq = welcome.last_seq, known = welcome.known, "connected");
                        pending.connected(&link.address, welcome);
                        // A fresh aggregator (not `known`) is given the recent past too.
                        spool.start_stream(welcome.known.then_some(welcome.last_seq));
                        settings.backoff.reset();
                        duplicate = false;
                        link_address = link.address;
                        link_tx = Some(link.tx);
                        link_rx = Some(link.inbound);
                        status.connected.store(true, Ordering::Relaxed);
                        status.connections.fetch_add(1, Ordering::Relaxed);
                        // Samples that gathered while disconnected go out now.
                        pending.cut(&mut spool, &status);
                    }
                    Err(e) => {
                        let delay = settings.backoff.next_delay();
                        status.failed_connects.fetch_add(1, Ordering::Relaxed);
                        if let LinkError::Refused { address, status: refusal } = &e
                            && refusal.code() == tonic::Code::AlreadyExists
                        {
                            // Another agent holds this id (or host): trying
                            // elsewhere would only spread the clash.
                            status.refused_as_duplicate.fetch_add(1, Ordering::Relaxed);
                            if !std::mem::replace(&mut duplicate, true) {
                                tracing::error!(
                                    %address,
                                    reason = %refusal.message(),
                                    agent_id = %settings.hello.agent_id,
                                    retry_in_ms = delay.as_millis() as u64,
                                    "refused: another agent is streaming with this agent_id (or host name); \
                                     give each agent its own agent_id (agent_id in agent.toml, or HOSTPULSE_AGENT_ID); \
                                     retrying with backoff"
                                );
                            } else {
                                tracing::debug!(cause = %e, retry_in_ms = delay.as_millis() as u64, "still refused as a duplicate");
                            }
                        } else {
                            tracing::warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "aggregator unreachable");
                            address_index += 1;
                        }
                        set_last_error(&status, e.to_string());
                        retry_at = Some(Instant::now() + delay);
                    }
                }
            }
            permit = maybe(link_tx.clone().filter(|_| sending).map(|tx| tx.reserve_owned())) => {
                match permit {
                    Ok(permit) => {
                        pending.fit_next(&mut spool, &status);
                        if let Some(b) = spool.next_unsent() {
                            permit.send(AgentMessage { kind: Some(agent_message::Kind::Batch(Batch {
                                seq: b.seq,
                                sample_count: b.sample_count,
                                samples: b.payload,
                            }))});
                        }
                    }
                    Err(_) => {
                        // The request stream is gone; the inbound side reports why.
                        link_tx = None;
                    }
                }
            }
            message = maybe(link_rx.as_mut().map(|rx| rx.message())) => {
                match message {
                    Ok(Some(hostpulse_proto::v1::AggregatorMessage { kind: Some(aggregator_message::Kind::Ack(ack)) })) => {
                        spool.ack_through(ack.seq);
                        status.acked_batch_seq.store(ack.seq, Ordering::Relaxed);
                        let hint = u64::from(ack.min_interval_ms);
                        if status.interval_hint_ms.swap(hint, Ordering::Relaxed) != hint {
                            tracing::info!(min_interval_ms = hint, "aggregator asks for a sampling interval of at least this (0: back to normal)");
                        }
                    }
                    Ok(Some(other)) => tracing::debug!(?other, "ignoring unexpected message"),
                    Ok(None) | Err(_) => {
                        match &message {
                            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                                // Kept, the refused batch would be resent forever.
                                tracing::error!(address = %link_address, cause = %s.message(), "aggregator refused a batch; dropping it");
                                if let Some(seq) = spool.discard_refused() {
                                    tracing::warn!(seq, "refused batch given up");
                                }
                            }
                            Err(s) if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => {
                                pending.refused_as_too_large(&link_address, s.message(), &mut spool, &status);
                            }
                            Err(s) => tracing::warn!(address = %link_address, status = %s, "stream ended"),
                            _ => tracing::warn!(address = %link_address, "aggregator closed the stream"),
                        }
                        set_last_error(&status, match &message {
                            Err(s) => format!("{link_address}: stream ended: {s}"),
                            _ => format!("{link_address}: aggregator closed the stream"),
                        });
                        spool.end_stream();
                        link_tx = None;
                        link_rx = None;
                        status.connected.store(false, Ordering::Relaxed);
                        address_index += 1;
                        retry_at = Some(Instant::now() + settings.backoff.next_delay());
                    }
                }
            }
        }
        status
            .spooled_batches
            .store(spool.unacked() as u64, Ordering::Relaxed);
        status
            .spooled_bytes
            .store(spool.bytes() as u64, Ordering::Relaxed);
        status
            .dropped_batches
            .store(spool.dropped_batches, Ordering::Relaxed);
        status
            .dropped_samples
            .store(spool.dropped_samples, Ordering::Relaxed);
        status
            .unconfirmed_batches
            .store(spool.unconfirmed_batches, Ordering::Relaxed);
        status
            .unconfirmed_samples
            .store(spool.unconfirmed_samples, Ordering::Relaxed);
    }
    status.connected.store(false, Ordering::Relaxed);
}

fn set_last_error(status: &AgentStatus, cause: String) {
    *status.last_link_error.lock().expect("status lock") = cause;
}

#[cfg(test)]
mod tests;
