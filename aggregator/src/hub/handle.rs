//! The way into the hub: the commands it takes, the queue they wait in
//! (bounded in commands and in bytes, so a burst of large publishes cannot
//! grow memory) and the cheap handle every other part sends them with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::{ConnId, HubSettings, HubStats, Replay, ReplayTopic, SubscribeRequest};
use crate::update::{SysMessage, Unnumbered, Update};
use crate::ws::outbox::Outbox;

/// What the hub is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Publish updates, in order.
    Publish(Vec<Update>),
    /// Number updates (each its topic's next seq, in arrival order) and
    /// publish them.
    PublishNext(Vec<Unnumbered>),
    /// Add a subscription; the `$sys.subscribed` reply goes to `outbox`,
    /// and what the session has to replay from history to `replay`.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// What it asked for.
        request: SubscribeRequest,
        /// Where the replay to run goes (empty when there is none).
        replay: tokio::sync::oneshot::Sender<Replay>,
    },
    /// A session has replayed a subscription's history up to `reached`:
    /// send what followed and deliver live from there.
    Join {
        /// The connection.
        conn: ConnId,
        /// The subscription ([`Replay::token`]).
        token: u64,
        /// Per topic, the history read and the last seq sent from it.
        reached: Vec<ReplayTopic>,
    },
    /// Remove a subscription.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// Exactly the pattern given to subscribe.
        pattern: String,
        /// Echoed in the reply.
        id: Option<Value>,
    },
    /// The connection is gone.
    Disconnect {
        /// The connection.
        conn: ConnId,
    },
    /// Sends a `$sys` notice to every connection (cluster state changes).
    Broadcast(SysMessage),
    /// The history of every host topic produced here, above `floors` (a
    /// topic missing from `floors` is sent whole): a peer's catch-up. The
    /// answer names what to read; the caller reads it, not the hub.
    Export {
        /// Topic → the last seq the peer holds.
        floors: HashMap<String, u64>,
        /// Where the answer goes: each topic's history and the seq to read after.
        reply: tokio::sync::oneshot::Sender<Vec<ReplayTopic>>,
    },
    /// Every host topic's history, and whether the topic is produced here,
    /// for the store to keep across a restart (the caller reads it).
    Snapshot {
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<(ReplayTopic, bool)>>,
    },
    /// One topic's history read back from the store at start, oldest
    /// first: taken into history as it was sent (not exported, not
    /// rate-limited, not stored again).
    Restore {
        /// The updates, of one topic.
        updates: Vec<Update>,
        /// Whether the topic was produced here.
        local: bool,
    },
    /// The current seq of every host topic, to ask peers for what is newer.
    Floors {
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<HashMap<String, u64>>,
    },
    /// Forgets every host whose `host.<h>.*` topics have all been idle for
    /// `idle` or longer, except the hosts in `keep`: their topics, history
    /// and throttle state go. Replies with the hosts forgotten.
    Forget {
        /// Hosts (topic segments) still attached, or departed too recently.
        keep: HashSet<String>,
        /// How long every topic of a host must have gone without an update.
        idle: Duration,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
    /// The latest update of every topic starting with `prefix`.
    Latest {
        /// Topic prefix, e.g. `host.` or `host.web-01.`.
        prefix: String,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<Arc<Update>>>,
    },
}

/// The hub's closed: the aggregator is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the hub has stopped")]
pub struct HubClosed;

/// A queued command, and the share of the byte bound it holds until the
/// hub has handled it.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) command: Command,
    _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Command {
    /// Bytes it holds for the queue's byte bound: its updates' JSON forms
    /// (an event not encoded yet counts as a small update).
    fn queued_bytes(&self) -> usize {
        match self {
            Command::Publish(updates) => updates.iter().map(|u| u.size()).sum(),
            Command::PublishNext(updates) => updates.len() * 512,
            _ => 0,
        }
    }
}

/// Cheap handle to send commands to the hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<tokio::sync::Semaphore>,
    max_bytes: usize,
    /// Shared counters.
    pub stats: Arc<HubStats>,
}

impl HubHandle {
    /// How full the queue is, in commands or in bytes whichever is fuller,
    /// from 0 (empty) to 1 (publishers wait).
    pub fn queue_fill(&self) -> f64 {
        let commands = 1.0 - self.tx.capacity() as f64 / self.tx.max_capacity() as f64;
        let bytes = 1.0 - self.bytes.available_permits() as f64 / self.max_bytes as f64;
        commands.max(bytes)
    }

    /// The latest update of every topic starting with `prefix` (empty if the
    /// hub has stopped).
    pub async fn latest(&self, prefix: impl Into<String>) -> Vec<Arc<Update>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let asked = self.send(Command::Latest {
            prefix: prefix.into(),
            reply,
        });
        match asked.await {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Asks the hub; `None` if it has stopped.
    pub async fn ask<T>(
        &self,
        command: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(command(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Sends a command, waiting for room (the queue is bounded in commands
    /// and in bytes; a command larger than the whole byte bound waits for
    /// an empty queue).
    pub async fn send(&self, command: Command) -> Result<(), HubClosed> {
        let size = command.queued_bytes().min(self.max_bytes);
        let bytes = match size {
            0 => None,
            n => Some(
                self.bytes
                    .clone()
                    .acquire_many_owned(n as u32)
                    .await
                    .map_err(|_| HubClosed)?,
            ),
        };
        self.tx
            .send(Queued {
                command,
                _bytes: bytes,
            })
            .await
            .map_err(|_| HubClosed)
    }
}

/// The hub's queue, without the hub (which [`super::spawn`] starts on it).
pub(super) fn queue(settings: &HubSettings) -> (HubHandle, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let max_bytes = settings.queue_bytes.clamp(1, u32::MAX as usize);
    let handle = HubHandle {
        tx,
        bytes: Arc::new(tokio::sync::Semaphore::new(max_bytes)),
        max_bytes,
        stats: Arc::new(HubStats::default()),
    };
    (handle, rx)
}
