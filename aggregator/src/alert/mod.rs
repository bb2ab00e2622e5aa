//! Alerting: rules evaluated on the live stream, delivered to Alertmanager
//! and webhooks, and shown on the `alerts` topic and `GET /api/v1/alerts`.
//!
//! - [`rules`]: the rules file (`[alerts] rules`), checked into [`rules::Rule`]s.
//! - [`expr`]: the small expression language of conditions.
//! - [`template`]: summary and description placeholders.
//! - [`eval`]: per host, rule and list entry, inactive → pending → firing
//!   → resolved, driven by ingest as each sample arrives (no polling), and
//!   the one timer of `absent` rules.
//! - [`task`]: the board of firing alerts and history, the `alerts` topic,
//!   resending.
//! - [`deliver`]: Alertmanager and webhook senders, bounded and retried.
//!
//! Only agents attached to this aggregator are evaluated here: in a cluster
//! each host's rules run on the aggregator its agent streams to, and a host
//! that moved to another aggregator is dropped here (its firing alerts
//! resolved on this node, but left active in Alertmanager for the new one)
//! rather than reported absent. A host forgotten after
//! `hub.forget_after` has its state dropped and its alerts resolved.

pub mod deliver;
pub mod eval;
pub mod expr;
pub mod rules;
pub mod task;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::HubHandle;
use deliver::{Http, ReceiverStats, Retry};
use eval::Engine;
use task::{Board, Outlet};

/// Labels hostpulse sets on every alert; a rule may not set them.
pub const RESERVED_LABELS: [&str; 3] = ["alertname", "severity", "host"];

/// `[alerts]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The rules file (TOML, see `deploy/alerts.toml`); relative to the
    /// aggregator's config file. None: no alerting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<PathBuf>,
    /// Alertmanager base URLs (`http://host:9093`); every alert goes to each
    /// (an HA pair deduplicates).
    pub alertmanager_urls: Vec<String>,
    /// Generic JSON webhooks: each transition is POSTed to each.
    pub webhook_urls: Vec<String>,
    /// How often firing alerts are sent to Alertmanager again, in seconds.
    pub resend_interval_secs: u64,
    /// One delivery attempt's deadline, in milliseconds.
    pub timeout_ms: u64,
    /// The first retry wait after a failed delivery, in milliseconds
    /// (doubling up to `retry_max_ms`).
    pub retry_min_ms: u64,
    /// The longest retry wait, in milliseconds.
    pub retry_max_ms: u64,
    /// Attempts per webhook notification before it is given up.
    pub webhook_max_attempts: u32,
    /// Notifications queued per receiver; more are dropped and counted.
    pub queue: usize,
    /// Transitions kept for `GET /api/v1/alerts`.
    pub history_len: usize,
    /// This aggregator's URL as operators reach it, for `generatorURL`
    /// (default: `http://<http.listen>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            rules: None,
            alertmanager_urls: Vec::new(),
            webhook_urls: Vec::new(),
            resend_interval_secs: 60,
            timeout_ms: 5000,
            retry_min_ms: 500,
            retry_max_ms: 30_000,
            webhook_max_attempts: 5,
            queue: 1024,
            history_len: 200,
            external_url: None,
        }
    }
}

