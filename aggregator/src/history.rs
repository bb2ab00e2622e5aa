//! Per-topic history: the last `history_len` updates, for resume and replay.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::update::Update;

/// A bounded ring of one topic's updates, oldest first, seqs ascending.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Arc<Update>>,
    bytes: usize,
}

/// What a `since` resume could replay.
#[derive(Debug)]
pub struct Replay<'a> {
    /// Updates after `since`, oldest first.
    pub updates: Vec<&'a Arc<Update>>,
    /// False when history no longer reaches back to `since + 1`.
    pub complete: bool,
}

impl History {
    /// Appends, evicting the oldest beyond `cap`. Returns the change in
    /// bytes held and how many entries were evicted.
    pub fn push(&mut self, update: Arc<Update>, cap: usize) -> (isize, usize) {
        let mut delta = update.size() as isize;
        self.bytes += update.size();
        self.entries.push_back(update);
        let mut evicted = 0;
        while self.entries.len() > cap {
            delta -= self.pop_oldest().expect("len > cap") as isize;
            evicted += 1;
        }
        (delta, evicted)
    }

    /// Drops the oldest entry; returns its size.
    pub fn pop_oldest(&mut self) -> Option<usize> {
        let old = self.entries.pop_front()?;
        self.bytes -= old.size();
        Some(old.size())
    }

    /// Seq of the oldest update held.
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|u| u.seq)
    }

    /// Updates with seq > `since`; `current` is the topic's latest seq.
    pub fn since(&self, since: u64, current: u64) -> Replay<'_> {
        let start = self.entries.partition_point(|u| u.seq <= since);
        let complete = since >= current || self.first_seq().is_some_and(|f| f <= since + 1);
        Replay {
            updates: self.entries.range(start..).collect(),
            complete,
        }
    }

    /// The last `n` updates, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Arc<Update>> {
        self.entries.range(self.entries.len().saturating_sub(n)..)
    }

    /// Updates held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn up(seq: u64) -> Arc<Update> {
        let now = SystemTime::now();
        Arc::new(Update::new(
            "t".into(),
            seq,
            now,
            now,
            crate::update::Payload::Other(seq.into()),
        ))
    }

    #[test]
    fn since_replays_exactly_what_follows() {
        let mut h = History::default();
        for seq in 10..20 {
            h.push(up(seq), 5);
        }
        assert_eq!(h.first_seq(), Some(15));
        let r = h.since(16, 19);
        assert!(r.complete);
        assert_eq!(
            r.updates.iter().map(|u| u.seq).collect::<Vec<_>>(),
            vec![17, 18, 19]
        );
        let r = h.since(14, 19);
        assert!(r.complete, "15 is the next after 14 and is held");
        let r = h.since(3, 19);
        assert!(!r.complete);
        assert_eq!(r.updates.len(), 5);
        assert!(h.since(19, 19).updates.is_empty());
        assert_eq!(h.last(2).map(|u| u.seq).collect::<Vec<_>>(), vec![18, 19]);
    }
}
