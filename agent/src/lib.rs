//! hostpulse agent: samples one host and streams the samples to an aggregator.
//!
//! # Layout
//! - [`config`]: `agent.toml` schema, defaults and validation.
//! - [`collect`]: the host collector (`sysinfo`, and `/proc/net/dev` for
//!   network counters where it exists), one file per metric family.
//! - [`spool`]: unacknowledged batches, bounded in bytes.
//! - [`limits`]: batch limits (ours, the aggregator's) and cutting to them.
//! - [`batcher`]: pending samples into batches within those limits, and
//!   splitting batches that exceed them.
//! - [`backoff`]: reconnect delays with jitter.
//! - [`link`]: one gRPC stream to an aggregator (`Hello` → `Welcome`).
//! - [`pipeline`]: batching, sending, acks and reconnects in one task.
//! - [`status`]: the live counters.
//!
//! [`Agent::run`] wires them: a sampler task takes a sample every interval on
//! the blocking pool and hands it to the pipeline over a bounded channel.

pub mod backoff;
pub mod batcher;
pub mod collect;
pub mod config;
pub mod limits;
pub mod link;
pub mod pipeline;
pub mod spool;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_proto::v1::Hello;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use status::AgentStatus;

use crate::backoff::Backoff;
use crate::collect::{Collector, now_ms, system_hostname};
use crate::link::LinkSettings;
use crate::pipeline::PipelineSettings;

/// Samples buffered between the sampler and the pipeline. The pipeline only
/// moves them into the spool, so this fills only if it is starved of CPU.
const SAMPLE_QUEUE: usize = 256;

/// A configured agent, ready to run.
pub struct Agent {
    config: AgentConfig,
    hostname: String,
    epoch_ms: u64,
    status: Arc<AgentStatus>,
}

impl Agent {
    /// Prepares an agent; the run epoch starts now.
    pub fn new(config: AgentConfig) -> Self {
        let hostname = if config.hostname.is_empty() {
            system_hostname()
        } else {
            config.hostname.clone()
        };
        Self {
            config,
            hostname,
            epoch_ms: now_ms(),
            status: Arc::default(),
        }
    }

    /// Live counters, shared with the running agent.
    pub fn status(&self) -> Arc<AgentStatus> {
        self.status.clone()
    }

    /// The host name this agent reports.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Samples and sends until `shutdown` fires, then drains (bounded) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), collect::CollectError> {
        let config = &self.config;
        let hello = Hello {
            agent_id: config.effective_agent_id(&self.hostname),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: config.labels.clone().into_iter().collect(),
            epoch: self.epoch_ms,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: config.interval_ms.min(u32::MAX as u64) as u32,
            // This process, among any others claiming the same agent id.
            instance: fastrand::u64(1..),
        };
        tracing::info!(
            agent_id = %hello.agent_id,
            hostname = %hello.hostname,
            epoch = self.epoch_ms,
            aggregators = ?config.aggregator.list(),
            interval_ms = config.interval_ms,
            "agent starting"
        );
        let settings = PipelineSettings {
            aggregators: config.aggregator.list(),
            hello,
            batch_max_samples: config.batch_max_samples,
            batch_max_bytes: config.batch_max_bytes,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            spool_max_bytes: config.spool_max_bytes,
            retain_acked_samples: config.retain_acked_samples,
            backoff: Backoff::new(
                Duration::from_millis(config.reconnect_min_ms),
                Duration::from_millis(config.reconnect_max_ms),
            ),
            link: LinkSettings {
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                keepalive_interval: Duration::from_millis(config.keepalive_interval_ms),
                keepalive_timeout: Duration::from_millis(config.keepalive_timeout_ms),
                ca_pem: config.ca_file.as_ref().and_then(|p| {
                    hostpulse_common::config::read_bounded(p, 1 << 20)
                        .inspect_err(|e| tracing::error!(cause = %e, path = %p.display(), "cannot read ca_file"))
                        .ok()
                }),
                tls_domain: config.tls_domain.clone(),
                token: config.resolve_token().unwrap_or_else(|e| {
                    tracing::error!(cause = %e, "token unavailable; connecting without one");
                    None
                }),
            },
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        };
        let collector = Collector::new(config.collect.clone(), self.epoch_ms)?;
        let (tx, rx) = mpsc::channel(SAMPLE_QUEUE);
        let sampler = tokio::spawn(sample_loop(
            collector,
            config.interval(),
            self.status.clone(),
            tx,
            shutdown.clone(),
        ));
        pipeline::run(settings, rx, self.status.clone(), shutdown).await;
        sampler.abort();
        Ok(())
    }
}

/// Takes a sample every `interval` until `shutdown`, off the async workers.
/// The configured interval stretches to what an overloaded aggregator asks
/// for (`AgentStatus::interval_hint_ms`), and comes back when it stops asking.
async fn sample_loop(
    mut collector: Collector,
    configured: Duration,
    status: Arc<AgentStatus>,
    tx: mpsc::Sender<hostpulse_proto::Sample>,
    shutdown: CancellationToken,
) {
    let ticker = |every: Duration| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A stalled machine should not cause a burst of back-to-back samples.
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    };
    let mut interval = configured;
    let mut ticks = ticker(interval);
    status
        .interval_ms
        .store(interval.as_millis() as u64, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let wanted = configured.max(Duration::from_millis(
            status.interval_hint_ms.load(Ordering::Relaxed),
        ));
        if wanted != interval {
            interval = wanted;
            ticks = ticker(interval);
            status
                .interval_ms
                .store(interval.as_millis() as u64, Ordering::Relaxed);
        }
        let taken = tokio::task::spawn_blocking(move || {
            let sample = collector.sample();
            (collector, sample)
        })
        .await;
        let Ok((c, sample)) = taken else { break };
        collector = c;
        if tx.send(sample).await.is_err() {
            break;
        }
    }
}

/// Takes one sample (after one priming interval, so CPU figures are real).
pub fn sample_once(config: &AgentConfig) -> Result<hostpulse_proto::Sample, collect::CollectError> {
    let mut collector = Collector::new(config.collect.clone(), now_ms())?;
    std::thread::sleep(sysinfo_interval(config));
    Ok(collector.sample())
}

fn sysinfo_interval(config: &AgentConfig) -> Duration {
    config
        .interval()
        .clamp(Duration::from_millis(200), Duration::from_secs(1))
}
