//! Presence across the cluster: which hosts are attached to which node.
//!
//! Each node announces the hosts attached to it on
//! `<prefix>._cluster.presence.<node>` every `presence_interval_ms` and soon
//! after one attaches or leaves (at most every [`MIN_GAP`] then); a node
//! shutting down says so. An announcement is a numbered set of chunks, each
//! under the broker's `max_payload` ([`chunk::presence`]), all carrying one
//! generation number.
//!
//! Applying: a node's host list is replaced only by a complete generation.
//! The chunks of one node arrive in order; they are gathered as they come,
//! and when the last is in, the whole list replaces the previous one in the
//! registry. A generation missing a chunk (lost on the way) is dropped and
//! counted, and the node's previous complete list stays in force until the
//! next generation completes: a host is never shown offline because the
//! chunk naming it went missing. Any chunk counts as a sign of life for the
//! peer timeout. Each change of a host's state (online or not, and on which
//! node) becomes an event on this node's `hosts` topic. A node not heard
//! from for `peer_timeout_ms` has its hosts shown offline.
//!
//! A host whose entry alone does not fit a chunk is left out of the
//! announcement (logged, and counted as a failed presence publish).
//!
//! Two agents with one host name on two nodes: the second to attach is
//! refused while the first one's node announces it (see the registry); if
//! both attach before either node has heard the other's announcement, each
//! node keeps showing its own agent's host and logs the conflict, counted
//! in `hostpulse_cluster_host_conflicts_total`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::Shared;
use super::chunk::{self, Assembly, PresenceChunk};
use super::failures::PublishKind;
use super::wire::PresenceHost;
use crate::hub::Command;
use crate::ingest::registry::HostView;

/// Shortest gap between two announcements made because hosts changed (a
/// burst of attachments makes one announcement, not thousands).
pub const MIN_GAP: Duration = Duration::from_millis(200);

/// The other nodes heard from, and when.
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<String, Instant>>>);

impl Peers {
    /// Nodes heard from within the timeout (the rest are swept).
    pub fn live(&self) -> usize {
        self.0.lock().expect("peers lock").len()
    }

    /// Their names.
    pub fn names(&self) -> Vec<String> {
        self.0.lock().expect("peers lock").keys().cloned().collect()
    }
}

/// Each peer's announcement being gathered.
type Gathering = HashMap<String, Option<Assembly<Vec<PresenceHost>>>>;

/// Announces, listens and sweeps until shutdown; then says goodbye.
pub(crate) async fn run(shared: Shared, mut announcements: Subscriber, peers: Peers) {
    let interval = Duration::from_millis(shared.config.presence_interval_ms);
    let timeout = Duration::from_millis(shared.config.peer_timeout_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = 0u64;
    // The last announcement made for a change (the first change after a
    // quiet spell is announced within 20 ms).
    let mut last = Instant::now() - MIN_GAP;
    let mut gathering = Gathering::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                generation += 1;
                announce(&shared, generation, true).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), shared.client.flush()).await;
                break;
            }
            _ = tick.tick() => {
                generation += 1;
                announce(&shared, generation, false).await;
                sweep(&shared, &peers, timeout).await;
                gathering.retain(|node, _| peers.0.lock().expect("peers lock").contains_key(node));
            }
            _ = shared.registry.changed.notified() => {
                // Let a burst of attachments settle into one announcement.
                let at = (Instant::now() + Duration::from_millis(20)).max(last + MIN_GAP.min(interval));
                tokio::time::sleep_until(at).await;
                generation += 1;
                announce(&shared, generation, false).await;
                last = Instant::now();
            }
            m = announcements.next() => {
                let Some(m) = m else { break };
                let Ok(p) = serde_json::from_slice::<PresenceChunk>(&m.payload) else {
                    tracing::debug!(subject = %m.subject, "malformed presence");
                    continue;
                };
                if p.node == *shared.node {
                    continue;
                }
                receive(&shared, &peers, &mut gathering, p).await;
            }
        }
    }
}

/// Takes one chunk of a peer's announcement.
async fn receive(shared: &Shared, peers: &Peers, gathering: &mut Gathering, p: PresenceChunk) {
    let known = {
        let mut table = peers.0.lock().expect("peers lock");
        let known = table.contains_key(&p.node);
        if p.leaving {
            table.remove(&p.node);
        } else {
            table.insert(p.node.clone(), Instant::now());
        }
        shared
            .stats
            .peers
            .store(table.len() as u64, Ordering::Relaxed);
        known
    };
    if p.leaving {
        gathering.remove(&p.node);
        tracing::info!(peer = %p.node, "peer aggregator leaving");
        apply(shared, &p.node, None).await;
        return;
    }
    let slot = gathering.entry(p.node.clone()).or_default();
    match Assembly::take(slot, p.generation, p.index, p.count, p.hosts) {
        Ok(Some(parts)) => {
            let hosts: Vec<HostView> = parts.into_iter().flatten().map(HostView::from).collect();
            if !known {
                tracing::info!(peer = %p.node, hosts = hosts.len(), chunks = p.count, "peer aggregator seen");
            }
            apply(shared, &p.node, Some(hosts)).await;
        }
        Ok(None) => {}
        Err(e) => {
            shared
                .stats
                .presence_incomplete
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %p.node, cause = %e, "peer's presence incomplete; its last complete one stays");
        }
    }
}

async fn announce(shared: &Shared, generation: u64, leaving: bool) {
    if !shared.stats.connected.load(Ordering::Relaxed) {
        return;
    }
    let hosts = if leaving {
        Vec::new()
    } else {
        shared.registry.local_hosts()
    };
    let budget = chunk::budget(shared.client.max_payload());
    let (chunks, skipped) = chunk::presence(&shared.node, generation, leaving, &hosts, budget);
    drop(hosts);
    if skipped > 0 {
        shared.stats.publish_errors.failed(
            PublishKind::Presence,
            &shared.node,
            &format!(
                "{skipped} host(s) each larger than a presence chunk of {budget} bytes left out"
            ),
        );
    }
    shared.stats.presence_bytes.store(
        chunks.iter().map(|c| c.len() as u64).sum(),
        Ordering::Relaxed,
    );
    let subject = shared.subjects.presence(&shared.node);
    for payload in chunks {
        // Never stall on a broker that just went away.
        let sent = tokio::time::timeout(
            Duration::from_millis(200),
            shared.client.publish(subject.clone(), payload),
        )
        .await;
        let r = match sent {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the NATS client took longer than 200 ms to accept it".to_string()),
        };
        shared
            .stats
            .publish_errors
            .record(PublishKind::Presence, &shared.node, &r);
        if r.is_err() {
            // The rest of this generation is void at the receivers anyway.
            return;
        }
        shared.stats.presence_chunks.fetch_add(1, Ordering::Relaxed);
    }
    // Counted once every chunk is out, so chunks per announcement can be
    // read from the two counters.
    shared
        .stats
        .presence_announcements
        .fetch_add(1, Ordering::Relaxed);
    if skipped == 0 {
        shared
            .stats
            .publish_errors
            .succeeded(PublishKind::Presence, &shared.node);
    }
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
    let change = shared.registry.set_remote(node, hosts);
    for host in &change.conflicts {
        shared.stats.host_conflicts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%host, peer = %node, "two agents use one host name: attached here and on the peer; each aggregator shows its own (rename one host)");
    }
    if change.events.is_empty() {
        return;
    }
    let updates = change
        .events
        .iter()
        .map(crate::update::hosts_update)
        .collect();
    let _ = shared.hub.send(Command::PublishNext(updates)).await;
}
