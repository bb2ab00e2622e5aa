//! The spool: batches not yet acknowledged, plus the most recent acknowledged
//! ones, bounded in bytes.
//!
//! Batches enter in seq order. An ack does not delete at once: the newest
//! acknowledged batches (up to `retain_samples` samples) stay, so that an
//! aggregator that restarted (and lost its in-memory history) can be sent
//! them again and subscribers resuming with `since` find no hole. When the
//! byte bound is reached the oldest batches go first (retained ones before
//! unacknowledged ones, as they are older): the loss of unacknowledged data is
//! counted and logged once per episode, not once per batch.

use std::collections::VecDeque;

use bytes::Bytes;

/// One encoded batch.
#[derive(Debug, Clone)]
pub struct SpooledBatch {
    /// Batch seq within the run epoch.
    pub seq: u64,
    /// Samples inside.
    pub sample_count: u32,
    /// MessagePack payload.
    pub payload: Bytes,
}

/// Bounded FIFO of batches with an ack mark and a send cursor.
#[derive(Debug)]
pub struct Spool {
    batches: VecDeque<SpooledBatch>,
    bytes: usize,
    max_bytes: usize,
    retain_samples: u64,
    /// Samples in acknowledged batches still held.
    retained_samples: u64,
    /// Every batch up to here is acknowledged.
    acked_through: u64,
    /// Seq of the next batch to put on the current stream.
    next_to_send: u64,
    /// Unacknowledged batches dropped because the spool was full, since start.
    pub dropped_batches: u64,
    /// Samples in those batches.
    pub dropped_samples: u64,
    overflowing: bool,
}

impl Spool {
    /// An empty spool holding at most `max_bytes` of payload and keeping up
    /// to `retain_samples` acknowledged samples for resending.
    pub fn new(max_bytes: usize, retain_samples: u64) -> Self {
        Self {
            batches: VecDeque::new(),
            bytes: 0,
            max_bytes,
            retain_samples,
            retained_samples: 0,
            acked_through: 0,
            next_to_send: 0,
            dropped_batches: 0,
            dropped_samples: 0,
            overflowing: false,
        }
    }

    /// Appends a batch, dropping the oldest ones if the bound is exceeded.
    pub fn push(&mut self, batch: SpooledBatch) {
        self.bytes += batch.payload.len();
        self.batches.push_back(batch);
        let mut lost = false;
        while self.bytes > self.max_bytes && self.batches.len() > 1 {
            let old = self.pop_oldest();
            if old.seq > self.acked_through {
                self.dropped_batches += 1;
                self.dropped_samples += u64::from(old.sample_count);
                lost = true;
            }
        }
        if lost && !self.overflowing {
            self.overflowing = true;
            tracing::warn!(
                max_bytes = self.max_bytes,
                "spool full: dropping the oldest unacknowledged batches until the aggregator catches up"
            );
        }
    }

    fn pop_oldest(&mut self) -> SpooledBatch {
        let old = self.batches.pop_front().expect("not empty");
        self.bytes -= old.payload.len();
        if old.seq <= self.acked_through {
            self.retained_samples -= u64::from(old.sample_count);
        }
        old
    }

    /// Marks every batch up to and including `seq` acknowledged, keeping the
    /// newest of them within the retention budget.
    pub fn ack_through(&mut self, seq: u64) {
        for b in &self.batches {
            if b.seq > self.acked_through && b.seq <= seq {
                self.retained_samples += u64::from(b.sample_count);
            }
        }
        self.acked_through = self.acked_through.max(seq);
        while self.retained_samples > self.retain_samples
            && self
                .batches
                .front()
                .is_some_and(|b| b.seq <= self.acked_through)
        {
            self.pop_oldest();
        }
        if self.overflowing && self.bytes <= self.max_bytes / 2 {
            self.overflowing = false;
            tracing::info!(
                dropped_batches = self.dropped_batches,
                dropped_samples = self.dropped_samples,
                "spool drained below half; total dropped so far"
            );
        }
    }

