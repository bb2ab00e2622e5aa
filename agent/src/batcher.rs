//! From samples to spooled batches that the aggregator accepts.
//!
//! The [`Batcher`] holds the samples not yet in a batch (encoded as they
//! arrive, so sizes are exact), numbers batches, and keeps the limits of the
//! aggregator in use ([`crate::limits`]): set from each `Welcome`, lowered
//! by size refusals (remembered per address). Nothing over a limit is ever
//! sent as it is: a spooled batch over the limits is split before it goes,
//! a batch refused as too large (`OUT_OF_RANGE`, `RESOURCE_EXHAUSTED`) is
//! halved, and a sample that can never fit is given up, logged and counted
//! (`AgentStatus::oversized_samples`). The pipeline task owns it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use hostpulse_proto::Sample;
use hostpulse_proto::v1::Welcome;

use crate::limits::{self, AggregatorLimits, Cut, Encoded, Limits};
use crate::spool::{Spool, SpooledBatch};
use crate::status::AgentStatus;

/// Pending samples, batch numbering and the limits batches are cut to.
#[derive(Debug)]
pub struct Batcher {
    own_samples: usize,
    own_bytes: usize,
    pending: Vec<Encoded>,
    pending_bytes: usize,
    next_seq: u64,
    limits: Limits,
    /// Payload bytes each address showed to be too many, less one.
    learned: HashMap<String, usize>,
    /// (address, limits) whose comparison with ours was logged.
    logged: HashSet<(String, AggregatorLimits)>,
}

impl Batcher {
    /// Cuts batches of at most `own_samples` samples and about `own_bytes`
    /// bytes (`batch_max_samples`, `batch_max_bytes`), within the
    /// aggregator's limits (its defaults until a `Welcome` says).
    pub fn new(own_samples: usize, own_bytes: usize) -> Self {
        Self {
            own_samples,
            own_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            next_seq: 1,
            limits: Limits::new(own_samples, own_bytes, AggregatorLimits::assumed(), None),
            learned: HashMap::new(),
            logged: HashSet::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether no sample waits for a batch.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the pending samples make a full batch.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limits.max_samples
            || self.pending_bytes >= self.limits.target_bytes
    }

    /// Takes a sample. One that can never be sent is given up at once; one
    /// that would overfill the pending batch first closes it.
    pub fn add(&mut self, sample: &Sample, spool: &mut Spool, status: &AgentStatus) {
        let encoded = Encoded::new(sample);
        if self.limits.too_large(encoded.bytes.len()) {
            give_up(&[(encoded.seq, encoded.bytes.len())], &self.limits, status);
            return;
        }
        if !self.pending.is_empty()
            && self.pending_bytes + encoded.bytes.len() > self.limits.target_bytes
        {
            self.cut(spool, status);
        }
        self.pending_bytes += encoded.bytes.len();
        self.pending.push(encoded);
    }

    /// Moves the pending samples into batches at the end of the spool.
    pub fn cut(&mut self, spool: &mut Spool, status: &AgentStatus) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        let Cut { batches, too_large } =
            limits::cut(std::mem::take(&mut self.pending), &self.limits);
        give_up(&too_large, &self.limits, status);
        for (sample_count, payload) in batches {
            spool.push(SpooledBatch {
                seq: self.next_seq,
                sample_count,
                payload,
            });
            self.next_seq += 1;
        }
        status
            .spooled_batches
            .store(spool.unacked() as u64, Ordering::Relaxed);
    }

