//! Which agents are attached, what each has delivered, and the `hosts` topic.
//!
//! Keyed by agent id. It remembers, per agent, the run epoch and the highest
//! batch seq published, so a reconnecting agent is told in `Welcome` what not
//! to resend and duplicates are dropped by (agent, epoch, seq). One process
//! per agent id: a new stream of the same agent process (same epoch and
//! instance) supersedes its older one (a half-open connection the aggregator
//! has not noticed yet), and so does any stream once the older one has gone
//! silent; while the older stream is live, another process's is refused
//! ([`AttachError::AgentLive`]), so clones sharing an id cannot take turns.
//! Host join, restart and leave become events on the `hosts` topic; the hub
//! numbers them as they reach it.
//!
//! A departed host (its agent detached here, or gone from every peer's
//! announcements) is remembered for `hub.forget_after`; then [`Registry::forget`]
//! drops it and returns the `forgotten` event to publish. Reading hosts out
//! (the cluster-wide list, this node's own, forgetting) is in
//! `registry/hosts.rs`.
//!
//! In cluster mode it also holds the hosts other aggregators announce
//! (their presence), so `hosts()` shows the whole cluster, each host with
//! the aggregator it is attached to; a host attached here wins over a peer's
//! stale claim. A host name a peer announces online, held there by an agent
//! with another id, is refused here ([`AttachError::HostOnPeer`], answered
//! `ALREADY_EXISTS` naming that node); the same agent id is an agent failing
//! over and is let in. Applying a peer's announcement copies no host list
//! (`registry/remote.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use hostpulse_proto::v1::Hello;
use serde::Serialize;
use tokio::sync::Notify;

use crate::topic::host_segment;
use crate::update::HostEvent;
use remote::Remote;
pub use remote::RemoteChange;

/// Why a stream may not attach (answered with `ALREADY_EXISTS`).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A host name already published by another connected agent.
    #[error("host {host:?} is already published by agent {agent_id:?}")]
    HostTaken {
        /// The topic segment.
        host: String,
        /// The agent holding it.
        agent_id: String,
    },
    /// Another aggregator of the cluster announces the host name online,
    /// held by an agent with another id.
    #[error(
        "host {host:?} is already attached to aggregator {node:?} (by another agent); \
         give each host its own name"
    )]
    HostOnPeer {
        /// The topic segment.
        host: String,
        /// The cluster node holding it.
        node: String,
    },
    /// Another process of this agent id holds a live stream.
    #[error(
        "agent_id {agent_id:?} is already streaming from {peer} (another agent process); \
         give each agent its own agent_id"
    )]
    AgentLive {
        /// The contested id.
        agent_id: String,
        /// Address of the stream holding it.
        peer: String,
    },
}

/// What a new stream learns when it attaches.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Topic segment for the host.
    pub host: String,
    /// Highest batch seq already held for this (agent, epoch).
    pub last_seq: u64,
    /// Whether anything of this (agent, epoch) was held before.
    pub known: bool,
    /// Identifies this stream among the agent's streams.
    pub generation: u64,
}

/// Whether a batch should be published.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: publish it.
    New,
    /// Already held: acknowledge without publishing.
    Duplicate,
    /// A newer stream of the same agent took over: end this one.
    Superseded,
}

struct Record {
    host: String,
    epoch: u64,
    /// `Hello.instance` of the current stream's process.
    instance: u64,
    /// Address of the current stream.
    peer: Option<SocketAddr>,
    last_batch_seq: u64,
    generation: u64,
    /// A stream is attached.
    connected: bool,
    /// Announced online on `hosts` (attached and not silent).
    online: bool,
    /// When a batch of this agent was last published.
    last_seen: Option<SystemTime>,
    /// When its last stream ended (`None` while one is attached).
    departed: Option<Instant>,
    event: HostEvent,
}