    /// Drops unacknowledged batches up to `seq` without delivery (the
    /// aggregator refused them), counting them as dropped.
    pub fn discard_through(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            let b = self.pop_oldest();
            if b.seq > self.acked_through {
                self.dropped_batches += 1;
                self.dropped_samples += u64::from(b.sample_count);
            }
        }
        self.acked_through = self.acked_through.max(seq);
    }

    /// Seq of the oldest unacknowledged batch.
    pub fn oldest_unacked(&self) -> Option<u64> {
        self.batches
            .iter()
            .find(|b| b.seq > self.acked_through)
            .map(|b| b.seq)
    }

    /// Starts a new stream. Unacknowledged batches will be sent, oldest first;
    /// with `include_retained`, the retained acknowledged ones before them.
    pub fn rewind(&mut self, include_retained: bool) {
        self.next_to_send = if include_retained {
            0
        } else {
            self.acked_through + 1
        };
    }

    /// The next batch to send on the current stream, if any; advances the cursor.
    pub fn next_unsent(&mut self) -> Option<SpooledBatch> {
        let b = self.batches.iter().find(|b| b.seq >= self.next_to_send)?;
        self.next_to_send = b.seq + 1;
        Some(b.clone())
    }

    /// Whether a batch awaits sending on the current stream.
    pub fn has_unsent(&self) -> bool {
        self.batches
            .back()
            .is_some_and(|b| b.seq >= self.next_to_send)
    }

    /// Batches awaiting acknowledgement.
    pub fn unacked(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| b.seq > self.acked_through)
            .count()
    }

    /// Batches held, retained ones included.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, size: usize) -> SpooledBatch {
        SpooledBatch {
            seq,
            sample_count: 2,
            payload: Bytes::from(vec![0u8; size]),
        }
    }

    fn seqs(s: &mut Spool) -> Vec<u64> {
        std::iter::from_fn(|| s.next_unsent().map(|b| b.seq)).collect()
    }

    #[test]
    fn acked_batches_are_retained_within_budget_and_resent_on_request() {
        let mut s = Spool::new(1000, 4);
        for seq in 1..=5 {
            s.push(batch(seq, 10));
        }
        assert_eq!(seqs(&mut s), vec![1, 2, 3, 4, 5]);
        s.ack_through(3);
        // 3 acked batches of 2 samples exceed the budget of 4: batch 1 goes.
        assert_eq!(s.len(), 4);
        assert_eq!(s.unacked(), 2);
        s.rewind(false);
        assert_eq!(seqs(&mut s), vec![4, 5]);
        s.rewind(true);
        assert_eq!(seqs(&mut s), vec![2, 3, 4, 5]);
        assert!(!s.has_unsent());
    }

    #[test]
    fn full_spool_drops_oldest_and_counts_only_unacked_losses() {
        let mut s = Spool::new(100, 100);
        for seq in 1..=5 {
            s.push(batch(seq, 10));
        }
        s.ack_through(5);
        for seq in 6..=25 {
            s.push(batch(seq, 10));
        }
        assert!(s.bytes() <= 100);
        assert_eq!(s.len(), 10);
        // 15 batches went: the 5 acknowledged ones are no loss.
        assert_eq!(s.dropped_batches, 10);
        assert_eq!(s.dropped_samples, 20);
        s.rewind(false);
        assert_eq!(s.next_unsent().unwrap().seq, 16);
        assert_eq!(s.oldest_unacked(), Some(16));
    }

    #[test]
    fn refused_batches_are_discarded_and_counted() {
        let mut s = Spool::new(1000, 0);
        for seq in 1..=3 {
            s.push(batch(seq, 10));
        }
        s.discard_through(1);
        assert_eq!(s.dropped_batches, 1);
        s.rewind(false);
        assert_eq!(seqs(&mut s), vec![2, 3]);
    }
}
