//! Presence across the cluster: which hosts are attached to which node.
//!
//! Each node announces the hosts attached to it on
//! `<prefix>._cluster.presence.<node>` every `presence_interval_ms` and as
//! soon as one attaches or leaves; a node shutting down says so. Announcements
//! from the others go into the registry, and each change of a host's state
//! (online or not, and on which node) becomes an event on this node's `hosts`
//! topic. A node not heard from for `peer_timeout_ms` has its hosts shown
//! offline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Shared, wire};
use crate::hub::Command;
use crate::ingest::registry::HostView;

/// The other nodes heard from, and when.
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<String, Instant>>>);

impl Peers {
    /// Nodes heard from within the timeout (the rest are swept).
    pub fn live(&self) -> usize {
        self.0.lock().expect("peers lock").len()
    }
}

/// Announces, listens and sweeps until shutdown; then says goodbye.
pub(crate) async fn run(shared: Shared, mut announcements: Subscriber, peers: Peers) {
    let interval = Duration::from_millis(shared.config.presence_interval_ms);
    let timeout = Duration::from_millis(shared.config.peer_timeout_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                announce(&shared, true).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), shared.client.flush()).await;
                break;
            }
            _ = tick.tick() => {
                announce(&shared, false).await;
                sweep(&shared, &peers, timeout).await;
            }
            _ = shared.registry.changed.notified() => {
                // Let a burst of attachments settle into one announcement.
                tokio::time::sleep(Duration::from_millis(20)).await;
                announce(&shared, false).await;
            }
            m = announcements.next() => {
                let Some(m) = m else { break };
                let Ok(p) = serde_json::from_slice::<wire::Presence>(&m.payload) else {
                    tracing::debug!(subject = %m.subject, "malformed presence");
                    continue;
                };
                if p.node == *shared.node {
                    continue;
                }
                let known = {
                    let mut table = peers.0.lock().expect("peers lock");
                    let known = table.contains_key(&p.node);
                    if p.leaving {
                        table.remove(&p.node);
                    } else {
                        table.insert(p.node.clone(), Instant::now());
                    }
                    shared.stats.peers.store(table.len() as u64, Ordering::Relaxed);
                    known
                };
                if p.leaving {
                    tracing::info!(peer = %p.node, "peer aggregator leaving");
                    apply(&shared, &p.node, None).await;
                } else {
                    if !known {
                        tracing::info!(peer = %p.node, hosts = p.hosts.len(), "peer aggregator seen");
                    }
                    let hosts = p.hosts.into_iter().map(HostView::from).collect();
                    apply(&shared, &p.node, Some(hosts)).await;
                }
            }
        }
    }
}

async fn announce(shared: &Shared, leaving: bool) {
    if !shared.stats.connected.load(Ordering::Relaxed) {
        return;
    }
    let presence = wire::Presence {
        node: shared.node.to_string(),
        hosts: if leaving {
            Vec::new()
        } else {
            shared
                .registry
                .local_hosts()
                .into_iter()
                .map(Into::into)
                .collect()
        },
        leaving,
    };
    let payload = serde_json::to_vec(&presence).expect("presence serialises");
    let subject = shared.subjects.presence(&shared.node);
    // Never stall on a broker that just went away.
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        shared.client.publish(subject, payload.into()),
    )
    .await;
}

async fn sweep(shared: &Shared, peers: &Peers, timeout: Duration) {
    let silent: Vec<String> = {
        let mut table = peers.0.lock().expect("peers lock");
        let silent: Vec<String> = table
            .iter()
            .filter(|(_, at)| at.elapsed() > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &silent {
            table.remove(n);
        }
        shared
            .stats
            .peers
            .store(table.len() as u64, Ordering::Relaxed);
        silent
    };
    for node in silent {
        tracing::warn!(peer = %node, timeout_ms = timeout.as_millis() as u64, "peer aggregator silent; its hosts are shown offline");
        apply(shared, &node, None).await;
    }
}

/// Records what `node` announced and publishes the changes on `hosts`.
async fn apply(shared: &Shared, node: &str, hosts: Option<Vec<HostView>>) {
    let key = |v: &HostView| (v.online, v.agent.aggregator.clone());
    let before: BTreeMap<String, HostView> = shared
        .registry
        .hosts()
        .into_iter()
        .map(|v| (v.host.clone(), v))
        .collect();
    let mut affected: HashSet<String> = before
        .values()
        .filter(|v| v.agent.aggregator.as_deref() == Some(node))
        .map(|v| v.host.clone())
        .collect();
    if let Some(h) = &hosts {
        affected.extend(h.iter().map(|v| v.host.clone()));
    }
    shared.registry.set_remote(node, hosts);
    let after: BTreeMap<String, HostView> = shared
        .registry
        .hosts()
        .into_iter()
        .filter(|v| affected.contains(&v.host))
        .map(|v| (v.host.clone(), v))
        .collect();
    let mut updates = Vec::new();
    for host in &affected {
        let (old, new) = (before.get(host), after.get(host));
        if old.map(key) == new.map(key) {
            continue;
        }
        let (view, online) = match (new, old) {
            (Some(v), _) => (v, v.online),
            (None, Some(v)) => (v, false),
            (None, None) => continue,
        };
        let mut event = view.agent.clone();
        event.event = if online { "online" } else { "offline" }.into();
        updates.push(crate::update::hosts_update(&event));
    }
    if !updates.is_empty() {
        let _ = shared.hub.send(Command::PublishNext(updates)).await;
    }
}
