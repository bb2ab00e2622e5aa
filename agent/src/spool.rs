//! The spool: batches not yet acknowledged, plus the most recent acknowledged
//! ones, bounded in bytes.
//!
//! Batches enter in seq order. An ack does not delete at once: the newest
//! acknowledged batches (up to `retain_samples` samples) stay, so that an
//! aggregator that restarted (and lost its in-memory history) can be sent
//! them again and subscribers resuming with `since` find no hole.
//!
//! When the byte bound is reached a batch goes, chosen so that what the agent
//! reports as dropped is exactly what never reached an aggregator:
//! - acknowledged (retained) batches first: no loss;
//! - then the oldest unacknowledged batch, unless it was sent on a stream
//!   that ended before its ack (the aggregator may or may not have it): such
//!   batches stay, to be sent again, and the next one goes instead;
//! - a batch that was never sent is **dropped**: counted and logged once per
//!   episode, not once per batch;
//! - a batch sent but not yet acknowledged is not a loss yet: its seq is
//!   remembered until the ack (delivered, not counted) or the next `Welcome`
//!   settles it: an aggregator that knows this run says how far it holds it
//!   (what lies beyond is dropped); one that does not cannot tell, so the
//!   batch is counted **unconfirmed**, apart from the dropped ones.

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

/// Where an unacknowledged batch stands with respect to aggregators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// On no stream, or on none that may hold it: evicting it loses it.
    No,
    /// On the current stream, awaiting its ack.
    OnThisStream,
    /// On a stream that ended before its ack: perhaps published, perhaps not.
    Earlier,
}

#[derive(Debug)]
struct Entry {
    batch: SpooledBatch,
    sent: Sent,
}

