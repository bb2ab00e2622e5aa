//! What goes into an outbox and what comes out of it: the items queued,
//! what became of a pushed update, and what a drain found.

use std::sync::Arc;

use tokio::time::Instant;

use crate::update::{SysMessage, Update};

/// One queued item.
#[derive(Debug, Clone)]
pub enum Item {
    /// A topic update, shared with every other subscriber.
    Update(Arc<Update>),
    /// A reply or notice for this connection only.
    Sys(SysMessage),
}

impl Item {
    /// Bytes it counts for in the queue's bound.
    pub(super) fn size(&self) -> usize {
        match self {
            Item::Update(u) => u.json.len(),
            Item::Sys(m) => m.size(),
        }
    }
}

/// What happened to a pushed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for sending.
    Queued,
    /// Held back by a throttle or by conflation (newest wins).
    Held,
    /// Refused: the connection is being closed.
    Refused,
    /// Not sent: the connection already has this seq of the topic or a newer
    /// one (queued or sent), so sending it would go backwards.
    Stale,
}

/// What a drain found besides the items it moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// When throttled updates are next due, if any are waiting (with a
    /// wheel, the outbox wakes the session then by itself).
    pub next_due: Option<Instant>,
    /// The client must be disconnected (lagging past the grace period):
    /// nothing was drained.
    pub overflowed: bool,
    /// The connection's heartbeat came (see [`super::Outbox::beat`]).
    pub beat: bool,
}
