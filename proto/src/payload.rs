//! The MessagePack payload of a `Batch`: a list of [`Sample`]s.
//!
//! Encoded as MessagePack maps with field names (`rmp_serde::to_vec_named`):
//! about 1.8x larger than positional arrays before compression, but a reader
//! and a writer of different versions still agree on every field they both
//! know, and gRPC gzip removes most of the difference on the wire. Optional
//! sections (`cpu`, `memory`, ...) are absent when their collector is off.
//! [`SCHEMA_VERSION`] is sent in `Hello` and bumped on incompatible change;
//! adding an optional section is compatible (a reader skips what it does not
//! know), so the sections in [`signals`] came without a bump.

use serde::{Deserialize, Serialize};

pub mod signals;

pub use signals::{
    Disk, DiskDevice, Filesystem, Filesystems, Interface, MAX_NAME_BYTES, Network, Sensor,
    SystemInfo, Temperatures,
};

/// Most per-core entries in one list (`cpu.per_core_pct`,
/// `system.per_core_frequency_mhz`); a larger machine's agent sends the first ones.
pub const MAX_PER_CORE: usize = 1024;
/// Most processes in one top list (`processes.top_cpu`, `processes.top_memory`).
pub const MAX_TOP_PROCESSES: usize = 100;
/// Most bytes a MessagePack array header takes in front of a batch's samples.
pub const ARRAY_HEADER_MAX: usize = 5;

/// Version of this payload schema, sent in `Hello.schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Refusals of the payload decoder, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a MessagePack array of samples.
    #[error("batch is not valid MessagePack samples: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    /// The batch header and its content disagree.
    #[error("batch declares {declared} samples but holds {actual}")]
    CountMismatch {
        /// `sample_count` from the batch header.
        declared: u32,
        /// Samples actually decoded.
        actual: usize,
    },
    /// More samples than the receiver accepts in one batch.
    #[error("batch holds {count} samples, more than the limit of {limit}")]
    TooManySamples {
        /// Samples declared.
        count: u64,
        /// The receiver's limit.
        limit: usize,
    },
    /// A sample holds a value that cannot be true (NaN, negative, inconsistent).
    #[error("sample seq {seq}: {reason}")]
    Invalid {
        /// The offending sample's seq.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// One observation of a host, taken at `timestamp_ms`.
///
/// `Default` gives seq 0, which [`validate`](Sample::validate) refuses: it is
/// only a base to fill in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sample sequence number: consecutive within the agent's run epoch and
    /// rising across runs (the agent starts each run above the last). It is
    /// the `seq` of every topic update made from this sample.
    pub seq: u64,
    /// When the sample was taken, Unix time in milliseconds (host clock).
    pub timestamp_ms: i64,
    /// CPU usage; absent when the collector is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory and swap; absent when the collector is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Load average; absent when the collector is off or the platform has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Process table summary; absent when the collector is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Processes>,
    /// Network interfaces; absent when the collector is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Block device I/O; absent when the collector is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Filesystem space; absent when the collector is off and in samples
    /// between two of its (slower) refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystems: Option<Filesystems>,
    /// Uptime, boot time, core counts and frequency; absent when the
    /// collector is off and between two of its refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    /// Temperature sensors; absent when the collector is off, between two of
    /// its refreshes, and on hosts without readable sensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperatures: Option<Temperatures>,
}

/// CPU usage in percent of each core (0–100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Average usage over all cores, 0–100.
    pub total_pct: f32,
    /// Usage of each logical core, 0–100, in core order.
    pub per_core_pct: Vec<f32>,
}

/// Memory and swap in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Installed RAM.
    pub total_bytes: u64,
    /// RAM in use.
    pub used_bytes: u64,
    /// RAM available for new work without swapping.
    pub available_bytes: u64,
    /// Swap size.
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
}

/// Load average over 1, 5 and 15 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// 1-minute load average.
    pub one: f64,
    /// 5-minute load average.
    pub five: f64,
    /// 15-minute load average.
    pub fifteen: f64,
}

/// The process table, summarised so the payload stays small on busy hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processes {
    /// Number of processes on the host (threads excluded).
    pub count: u32,
    /// Top N by CPU, highest first.
    pub top_cpu: Vec<Process>,
    /// Top N by resident memory, highest first.
    pub top_memory: Vec<Process>,
    /// Every process in neither list, summed.
    pub others: ProcessRollup,
}

/// One process. `(pid, start_time)` identifies it: a reused pid has another start time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Start time, Unix seconds.
    pub start_time: u64,
    /// Executable name.
    pub name: String,
    /// CPU usage relative to one core (100 = one full core).
    pub cpu_pct: f32,
    /// Resident memory.
    pub memory_bytes: u64,
}

/// Sum over the processes not listed individually.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRollup {
    /// How many processes.
    pub count: u32,
    /// Their CPU usage summed (100 = one full core).
    pub cpu_pct: f32,
    /// Their resident memory summed.
    pub memory_bytes: u64,
}

/// Encodes samples as the MessagePack payload of one `Batch`.
pub fn encode_batch(samples: &[Sample]) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(samples).expect("encoding samples to MessagePack")
}

