//! The fleet scenarios' figures and detail lines.

use hdrhistogram::Histogram;

use super::observer::Latency;
use super::storm::{GroupRound, Round};
use crate::Figures;

/// The figures of storm round `name` (`connect`, `reconnect`, `heavy`):
/// its clients' accounts, and the observer's latency `lat` over it.
pub(super) fn round_figures(
    figures: &mut Figures,
    name: &str,
    round: &Round,
    names: &[&str],
    lat: Latency,
) {
    let sum = |f: fn(&GroupRound) -> f64| round.groups.iter().map(f).sum::<f64>();
    let max = |f: fn(&GroupRound) -> f64| round.groups.iter().map(f).fold(0.0, f64::max);
    let (asked, got) = (sum(|g| g.asked as f64), sum(|g| g.got as f64));
    // Figure names are static; these few per run are leaked.
    let key = |k: &str| -> &'static str { Box::leak(format!("{name}_{k}").into_boxed_str()) };
    figures.extend([
        (key("settle_s"), max(|g| g.settle_secs)),
        (key("history_s"), max(|g| g.history_secs)),
        (key("history_pct"), 100.0 * got / asked.max(1.0)),
        (
            key("min_got_per_client"),
            round
                .groups
                .iter()
                .map(|g| g.min_got as f64)
                .fold(f64::MAX, f64::min),
        ),
        (key("short_topics"), sum(|g| g.short_topics as f64)),
        (key("missing_front"), sum(|g| g.missing_front as f64)),
        (
            key("holes"),
            sum(|g| (g.asked - g.got - g.missing_front) as f64),
        ),
        (key("lagged"), sum(|g| g.lagged as f64)),
        (key("failed_clients"), sum(|g| g.failed as f64)),
        (key("not_live"), sum(|g| (g.clients - g.live) as f64)),
        (key("updates"), sum(|g| g.updates as f64)),
    ]);
    // What history held of what the fleet sent, as far as the clients
    // asked, per group (host pages ask far deeper than fleet views).
    // And how late their live updates were (sample time to receipt, and
    // to the aggregator's ingest): the storm clients' own view.
    let p99 = |h: &Option<Histogram<u64>>| {
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.value_at_quantile(0.99) as f64)
    };
    for (g, group) in round.groups.iter().zip(names) {
        figures.extend([
            (
                key(&format!("{group}_retained_pct")),
                100.0 * g.asked as f64 / g.asked_full.max(1) as f64,
            ),
            (key(&format!("{group}_live_p99_ms")), p99(&g.staleness)),
            (
                key(&format!("{group}_live_ingest_p99_ms")),
                p99(&g.to_ingest),
            ),
        ]);
    }
    push_latency(
        figures,
        [
            key("obs_p50_ms"),
            key("obs_p99_ms"),
            key("obs_max_ms"),
            key("obs_ingest_p99_ms"),
            key("obs_self_late_max_ms"),
        ],
        lat,
    );
}

/// p50, p99, max, p99 to ingest and the observer's own worst lateness.
pub(super) fn push_latency(figures: &mut Figures, keys: [&'static str; 5], l: Latency) {
    figures.extend([
        (keys[0], l.p50_ms),
        (keys[1], l.p99_ms),
        (keys[2], l.max_ms),
        (keys[3], l.ingest_p99_ms),
        (keys[4], l.late_max_ms),
    ]);
    if l.missing > 0 {
        eprintln!(
            "observer: {} of {} updates never arrived ({})",
            l.missing, l.updates, keys[1]
        );
    }
}

/// One round, group by group, for the detail line.
pub(super) fn describe(round: &Round, names: &[&str]) -> String {
    round
        .groups
        .iter()
        .zip(names)
        .map(|(g, name)| {
            let mut s = format!(
                "{name}: {}/{} live, {}/{} complete, {}/{} caught up, settle {:.2} s, \
                 history {:.2} s, points {}/{} ({:.3} %; {} if all kept), least per client \
                 {} of {}, short topics {} ({} points missing at the front), updates {}, \
                 lagged {}, errors {}, out of order {}, unlisted {}, malformed {}, failed {}",
                g.live,
                g.clients,
                g.complete,
                g.clients,
                g.caught_up,
                g.clients,
                g.settle_secs,
                g.history_secs,
                g.got,
                g.asked,
                100.0 * g.got as f64 / g.asked.max(1) as f64,
                g.asked_full,
                g.min_got,
                g.min_asked,
                g.short_topics,
                g.missing_front,
                g.updates,
                g.lagged,
                g.errors,
                g.disorder,
                g.unlisted,
                g.malformed,
                g.failed
            );
            let q = |h: &Option<Histogram<u64>>, p: f64| {
                h.as_ref().map_or(0, |h| h.value_at_quantile(p))
            };
            s.push_str(&format!(
                ", live updates {} (sample to receipt p50/p99/max {}/{}/{} ms, to ingest p99 {} ms)",
                g.staleness.as_ref().map_or(0, |h| h.len()),
                q(&g.staleness, 0.5),
                q(&g.staleness, 0.99),
                q(&g.staleness, 1.0),
                q(&g.to_ingest, 0.99)
            ));
            if !g.endings.is_empty() {
                s.push_str(&format!(" {:?}", g.endings));
            }
            if let Some(e) = &g.first_error {
                s.push_str(&format!(" (first error: {e})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}
