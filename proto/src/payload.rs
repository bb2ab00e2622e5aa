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
    Disk, DiskDevice, Filesystem, Filesystems, Interface, Network, Sensor, SystemInfo, Temperatures,
};

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
            for (i, v) in cpu.per_core_pct.iter().enumerate() {
                check_pct(&format!("cpu.per_core_pct[{i}]"), *v, 100.0).map_err(bad)?;
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
            for proc in p.top_cpu.iter().chain(&p.top_memory) {
                // Per-process CPU is relative to one core, so a busy
                // multi-threaded process exceeds 100.
                check_pct("processes cpu_pct", proc.cpu_pct, f32::MAX).map_err(bad)?;
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

fn check_pct(name: &str, v: f32, max: f32) -> Result<(), String> {
    // A little slack above 100: kernels report rounding overshoot.
    if !v.is_finite() || v < 0.0 || v > max * 1.01 {
        Err(format!("{name} is {v}, outside 0..={max}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            timestamp_ms: 1_795_000_000_000 + seq as i64,
            cpu: Some(Cpu {
                total_pct: 12.5,
                per_core_pct: vec![10.0, 15.0],
            }),
            memory: Some(Memory {
                total_bytes: 8 << 30,
                used_bytes: 3 << 30,
                available_bytes: 5 << 30,
                swap_total_bytes: 1 << 30,
                swap_used_bytes: 0,
            }),
            load: Some(Load {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            }),
            processes: Some(Processes {
                count: 3,
                top_cpu: vec![Process {
                    pid: 42,
                    start_time: 1_795_000_000,
                    name: "postgres".into(),
                    cpu_pct: 150.0,
                    memory_bytes: 1 << 20,
                }],
                top_memory: vec![],
                others: ProcessRollup {
                    count: 2,
                    cpu_pct: 1.0,
                    memory_bytes: 4096,
                },
            }),
            network: Some(Network {
                interfaces: vec![Interface {
                    name: "lo".into(),
                    rx_bytes_per_sec: 1024.5,
                    tx_bytes_per_sec: 1024.5,
                    rx_packets_per_sec: 3.0,
                    tx_packets_per_sec: 3.0,
                    rx_bytes_total: 1 << 20,
                    tx_bytes_total: 1 << 20,
                    ..Interface::default()
                }],
            }),
            disk: Some(Disk {
                devices: vec![DiskDevice {
                    name: "vda".into(),
                    read_bytes_per_sec: 4096.0,
                    write_bytes_per_sec: 0.0,
                    read_bytes_total: 1 << 30,
                    written_bytes_total: 1 << 29,
                }],
            }),
            filesystems: Some(Filesystems {
                mounts: vec![Filesystem {
                    mount: "/".into(),
                    device: "/dev/vda".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 100 << 30,
                    used_bytes: 40 << 30,
                    free_bytes: 60 << 30,
                }],
            }),
            system: Some(SystemInfo {
                uptime_secs: 3600,
                boot_time: 1_794_996_400,
                logical_cores: 2,
                physical_cores: Some(1),
                cpu_frequency_mhz: 2600,
                per_core_frequency_mhz: vec![2600, 2600],
            }),
            temperatures: Some(Temperatures {
                sensors: vec![Sensor {
                    label: "acpitz temp1".into(),
                    celsius: 41.5,
                    max_celsius: Some(55.0),
                    critical_celsius: None,
                }],
            }),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let samples = vec![sample(1), sample(2)];
        let bytes = encode_batch(&samples);
        let back = decode_batch(&bytes, 2, 100).unwrap();
        assert_eq!(back, samples);
    }

    #[test]
    fn absent_sections_round_trip_as_absent() {
        let mut s = sample(1);
        s.cpu = None;
        s.processes = None;
        let back = decode_batch(&encode_batch(std::slice::from_ref(&s)), 1, 10).unwrap();
        assert_eq!(back[0], s);
    }

    #[test]
    fn corrupt_bytes_are_refused() {
        let err = decode_batch(&[0xc1, 0x00, 0xff], 1, 10).unwrap_err();
        assert!(matches!(err, DecodeError::MessagePack(_)), "{err}");
    }

    #[test]
    fn count_is_checked_before_and_after_decoding() {
        let bytes = encode_batch(&[sample(1)]);
        let err = decode_batch(&bytes, 1_000_000_000, 1000).unwrap_err();
        assert!(err.to_string().contains("limit of 1000"), "{err}");
        let err = decode_batch(&bytes, 2, 1000).unwrap_err();
        assert!(
            matches!(err, DecodeError::CountMismatch { actual: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn impossible_values_are_refused() {
        let mut s = sample(1);
        s.cpu.as_mut().unwrap().total_pct = f32::NAN;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("cpu.total_pct")
        );
        let mut s = sample(1);
        s.load.as_mut().unwrap().one = -1.0;
        assert!(s.validate().unwrap_err().to_string().contains("load.one"));
        let mut s = sample(1);
        s.memory.as_mut().unwrap().used_bytes = u64::MAX;
        assert!(s.validate().is_err());
    }

    #[test]
    fn impossible_signal_values_are_refused() {
        let refused = |f: &dyn Fn(&mut Sample), needle: &str| {
            let mut s = sample(1);
            f(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        refused(
            &|s| s.network.as_mut().unwrap().interfaces[0].rx_bytes_per_sec = f64::NAN,
            "rx_bytes_per_sec",
        );
        refused(
            &|s| s.disk.as_mut().unwrap().devices[0].write_bytes_per_sec = -1.0,
            "write_bytes_per_sec",
        );
        refused(
            &|s| s.filesystems.as_mut().unwrap().mounts[0].used_bytes = u64::MAX,
            "exceeds total",
        );
        refused(
            &|s| s.system.as_mut().unwrap().logical_cores = 0,
            "logical_cores",
        );
        refused(
            &|s| s.system.as_mut().unwrap().physical_cores = Some(3),
            "physical_cores",
        );
        refused(
            &|s| s.temperatures.as_mut().unwrap().sensors[0].celsius = f32::INFINITY,
            "celsius",
        );
    }

    #[test]
    fn lists_and_names_are_bounded() {
        let mut s = sample(1);
        let lo = s.network.as_ref().unwrap().interfaces[0].clone();
        s.network.as_mut().unwrap().interfaces = vec![lo; signals::MAX_ENTRIES + 1];
        assert!(s.validate().unwrap_err().to_string().contains("more than"));
        let mut s = sample(1);
        s.filesystems.as_mut().unwrap().mounts[0].mount = "/x".repeat(signals::MAX_NAME_BYTES);
        assert!(s.validate().unwrap_err().to_string().contains("bytes"));
        let mut s = sample(1);
        s.temperatures.as_mut().unwrap().sensors[0].label = String::new();
        assert!(s.validate().is_err());
    }

    #[test]
    fn unknown_fields_from_a_newer_agent_are_ignored() {
        // A newer writer adds a field; this reader must still decode the rest.
        #[derive(Serialize)]
        struct Newer<'a> {
            #[serde(flatten)]
            base: &'a Sample,
            gpu: Vec<u32>,
        }
        let s = sample(7);
        let bytes = rmp_serde::to_vec_named(&[Newer {
            base: &s,
            gpu: vec![1, 2],
        }])
        .unwrap();
        assert_eq!(decode_batch(&bytes, 1, 10).unwrap()[0], s);
    }
}