/// One host as the REST snapshot shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// Topic segment (serialised once, by the flattened event).
    #[serde(skip_serializing)]
    pub host: String,
    /// Announced online (attached and not silent).
    pub online: bool,
    /// When its last batch was published (RFC 3339), if ever.
    pub last_seen: Option<String>,
    /// The agent's last `hosts` event details.
    #[serde(flatten)]
    pub agent: HostEvent,
}

/// Shared registry of agents.
pub struct Registry {
    inner: Mutex<Inner>,
    /// Ingest counters, for `/metrics`.
    pub stats: IngestStats,
    /// This aggregator's cluster node name (cluster mode only).
    node: Option<String>,
    /// Hosts announced by other aggregators, by node name.
    remote: Mutex<Remote>,
    /// Signalled when a local agent attaches, leaves or changes presence.
    pub changed: Notify,
}

/// Counters of what agents sent.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Batches published.
    pub batches: AtomicU64,
    /// Samples in them.
    pub samples: AtomicU64,
    /// Duplicate batches acknowledged without publishing.
    pub duplicates: AtomicU64,
    /// Streams ended with an error status (bad batch, bad Hello, limits).
    pub refused: AtomicU64,
    /// Acks that asked the agent to slow down because the hub's queue was
    /// `ingest.overload_queue_fraction` full.
    pub slow_down_hub: AtomicU64,
    /// Acks that asked the agent to slow down because the store's queue
    /// was `storage.overload_queue_fraction` full.
    pub slow_down_store: AtomicU64,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, Record>,
    next_generation: u64,
}

impl Registry {
    /// A registry for a single aggregator.
    pub fn new() -> Self {
        Self::with_node(None)
    }

