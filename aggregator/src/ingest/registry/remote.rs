//! The hosts other aggregators announce (cluster mode), and what changes on
//! this node's `hosts` topic when one of them announces again.
//!
//! Each node's hosts are kept in a map by host name, replaced whole by its
//! next complete announcement (moved in, never copied). Working out what
//! changed touches only the hosts that node announced before or now, each
//! looked up by name: an announcement of thousands of hosts costs in
//! proportion to its own size, not to the whole cluster's, and copies no
//! host list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::{HostView, Inner};
use crate::update::HostEvent;

/// Hosts by name, as one node announced them.
pub(super) type NodeHosts = HashMap<String, HostView>;

/// What the other aggregators announced.
#[derive(Default)]
pub(super) struct Remote {
    /// Hosts by the node announcing them, in node-name order (which node
    /// wins a tie between equal claims).
    pub(super) nodes: BTreeMap<String, NodeHosts>,
    /// Hosts no node announces online any more: since when, and what was
    /// last announced of them.
    pub(super) departed: HashMap<String, (Instant, HostEvent)>,
}

/// What a new announcement changed.
#[derive(Debug, Default)]
pub struct RemoteChange {
    /// The `hosts` events to publish (a host's state or aggregator changed).
    pub events: Vec<HostEvent>,
    /// Hosts this node announces online although an agent with another id
    /// holds the same host name here: two agents share one name.
    pub conflicts: Vec<String>,
}

/// One claim on a host: how strongly it is held, and what it says.
#[derive(Clone, Copy)]
struct Claim<'a> {
    /// 3 attached here, 2 online on a peer, 1 detached here, 0 offline on a peer.
    rank: u8,
    online: bool,
    event: &'a HostEvent,
}

impl<'a> Claim<'a> {
    fn key(self) -> (bool, Option<&'a str>) {
        (self.online, self.event.aggregator.as_deref())
    }
}

impl Remote {
    /// The node (other than one whose agent is `agent_id`) announcing `host` online.
    pub(super) fn claimant(&self, host: &str, agent_id: &str) -> Option<&str> {
        self.nodes.iter().find_map(|(node, hosts)| {
            hosts
                .get(host)
                .filter(|v| v.online && v.agent.agent_id != agent_id)
                .map(|_| node.as_str())
        })
    }

    fn online_anywhere(&self, host: &str) -> bool {
        self.nodes
            .values()
            .any(|h| h.get(host).is_some_and(|v| v.online))
    }

    /// The winning claim on `host` (as `Registry::hosts` picks it), with
    /// `node`'s hosts taken from `this` instead of the table.
    fn best<'a>(
        &'a self,
        host: &str,
        local: Option<Claim<'a>>,
        node: &str,
        this: Option<&'a NodeHosts>,
    ) -> Option<Claim<'a>> {
        let mut best = local;
        let mut consider = |hosts: Option<&'a NodeHosts>| {
            let Some(v) = hosts.and_then(|h| h.get(host)) else {
                return;
            };
            let claim = Claim {
                rank: if v.online { 2 } else { 0 },
                online: v.online,
                event: &v.agent,
            };
            if best.is_none_or(|b| claim.rank > b.rank) {
                best = Some(claim);
            }
        };
        for (name, hosts) in &self.nodes {
            consider(if name == node { this } else { Some(hosts) });
        }
        // `node` new to the table: its hosts only when asked for.
        if !self.nodes.contains_key(node) {
            consider(this);
        }
        best
    }

    /// Replaces what `node` announced (`None`: the node is gone, its hosts
    /// stay listed offline) and returns what changed for the hosts it
    /// announced before or now. `inner` is the local agents' table.
    pub(super) fn replace(
        &mut self,
        inner: &Inner,
        node: &str,
        hosts: Option<Vec<HostView>>,
    ) -> RemoteChange {
        let now = Instant::now();
        let new: NodeHosts = match hosts {
            Some(list) => list.into_iter().map(|v| (v.host.clone(), v)).collect(),
            None => match self.nodes.get(node) {
                // Rare (a node leaves or falls silent): a copy marked offline.
                Some(old) => old
                    .iter()
                    .map(|(h, v)| {
                        let mut v = v.clone();
                        v.online = false;
                        v.agent.event = "offline".into();
                        (h.clone(), v)
                    })
                    .collect(),
                None => return RemoteChange::default(),
            },
        };
        let old = self.nodes.insert(node.to_string(), new);
        let new = self.nodes.get(node).expect("just inserted");
        let affected: HashSet<&str> = old
            .iter()
            .flat_map(|o| o.keys())
            .chain(new.keys())
            .map(String::as_str)
            .collect();
        // Local agents holding an affected host, attached ones first.
        let mut local: HashMap<&str, (Claim<'_>, &str)> = HashMap::new();
        for (id, r) in &inner.agents {
            if !affected.contains(r.host.as_str()) {
                continue;
            }
            let claim = Claim {
                rank: if r.connected { 3 } else { 1 },
                online: r.online,
                event: &r.event,
            };
            let entry = local.entry(r.host.as_str()).or_insert((claim, id));
            if claim.rank > entry.0.rank {
                *entry = (claim, id);
            }
        }
        let mut change = RemoteChange::default();
        for host in &affected {
            let mine = local.get(host).copied();
            let before = self.best(host, mine.map(|m| m.0), node, old.as_ref());
            let after = self.best(host, mine.map(|m| m.0), node, Some(new));
            if let (Some((m, id)), Some(v)) = (mine, new.get(*host))
                && m.rank == 3
                && v.online
                && v.agent.agent_id != id
                && !old
                    .as_ref()
                    .and_then(|o| o.get(*host))
                    .is_some_and(|o| o.online && o.agent.agent_id == v.agent.agent_id)
            {
                change.conflicts.push(host.to_string());
            }
            if before.map(|c| c.key()) == after.map(|c| c.key()) {
                continue;
            }
            let (event, online) = match (after, before) {
                (Some(c), _) => (c.event, c.online),
                (None, Some(c)) => (c.event, false),
                (None, None) => continue,
            };
            let mut event = event.clone();
            event.event = if online { "online" } else { "offline" }.into();
            change.events.push(event);
        }
        // A host this node announced before that no node announces online
        // now has departed; one announced online again has not.
        let departed_now: Vec<(String, HostEvent)> = old
            .iter()
            .flat_map(|o| o.values())
            .filter(|v| !self.online_anywhere(&v.host))
            .map(|v| (v.host.clone(), v.agent.clone()))
            .collect();
        for (host, event) in departed_now {
            self.departed.entry(host).or_insert((now, event));
        }
        let nodes = &self.nodes;
        self.departed.retain(|host, _| {
            !nodes
                .values()
                .any(|h| h.get(host).is_some_and(|v| v.online))
        });
        change.events.sort_by(|a, b| a.host.cmp(&b.host));
        change
    }
}