impl AlertsConfig {
    /// The first value that cannot work: (key, reason). The rules file is
    /// checked by [`rules::load`].
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = hostpulse_common::config::first_zero(&[
            ("alerts.resend_interval_secs", self.resend_interval_secs),
            ("alerts.timeout_ms", self.timeout_ms),
            ("alerts.retry_min_ms", self.retry_min_ms),
            ("alerts.retry_max_ms", self.retry_max_ms),
            (
                "alerts.webhook_max_attempts",
                u64::from(self.webhook_max_attempts),
            ),
            ("alerts.queue", self.queue as u64),
            ("alerts.history_len", self.history_len as u64),
        ]) {
            return Some(p);
        }
        if self.retry_max_ms < self.retry_min_ms {
            return Some((
                "alerts.retry_max_ms",
                "must be at least retry_min_ms".into(),
            ));
        }
        for (key, urls) in [
            ("alerts.alertmanager_urls", &self.alertmanager_urls),
            ("alerts.webhook_urls", &self.webhook_urls),
        ] {
            for u in urls {
                match u.parse::<hyper::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
                    Ok(uri) if uri.scheme_str() == Some("https") => {
                        return Some((
                            key,
                            format!(
                                "{u:?}: https is not supported; use http:// (a local TLS proxy for a remote receiver)"
                            ),
                        ));
                    }
                    _ => return Some((key, format!("{u:?} is not an http:// URL"))),
                }
            }
        }
        None
    }
}

/// Alerting as it runs: the evaluator ingest feeds, and what the HTTP side
/// reads.
#[derive(Debug, Clone)]
pub struct Alerting {
    /// The evaluator.
    pub engine: Arc<Engine>,
    /// What fires, and history.
    pub board: Arc<Board>,
    /// Every receiver's counters.
    pub receivers: Vec<Arc<ReceiverStats>>,
}

/// Starts the alert task and one sender per receiver.
pub fn start(
    config: &AlertsConfig,
    rules: Vec<rules::Rule>,
    hub: HubHandle,
    elsewhere: task::Elsewhere,
    http_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Alerting {
    let board = Arc::new(Board::new(
        rules
            .iter()
            .map(|r| (r.name.to_string(), r.config.severity.clone()))
            .collect(),
        config.history_len,
    ));
    let (events_tx, events) = mpsc::channel(config.queue);
    let engine = Arc::new(Engine::new(rules.into(), events_tx));
    let http = Http::default();
    let retry = Retry {
        min: Duration::from_millis(config.retry_min_ms),
        max: Duration::from_millis(config.retry_max_ms),
        timeout: Duration::from_millis(config.timeout_ms),
        attempts: config.webhook_max_attempts,
    };
    let mut receivers = Vec::new();
    let mut alertmanagers = Vec::new();
    for url in &config.alertmanager_urls {
        let (out, rx) = outlet("alertmanager", url, config.queue, &mut receivers);
        let stats = out.stats.clone();
        tasks.spawn(deliver::alertmanager(
            url.clone(),
            rx,
            stats,
            http.clone(),
            retry.clone(),
            shutdown.clone(),
        ));
        alertmanagers.push(out);
    }
    let mut webhooks = Vec::new();
    for url in &config.webhook_urls {
        let (out, rx) = outlet("webhook", url, config.queue, &mut receivers);
        let stats = out.stats.clone();
        tasks.spawn(deliver::webhook(
            url.clone(),
            rx,
            stats,
            http.clone(),
            retry.clone(),
            shutdown.clone(),
        ));
        webhooks.push(out);
    }
    let external = config
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    tasks.spawn(task::run(
        task::Settings {
            engine: engine.clone(),
            elsewhere,
            board: board.clone(),
            hub,
            alertmanagers,
            webhooks,
            resend: Duration::from_secs(config.resend_interval_secs),
            generator_url: format!("{}/api/v1/alerts", external.trim_end_matches('/')),
        },
        events,
        shutdown,
    ));
    Alerting {
        engine,
        board,
        receivers,
    }
}

/// A receiver's bounded queue and counters (listed in `receivers` for
/// `/metrics`); its sender task takes the other end.
fn outlet<T>(
    kind: &'static str,
    url: &str,
    queue: usize,
    receivers: &mut Vec<Arc<ReceiverStats>>,
) -> (Outlet<T>, mpsc::Receiver<T>) {
    let stats = Arc::new(ReceiverStats::new(kind, url));
    let (tx, rx) = mpsc::channel(queue);
    receivers.push(stats.clone());
    (Outlet { queue: tx, stats }, rx)
}