/// Bounded FIFO of batches with an ack mark and a send cursor.
#[derive(Debug)]
pub struct Spool {
    batches: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    retain_samples: u64,
    /// Samples in acknowledged batches still held.
    retained_samples: u64,
    /// Every batch up to here is acknowledged.
    acked_through: u64,
    /// Seq of the next batch to put on the current stream.
    next_to_send: u64,
    /// Evicted after being sent, before any ack: (seq, samples).
    evicted_in_flight: Vec<(u64, u32)>,
    /// Highest seq acknowledged on the current stream (0: none yet).
    stream_acked: u64,
    /// Batches that never reached an aggregator (evicted unsent, refused,
    /// or denied by a `Welcome`), since start.
    pub dropped_batches: u64,
    /// Samples in those batches.
    pub dropped_samples: u64,
    /// Batches evicted after being sent whose delivery nothing could confirm
    /// or deny (the aggregator they went to was replaced), since start.
    pub unconfirmed_batches: u64,
    /// Samples in those batches.
    pub unconfirmed_samples: u64,
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
            evicted_in_flight: Vec::new(),
            stream_acked: 0,
            dropped_batches: 0,
            dropped_samples: 0,
            unconfirmed_batches: 0,
            unconfirmed_samples: 0,
            overflowing: false,
        }
    }

    /// Appends a batch, evicting others (never this one) if the bound is exceeded.
    pub fn push(&mut self, batch: SpooledBatch) {
        self.bytes += batch.payload.len();
        self.batches.push_back(Entry {
            batch,
            sent: Sent::No,
        });
        let mut lost = false;
        while self.bytes > self.max_bytes && self.batches.len() > 1 {
            let i = self.victim();
            let old = self.remove(i);
            if old.batch.seq <= self.acked_through {
                continue;
            }
            match old.sent {
                Sent::No => {
                    self.drop_batch(old.batch.sample_count);
                    lost = true;
                }
                Sent::OnThisStream | Sent::Earlier => {
                    tracing::debug!(
                        seq = old.batch.seq,
                        "spool full: evicting a batch already sent; its ack or the next Welcome will tell whether it arrived"
                    );
                    self.evicted_in_flight
                        .push((old.batch.seq, old.batch.sample_count));
                }
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

    /// Index of the batch to evict (never the newest): the oldest, unless it
    /// is unacknowledged and was sent on a stream that broke (then the oldest
    /// other one); the oldest of those only if nothing else is left.
    fn victim(&self) -> usize {
        let newest = self.batches.len() - 1;
        self.batches
            .iter()
            .take(newest)
            .position(|e| e.batch.seq <= self.acked_through || e.sent != Sent::Earlier)
            .unwrap_or(0)
    }

    fn remove(&mut self, i: usize) -> Entry {
        let old = self.batches.remove(i).expect("index in range");
        self.bytes -= old.batch.payload.len();
        if old.batch.seq <= self.acked_through {
            self.retained_samples -= u64::from(old.batch.sample_count);
        }
        old
    }

    fn drop_batch(&mut self, samples: u32) {
        self.dropped_batches += 1;
        self.dropped_samples += u64::from(samples);
    }

    /// Marks every batch up to and including `seq` acknowledged, keeping the
    /// newest of them within the retention budget. Evicted batches it covers
    /// were delivered after all.
    pub fn ack_through(&mut self, seq: u64) {
        for e in &self.batches {
            if e.batch.seq > self.acked_through && e.batch.seq <= seq {
                self.retained_samples += u64::from(e.batch.sample_count);
            }
        }
        self.acked_through = self.acked_through.max(seq);
        self.stream_acked = self.stream_acked.max(seq);
        let acked = self.acked_through;
        self.evicted_in_flight.retain(|(s, _)| *s > acked);
        while self.retained_samples > self.retain_samples
            && self
                .batches
                .front()
                .is_some_and(|e| e.batch.seq <= self.acked_through)
        {
            self.remove(0);
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

    /// The aggregator refused a batch of the current stream and ended it.
    /// It reads and acknowledges a stream's batches in order, so the refused
    /// one is the first sent on this stream after the last ack this stream
    /// brought: a retained batch being resent to a fresh aggregator, or an
    /// unacknowledged one. It goes, so that it is not sent forever; an
    /// unacknowledged one is counted dropped (it reached no aggregator), a
    /// retained one is not (an earlier aggregator acknowledged it). Returns
    /// its seq.
    pub fn discard_refused(&mut self) -> Option<u64> {
        let after = self.stream_acked;
        let position = self
            .batches
            .iter()
            .position(|e| e.sent == Sent::OnThisStream && e.batch.seq > after);
        let Some(i) = position else {
            // Evicted while in flight: settled here, as never delivered.
            let i = self
                .evicted_in_flight
                .iter()
                .enumerate()
                .filter(|(_, (seq, _))| *seq > after)
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(i, _)| i)?;
            let (seq, samples) = self.evicted_in_flight.remove(i);
            self.drop_batch(samples);
            return Some(seq);
        };
        let e = self.remove(i);
        let seq = e.batch.seq;
        if seq > self.acked_through {
            self.drop_batch(e.batch.sample_count);
            // Everything before it was acknowledged on this stream.
            self.acked_through = seq;
        }
        Some(seq)
    }

    /// The batch the aggregator refused on the current stream, found as
    /// [`Spool::discard_refused`] finds it, if it is still held.
    pub fn refused(&self) -> Option<&SpooledBatch> {
        let after = self.stream_acked;
        self.batches
            .iter()
            .find(|e| e.sent == Sent::OnThisStream && e.batch.seq > after)
            .map(|e| &e.batch)
    }

    /// Replaces batch `seq` by `parts` (its samples, in order, in smaller
    /// batches, or fewer of them: those that can never be sent are gone),
    /// numbered from `seq` on; every later batch moves up by
    /// `parts.len() - 1`, as do the ack mark and the send cursor where they
    /// lie beyond it. Returns that shift (the caller's next seq moves too).
    ///
    /// Seqs only ever move up, so an aggregator that holds batches under
    /// their old numbers (a `Welcome.last_seq`, an ack) never acknowledges
    /// more than it holds: at worst it is sent samples again, and drops
    /// them as duplicates by topic seq. Batches evicted in flight keep
    /// their old numbers: those are the aggregator's.
    pub fn split(&mut self, seq: u64, parts: Vec<(u32, Bytes)>) -> u64 {
        let Some(i) = self.batches.iter().position(|e| e.batch.seq == seq) else {
            return 0;
        };
        let old = self.batches.remove(i).expect("index in range");
        self.bytes -= old.batch.payload.len();
        let acked = seq <= self.acked_through;
        if acked {
            self.retained_samples -= u64::from(old.batch.sample_count);
        }
        let shift = parts.len().saturating_sub(1) as u64;
        for e in self.batches.iter_mut().skip(i) {
            e.batch.seq += shift;
        }
        for mark in [&mut self.acked_through, &mut self.stream_acked] {
            if *mark >= seq {
                *mark += shift;
            }
        }
        if self.next_to_send > seq {
            self.next_to_send += shift;
        }
        for (k, (sample_count, payload)) in parts.into_iter().enumerate() {
            self.bytes += payload.len();
            if acked {
                self.retained_samples += u64::from(sample_count);
            }
            let batch = SpooledBatch {
                seq: seq + k as u64,
                sample_count,
                payload,
            };
            self.batches.insert(
                i + k,
                Entry {
                    batch,
                    sent: old.sent,
                },
            );
        }
        shift
    }

    /// The next batch to send on the current stream, without taking it.
    pub fn peek_unsent(&self) -> Option<&SpooledBatch> {
        let next_to_send = self.next_to_send;
        self.batches
            .iter()
            .find(|e| e.batch.seq >= next_to_send)
            .map(|e| &e.batch)
    }

    /// Seq of the oldest unacknowledged batch.
    pub fn oldest_unacked(&self) -> Option<u64> {
        self.batches
            .iter()
            .find(|e| e.batch.seq > self.acked_through)
            .map(|e| e.batch.seq)
    }

    /// The current stream ended: what it carried without an ack may or may
    /// not have been published.
    pub fn end_stream(&mut self) {
        for e in &mut self.batches {
            if e.sent == Sent::OnThisStream {
                e.sent = Sent::Earlier;
            }
        }
    }

    /// Starts a new stream, after `Welcome`. With `held = Some(last_seq)` the
    /// aggregator knows this run and holds every batch up to `last_seq`:
    /// those count as acknowledged, and any later one is known not to have
    /// arrived; unacknowledged batches will be sent, oldest first. With
    /// `None` it does not know this run (it restarted, or this agent failed
    /// over to it): the retained acknowledged batches are sent before them,
    /// and evicted batches that were in flight can no longer be settled.
    pub fn start_stream(&mut self, held: Option<u64>) {
        self.stream_acked = 0;
        match held {
            Some(last_seq) => {
                self.ack_through(last_seq);
                let lost = std::mem::take(&mut self.evicted_in_flight);
                if !lost.is_empty() {
                    tracing::warn!(
                        batches = lost.len(),
                        last_seq,
                        "batches evicted while in flight never reached the aggregator: dropped"
                    );
                }
                for (_, samples) in lost {
                    self.drop_batch(samples);
                }
                for e in &mut self.batches {
                    e.sent = Sent::No;
                }
                self.next_to_send = self.acked_through + 1;
            }
            None => {
                let unconfirmed = std::mem::take(&mut self.evicted_in_flight);
                if !unconfirmed.is_empty() {
                    let samples: u64 = unconfirmed.iter().map(|(_, n)| u64::from(*n)).sum();
                    tracing::warn!(
                        batches = unconfirmed.len(),
                        samples,
                        "batches evicted while in flight to an aggregator that is gone: delivery unknown"
                    );
                }
                for (_, samples) in unconfirmed {
                    self.unconfirmed_batches += 1;
                    self.unconfirmed_samples += u64::from(samples);
                }
                for e in &mut self.batches {
                    if e.sent == Sent::OnThisStream {
                        e.sent = Sent::Earlier;
                    }
                }
                self.next_to_send = 0;
            }
        }
    }

    /// The next batch to send on the current stream, if any; advances the cursor.
    pub fn next_unsent(&mut self) -> Option<SpooledBatch> {
        let next_to_send = self.next_to_send;
        let e = self
            .batches
            .iter_mut()
            .find(|e| e.batch.seq >= next_to_send)?;
        self.next_to_send = e.batch.seq + 1;
        e.sent = Sent::OnThisStream;
        Some(e.batch.clone())
    }

    /// Whether a batch awaits sending on the current stream.
    pub fn has_unsent(&self) -> bool {
        self.batches
            .back()
            .is_some_and(|e| e.batch.seq >= self.next_to_send)
    }

    /// Batches awaiting acknowledgement.
    pub fn unacked(&self) -> usize {
        self.batches
            .iter()
            .filter(|e| e.batch.seq > self.acked_through)
            .count()
    }

    /// Batches evicted after being sent whose fate an ack or the next
    /// `Welcome` will settle.
    pub fn evicted_in_flight(&self) -> usize {
        self.evicted_in_flight.len()
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
mod tests;
