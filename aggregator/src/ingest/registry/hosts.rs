//! The hosts the registry knows, as the rest of the aggregator reads them:
//! the cluster-wide list (`/api/v1/hosts`, `/metrics`), this node's own for
//! its presence, the hosts online on peers, and forgetting hosts departed
//! for `hub.forget_after`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::{HostView, Record, Registry};
use crate::update::HostEvent;

impl Registry {
    /// Every host known since start, here and (in cluster mode) on the
    /// other aggregators, sorted by name. Where several claim a host, one
    /// attached here wins, then one online elsewhere.
    pub fn hosts(&self) -> Vec<HostView> {
        let mut by_host: BTreeMap<String, (u8, HostView)> = BTreeMap::new();
        let mut offer = |rank: u8, view: HostView| {
            if by_host.get(&view.host).is_none_or(|(r, _)| rank > *r) {
                by_host.insert(view.host.clone(), (rank, view));
            }
        };
        {
            let inner = self.inner.lock().expect("registry lock");
            for r in inner.agents.values() {
                offer(if r.connected { 3 } else { 1 }, Self::view(r));
            }
        }
        let remote = self.remote.lock().expect("registry lock");
        for view in remote.nodes.values().flat_map(|h| h.values()) {
            offer(if view.online { 2 } else { 0 }, view.clone());
        }
        by_host.into_values().map(|(_, v)| v).collect()
    }

    fn view(r: &Record) -> HostView {
        HostView {
            host: r.host.clone(),
            online: r.online,
            last_seen: r.last_seen.map(crate::update::rfc3339),
            agent: r.event.clone(),
        }
    }

    /// Hosts another aggregator announces online now (cluster mode; empty
    /// otherwise).
    pub fn online_elsewhere(&self) -> HashSet<String> {
        let remote = self.remote.lock().expect("registry lock");
        remote
            .nodes
            .values()
            .flat_map(|h| h.values())
            .filter(|v| v.online)
            .map(|v| v.host.clone())
            .collect()
    }

    /// Hosts whose agents are attached here now, for this node's presence.
    pub fn local_hosts(&self) -> Vec<HostView> {
        let inner = self.inner.lock().expect("registry lock");
        let mut out: Vec<HostView> = inner
            .agents
            .values()
            .filter(|r| r.connected)
            .map(Self::view)
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    /// Hosts not to forget yet: attached here, online on a peer, or
    /// departed after `cutoff`.
    pub fn retained_hosts(&self, cutoff: Instant) -> HashSet<String> {
        let mut keep = HashSet::new();
        {
            let inner = self.inner.lock().expect("registry lock");
            for r in inner.agents.values() {
                if r.departed.is_none_or(|at| at > cutoff) {
                    keep.insert(r.host.clone());
                }
            }
        }
        let remote = self.remote.lock().expect("registry lock");
        for v in remote
            .nodes
            .values()
            .flat_map(|h| h.values())
            .filter(|v| v.online)
        {
            keep.insert(v.host.clone());
        }
        for (host, (at, _)) in &remote.departed {
            if *at > cutoff {
                keep.insert(host.clone());
            }
        }
        keep
    }

    /// Drops what is remembered of hosts departed at or before `cutoff` (agents
    /// detached here, hosts peers stopped announcing), and returns the
    /// `forgotten` event of each host no longer known at all.
    pub fn forget(&self, cutoff: Instant) -> Vec<HostEvent> {
        let mut dropped: BTreeMap<String, HostEvent> = BTreeMap::new();
        {
            let mut inner = self.inner.lock().expect("registry lock");
            inner.agents.retain(|_, r| {
                let gone = r.departed.is_some_and(|at| at <= cutoff);
                if gone {
                    dropped.insert(r.host.clone(), r.event.clone());
                }
                !gone
            });
            if !dropped.is_empty() {
                inner.agents.shrink_to_fit();
            }
        }
        {
            let mut remote = self.remote.lock().expect("registry lock");
            let expired: Vec<String> = remote
                .departed
                .iter()
                .filter(|(_, (at, _))| *at <= cutoff)
                .map(|(h, _)| h.clone())
                .collect();
            for host in &expired {
                if let Some((_, last)) = remote.departed.remove(host) {
                    dropped.entry(host.clone()).or_insert(last);
                }
                for views in remote.nodes.values_mut() {
                    if views.get(host).is_some_and(|v| !v.online)
                        && let Some(v) = views.remove(host)
                    {
                        dropped.entry(host.clone()).or_insert(v.agent);
                    }
                }
                dropped
                    .entry(host.clone())
                    .or_insert_with(|| HostEvent::forgotten(host));
            }
            remote.nodes.retain(|_, views| !views.is_empty());
        }
        // A host still known (attached again, or through another agent or
        // node) is not forgotten.
        let known: HashSet<String> = self.hosts().into_iter().map(|v| v.host).collect();
        dropped
            .into_iter()
            .filter(|(host, _)| !known.contains(host))
            .map(|(_, mut event)| {
                event.event = "forgotten".into();
                event
            })
            .collect()
    }
}
