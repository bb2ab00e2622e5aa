//! `GET /metrics`: Prometheus text exposition (via `prometheus-client`).
//!
//! The aggregator's own health always, including updates published and
//! delivered per topic kind; with `[metrics] host_gauges = true`, also the
//! latest value of every host metric labelled by host (`metrics/host.rs`),
//! so an existing Prometheus can scrape the whole fleet through one target.
//! Values are read at scrape time from the counters the aggregator keeps
//! anyway; nothing is counted twice. With `[storage]` on, the store's own
//! families are added (`metrics/store.rs`); with `[export.remote_write]`
//! on, the exporter's (`metrics/remote_write.rs`); in cluster mode, the
//! broker link's (`metrics/cluster.rs`); alerting's always
//! (`metrics/alerts.rs`).

mod alerts;
mod cluster;
mod host;
mod remote_write;
mod store;

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use super::AppState;

/// `[metrics]` in `aggregator.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Also expose the latest value of every host metric, labelled by host.
    pub host_gauges: bool,
}

#[derive(Debug)]
struct Scrape {
    counters: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, Option<Unit>, f64)>,
    /// Labelled families: per-kind counters and host metrics.
    families: Vec<Family>,
}

/// One metric family with labelled series.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    /// Appended to the name (`bytes`, `seconds`, ...).
    unit: Option<&'static str>,
    /// A counter (`_total`) rather than a gauge.
    counter: bool,
    /// (labels, value) per series.
    series: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// A label value as the text format needs it: `\`, `"` and newlines escaped
