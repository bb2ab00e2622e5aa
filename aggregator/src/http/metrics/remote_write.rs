//! The remote-write exporter's families for `/metrics`: samples and
//! requests by result, updates dropped at its queue, the queue's depth and
//! whether delivery is failing now.

use std::sync::atomic::Ordering;

use super::{Family, Scrape};

/// The remote-write exporter's families (`[export.remote_write]`).
pub(super) fn extend(
    scrape: &mut Scrape,
    rw: &crate::export::remote_write::RemoteWriteStats,
    hub: &crate::hub::HubStats,
) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let by_result = |counts: &[(&str, u64)]| {
        counts
            .iter()
            .map(|(result, n)| (vec![("result", (*result).to_string())], *n as f64))
            .collect()
    };
    scrape.families.extend([
        Family {
            name: "hostpulse_remote_write_samples",
            help: "Samples sent by remote-write (sent), or refused by the endpoint or left unsent at shutdown (failed).",
            unit: None,
            counter: true,
            series: by_result(&[
                ("sent", load(&rw.samples_sent)),
                ("failed", load(&rw.samples_failed)),
            ]),
        },
        Family {
            name: "hostpulse_remote_write_requests",
            help: "Remote-write requests: taken (sent), refused by the endpoint and not sent again (refused), failed and tried again (retried).",
            unit: None,
            counter: true,
            series: by_result(&[
                ("sent", load(&rw.requests_sent)),
                ("refused", load(&rw.requests_refused)),
                ("retried", load(&rw.requests_retried)),
            ]),
        },
    ]);
    scrape.counters.push((
        "hostpulse_remote_write_updates_dropped",
        "Host updates not exported because the remote-write queue was full.",
        load(&hub.remote_write_dropped),
    ));
    scrape.gauges.extend([
        (
            "hostpulse_remote_write_queue",
            "Host updates waiting in the remote-write queue.",
            None,
            rw.queued() as f64,
        ),
        (
            "hostpulse_remote_write_pending_samples",
            "Samples taken from the queue and not yet delivered (the batch being sent or retried, and the next one).",
            None,
            load(&rw.pending_samples) as f64,
        ),
        (
            "hostpulse_remote_write_failing",
            "1 from a failed remote-write request to the next delivered one.",
            None,
            if rw.failing.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        ),
    ]);
}
