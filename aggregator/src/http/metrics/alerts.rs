//! Alerting's families for `/metrics`: alerts firing by rule and severity,
//! deliveries by receiver and result, and transitions dropped at the queue
//! to the alert task.

use std::sync::atomic::Ordering;

use super::{Family, Scrape};
use crate::http::AppState;

/// `hostpulse_alerts_firing{rule,severity}` (every rule, 0 when quiet),
/// `hostpulse_alert_notifications_total{receiver,result}` (delivery
/// attempts: `sent`, `failed`; notifications given up: `dropped`) and
/// `hostpulse_alert_events_dropped_total`.
pub(super) fn extend(state: &AppState, scrape: &mut Scrape) {
    let alerts = &state.alerts;
    scrape.families.push(Family {
        name: "hostpulse_alerts_firing",
        help: "Alerts firing now, by rule and severity.",
        unit: None,
        counter: false,
        series: alerts
            .board
            .firing_counts()
            .into_iter()
            .map(|(rule, severity, n)| (vec![("rule", rule), ("severity", severity)], n as f64))
            .collect(),
    });
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    scrape.families.push(Family {
        name: "hostpulse_alert_notifications",
        help: "Alert deliveries by receiver: attempts sent and failed, notifications dropped.",
        unit: None,
        counter: true,
        series: alerts
            .receivers
            .iter()
            .flat_map(|r| {
                [
                    ("sent", load(&r.sent)),
                    ("failed", load(&r.failed)),
                    ("dropped", load(&r.dropped)),
                ]
                .map(|(result, v)| {
                    (
                        vec![("receiver", r.name.clone()), ("result", result.to_string())],
                        v,
                    )
                })
            })
            .collect(),
    });
    scrape.counters.push((
        "hostpulse_alert_events_dropped",
        "Alert transitions dropped because the alert task's queue was full.",
        alerts.engine.dropped.load(Ordering::Relaxed),
    ));
}