/// (`prometheus-client` writes label values as given). Interface names,
/// mount points and sensor labels come from agents and may hold any of them.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in &self.counters {
            let c = ConstCounter::new(*value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, unit, value) in &self.gauges {
            let g = ConstGauge::new(*value);
            g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        for f in &self.families {
            if f.series.is_empty() {
                continue;
            }
            let kind = if f.counter {
                ConstCounter::new(0u64).metric_type()
            } else {
                ConstGauge::new(0.0f64).metric_type()
            };
            let unit = f.unit.map(|u| Unit::Other(u.into()));
            let mut family = encoder.encode_descriptor(f.name, f.help, unit.as_ref(), kind)?;
            if let [(labels, value)] = f.series.as_slice()
                && labels.is_empty()
            {
                // One series without labels: written as `name value`, not
                // `name{} value`.
                encode_value(f.counter, *value, family)?;
                continue;
            }
            for (labels, value) in &f.series {
                let labels: Vec<(&str, std::borrow::Cow<'_, str>)> =
                    labels.iter().map(|(k, v)| (*k, escape_label(v))).collect();
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
                encode_value(f.counter, *value, family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One series' value: a counter as a whole number unless it counts in
/// fractions (seconds), a gauge as it is.
fn encode_value(
    counter: bool,
    value: f64,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    if !counter {
        ConstGauge::new(value).encode(encoder)
    } else if value.fract() != 0.0 {
        ConstCounter::new(value).encode(encoder)
    } else {
        ConstCounter::new(value as u64).encode(encoder)
    }
}

/// The handler.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let hub = &state.ws.hub.stats;
    let out = &state.ws.outbox_stats;
    let ingest = &state.registry.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let hosts = state.registry.hosts();
    let mut scrape = Scrape {
        counters: vec![
            (
                "hostpulse_ingest_batches",
                "Batches published from agents.",
                load(&ingest.batches),
            ),
            (
                "hostpulse_ingest_samples",
                "Samples published from agents.",
                load(&ingest.samples),
            ),
            (
                "hostpulse_ingest_duplicate_batches",
                "Batches already held, acknowledged without publishing.",
                load(&ingest.duplicates),
            ),
            (
                "hostpulse_ingest_refused_streams",
                "Agent streams ended with an error (bad batch, bad Hello, limits).",
                load(&ingest.refused),
            ),
            (
                "hostpulse_updates_published",
                "Topic updates accepted into the hub.",
                load(&hub.updates_published),
            ),
            (
                "hostpulse_updates_duplicate",
                "Topic updates dropped as already held.",
                load(&hub.updates_duplicate),
            ),
            (
                "hostpulse_updates_rate_limited",
                "Topic updates not published because of a topic rate limit.",
                load(&hub.rate_limited),
            ),
            (
                "hostpulse_hosts_forgotten",
                "Departed hosts forgotten with their topics (hub.forget_after).",
                load(&hub.hosts_forgotten),
            ),
            (
                "hostpulse_history_trimmed",
                "Updates dropped from history by hub.history_max_bytes (not by hub.history_len), from the topics holding the most.",
                load(&hub.history.trimmed),
            ),
            (
                "hostpulse_deliveries",
                "Updates queued to WebSocket connections.",
                load(&hub.deliveries),
            ),
            (
                "hostpulse_deliveries_held",
                "Updates held back for a connection (throttled or conflated).",
                load(&hub.held),
            ),
            (
                "hostpulse_deliveries_dropped",
                "Updates refused by a connection being closed.",
                load(&hub.overflow_drops),
            ),
            (
                "hostpulse_ws_lag_episodes",
                "Times a WebSocket client started lagging.",
                load(&out.lag_episodes),
            ),
            (
                "hostpulse_ws_conflated",
                "Updates replaced by a newer one for a lagging client.",
                load(&out.conflated),
            ),
            (
                "hostpulse_ws_lag_disconnects",
                "Clients closed with 1013 after lagging past the grace period.",
                load(&out.lag_disconnects),
            ),
            (
                "hostpulse_ws_batch_frames_built",
                "Batch frames built by a WebSocket connection (once per subscription group when shared).",
                load(&state.ws.shared_batches.built),
            ),
            (
                "hostpulse_ws_batch_frames_shared",
                "Batch frames a WebSocket connection wrote from the batch its subscription group built once.",
                load(&state.ws.shared_batches.shared),
            ),
            (
                "hostpulse_ws_refused_connections",
                "WebSocket connections refused at the connection limits.",
                load(&state.ws.refused),
            ),
        ],
        gauges: vec![
            (
                "hostpulse_agents_connected",
                "Agents with a live stream.",
                None,
                state.registry.connected() as f64,
            ),
            (
                "hostpulse_hosts_online",
                "Hosts announced online.",
                None,
                hosts.iter().filter(|h| h.online).count() as f64,
            ),
            (
                "hostpulse_ws_connections",
                "Open WebSocket connections.",
                None,
                load(&state.ws.connections) as f64,
            ),
            (
                "hostpulse_subscriptions",
                "Live subscriptions.",
                None,
                load(&hub.subscriptions) as f64,
            ),
            (
                "hostpulse_topics",
                "Topics known.",
                None,
                load(&hub.topics) as f64,
            ),
            (
                "hostpulse_history",
                "Memory held by the history kept for resume and replay (compressed blocks, and the newest updates in every form made of them).",
                Some(Unit::Bytes),
                hub.history.bytes() as f64,
            ),
            (
                "hostpulse_history_updates",
                "Updates held in history, over all topics.",
                None,
                hub.history.entries() as f64,
            ),
            (
                "hostpulse_ws_peak_queue",
                "Largest outgoing queue seen on a connection.",
                Some(Unit::Bytes),
                load(&out.peak_queue_bytes) as f64,
            ),
        ],
        families: per_kind(hub),
    };
    scrape.families.push(Family {
        name: "hostpulse_ingest_slow_down_acks",
        help: "Acks that asked the agent to sample less often (ingest.overload_interval_ms), by what was behind: the hub's queue (ingest.overload_queue_fraction full) or the store's (storage.overload_queue_fraction). An ack sent while both were counts under each.",
        unit: None,
        counter: true,
        series: vec![
            (vec![("cause", "hub".to_string())], load(&ingest.slow_down_hub) as f64),
            (vec![("cause", "store".to_string())], load(&ingest.slow_down_store) as f64),
        ],
    });
    alerts::extend(&state, &mut scrape);
    if let Some(c) = &state.cluster {
        cluster::extend(&mut scrape, c, hub);
    }
    if let Some(store) = &state.store {
        store::extend(&mut scrape, store);
    }
    if let Some(rw) = &state.remote_write {
        remote_write::extend(&mut scrape, rw, hub);
    }
    if state.metrics.host_gauges {
        scrape
            .families
            .extend(host::families(&state.ws.hub.latest("host.").await, &hosts));
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::error!(cause = %e, "encoding /metrics failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        classic_text(&body),
    )
        .into_response()
}

/// Updates published into the hub and delivered to connections, by topic
/// kind: the breakdown of `hostpulse_updates_published_total` and
/// `hostpulse_deliveries_total`, every kind listed (zero included) so
/// `rate()` works from the first scrape.
fn per_kind(hub: &crate::hub::HubStats) -> Vec<Family> {
    let by_kind = |counts: &[std::sync::atomic::AtomicU64]| {
        crate::topic::KINDS
            .iter()
            .zip(counts)
            .map(|(kind, n)| {
                (
                    vec![("kind", (*kind).to_string())],
                    n.load(Ordering::Relaxed) as f64,
                )
            })
            .collect()
    };
    vec![
        Family {
            name: "hostpulse_topic_updates_published",
            help: "Topic updates accepted into the hub, by topic kind.",
            unit: None,
            counter: true,
            series: by_kind(&hub.published_by_kind),
        },
        Family {
            name: "hostpulse_topic_deliveries",
            help: "Updates queued to WebSocket connections, by topic kind.",
            unit: None,
            counter: true,
            series: by_kind(&hub.deliveries_by_kind),
        },
    ]
}

/// OpenMetrics text (what `prometheus-client` writes) to the classic
/// Prometheus text format 0.0.4, which every scraper and `promtool check
/// metrics` read: a counter family is named with its `_total` suffix in
/// HELP and TYPE, and the `# UNIT` and `# EOF` lines go.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("/mnt/plain"), "/mnt/plain");
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn openmetrics_becomes_classic_text() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                  # HELP b_size Size.\n# TYPE b_size gauge\n# UNIT b_size bytes\nb_size 2.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP b_size Size.\n# TYPE b_size gauge\nb_size 2.0\n"
        );
    }
}
