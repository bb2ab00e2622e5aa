//! The agent's live counters, shared between its tasks and readable by
//! tests and anything embedding the agent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Live counters of a running agent, readable from other tasks and tests.
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// Seq of the last sample taken.
    pub last_sample_seq: AtomicU64,
    /// Samples taken since start.
    pub samples_taken: AtomicU64,
    /// Seq of the last batch the aggregator acknowledged.
    pub acked_batch_seq: AtomicU64,
    /// Batches awaiting acknowledgement.
    pub spooled_batches: AtomicU64,
    /// Payload bytes currently in the spool (retained acknowledged batches included).
    pub spooled_bytes: AtomicU64,
    /// Batches that never reached an aggregator: evicted from the full
    /// spool before they were sent, refused, or sent and evicted but missing
    /// from the aggregator that knows this run.
    pub dropped_batches: AtomicU64,
    /// Samples in those batches.
    pub dropped_samples: AtomicU64,
    /// Batches evicted from the full spool after they were sent, whose ack
    /// never came and whose aggregator was replaced by one that does not know
    /// this run: perhaps delivered, perhaps not. Not counted as dropped.
    pub unconfirmed_batches: AtomicU64,
    /// Samples in those batches.
    pub unconfirmed_samples: AtomicU64,
    /// Whether a stream is established.
    pub connected: AtomicBool,
    /// Streams established since start.
    pub connections: AtomicU64,
    /// Connection attempts that failed (unreachable, refused, timed out).
    pub failed_connects: AtomicU64,
    /// Why the last connection attempt failed or the last stream ended.
    pub last_link_error: Mutex<String>,
    /// Shortest sampling interval the aggregator currently asks for (0: none).
    pub interval_hint_ms: AtomicU64,
    /// The sampling interval in force, in milliseconds.
    pub interval_ms: AtomicU64,
    /// Samples given up because even alone they exceed the aggregator's
    /// message limit (logged each time); not counted in `dropped_samples`.
    pub oversized_samples: AtomicU64,
    /// Batches split because they exceeded the aggregator's limits (said in
    /// `Welcome`, or learned from a size refusal).
    pub split_batches: AtomicU64,
    /// Connection attempts refused because another agent process holds
    /// this agent id on the aggregator (`ALREADY_EXISTS`).
    pub refused_as_duplicate: AtomicU64,
}
