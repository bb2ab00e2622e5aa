//! Forgetting departed hosts after `hub.forget_after`.
//!
//! A host is departed when its agent's stream ended here, or (cluster mode)
//! when no peer announces it online any more. Once it has been departed for
//! `forget_after`, and none of its `host.<h>.*` topics has had an update for
//! as long, the hub drops those topics with their history and every
//! connection's throttle state for them, the registry drops its record, and
//! `hosts` announces it `forgotten`, and its alert state goes (what fires
//! for it resolves). A host that comes back later starts
//! fresh and is announced `online`. A host whose agent stays attached is
//! never forgotten, however quiet it is.
//!
//! Every aggregator of a cluster applies the same rule to the hosts it
//! learns from its peers' announcements, so each forgets (and announces) a
//! peer's departed host within a presence interval of the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::hub::{Command, HubHandle};
use crate::ingest::registry::Registry;
use crate::update::{HostEvent, hosts_update};

/// How often departed hosts are looked for: a quarter of `forget_after`,
/// between 50 ms and a minute.
pub fn sweep_interval(forget_after: Duration) -> Duration {
    (forget_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
}

/// Sweeps every [`sweep_interval`] until `shutdown`.
pub async fn run(
    hub: HubHandle,
    registry: Arc<Registry>,
    alerts: Arc<crate::alert::eval::Engine>,
    forget_after: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(sweep_interval(forget_after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                match sweep(&hub, &registry, forget_after).await {
                    None => break,
                    Some(events) => {
                        for e in &events {
                            alerts.forget(&e.host);
                        }
                    }
                }
            }
        }
    }
}

/// Forgets the hosts departed for `forget_after` and publishes their
/// `forgotten` events, which it returns; `None` if the hub has stopped.
pub async fn sweep(
    hub: &HubHandle,
    registry: &Registry,
    forget_after: Duration,
) -> Option<Vec<HostEvent>> {
    // Nothing can have departed that long before the clock's origin.
    let Some(cutoff) = Instant::now().checked_sub(forget_after) else {
        return Some(Vec::new());
    };
    let keep = registry.retained_hosts(cutoff);
    let dropped = hub
        .ask(|reply| Command::Forget {
            keep,
            idle: forget_after,
            reply,
        })
        .await?;
    let mut events = registry.forget(cutoff);
    // Hosts known here only by their topics (a peer's, never announced to
    // this aggregator) are announced too, unless they came back meanwhile.
    let known: std::collections::HashSet<String> =
        registry.hosts().into_iter().map(|v| v.host).collect();
    for host in dropped {
        if !known.contains(&host) && !events.iter().any(|e| e.host == host) {
            events.push(HostEvent::forgotten(&host));
        }
    }
    if !events.is_empty() {
        for e in &events {
            tracing::info!(host = %e.host, forget_after_ms = forget_after.as_millis() as u64, "departed host forgotten");
        }
        let updates = events.iter().map(hosts_update).collect();
        hub.send(Command::PublishNext(updates)).await.ok()?;
    }
    Some(events)
}
