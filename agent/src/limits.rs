//! How big a batch may be, and cutting samples into batches that fit.
//!
//! Three bounds meet here: the agent's own (`batch_max_samples`,
//! `batch_max_bytes`), what the aggregator says in `Welcome`
//! (`max_samples_per_batch`, `max_message_bytes`), and what a size refusal
//! taught about an aggregator that says nothing (an older one) or accepts
//! less than it says (a proxy in between). Samples are encoded one by one, so
//! batch sizes are exact; a spooled batch cut under looser limits is split
//! before it is sent. A sample that alone exceeds the aggregator's limit can
//! never be delivered: the caller gives it up, logs it and counts it.

use bytes::Bytes;
use hostpulse_proto::payload::ARRAY_HEADER_MAX;
use hostpulse_proto::v1::Welcome;
use hostpulse_proto::{BATCH_FRAMING_MAX, DecodeError, Sample, encode_sample, join_samples};

/// What an aggregator that does not say is assumed to accept: the defaults
/// of its `ingest.max_message_bytes` and `ingest.max_samples_per_batch`.
pub const ASSUMED_MESSAGE_BYTES: u64 = 4 << 20;
/// See [`ASSUMED_MESSAGE_BYTES`].
pub const ASSUMED_SAMPLES_PER_BATCH: u32 = 1000;

/// What one aggregator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggregatorLimits {
    /// Largest `AgentMessage`, in bytes after decompression.
    pub max_message_bytes: u64,
    /// Most samples in one batch.
    pub max_samples: u32,
    /// Whether the aggregator said so (`false`: assumed, it is older).
    pub announced: bool,
}

impl AggregatorLimits {
    /// Before any `Welcome`: the aggregator's defaults.
    pub fn assumed() -> Self {
        Self {
            max_message_bytes: ASSUMED_MESSAGE_BYTES,
            max_samples: ASSUMED_SAMPLES_PER_BATCH,
            announced: false,
        }
    }

    /// What `welcome` says; the defaults where it says nothing.
    pub fn from_welcome(welcome: &Welcome) -> Self {
        let announced = welcome.max_message_bytes > 0 && welcome.max_samples_per_batch > 0;
        if !announced {
            return Self::assumed();
        }
        Self {
            max_message_bytes: welcome.max_message_bytes,
            max_samples: welcome.max_samples_per_batch,
            announced,
        }
    }
}

/// The bounds batches are cut to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most samples in one batch.
    pub max_samples: usize,
    /// Batches are cut once they reach this many payload bytes: the agent's
    /// `batch_max_bytes`, within `max_bytes`. A larger sample goes alone.
    pub target_bytes: usize,
    /// Payload bytes no batch may exceed: the aggregator's message limit
    /// less the message's framing, or less where a refusal said so.
    pub max_bytes: usize,
}

impl Limits {
    /// The agent's own bounds within `aggregator`'s, and within `learned`
    /// (payload bytes a size refusal showed to be too many, less one).
    pub fn new(
        own_samples: usize,
        own_bytes: usize,
        aggregator: AggregatorLimits,
        learned: Option<usize>,
    ) -> Self {
        let said = usize::try_from(aggregator.max_message_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(BATCH_FRAMING_MAX);
        let max_bytes = learned.map_or(said, |l| l.min(said));
        Self {
            max_samples: own_samples.min(aggregator.max_samples as usize).max(1),
            target_bytes: own_bytes.min(max_bytes),
            max_bytes,
        }
    }

    /// Whether a batch may be sent as it is.
    pub fn admits(&self, sample_count: u32, payload_bytes: usize) -> bool {
        sample_count as usize <= self.max_samples && payload_bytes <= self.max_bytes
    }

    /// Whether a sample of `bytes` (encoded) can never be sent, even alone.
    pub fn too_large(&self, bytes: usize) -> bool {
        ARRAY_HEADER_MAX + bytes > self.max_bytes
    }
}

/// One sample, encoded as it goes into a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The sample's seq.
    pub seq: u64,
    /// Its MessagePack encoding.
    pub bytes: Vec<u8>,
}

impl Encoded {
    /// Encodes `sample`.
    pub fn new(sample: &Sample) -> Self {
        Self {
            seq: sample.seq,
            bytes: encode_sample(sample),
        }
    }
}

/// Samples cut into batches.
#[derive(Debug, Default)]
pub struct Cut {
    /// (sample count, payload) of each batch, in order.
    pub batches: Vec<(u32, Bytes)>,
    /// Samples too large to send at all: (seq, encoded bytes).
    pub too_large: Vec<(u64, usize)>,
}

/// Cuts `samples`, in order, into as few batches within `limits` as a
/// greedy pass gives; samples too large even alone are set apart.
pub fn cut(samples: Vec<Encoded>, limits: &Limits) -> Cut {
    let mut out = Cut::default();
    let mut group: Vec<Vec<u8>> = Vec::new();
    let mut bytes = ARRAY_HEADER_MAX;
    let flush = |group: &mut Vec<Vec<u8>>, bytes: &mut usize, out: &mut Cut| {
        if !group.is_empty() {
            out.batches
                .push((group.len() as u32, Bytes::from(join_samples(group))));
            group.clear();
            *bytes = ARRAY_HEADER_MAX;
        }
    };
    for s in samples {
        if limits.too_large(s.bytes.len()) {
            out.too_large.push((s.seq, s.bytes.len()));
            continue;
        }
        if group.len() >= limits.max_samples || bytes + s.bytes.len() > limits.target_bytes {
            flush(&mut group, &mut bytes, &mut out);
        }
        bytes += s.bytes.len();
        group.push(s.bytes);
    }
    flush(&mut group, &mut bytes, &mut out);
    out
}

