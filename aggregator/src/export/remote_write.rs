//! Prometheus remote-write export (`[export.remote_write]`): every host
//! update the hub accepts, from this aggregator's agents and from cluster
//! peers, becomes samples of the series `/metrics` shows
//! ([`crate::host_series`]), stamped with the host's sample time, and goes
//! to a remote-write receiver (Prometheus, Mimir, Thanos, VictoriaMetrics,
//! Cortex) in snappy-compressed protobuf batches.
//!
//! This module owns the exporter task and its queue: the hub offers each
//! host update to a bounded queue without ever waiting ([`queue`]); when
//! it is full the update is dropped and counted. The task reads the queue,
//! batches up to `batch_size` samples (or what `batch_wait_ms` gathered),
//! and sends one batch at a time with a timeout. A batch that fails for a
//! reason that may pass (no connection, timeout, 5xx, 429) is retried with
//! exponential backoff up to `max_backoff_ms`, never dropped: meanwhile the
//! queue fills, and only what overflows it is lost. A batch the endpoint
//! refuses (other 4xx, e.g. out-of-order samples) is counted as failed and
//! not sent again. Failures are logged once per episode and counted for
//! `/metrics`. On shutdown what is queued is sent once more, each batch a
//! single try, within [`FLUSH_TIMEOUT`].
//!
//! Children: `config` (the section and its checks), `wire` (the prost
//! messages, updates to samples, the snappy body), `client` (HTTP/1.1 to
//! the endpoint).

mod client;
mod config;
mod wire;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Endpoint, RemoteWriteConfig, Settings};

use crate::update::Update;
use client::{Client, SendError};
use wire::{Point, Points};

/// How long shutdown may spend sending what is still queued (within the
/// aggregator's drain, [`crate::DRAIN_TIMEOUT`]).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the exporter, for `/metrics`.
#[derive(Debug)]
pub struct RemoteWriteStats {
    /// Samples the endpoint took.
    pub samples_sent: AtomicU64,
    /// Samples the endpoint refused, or still unsent when shutdown's
    /// flush ran out of time.
    pub samples_failed: AtomicU64,
    /// Requests the endpoint took.
    pub requests_sent: AtomicU64,
    /// Requests the endpoint refused (not retried).
    pub requests_refused: AtomicU64,
    /// Requests that failed and were tried again (unreachable, timeout,
    /// 5xx, 429).
    pub requests_retried: AtomicU64,
    /// Samples read from the queue and not yet delivered (the batch being
    /// sent or retried, and the next one filling).
    pub pending_samples: AtomicU64,
    /// True from a failed request to the next delivered one.
    pub failing: AtomicBool,
    queue: mpsc::WeakSender<Arc<Update>>,
}

impl RemoteWriteStats {
    /// Host updates waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }
}

/// Receiving end of [`queue`].
pub struct Queue(mpsc::Receiver<Arc<Update>>);

/// The bounded queue between the hub (which `try_send`s into the sender,
/// see `HubSettings::remote_write`) and the exporter, and the exporter's
/// counters.
pub fn queue(settings: &Settings) -> (mpsc::Sender<Arc<Update>>, Queue, Arc<RemoteWriteStats>) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let stats = Arc::new(RemoteWriteStats {
        samples_sent: AtomicU64::new(0),
        samples_failed: AtomicU64::new(0),
        requests_sent: AtomicU64::new(0),
        requests_refused: AtomicU64::new(0),
        requests_retried: AtomicU64::new(0),
        pending_samples: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        queue: tx.downgrade(),
    });
    (tx, Queue(rx), stats)
}

/// Starts the exporter on `tasks`; it stops when `shutdown` fires, after
/// flushing within [`FLUSH_TIMEOUT`]. Fails only if the TLS setup for an
/// `https://` endpoint cannot be made.
pub fn start(
    settings: Settings,
    queue: Queue,
    stats: Arc<RemoteWriteStats>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), String> {
    let client = Client::new(&settings)?;
    tracing::info!(endpoint = %settings.endpoint.shown, "remote-write export on");
    let exporter = Exporter {
        points: Points::new(&settings.external_labels),
        settings,
        client,
        stats,
        pending: VecDeque::new(),
        unreachable: Episode::default(),
        refused: Episode::default(),
    };
    tasks.spawn(exporter.run(queue.0, shutdown));
    Ok(())
}

/// A run of failures of one kind, logged at its start and its end.
#[derive(Default)]
struct Episode {
    failures: Option<u64>,
}

impl Episode {
    /// Counts a failure; true if it begins an episode (log it).
    fn failed(&mut self) -> bool {
        let began = self.failures.is_none();
        *self.failures.get_or_insert(0) += 1;
        began
    }

    /// Ends the episode; the failures it had, if there was one.
    fn ended(&mut self) -> Option<u64> {
        self.failures.take()
    }
}

struct Exporter {
    settings: Settings,
    points: Points,
    client: Client,
    stats: Arc<RemoteWriteStats>,
    /// Samples read from the queue, not yet in a request.
    pending: VecDeque<Point>,
    unreachable: Episode,
    refused: Episode,
}

