//! The simulated hosts' samples: valid, on schedule, moving.

use super::*;

#[test]
fn samples_are_valid_and_keep_the_schedule() {
    let mut host = SimHost::new(4, 1_795_000_000);
    for seq in 1..=61 {
        let s = host.sample(seq, 1_795_000_000_000 + seq as i64 * 1000);
        s.validate().unwrap();
        assert_eq!(
            s.filesystems.is_some(),
            (seq - 1).is_multiple_of(30),
            "seq {seq}"
        );
        assert_eq!(
            s.system.is_some(),
            (seq - 1).is_multiple_of(10),
            "seq {seq}"
        );
        assert_eq!(
            s.temperatures.is_some(),
            (seq - 1).is_multiple_of(10),
            "seq {seq}"
        );
        let p = s.processes.unwrap();
        assert_eq!((p.top_cpu.len(), p.top_memory.len()), (TOP, TOP));
    }
    // 61 samples: filesystems at 1, 31, 61; system at 1, 11, ..., 61.
    assert_eq!(family_count(4, 6, 1, 61), 3);
    assert_eq!(family_count(4, 7, 1, 61), 7);
    assert_eq!(family_count(4, 7, 2, 11), 1);
    assert_eq!(family_count(4, 0, 10, 20), 11);
    assert_eq!(family_count(5, 8, 1, 61), 0);
    assert_eq!(parse_topic("host.fleet-00042.disk"), Some((42, 5)));
    assert_eq!(parse_topic("host.other.cpu"), None);
    // Six every sample, filesystems 1/30, system 1/10, temperatures 1/10
    // on a quarter of the hosts.
    let expected = 6.0 + 1.0 / 30.0 + 0.1 + 0.025;
    assert!((updates_per_sample(4000) - expected).abs() < 1e-9);
}

#[test]
fn values_move_every_sample() {
    let mut host = SimHost::new(7, 1_795_000_000);
    let a = host.sample(1, 1_795_000_000_000);
    let b = host.sample(2, 1_795_000_001_000);
    assert_ne!(a.cpu, b.cpu);
    assert_ne!(a.memory, b.memory);
    assert_ne!(a.network, b.network);
    assert_ne!(a.processes.unwrap().top_cpu, b.processes.unwrap().top_cpu);
    // Hosts differ.
    let mut other = SimHost::new(8, 1_795_000_000);
    assert_ne!(other.sample(1, 1_795_000_000_000).cpu, a.cpu);
}

/// `cargo test --release -p hostpulse-bench -- --ignored sample_cost --nocapture`
mod cost {
    use super::*;

    #[test]
    #[ignore = "prints sizes and timings"]
    fn sample_cost() {
        let mut host = SimHost::new(0, 1_795_000_000);
        let n = 20_000u64;
        let started = std::time::Instant::now();
        let mut bytes = 0;
        for seq in 1..=n {
            let s = host.sample(seq, 1_795_000_000_000 + seq as i64 * 1000);
            bytes += hostpulse_proto::encode_batch(std::slice::from_ref(&s)).len();
        }
        let took = started.elapsed();
        let s = host.sample(n + 1, 1_795_000_000_000);
        macro_rules! json {
            ($v:expr) => {
                serde_json::to_string(&$v).map_or(0, |j| j.len())
            };
        }
        eprintln!(
            "{:.1} µs per sample made and encoded, {} bytes of MessagePack each on average; \
             JSON payloads: cpu {} memory {} load {} processes {} network {} disk {}",
            took.as_secs_f64() * 1e6 / n as f64,
            bytes as u64 / n,
            json!(s.cpu),
            json!(s.memory),
            json!(s.load),
            json!(s.processes),
            json!(s.network),
            json!(s.disk),
        );
    }
}
