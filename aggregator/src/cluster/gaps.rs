//! Finding updates lost between a peer and this node.
//!
//! Core NATS delivers at most once: a publish buffered by the client while
//! the broker was away can be lost when it reconnects, one in flight when a
//! connection drops is lost, a slow consumer loses what the broker dropped,
//! and an update that did not fit the export queue was never published. So
//! each node numbers every host update it offers to its export queue
//! ([`super::wire::LINK`]: the node's run and a count that rises by one), whether
//! or not it then reaches the broker. A receiver that sees a peer's count
//! jump knows how many of that peer's updates it lacks, and catches up from
//! the peer's history before taking anything newer (see [`super::sync`]).
//!
//! A peer's new run (it restarted) starts its count afresh. When this node
//! loses the broker the counts are forgotten: the catch-up after its
//! reconnect recovers what it missed meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use super::wire::Link;

/// The last count seen of each peer.
#[derive(Debug, Default)]
pub(crate) struct Gaps {
    /// `link_epoch` the counts were seen in.
    epoch: u64,
    last: HashMap<Arc<str>, Link>,
}

impl Gaps {
    /// Takes the count of an update from `origin` received in `epoch`;
    /// returns how many of that peer's updates before it never arrived.
    pub(crate) fn check(&mut self, epoch: u64, origin: &Arc<str>, link: Link) -> u64 {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.last.clear();
        }
        match self.last.get_mut(origin) {
            Some(last) if last.run == link.run => {
                let lost = link.n.saturating_sub(last.n + 1);
                last.n = last.n.max(link.n);
                lost
            }
            Some(last) => {
                *last = link;
                0
            }
            None => {
                self.last.insert(origin.clone(), link);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(run: u64, n: u64) -> Link {
        Link { run, n }
    }

    #[test]
    fn a_jump_in_a_peers_count_is_what_it_lost() {
        let mut g = Gaps::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(
            g.check(0, &a, link(7, 1)),
            0,
            "first seen: nothing to compare"
        );
        assert_eq!(g.check(0, &a, link(7, 2)), 0);
        assert_eq!(g.check(0, &a, link(7, 6)), 3, "3, 4 and 5 lost");
        assert_eq!(g.check(0, &b, link(9, 40)), 0, "each peer counts alone");
        assert_eq!(g.check(0, &a, link(7, 7)), 0);
        // A late or repeated one is no gap, and does not move the count back.
        assert_eq!(g.check(0, &a, link(7, 5)), 0);
        assert_eq!(g.check(0, &a, link(7, 8)), 0);
    }

    #[test]
    fn a_new_run_or_a_reconnect_here_starts_afresh() {
        let mut g = Gaps::default();
        let a: Arc<str> = "a".into();
        g.check(0, &a, link(7, 10));
        assert_eq!(g.check(0, &a, link(8, 1)), 0, "the peer restarted");
        assert_eq!(g.check(0, &a, link(8, 3)), 1);
        assert_eq!(g.check(1, &a, link(8, 90)), 0, "this node reconnected");
        assert_eq!(g.check(1, &a, link(8, 92)), 1);
    }
}
