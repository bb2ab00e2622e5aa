//! The publisher: host updates produced here, from the hub's export queue to
//! NATS, one subject per topic, in the order the hub accepted them.
//!
//! While NATS is away the client buffers a bounded number of messages and
//! then makes this task wait; the hub never does (its queue towards this
//! task is bounded and full means dropped, counted in
//! `hostpulse_hub_export_dropped` and reported by peers' catch-up instead).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{Shared, wire};
use crate::update::Update;

/// Publishes until shutdown, then announces nothing more (presence says
/// goodbye separately).
pub(crate) async fn run(shared: Shared, mut queue: mpsc::Receiver<Arc<Update>>) {
    loop {
        let update = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            u = queue.recv() => match u { Some(u) => u, None => break },
        };
        let published = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = shared.client.publish_with_headers(
                shared.subjects.topic(&update.topic),
                wire::update_headers(&shared.node, update.seq),
                wire::payload(&update),
            ) => r,
        };
        match published {
            Ok(()) => {
                shared.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cause = %e, topic = %update.topic, "publish to NATS failed");
            }
        }
    }
}
