//! Tests of the payload: round trips, refusals, bounds and encoding.

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

#[test]
fn per_core_top_lists_and_process_names_are_bounded_naming_the_limit() {
    let refused = |f: &dyn Fn(&mut Sample), needle: &str| {
        let mut s = sample(1);
        f(&mut s);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    refused(
        &|s| s.cpu.as_mut().unwrap().per_core_pct = vec![1.0; MAX_PER_CORE + 1],
        "cpu.per_core_pct lists 1025 entries, more than 1024",
    );
    refused(
        &|s| s.system.as_mut().unwrap().per_core_frequency_mhz = vec![1; MAX_PER_CORE + 1],
        "per_core_frequency_mhz lists 1025 entries, more than 1024",
    );
    refused(
        &|s| {
            let p = s.processes.as_mut().unwrap();
            p.top_memory = vec![p.top_cpu[0].clone(); MAX_TOP_PROCESSES + 1];
        },
        "processes.top_memory lists 101 entries, more than 100",
    );
    refused(
        &|s| s.processes.as_mut().unwrap().top_cpu[0].name = "p".repeat(MAX_NAME_BYTES + 1),
        "process 42 name of 257 bytes, more than 256",
    );
    // At the bounds, accepted.
    let mut s = sample(1);
    s.cpu.as_mut().unwrap().per_core_pct = vec![1.0; MAX_PER_CORE];
    let p = s.processes.as_mut().unwrap();
    p.top_cpu[0].name = "p".repeat(MAX_NAME_BYTES);
    p.top_memory = vec![p.top_cpu[0].clone(); MAX_TOP_PROCESSES];
    s.validate().unwrap();
}

#[test]
fn samples_encoded_one_by_one_join_into_the_batch_encoding() {
    for n in [0, 1, 15, 16, 300] {
        let samples: Vec<Sample> = (1..=n).map(sample).collect();
        let parts: Vec<Vec<u8>> = samples.iter().map(encode_sample).collect();
        assert_eq!(join_samples(&parts), encode_batch(&samples), "{n} samples");
    }
}

#[test]
fn batch_framing_is_within_its_bound() {
    use crate::v1::{AgentMessage, Batch, agent_message};
    use prost::Message;
    let payload = vec![0u8; 5 << 20];
    let message = AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: u64::MAX,
            sample_count: u32::MAX,
            samples: payload.clone().into(),
        })),
    };
    assert!(message.encoded_len() - payload.len() <= crate::BATCH_FRAMING_MAX);
}
