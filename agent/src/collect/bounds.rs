//! The payload bounds every aggregator enforces, applied to each sample
//! before it leaves the collector: names are truncated (at a character
//! boundary) to `MAX_NAME_BYTES`, per-core lists to `MAX_PER_CORE` entries
//! and top-process lists to `MAX_TOP_PROCESSES`, so a real host, however
//! large or oddly named, never has a batch refused.

use hostpulse_proto::{MAX_NAME_BYTES, MAX_PER_CORE, MAX_TOP_PROCESSES, Sample};

/// Brings `sample` within the bounds; returns whether anything was cut.
pub(super) fn bound(sample: &mut Sample) -> bool {
    let mut cut = false;
    if let Some(cpu) = &mut sample.cpu {
        cut |= truncate_list(&mut cpu.per_core_pct, MAX_PER_CORE);
    }
    if let Some(s) = &mut sample.system {
        cut |= truncate_list(&mut s.per_core_frequency_mhz, MAX_PER_CORE);
    }
    if let Some(p) = &mut sample.processes {
        cut |= truncate_list(&mut p.top_cpu, MAX_TOP_PROCESSES);
        cut |= truncate_list(&mut p.top_memory, MAX_TOP_PROCESSES);
        for proc in p.top_cpu.iter_mut().chain(&mut p.top_memory) {
            cut |= truncate_name(&mut proc.name);
        }
    }
    if let Some(n) = &mut sample.network {
        for i in &mut n.interfaces {
            cut |= truncate_name(&mut i.name);
        }
    }
    if let Some(d) = &mut sample.disk {
        for dev in &mut d.devices {
            cut |= truncate_name(&mut dev.name);
        }
    }
    if let Some(f) = &mut sample.filesystems {
        for m in &mut f.mounts {
            cut |= truncate_name(&mut m.mount);
            cut |= truncate_name(&mut m.device);
            cut |= truncate_name(&mut m.fs_type);
        }
    }
    if let Some(t) = &mut sample.temperatures {
        for s in &mut t.sensors {
            cut |= truncate_name(&mut s.label);
        }
    }
    cut
}

fn truncate_list<T>(list: &mut Vec<T>, max: usize) -> bool {
    let cut = list.len() > max;
    list.truncate(max);
    cut
}

/// Truncates `name` to at most `MAX_NAME_BYTES`, never inside a character.
fn truncate_name(name: &mut String) -> bool {
    if name.len() <= MAX_NAME_BYTES {
        return false;
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use hostpulse_proto::{Cpu, Filesystem, Filesystems, Process, ProcessRollup, Processes};

    use super::*;

    #[test]
    fn an_oversized_sample_is_brought_within_the_bounds_the_aggregator_checks() {
        let process = Process {
            pid: 1,
            start_time: 1,
            // Two-byte characters: the cut falls between them.
            name: "é".repeat(MAX_NAME_BYTES),
            cpu_pct: 1.0,
            memory_bytes: 1,
        };
        let mut s = Sample {
            seq: 1,
            timestamp_ms: 1,
            cpu: Some(Cpu {
                total_pct: 1.0,
                per_core_pct: vec![1.0; 4 * MAX_PER_CORE],
            }),
            processes: Some(Processes {
                count: 1000,
                top_cpu: vec![process.clone(); 3 * MAX_TOP_PROCESSES],
                top_memory: vec![process; 2],
                others: ProcessRollup::default(),
            }),
            filesystems: Some(Filesystems {
                mounts: vec![Filesystem {
                    mount: format!("/{}", "m".repeat(1000)),
                    device: "/dev/vda".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 10,
                    used_bytes: 5,
                    free_bytes: 5,
                }],
            }),
            ..Sample::default()
        };
        assert!(s.validate().is_err());
        assert!(bound(&mut s));
        s.validate().expect("within bounds");
        let p = s.processes.as_ref().unwrap();
        assert_eq!(p.top_cpu.len(), MAX_TOP_PROCESSES);
        assert_eq!(p.top_cpu[0].name.len(), MAX_NAME_BYTES);
        assert_eq!(s.cpu.as_ref().unwrap().per_core_pct.len(), MAX_PER_CORE);
        assert_eq!(
            s.filesystems.as_ref().unwrap().mounts[0].mount.len(),
            MAX_NAME_BYTES
        );
        assert!(!bound(&mut s), "nothing more to cut");
    }
}
