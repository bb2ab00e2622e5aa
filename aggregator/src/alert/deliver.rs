//! Delivery: alerts to Alertmanager (v2 API) and to generic JSON webhooks,
//! one task per receiver URL, each behind a bounded queue.
//!
//! * **Alertmanager**: `POST {url}/api/v2/alerts` with a JSON list of
//!   `{labels, annotations, startsAt, endsAt, generatorURL}`. Each URL of an
//!   HA pair gets every alert (Alertmanager deduplicates between its peers).
//!   A firing alert carries `endsAt` a few resend intervals ahead, and is
//!   sent again every `resend_interval` while it fires (as Prometheus does),
//!   so Alertmanager keeps it active and forgets it if hostpulse goes away;
//!   a resolved one carries `endsAt` = when it resolved. What could not be
//!   sent is kept (newest state per alert, at most [`MAX_PENDING`]) and
//!   retried with exponential backoff until it goes through.
//! * **Webhook**: `POST {url}` of `{"version":"1","status":..,"alert":{..}}`
//!   per transition, retried with exponential backoff up to
//!   `webhook_max_attempts`, then given up (counted `dropped`).
//!
//! Every attempt is counted per receiver (`sent`, `failed`, `dropped`) for
//! `hostpulse_alert_notifications_total{receiver,result}`; failures are
//! logged once per episode: the first with its cause, then once when the
//! receiver works again, with how many attempts failed meanwhile.
//!
//! The HTTP client is hyper-util's, already in the build through tonic
//! (plain `http://`; put a local proxy in front of a TLS-only receiver).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::eval::{Alert, Status};
use crate::update::rfc3339;

/// Most alerts an Alertmanager sender holds unsent.
pub const MAX_PENDING: usize = 10_000;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or sending failed.
    #[error("{0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    /// The request could not be built.
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The receiver answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer.
        body: String,
    },
}

/// Counters and episode state of one receiver.
#[derive(Debug)]
pub struct ReceiverStats {
    /// The `receiver` label: `alertmanager <url>` or `webhook <url>`,
    /// without credentials.
    pub name: String,
    /// Successful attempts.
    pub sent: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Notifications given up (queue full, attempts exhausted).
    pub dropped: AtomicU64,
    failing: AtomicBool,
    episode_start: AtomicU64,
}

impl ReceiverStats {
    /// Counters for the receiver at `url`.
    pub fn new(kind: &str, url: &str) -> Self {
        Self {
            name: format!("{kind} {}", without_credentials(url)),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            episode_start: AtomicU64::new(0),
        }
    }

    fn record(&self, r: &Result<(), DeliveryError>) {
        match r {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::AcqRel) {
                    let failed = self.failed.load(Ordering::Relaxed)
                        - self.episode_start.load(Ordering::Relaxed);
                    tracing::info!(receiver = %self.name, failed, "alert receiver works again");
                }
            }
            Err(e) => {
                let before = self.failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::AcqRel) {
                    self.episode_start.store(before, Ordering::Relaxed);
                    tracing::warn!(receiver = %self.name, cause = %e, "sending alerts failed; retrying, further failures are counted in hostpulse_alert_notifications_total until it works again");
                }
            }
        }
    }

    /// Counts a notification given up.
    pub fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// `http://user:pass@host/` → `http://host/`.
pub fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// How senders retry.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The first wait after a failure.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
    /// One attempt's deadline.
    pub timeout: Duration,
    /// Webhook attempts per notification.
    pub attempts: u32,
}

/// The shared HTTP client.
#[derive(Clone, Debug)]
pub struct Http(Client<HttpConnector, Full<Bytes>>);

impl Default for Http {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl Http {
    /// POSTs JSON `body` to `url`; any 2xx is success.
    pub async fn post(
        &self,
        url: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("hostpulse-aggregator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))?;
        let answer = async {
            let response = self.0.request(request).await?;
            let status = response.status();
            // Read the answer, at most 64 KiB: the connection goes back to
            // the pool, and a receiver cannot make us buffer without end.
            let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body[..body.len().min(200)]).into(),
                })
            }
        };
        tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| DeliveryError::Timeout(timeout))?
    }
}

