//! Publishes to NATS that fail: counted by kind for `/metrics`
//! (`hostpulse_cluster_publish_errors_total{kind}`) and logged once per
//! episode: the first failure of a kind logs a warning with its cause, the
//! next success of that kind logs once that it works again (with how many
//! failed meanwhile). A broker refusing every message therefore neither
//! floods the log nor goes unnoticed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What was being published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// A host update produced here.
    Update,
    /// A chunk of this node's presence announcement.
    Presence,
    /// A chunk of a catch-up request.
    CatchupRequest,
    /// A chunk (or marker) of a catch-up answer to a peer.
    CatchupAnswer,
}

impl PublishKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [PublishKind; 4] = [
        PublishKind::Update,
        PublishKind::Presence,
        PublishKind::CatchupRequest,
        PublishKind::CatchupAnswer,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            PublishKind::Update => "update",
            PublishKind::Presence => "presence",
            PublishKind::CatchupRequest => "catchup_request",
            PublishKind::CatchupAnswer => "catchup_answer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Failed publishes by kind, and whether each kind is failing now.
#[derive(Debug, Default)]
pub struct PublishErrors {
    counts: [AtomicU64; 4],
    /// The count when the current episode began, while failing.
    episode_start: [AtomicU64; 4],
    failing: [AtomicBool; 4],
}

impl PublishErrors {
    /// Failures of `kind` so far.
    pub fn count(&self, kind: PublishKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Counts a failure; logs it if it begins an episode.
    pub fn failed(&self, kind: PublishKind, node: &str, cause: &dyn std::fmt::Display) {
        let i = kind.index();
        let before = self.counts[i].fetch_add(1, Ordering::Relaxed);
        if !self.failing[i].swap(true, Ordering::AcqRel) {
            self.episode_start[i].store(before, Ordering::Relaxed);
            tracing::warn!(
                %node,
                kind = kind.label(),
                %cause,
                "publishing to NATS failed; further failures of this kind are counted in hostpulse_cluster_publish_errors_total until it works again"
            );
        }
    }

    /// Notes a success; logs the end of an episode.
    pub fn succeeded(&self, kind: PublishKind, node: &str) {
        let i = kind.index();
        if self.failing[i].load(Ordering::Relaxed) && self.failing[i].swap(false, Ordering::AcqRel)
        {
            let failed = self.counts[i].load(Ordering::Relaxed)
                - self.episode_start[i].load(Ordering::Relaxed);
            tracing::info!(%node, kind = kind.label(), failed, "publishing to NATS works again");
        }
    }

    /// Records the outcome of one publish.
    pub fn record<E: std::fmt::Display>(&self, kind: PublishKind, node: &str, r: &Result<(), E>) {
        match r {
            Ok(()) => self.succeeded(kind, node),
            Err(e) => self.failed(kind, node, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_kind_and_an_episode_ends_on_success() {
        let e = PublishErrors::default();
        e.failed(PublishKind::Presence, "n", &"too large");
        e.failed(PublishKind::Presence, "n", &"too large");
        assert!(e.failing[PublishKind::Presence.index()].load(Ordering::Relaxed));
        assert_eq!(e.count(PublishKind::Presence), 2);
        assert_eq!(e.count(PublishKind::Update), 0);
        e.succeeded(PublishKind::Presence, "n");
        assert!(!e.failing[PublishKind::Presence.index()].load(Ordering::Relaxed));
        e.record::<&str>(PublishKind::Update, "n", &Err("x"));
        assert_eq!(e.count(PublishKind::Update), 1);
        assert_eq!(e.count(PublishKind::Presence), 2, "counts stay");
    }
}