/// Re-reads a spooled batch as its encoded samples.
pub fn samples_of(payload: &[u8], sample_count: u32) -> Result<Vec<Encoded>, DecodeError> {
    let samples = hostpulse_proto::read_batch(payload)?;
    if samples.len() != sample_count as usize {
        return Err(DecodeError::CountMismatch {
            declared: sample_count,
            actual: samples.len(),
        });
    }
    Ok(samples.iter().map(Encoded::new).collect())
}

/// Splits a batch the aggregator refused as too large: its samples in two
/// halves (by count), each cut within `limits`, so nothing is resent as it
/// was and a run of refusals converges.
pub fn halve(samples: Vec<Encoded>, limits: &Limits) -> Cut {
    let mut first = samples;
    let second = first.split_off(first.len().div_ceil(2));
    let mut out = cut(first, limits);
    let rest = cut(second, limits);
    out.batches.extend(rest.batches);
    out.too_large.extend(rest.too_large);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample of a little over `name_bytes` bytes.
    fn sample(seq: u64, name_bytes: usize) -> Encoded {
        let process = |len: usize| hostpulse_proto::Process {
            pid: 1,
            start_time: 1,
            name: "x".repeat(len),
            cpu_pct: 0.0,
            memory_bytes: 0,
        };
        let mut top_cpu = vec![process(200); name_bytes / 200];
        top_cpu.push(process(name_bytes % 200));
        Encoded::new(&Sample {
            seq,
            timestamp_ms: 1_795_000_000_000,
            processes: Some(hostpulse_proto::Processes {
                count: 1,
                top_cpu,
                top_memory: vec![],
                others: Default::default(),
            }),
            ..Sample::default()
        })
    }

    fn seqs(cut: &Cut) -> Vec<Vec<u64>> {
        cut.batches
            .iter()
            .map(|(n, p)| {
                let back = samples_of(p, *n).unwrap();
                back.iter().map(|s| s.seq).collect()
            })
            .collect()
    }

    #[test]
    fn the_aggregators_limits_win_over_the_agents_and_say_nothing_means_the_defaults() {
        let welcome = Welcome {
            max_message_bytes: 20_000,
            max_samples_per_batch: 50,
            ..Welcome::default()
        };
        let l = Limits::new(
            10_000,
            1 << 20,
            AggregatorLimits::from_welcome(&welcome),
            None,
        );
        assert_eq!(l.max_samples, 50);
        assert_eq!(l.max_bytes, 20_000 - BATCH_FRAMING_MAX);
        assert_eq!(l.target_bytes, l.max_bytes);
        let old = AggregatorLimits::from_welcome(&Welcome::default());
        assert!(!old.announced);
        let l = Limits::new(10, 1 << 20, old, Some(5000));
        assert_eq!(
            (l.max_samples, l.max_bytes, l.target_bytes),
            (10, 5000, 5000)
        );
    }

    #[test]
    fn batches_are_cut_by_bytes_and_count_in_order_and_a_sample_too_large_is_set_apart() {
        let samples = vec![
            sample(1, 200),
            sample(2, 200),
            sample(3, 200),
            sample(4, 2000),
            sample(5, 800),
            sample(6, 10),
            sample(7, 10),
            sample(8, 10),
            sample(9, 10),
        ];
        let size = |i: usize| samples[i].bytes.len();
        // Room for samples 1 and 2, not 3; sample 5 fits alone, 4 never.
        let limits = Limits {
            max_samples: 3,
            target_bytes: ARRAY_HEADER_MAX + size(0) + size(1),
            max_bytes: ARRAY_HEADER_MAX + size(4),
        };
        assert!(limits.too_large(size(3)) && size(4) > limits.target_bytes);
        let out = cut(samples, &limits);
        assert_eq!(
            seqs(&out),
            vec![vec![1, 2], vec![3], vec![5], vec![6, 7, 8], vec![9]]
        );
        assert_eq!(out.too_large.len(), 1);
        assert_eq!(out.too_large[0].0, 4);
        assert!(out.batches.iter().all(|(n, p)| limits.admits(*n, p.len())));
    }

    #[test]
    fn a_refused_batch_is_halved_and_nothing_comes_back_unchanged() {
        let limits = Limits {
            max_samples: 100,
            target_bytes: 1 << 20,
            max_bytes: 1 << 20,
        };
        let all: Vec<Encoded> = (1..=5).map(|s| sample(s, 50)).collect();
        let whole = cut(all.clone(), &limits);
        assert_eq!(seqs(&whole), vec![vec![1, 2, 3, 4, 5]]);
        let (n, payload) = &whole.batches[0];
        let back = samples_of(payload, *n).unwrap();
        let halves = halve(back, &limits);
        assert_eq!(seqs(&halves), vec![vec![1, 2, 3], vec![4, 5]]);
    }
}