    /// A stream to `address` began with `welcome`: its limits (and what
    /// refusals taught about it) are in force from now on. How they compare
    /// with this agent's own is logged once per address and limits.
    pub fn connected(&mut self, address: &str, welcome: &Welcome) {
        let theirs = AggregatorLimits::from_welcome(welcome);
        self.limits = Limits::new(
            self.own_samples,
            self.own_bytes,
            theirs,
            self.learned.get(address).copied(),
        );
        if !self.logged.insert((address.to_string(), theirs)) {
            return;
        }
        let own_message = (self.own_bytes + hostpulse_proto::BATCH_FRAMING_MAX) as u64;
        if !theirs.announced {
            tracing::info!(
                %address,
                assumed_max_message_bytes = theirs.max_message_bytes,
                assumed_max_samples_per_batch = theirs.max_samples,
                "the aggregator does not say its limits (an older version); assuming its defaults"
            );
        } else if self.own_samples > theirs.max_samples as usize
            || own_message > theirs.max_message_bytes
        {
            tracing::warn!(
                %address,
                batch_max_samples = self.own_samples,
                batch_max_bytes = self.own_bytes,
                aggregator_max_samples_per_batch = theirs.max_samples,
                aggregator_max_message_bytes = theirs.max_message_bytes,
                "this agent's batch limits exceed the aggregator's: batches are cut to the aggregator's"
            );
        }
    }

    /// Splits the next batch to send while it exceeds the limits in force
    /// (it was cut under looser ones, or for another aggregator).
    pub fn fit_next(&mut self, spool: &mut Spool, status: &AgentStatus) {
        while let Some(b) = spool.peek_unsent() {
            if self.limits.admits(b.sample_count, b.payload.len()) {
                return;
            }
            let b = b.clone();
            let cut = match limits::samples_of(&b.payload, b.sample_count) {
                Ok(samples) => limits::cut(samples, &self.limits),
                Err(e) => {
                    tracing::error!(seq = b.seq, cause = %e, "cannot re-read a spooled batch to split it; giving it up");
                    Cut::default()
                }
            };
            tracing::info!(
                seq = b.seq,
                samples = b.sample_count,
                bytes = b.payload.len(),
                parts = cut.batches.len(),
                max_samples = self.limits.max_samples,
                max_bytes = self.limits.max_bytes,
                "batch over the aggregator's limits: split before sending"
            );
            self.replace(spool, &b, cut, status);
        }
    }

    /// The aggregator at `address` ended the stream refusing a message as
    /// too large. The refused batch (the first this stream did not
    /// acknowledge) is halved, or given up if it is a single sample, and
    /// the address's limit is lowered below it. Call before
    /// [`Spool::end_stream`].
    pub fn refused_as_too_large(
        &mut self,
        address: &str,
        cause: &str,
        spool: &mut Spool,
        status: &AgentStatus,
    ) {
        let Some(b) = spool.refused().cloned() else {
            return;
        };
        let below = b.payload.len().saturating_sub(1);
        let learned = self.learned.entry(address.to_string()).or_insert(below);
        *learned = (*learned).min(below);
        self.limits.max_bytes = self.limits.max_bytes.min(below);
        self.limits.target_bytes = self.limits.target_bytes.min(below);
        tracing::warn!(
            %address,
            seq = b.seq,
            samples = b.sample_count,
            bytes = b.payload.len(),
            %cause,
            "the aggregator refused a batch as too large: splitting it, and keeping batches under that size"
        );
        let cut = match limits::samples_of(&b.payload, b.sample_count) {
            Ok(samples) if samples.len() > 1 => limits::halve(samples, &self.limits),
            Ok(samples) => Cut {
                batches: Vec::new(),
                too_large: samples.iter().map(|s| (s.seq, s.bytes.len())).collect(),
            },
            Err(e) => {
                tracing::error!(seq = b.seq, cause = %e, "cannot re-read the refused batch; giving it up");
                Cut::default()
            }
        };
        self.replace(spool, &b, cut, status);
    }

    fn replace(&mut self, spool: &mut Spool, b: &SpooledBatch, cut: Cut, status: &AgentStatus) {
        give_up(&cut.too_large, &self.limits, status);
        status.split_batches.fetch_add(1, Ordering::Relaxed);
        self.next_seq += spool.split(b.seq, cut.batches);
    }
}

/// Gives up samples that can never be sent: logged and counted.
fn give_up(samples: &[(u64, usize)], limits: &Limits, status: &AgentStatus) {
    for (seq, bytes) in samples {
        status.oversized_samples.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            seq,
            bytes,
            max_bytes = limits.max_bytes,
            "a sample is larger than the aggregator accepts in one message: given up"
        );
    }
}