/// One alert in Alertmanager's v2 form.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    /// Identify the alert.
    pub labels: BTreeMap<String, String>,
    /// Describe it.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing.
    pub starts_at: String,
    /// When it ends (resolved) or expires unless sent again (firing).
    pub ends_at: String,
    /// Where it came from.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

fn processes(list: &[hostpulse_proto::Process], by_cpu: bool) -> String {
    list.iter()
        .map(|p| match by_cpu {
            true => format!("{} (pid {}) {:.1}%", p.name, p.pid, p.cpu_pct),
            false => format!("{} (pid {}) {} MiB", p.name, p.pid, p.memory_bytes >> 20),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl AmAlert {
    /// `alert` as Alertmanager takes it; a firing one valid for `valid`.
    pub fn from_alert(alert: &Alert, valid: Duration, generator_url: &str) -> Self {
        let mut annotations = alert.annotations.clone();
        annotations.retain(|_, v| !v.is_empty());
        annotations.insert("value".into(), super::template::number(alert.value));
        if !alert.top_cpu.is_empty() {
            annotations.insert("top_cpu".into(), processes(&alert.top_cpu, true));
        }
        if !alert.top_memory.is_empty() {
            annotations.insert("top_memory".into(), processes(&alert.top_memory, false));
        }
        Self {
            labels: alert.labels.clone(),
            annotations,
            starts_at: alert.starts_at.clone(),
            ends_at: match (alert.status, &alert.ends_at) {
                (Status::Resolved, Some(end)) => end.clone(),
                _ => rfc3339(SystemTime::now() + valid),
            },
            generator_url: generator_url.to_string(),
        }
    }

    fn fingerprint(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}\u{1}"))
            .collect()
    }
}

/// Sends to one Alertmanager until shutdown: what arrives is merged into
/// what is pending and sent at once, unless a retry is already waiting.
pub async fn alertmanager(
    url: String,
    mut queue: mpsc::Receiver<Vec<AmAlert>>,
    stats: Arc<ReceiverStats>,
    http: Http,
    retry: Retry,
    shutdown: CancellationToken,
) {
    let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
    let mut pending: HashMap<String, AmAlert> = HashMap::new();
    let mut backoff = retry.min;
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = queue.recv() => {
                let Some(batch) = batch else { break };
                for a in batch {
                    let key = a.fingerprint();
                    if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
                        stats.drop_one();
                        continue;
                    }
                    pending.insert(key, a);
                }
                if retry_at.is_some() {
                    continue;
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        if pending.is_empty() {
            retry_at = None;
            continue;
        }
        let list: Vec<&AmAlert> = pending.values().collect();
        let body = Bytes::from(serde_json::to_vec(&list).expect("alerts serialise"));
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = http.post(&endpoint, body, retry.timeout) => r,
        };
        stats.record(&r);
        match r {
            Ok(()) => {
                pending.clear();
                backoff = retry.min;
                retry_at = None;
            }
            Err(_) => {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(retry.max);
            }
        }
    }
}

/// Sends each transition to one webhook until shutdown.
pub async fn webhook(
    url: String,
    mut queue: mpsc::Receiver<Alert>,
    stats: Arc<ReceiverStats>,
    http: Http,
    retry: Retry,
    shutdown: CancellationToken,
) {
    loop {
        let alert = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = queue.recv() => match a { Some(a) => a, None => break },
        };
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "version": "1",
                "status": alert.status,
                "alert": alert,
            }))
            .expect("alerts serialise"),
        );
        let mut backoff = retry.min;
        let mut delivered = false;
        for attempt in 1..=retry.attempts.max(1) {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = http.post(&url, body.clone(), retry.timeout) => r,
            };
            stats.record(&r);
            if r.is_ok() {
                delivered = true;
                break;
            }
            if attempt < retry.attempts {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(retry.max);
            }
        }
        if !delivered {
            stats.drop_one();
            tracing::warn!(receiver = %stats.name, rule = %alert.rule, host = %alert.host, attempts = retry.attempts, "alert notification given up");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_name_a_receiver() {
        assert_eq!(
            without_credentials("http://u:p@am:9093/x"),
            "http://am:9093/x"
        );
        assert_eq!(
            without_credentials("http://am:9093/a@b"),
            "http://am:9093/a@b"
        );
    }
}
