//! The alert record: what a firing or resolved alert carries as published
//! and delivered, and how one is built from a rule and its host's state
//! (labels, annotations filled in, top processes) or resolved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use hostpulse_proto::Process;
use serde::Serialize;

use crate::alert::rules::{Kind, Rule};
use crate::alert::template::Context;
use crate::update::rfc3339;

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its condition holds.
    Firing,
    /// It held and no longer does.
    Resolved,
}

/// A firing or resolved alert, as published and delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: Status,
    /// The rule's name.
    pub rule: Arc<str>,
    /// `threshold`, `absent` or `predict`.
    pub kind: &'static str,
    /// The rule's severity.
    pub severity: String,
    /// The host (topic segment).
    pub host: String,
    /// The list entry of a `[*]` rule (mount point, sensor, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The value that fired it (`absent`: seconds of silence; `predict`:
    /// the value the line reaches at the horizon), or the value that
    /// resolved it.
    pub value: f64,
    /// The threshold of the condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The rule's window in seconds: `for`, `after` or `window`.
    pub window_secs: f64,
    /// When it started firing (RFC 3339).
    pub starts_at: String,
    /// When it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Labels: `alertname`, `severity`, `host`, the entry's label, the
    /// rule's labels.
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`, filled in.
    pub annotations: BTreeMap<String, String>,
    /// The host's top processes by CPU when it fired.
    pub top_cpu: Vec<Process>,
    /// The host's top processes by memory when it fired.
    pub top_memory: Vec<Process>,
    /// Resolved here only because its host now streams to another
    /// aggregator of the cluster, which evaluates it from now on: not sent
    /// to Alertmanager, where the alert stays (same labels) for that
    /// aggregator to carry on or to let lapse at its `endsAt`.
    #[serde(skip)]
    pub moved: bool,
}

impl Alert {
    /// Identifies the alert across its transitions.
    pub fn key(&self) -> (Arc<str>, String, Option<String>) {
        (self.rule.clone(), self.host.clone(), self.entry.clone())
    }
}

/// What an alert copies from its host's state.
pub(super) struct Seen<'a> {
    pub(super) labels: &'a BTreeMap<String, String>,
    pub(super) top_cpu: &'a [Process],
    pub(super) top_memory: &'a [Process],
}

pub(super) fn build(
    rule: &Rule,
    host: &str,
    state: Seen<'_>,
    entry: Option<&str>,
    value: f64,
    starts: SystemTime,
) -> Alert {
    let threshold = rule.condition.as_ref().map(|c| c.threshold);
    let window = match rule.kind {
        Kind::Threshold => rule.hold,
        Kind::Absent => rule.after,
        Kind::Predict => rule.window,
    };
    let mut labels = state.labels.clone();
    labels.extend(rule.config.labels.clone());
    let ctx = Context {
        host,
        value,
        rule: &rule.name,
        severity: &rule.config.severity,
        entry,
        threshold,
        window: &humantime::format_duration(window).to_string(),
        labels: &labels,
    };
    let annotations = BTreeMap::from([
        ("summary".to_string(), rule.summary.render(&ctx)),
        ("description".to_string(), rule.description.render(&ctx)),
    ]);
    let mut alert_labels = rule.config.labels.clone();
    alert_labels.insert("alertname".into(), rule.name.to_string());
    alert_labels.insert("severity".into(), rule.config.severity.clone());
    alert_labels.insert("host".into(), host.into());
    if let (Some(e), Some(key)) = (
        entry,
        rule.condition.as_ref().and_then(|c| c.expr.each_key()),
    ) {
        alert_labels.insert(key.into(), e.into());
    }
    Alert {
        status: Status::Firing,
        rule: rule.name.clone(),
        kind: rule.kind.name(),
        severity: rule.config.severity.clone(),
        host: host.into(),
        entry: entry.map(Into::into),
        value,
        threshold,
        window_secs: window.as_secs_f64(),
        starts_at: rfc3339(starts),
        ends_at: None,
        labels: alert_labels,
        annotations,
        top_cpu: state.top_cpu.to_vec(),
        top_memory: state.top_memory.to_vec(),
        moved: false,
    }
}

pub(super) fn resolve(mut alert: Alert, value: f64, at: SystemTime) -> Alert {
    alert.status = Status::Resolved;
    alert.value = value;
    alert.ends_at = Some(rfc3339(at));
    alert
}
