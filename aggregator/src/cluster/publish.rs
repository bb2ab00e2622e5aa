//! The publisher: host updates produced here, from the hub's export queue to
//! NATS, one subject per topic, in the order the hub accepted them.
//!
//! While NATS is away the client buffers a bounded number of messages (sent
//! in order once it reconnects) and then makes this task wait; the hub never
//! waits: its queue towards this task is bounded, and an update that does not
//! fit is not published (counted in `hostpulse_cluster_export_dropped_total`).
//! Peers recover such updates from this node's history only when they catch
//! up themselves, i.e. after their own reconnect. A publish the client
//! refuses (an update larger than the broker's `max_payload`) is counted in
//! `hostpulse_cluster_dropped_total` and, by kind `update`, in
//! `hostpulse_cluster_publish_errors_total` (logged once per episode).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::failures::PublishKind;
use super::{Shared, wire};
use crate::update::Update;

/// Publishes until shutdown (presence says goodbye separately).
pub(crate) async fn run(shared: Shared, mut queue: mpsc::Receiver<(u64, Arc<Update>)>) {
    loop {
        let (n, update) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            u = queue.recv() => match u { Some(u) => u, None => break },
        };
        let published = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = shared.client.publish_with_headers(
                shared.subjects.topic(&update.topic),
                wire::update_headers(&shared.node, update.seq, wire::Link { run: shared.run, n }),
                wire::payload(&update),
            ) => r,
        };
        match published {
            Ok(()) => {
                shared.stats.published.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .publish_errors
                    .succeeded(PublishKind::Update, &shared.node);
            }
            Err(e) => {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cause = %e, topic = %update.topic, bytes = update.json.len(), "publish to NATS failed");
                let cause = format!("{e} ({}: {} bytes)", update.topic, update.json.len());
                shared
                    .stats
                    .publish_errors
                    .failed(PublishKind::Update, &shared.node, &cause);
            }
        }
    }
}