/// How a batch ended.
enum Sent {
    /// Delivered, or refused (and counted): done with.
    Done,
    /// Shutdown came while it waited to be retried.
    Interrupted,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Update>>, shutdown: CancellationToken) {
        let stats = self.stats.clone();
        let work = async {
            let carry = self.live(&mut rx, &shutdown).await;
            self.flush(&mut rx, carry).await;
        };
        let out_of_time = async {
            shutdown.cancelled().await;
            tokio::time::sleep(FLUSH_TIMEOUT).await;
        };
        tokio::select! {
            _ = work => {}
            _ = out_of_time => {
                let lost = stats.pending_samples.swap(0, Ordering::Relaxed);
                stats.samples_failed.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    samples = lost,
                    updates = stats.queued(),
                    "remote-write: shutdown flush ran out of time; the rest is not sent"
                );
            }
        }
    }

    /// Takes in an update's samples (unless `local_only` excludes it).
    fn take(&mut self, update: &Update) {
        if self.settings.local_only && update.origin.is_some() {
            return;
        }
        let n = self.points.of(update, &mut self.pending);
        self.stats
            .pending_samples
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Batches and sends until shutdown (or the hub is gone). Returns a
    /// batch interrupted while waiting for a retry.
    async fn live(
        &mut self,
        rx: &mut mpsc::Receiver<Arc<Update>>,
        shutdown: &CancellationToken,
    ) -> Option<(Bytes, usize)> {
        loop {
            if self.pending.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    u = rx.recv() => match u {
                        Some(u) => self.take(&u),
                        None => return None,
                    },
                }
                continue;
            }
            let deadline = Instant::now() + self.settings.batch_wait;
            while self.pending.len() < self.settings.batch_size {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep_until(deadline) => break,
                    u = rx.recv() => match u {
                        Some(u) => self.take(&u),
                        None => return None,
                    },
                }
            }
            let (body, n) = self.next_batch();
            if let Sent::Interrupted = self.deliver(body.clone(), n, Some(shutdown)).await {
                return Some((body, n));
            }
        }
    }

    /// Up to `batch_size` pending samples, encoded, and how many.
    fn next_batch(&mut self) -> (Bytes, usize) {
        let n = self.pending.len().min(self.settings.batch_size);
        (wire::encode(self.pending.drain(..n)), n)
    }

    /// Shutdown: what is left is sent, one try per batch (the endpoint has
    /// had its retries); the caller bounds the time.
    async fn flush(&mut self, rx: &mut mpsc::Receiver<Arc<Update>>, carry: Option<(Bytes, usize)>) {
        while let Ok(u) = rx.try_recv() {
            self.take(&u);
        }
        if let Some((body, n)) = carry {
            self.deliver(body, n, None).await;
        }
        while !self.pending.is_empty() {
            let (body, n) = self.next_batch();
            self.deliver(body, n, None).await;
        }
    }

    /// Sends one batch of `n` samples. With `retry_until`, a failure worth
    /// retrying is retried with backoff until it is delivered or the token
    /// fires; without, it is tried once and counted failed if not delivered.
    async fn deliver(
        &mut self,
        body: Bytes,
        n: usize,
        retry_until: Option<&CancellationToken>,
    ) -> Sent {
        let stats = self.stats.clone();
        let endpoint = self.settings.endpoint.shown.clone();
        let count = |counter: &AtomicU64, v: u64| counter.fetch_add(v, Ordering::Relaxed);
        let mut backoff = self.settings.min_backoff;
        loop {
            let cause = match self.client.send(body.clone()).await {
                Ok(()) => {
                    count(&stats.samples_sent, n as u64);
                    count(&stats.requests_sent, 1);
                    stats.pending_samples.fetch_sub(n as u64, Ordering::Relaxed);
                    stats.failing.store(false, Ordering::Relaxed);
                    let retried = self.unreachable.ended();
                    let refused = self.refused.ended();
                    if retried.is_some() || refused.is_some() {
                        tracing::info!(
                            %endpoint,
                            retried = retried.unwrap_or(0),
                            refused = refused.unwrap_or(0),
                            "remote-write works again"
                        );
                    }
                    return Sent::Done;
                }
                Err(SendError::Refused(cause)) => {
                    count(&stats.samples_failed, n as u64);
                    count(&stats.requests_refused, 1);
                    stats.pending_samples.fetch_sub(n as u64, Ordering::Relaxed);
                    stats.failing.store(true, Ordering::Relaxed);
                    if self.refused.failed() {
                        tracing::warn!(
                            %endpoint,
                            %cause,
                            samples = n,
                            "remote-write endpoint refused a batch; not sent again. Further refusals are counted in hostpulse_remote_write_requests_total{{result=\"refused\"}} until a batch is taken"
                        );
                    }
                    return Sent::Done;
                }
                Err(SendError::Retry(cause)) => cause,
            };
            stats.failing.store(true, Ordering::Relaxed);
            let Some(shutdown) = retry_until else {
                count(&stats.samples_failed, n as u64);
                stats.pending_samples.fetch_sub(n as u64, Ordering::Relaxed);
                tracing::warn!(%endpoint, %cause, samples = n, "remote-write: a batch could not be sent at shutdown");
                return Sent::Done;
            };
            count(&stats.requests_retried, 1);
            if self.unreachable.failed() {
                tracing::warn!(
                    %endpoint,
                    %cause,
                    "remote-write failed; retrying with backoff (the queue holds new updates meanwhile). Further failures are counted in hostpulse_remote_write_requests_total{{result=\"retried\"}} until it works again"
                );
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Sent::Interrupted,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests;
