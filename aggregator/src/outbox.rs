//! A connection's outgoing queue, bounded in bytes.
//!
//! The hub pushes into it without ever waiting (a mutex held for a push, never
//! across `.await`); the connection's task drains everything queued at each
//! wake-up and writes it with one flush. When a client falls so far behind that
//! the bound is reached, the outbox marks itself overflowed and the session
//! closes the connection with 1013 (try again later), so memory stays bounded
//! whatever a client does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::update::Update;

/// One queued frame.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A topic update, shared with every other subscriber.
    Update(Arc<Update>),
    /// A reply or notice for this connection only.
    Sys(Utf8Bytes),
}

impl Frame {
    /// The encoded JSON text.
    pub fn text(&self) -> Utf8Bytes {
        match self {
            Frame::Update(u) => u.json.clone(),
            Frame::Sys(t) => t.clone(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Frame::Update(u) => u.json.len(),
            Frame::Sys(t) => t.len(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    bytes: usize,
    overflowed: bool,
}

/// Bounded, lock-light queue from the hub to one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
}

impl Outbox {
    /// An outbox holding at most `max_bytes` of encoded frames.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            notify: Notify::new(),
            max_bytes,
        })
    }

    /// Queues a frame. Returns false (and drops it) once the bound is hit.
    pub fn push(&self, frame: Frame) -> bool {
        let mut s = self.state.lock().expect("outbox lock");
        if s.overflowed {
            return false;
        }
        if s.bytes + frame.size() > self.max_bytes {
            s.overflowed = true;
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.bytes += frame.size();
        s.queue.push_back(frame);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Moves everything queued into `out`.
    pub fn drain_into(&self, out: &mut Vec<Frame>) {
        let mut s = self.state.lock().expect("outbox lock");
        out.extend(s.queue.drain(..));
        s.bytes = 0;
    }

    /// Whether the bound was hit (the client must be disconnected).
    pub fn overflowed(&self) -> bool {
        self.state.lock().expect("outbox lock").overflowed
    }

    /// Waits until something is pushed (or was pushed since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_enforced_and_sticky() {
        let o = Outbox::new(10);
        assert!(o.push(Frame::Sys("12345".into())));
        assert!(o.push(Frame::Sys("12345".into())));
        assert!(!o.push(Frame::Sys("1".into())));
        assert!(o.overflowed());
        let mut out = Vec::new();
        o.drain_into(&mut out);
        assert_eq!(out.len(), 2);
        assert!(
            !o.push(Frame::Sys("1".into())),
            "an overflowed outbox stays closed"
        );
    }
}
