//! Which agents are attached, what each has delivered, and the `hosts` topic.
//!
//! Keyed by agent id. It remembers, per agent, the run epoch and the highest
//! batch seq published, so a reconnecting agent is told in `Welcome` what not
//! to resend and duplicates are dropped by (agent, epoch, seq). A newer stream
//! of the same agent supersedes an older one (a half-open connection the
//! aggregator has not noticed yet). Host join, restart and leave become
//! updates on the `hosts` topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hostpulse_proto::v1::Hello;
use serde::Serialize;

use crate::topic::host_segment;
use crate::update::{Payload, Update};

/// A host name already published by another connected agent.
#[derive(Debug, thiserror::Error)]
#[error("host {host:?} is already published by agent {agent_id:?}")]
pub struct HostTaken {
    /// The topic segment.
    pub host: String,
    /// The agent holding it.
    pub agent_id: String,
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

/// An event on the `hosts` topic.
#[derive(Debug, Clone, Serialize)]
pub struct HostEvent {
    /// `online`, `restarted` (a new run epoch) or `offline`.
    pub event: &'static str,
    /// Topic segment.
    pub host: String,
    /// Agent id.
    pub agent_id: String,
    /// Host name as reported.
    pub hostname: String,
    /// Agent run epoch (Unix ms at its start).
    pub epoch: u64,
    /// Agent version.
    pub version: String,
    /// Agent labels.
    pub labels: BTreeMap<String, String>,
    /// Sampling interval.
    pub interval_ms: u32,
}

struct Record {
    host: String,
    epoch: u64,
    last_batch_seq: u64,
    generation: u64,
    /// A stream is attached.
    connected: bool,
    /// Announced online on `hosts` (attached and not silent).
    online: bool,
    /// When a batch of this agent was last published.
    last_seen: Option<SystemTime>,
    event: HostEvent,
}

/// One host as the REST snapshot shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// Topic segment.
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
    hosts_seq: AtomicU64,
    /// Ingest counters, for `/metrics`.
    pub stats: IngestStats,
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
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, Record>,
    next_generation: u64,
}

impl Registry {
    /// A registry whose `hosts` seqs start above any earlier run's (derived
    /// from the start time, like agents' sample seqs).
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            inner: Mutex::default(),
            hosts_seq: AtomicU64::new(ms / 10),
            stats: IngestStats::default(),
        }
    }

    /// Registers a stream. Returns the `Welcome` facts and the `hosts` event to publish.
    pub fn attach(&self, hello: &Hello) -> Result<(Attached, HostEvent), HostTaken> {
        let host = host_segment(&hello.hostname);
        let mut inner = self.inner.lock().expect("registry lock");
        if let Some((other, _)) = inner
            .agents
            .iter()
            .find(|(id, r)| r.connected && r.host == host && **id != hello.agent_id)
        {
            return Err(HostTaken {
                host,
                agent_id: other.clone(),
            });
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let event = HostEvent {
            event: "online",
            host: host.clone(),
            agent_id: hello.agent_id.clone(),
            hostname: hello.hostname.clone(),
            epoch: hello.epoch,
            version: hello.version.clone(),
            labels: hello.labels.clone().into_iter().collect(),
            interval_ms: hello.interval_ms,
        };
        let existed = inner.agents.contains_key(&hello.agent_id);
        let record = inner
            .agents
            .entry(hello.agent_id.clone())
            .or_insert_with(|| Record {
                host: host.clone(),
                epoch: hello.epoch,
                last_batch_seq: 0,
                generation,
                connected: false,
                online: false,
                last_seen: None,
                event: event.clone(),
            });
        let known = existed && record.epoch == hello.epoch;
        let mut event = event;
        if record.epoch != hello.epoch {
            event.event = "restarted";
            record.epoch = hello.epoch;
            record.last_batch_seq = 0;
        }
        record.host = host.clone();
        record.generation = generation;
        record.connected = true;
        record.online = true;
        record.event = event.clone();
        Ok((
            Attached {
                host,
                last_seq: record.last_batch_seq,
                known,
                generation,
            },
            event,
        ))
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

    /// Every host known since start, sorted by name.
    pub fn hosts(&self) -> Vec<HostView> {
        let inner = self.inner.lock().expect("registry lock");
        let mut out: Vec<HostView> = inner
            .agents
            .values()
            .map(|r| HostView {
                host: r.host.clone(),
                online: r.online,
                last_seen: r.last_seen.map(crate::update::rfc3339),
                agent: r.event.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
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
        Self::set_online(r, false)
    }

    /// The stream's agent went silent (`false`) or spoke again (`true`).
    /// Returns the `hosts` event to publish when the announced state changes.
    pub fn presence(&self, agent_id: &str, generation: u64, online: bool) -> Option<HostEvent> {
        let mut inner = self.inner.lock().expect("registry lock");
        let r = inner.agents.get_mut(agent_id)?;
        if r.generation != generation || !r.connected {
            return None;
        }
        Self::set_online(r, online)
    }

    fn set_online(r: &mut Record, online: bool) -> Option<HostEvent> {
        if r.online == online {
            return None;
        }
        r.online = online;
        let mut event = r.event.clone();
        event.event = if online { "online" } else { "offline" };
        Some(event)
    }

    /// Agents with a live stream.
    pub fn connected(&self) -> usize {
        let inner = self.inner.lock().expect("registry lock");
        inner.agents.values().filter(|r| r.connected).count()
    }

    /// Turns an event into the next update of the `hosts` topic.
    pub fn hosts_update(&self, event: &HostEvent) -> Update {
        let seq = self.hosts_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now();
        Update::new("hosts".into(), seq, now, now, Payload::Host(event.clone()))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}
