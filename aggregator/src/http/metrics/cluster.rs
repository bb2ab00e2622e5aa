//! Cluster mode's families for `/metrics`: the NATS link, updates
//! published to and taken from peers, gaps and catch-ups, presence
//! announcements, and publish failures by kind.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::registry::Unit;

use super::{Family, Scrape};
use crate::cluster::ClusterStats;
use crate::hub::HubStats;

/// Adds the broker link's counters and gauges to `scrape`.
pub(super) fn extend(scrape: &mut Scrape, c: &ClusterStats, hub: &HubStats) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    scrape.counters.extend([
        (
            "hostpulse_cluster_nats_reconnects",
            "Reconnections to NATS after the connection was lost.",
            load(&c.reconnects),
        ),
        (
            "hostpulse_cluster_published",
            "Host updates published to NATS.",
            load(&c.published),
        ),
        (
            "hostpulse_cluster_received",
            "Host updates from other aggregators taken from NATS.",
            load(&c.received),
        ),
        (
            "hostpulse_cluster_dropped",
            "Updates lost on the broker path (publish failures, catch-up buffer overflow, malformed messages, slow-consumer events).",
            load(&c.dropped),
        ),
        (
            "hostpulse_cluster_export_dropped",
            "Host updates not published because the queue towards NATS was full.",
            load(&hub.export_dropped),
        ),
        (
            "hostpulse_cluster_gaps",
            "Updates of other aggregators found missing from the live stream by their numbering (each gap is then filled by a catch-up).",
            load(&c.gaps),
        ),
        (
            "hostpulse_cluster_caught_up",
            "Updates recovered from other aggregators after (re)connecting.",
            load(&c.caught_up),
        ),
        (
            "hostpulse_cluster_presence_announcements",
            "Presence announcements made (each one or more chunks).",
            load(&c.presence_announcements),
        ),
        (
            "hostpulse_cluster_presence_chunks",
            "Presence chunks published (an announcement larger than the broker's max_payload takes several).",
            load(&c.presence_chunks),
        ),
        (
            "hostpulse_cluster_presence_incomplete",
            "Peers' presence announcements dropped with a chunk missing (their last complete one stays in force).",
            load(&c.presence_incomplete),
        ),
        (
            "hostpulse_cluster_host_conflicts",
            "Host names found attached here and, by an agent with another id, on a peer.",
            load(&c.host_conflicts),
        ),
        (
            "hostpulse_cluster_catchup_answers",
            "Catch-up answers sent to peers in full.",
            load(&c.answers_sent),
        ),
        (
            "hostpulse_cluster_catchup_answers_replaced",
            "Catch-up answers stopped because the peer asked again.",
            load(&c.answers_replaced),
        ),
    ]);
    scrape.families.push(Family {
        name: "hostpulse_cluster_publish_errors",
        help: "Publishes to NATS that failed, by kind (update, presence, catchup_request, catchup_answer).",
        unit: None,
        counter: true,
        series: crate::cluster::failures::PublishKind::ALL
            .iter()
            .map(|k| {
                (
                    vec![("kind", k.label().to_string())],
                    c.publish_errors.count(*k) as f64,
                )
            })
            .collect(),
    });
    scrape.gauges.extend([
        (
            "hostpulse_cluster_nats_connected",
            "1 while connected to NATS.",
            None,
            if c.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        ),
        (
            "hostpulse_cluster_peers",
            "Other aggregators heard from within the peer timeout.",
            None,
            load(&c.peers) as f64,
        ),
        (
            "hostpulse_cluster_presence",
            "Size of this node's last presence announcement, all chunks together.",
            Some(Unit::Bytes),
            load(&c.presence_bytes) as f64,
        ),
    ]);
}