    /// Like [`Registry::new`], naming this aggregator's cluster node in
    /// every host it reports.
    pub fn with_node(node: Option<String>) -> Self {
        Self {
            inner: Mutex::default(),
            stats: IngestStats::default(),
            node,
            remote: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// Registers a stream from `peer`. Returns the `Welcome` facts and the
    /// `hosts` event to publish.
    pub fn attach(
        &self,
        hello: &Hello,
        peer: Option<SocketAddr>,
    ) -> Result<(Attached, HostEvent), AttachError> {
        let host = host_segment(&hello.hostname);
        let mut inner = self.inner.lock().expect("registry lock");
        // Live: attached and not silent. Its own process may take over (its
        // old stream may be half-open); another only once it falls silent.
        if let Some(r) = inner.agents.get(&hello.agent_id)
            && r.connected
            && r.online
            && (r.epoch, r.instance) != (hello.epoch, hello.instance)
        {
            return Err(AttachError::AgentLive {
                agent_id: hello.agent_id.clone(),
                peer: r
                    .peer
                    .map_or_else(|| "an unknown address".into(), |p| p.to_string()),
            });
        }
        if let Some((other, _)) = inner
            .agents
            .iter()
            .find(|(id, r)| r.connected && r.host == host && **id != hello.agent_id)
        {
            return Err(AttachError::HostTaken {
                host,
                agent_id: other.clone(),
            });
        }
        // The same agent announced by a peer is one failing over: welcome.
        if let Some(node) = self
            .remote
            .lock()
            .expect("registry lock")
            .claimant(&host, &hello.agent_id)
        {
            return Err(AttachError::HostOnPeer {
                host,
                node: node.to_string(),
            });
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let event = HostEvent {
            event: "online".into(),
            host: host.clone(),
            agent_id: hello.agent_id.clone(),
            hostname: hello.hostname.clone(),
            epoch: hello.epoch,
            version: hello.version.clone(),
            labels: hello.labels.clone().into_iter().collect(),
            interval_ms: hello.interval_ms,
            aggregator: self.node.clone(),
        };
        let existed = inner.agents.contains_key(&hello.agent_id);
        let record = inner
            .agents
            .entry(hello.agent_id.clone())
            .or_insert_with(|| Record {
                host: host.clone(),
                epoch: hello.epoch,
                instance: hello.instance,
                peer,
                last_batch_seq: 0,
                generation,
                connected: false,
                online: false,
                last_seen: None,
                departed: None,
                event: event.clone(),
            });
        let known = existed && record.epoch == hello.epoch;
        let mut event = event;
        if record.epoch != hello.epoch {
            event.event = "restarted".into();
            record.epoch = hello.epoch;
            record.last_batch_seq = 0;
        }
        record.host = host.clone();
        record.instance = hello.instance;
        record.peer = peer;
        record.generation = generation;
        record.connected = true;
        record.departed = None;
        record.online = true;
        record.event = event.clone();
        let attached = Attached {
            host,
            last_seq: record.last_batch_seq,
            known,
            generation,
        };
        drop(inner);
        self.changed.notify_one();
        Ok((attached, event))
    }

    /// Whether batch `seq` of this stream is new.
    pub fn check(&self, agent_id: &str, generation: u64, seq: u64) -> Verdict {
        let inner = self.inner.lock().expect("registry lock");
        match inner.agents.get(agent_id) {
            Some(r) if r.generation != generation => Verdict::Superseded,
            Some(r) if seq <= r.last_batch_seq => Verdict::Duplicate,
            Some(_) => Verdict::New,
            None => Verdict::Superseded,
        }
    }

    /// Records that batch `seq` was published.
    pub fn commit(&self, agent_id: &str, generation: u64, seq: u64) {
        let mut inner = self.inner.lock().expect("registry lock");
        if let Some(r) = inner.agents.get_mut(agent_id)
            && r.generation == generation
        {
            r.last_batch_seq = r.last_batch_seq.max(seq);
            r.last_seen = Some(SystemTime::now());
        }
    }

    /// Replaces what `node` announced (`None`: the node is gone, and its
    /// hosts stay listed as offline until an aggregator announces them);
    /// returns the `hosts` events it makes and the host names it finds
    /// held here by another agent.
    pub fn set_remote(&self, node: &str, hosts: Option<Vec<HostView>>) -> RemoteChange {
        let inner = self.inner.lock().expect("registry lock");
        let mut remote = self.remote.lock().expect("registry lock");
        remote.replace(&inner, node, hosts)
    }

    /// Agents remembered, attached or not.
    pub fn agents(&self) -> usize {
        self.inner.lock().expect("registry lock").agents.len()
    }

    /// The stream ended. Returns the `offline` event if it was the agent's
    /// current stream and the host was announced online.
    pub fn detach(&self, agent_id: &str, generation: u64) -> Option<HostEvent> {
        let mut inner = self.inner.lock().expect("registry lock");
        let r = inner.agents.get_mut(agent_id)?;
        if r.generation != generation || !r.connected {
            return None;
        }
        r.connected = false;
        r.departed = Some(Instant::now());
        let event = Self::set_online(r, false);
        drop(inner);
        self.changed.notify_one();
        event
    }

    /// The stream's agent went silent (`false`) or spoke again (`true`).
    /// Returns the `hosts` event to publish when the announced state changes.
    pub fn presence(&self, agent_id: &str, generation: u64, online: bool) -> Option<HostEvent> {
        let mut inner = self.inner.lock().expect("registry lock");
        let r = inner.agents.get_mut(agent_id)?;
        if r.generation != generation || !r.connected {
            return None;
        }
        let event = Self::set_online(r, online);
        drop(inner);
        self.changed.notify_one();
        event
    }

    fn set_online(r: &mut Record, online: bool) -> Option<HostEvent> {
        if r.online == online {
            return None;
        }
        r.online = online;
        let mut event = r.event.clone();
        event.event = if online { "online" } else { "offline" }.into();
        Some(event)
    }

    /// Agents with a live stream.
    pub fn connected(&self) -> usize {
        let inner = self.inner.lock().expect("registry lock");
        inner.agents.values().filter(|r| r.connected).count()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

mod hosts;
mod remote;
#[cfg(test)]
mod tests;
