//! The spool: batches sent but not yet acknowledged, bounded in bytes.
//!
//! Batches enter in seq order and leave when the aggregator acknowledges them
//! (or says in `Welcome` that it already holds them). When the byte bound is
//! reached the oldest batches are dropped: the loss is counted and logged once
//! per episode (not once per batch), and the aggregator sees a gap in seqs.

use std::collections::VecDeque;

use bytes::Bytes;

/// One encoded batch awaiting acknowledgement.
#[derive(Debug, Clone)]
pub struct SpooledBatch {
    /// Batch seq within the run epoch.
    pub seq: u64,
    /// Samples inside.
    pub sample_count: u32,
    /// MessagePack payload.
    pub payload: Bytes,
}

/// Bounded FIFO of unacknowledged batches with a send cursor.
#[derive(Debug)]
pub struct Spool {
    batches: VecDeque<SpooledBatch>,
    bytes: usize,
    max_bytes: usize,
    /// Seq of the next batch to put on the current stream.
    next_to_send: u64,
    /// Batches dropped because the spool was full, since start.
    pub dropped_batches: u64,
    /// Samples in those batches.
    pub dropped_samples: u64,
    overflowing: bool,
}

impl Spool {
    /// An empty spool holding at most `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            bytes: 0,
            max_bytes,
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
        let mut dropped_now = 0;
        while self.bytes > self.max_bytes && self.batches.len() > 1 {
            let old = self.batches.pop_front().expect("len > 1");
            self.bytes -= old.payload.len();
            self.dropped_batches += 1;
            self.dropped_samples += u64::from(old.sample_count);
            dropped_now += 1;
        }
        if dropped_now > 0 && !self.overflowing {
            self.overflowing = true;
            tracing::warn!(
                max_bytes = self.max_bytes,
                "spool full: dropping the oldest unacknowledged batches until the aggregator catches up"
            );
        }
    }

    /// Forgets every batch up to and including `seq`.
    pub fn ack_through(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            let b = self.batches.pop_front().expect("checked");
            self.bytes -= b.payload.len();
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

    /// Seq of the oldest batch held.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.batches.front().map(|b| b.seq)
    }

    /// Drops every batch up to and including `seq` without delivery
    /// (the aggregator refused them), counting them as dropped.
    pub fn discard_through(&mut self, seq: u64) {
        for b in self.batches.iter().take_while(|b| b.seq <= seq) {
            self.dropped_batches += 1;
            self.dropped_samples += u64::from(b.sample_count);
        }
        self.ack_through(seq);
    }

    /// Starts a new stream: everything still held will be (re)sent, oldest first.
    pub fn rewind(&mut self) {
        self.next_to_send = 0;
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

    /// Batches held.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether nothing awaits acknowledgement.
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

    #[test]
    fn acked_batches_leave_and_rewind_resends_the_rest_in_order() {
        let mut s = Spool::new(1000);
        for seq in 1..=4 {
            s.push(batch(seq, 10));
        }
        assert_eq!(s.next_unsent().unwrap().seq, 1);
        assert_eq!(s.next_unsent().unwrap().seq, 2);
        s.ack_through(2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.next_unsent().unwrap().seq, 3);
        s.rewind();
        assert_eq!(s.next_unsent().unwrap().seq, 3);
        assert_eq!(s.next_unsent().unwrap().seq, 4);
        assert!(s.next_unsent().is_none() && !s.has_unsent());
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let mut s = Spool::new(100);
        for seq in 1..=25 {
            s.push(batch(seq, 10));
        }
        assert!(s.bytes() <= 100);
        assert_eq!(s.len(), 10);
        assert_eq!(s.dropped_batches, 15);
        assert_eq!(s.dropped_samples, 30);
        assert_eq!(s.next_unsent().unwrap().seq, 16);
    }
}