/// Encodes one sample as it appears inside a batch payload, so a sender can
/// size batches sample by sample and [`join_samples`] them without encoding
/// twice.
pub fn encode_sample(sample: &Sample) -> Vec<u8> {
    rmp_serde::to_vec_named(sample).expect("encoding a sample to MessagePack")
}

/// A batch payload made of samples each encoded by [`encode_sample`]: the
/// same bytes [`encode_batch`] gives for those samples.
pub fn join_samples<B: AsRef<[u8]>>(encoded: &[B]) -> Vec<u8> {
    let body: usize = encoded.iter().map(|e| e.as_ref().len()).sum();
    let mut out = Vec::with_capacity(ARRAY_HEADER_MAX + body);
    let n = encoded.len();
    // MessagePack fixarray, array 16 or array 32.
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xdc);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    for e in encoded {
        out.extend_from_slice(e.as_ref());
    }
    out
}

/// Decodes and validates a `Batch` payload.
///
/// `declared` is the batch header's `sample_count`; it is checked against
/// `max_samples` before decoding so a batch claiming a huge count is refused
/// without work, and against the decoded length afterwards.
pub fn decode_batch(
    bytes: &[u8],
    declared: u32,
    max_samples: usize,
) -> Result<Vec<Sample>, DecodeError> {
    if declared as usize > max_samples {
        return Err(DecodeError::TooManySamples {
            count: declared.into(),
            limit: max_samples,
        });
    }
    let samples: Vec<Sample> = rmp_serde::from_slice(bytes)?;
    if samples.len() != declared as usize {
        return Err(DecodeError::CountMismatch {
            declared,
            actual: samples.len(),
        });
    }
    for sample in &samples {
        sample.validate()?;
    }
    Ok(samples)
}

/// Decodes a batch payload without checking it: for a sender re-reading
/// batches it encoded itself (to split them), never for what arrives.
pub fn read_batch(bytes: &[u8]) -> Result<Vec<Sample>, DecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

impl Sample {
    /// Refuses values no real host produces: NaN, infinities, negative
    /// percentages or loads, used memory above total.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let bad = |reason: String| DecodeError::Invalid {
            seq: self.seq,
            reason,
        };
        if self.seq == 0 {
            return Err(bad("seq 0 is reserved".into()));
        }
        if self.timestamp_ms <= 0 {
            return Err(bad(format!(
                "timestamp_ms {} is not a time",
                self.timestamp_ms
            )));
        }
        if let Some(cpu) = &self.cpu {
            check_pct("cpu.total_pct", cpu.total_pct, 100.0).map_err(bad)?;
            signals::check_len("cpu.per_core_pct", cpu.per_core_pct.len(), MAX_PER_CORE)
                .map_err(bad)?;
            for (i, v) in cpu.per_core_pct.iter().enumerate() {
                // The name is formatted only for a refusal: this runs for
                // every core of every sample.
                check_pct(format_args!("cpu.per_core_pct[{i}]"), *v, 100.0).map_err(bad)?;
            }
        }
        if let Some(m) = &self.memory {
            if m.used_bytes > m.total_bytes || m.available_bytes > m.total_bytes {
                return Err(bad("memory used or available exceeds total".into()));
            }
            if m.swap_used_bytes > m.swap_total_bytes {
                return Err(bad("swap used exceeds swap total".into()));
            }
        }
        if let Some(l) = &self.load {
            for (name, v) in [("one", l.one), ("five", l.five), ("fifteen", l.fifteen)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!("load.{name} is {v}")));
                }
            }
        }
        if let Some(p) = &self.processes {
            for (list, entries) in [("top_cpu", &p.top_cpu), ("top_memory", &p.top_memory)] {
                signals::check_len(
                    format_args!("processes.{list}"),
                    entries.len(),
                    MAX_TOP_PROCESSES,
                )
                .map_err(bad)?;
            }
            for proc in p.top_cpu.iter().chain(&p.top_memory) {
                // Per-process CPU is relative to one core, so a busy
                // multi-threaded process exceeds 100.
                check_pct("processes cpu_pct", proc.cpu_pct, f32::MAX).map_err(bad)?;
                if proc.name.len() > MAX_NAME_BYTES {
                    return Err(bad(format!(
                        "process {} name of {} bytes, more than {MAX_NAME_BYTES}",
                        proc.pid,
                        proc.name.len()
                    )));
                }
            }
            check_pct("processes.others.cpu_pct", p.others.cpu_pct, f32::MAX).map_err(bad)?;
        }
        if let Some(n) = &self.network {
            n.validate().map_err(bad)?;
        }
        if let Some(d) = &self.disk {
            d.validate().map_err(bad)?;
        }
        if let Some(f) = &self.filesystems {
            f.validate().map_err(bad)?;
        }
        if let Some(s) = &self.system {
            s.validate().map_err(bad)?;
        }
        if let Some(t) = &self.temperatures {
            t.validate().map_err(bad)?;
        }
        Ok(())
    }
}

fn check_pct(name: impl std::fmt::Display, v: f32, max: f32) -> Result<(), String> {
    // A little slack above 100: kernels report rounding overshoot.
    if !v.is_finite() || v < 0.0 || v > max * 1.01 {
        Err(format!("{name} is {v}, outside 0..={max}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
