//! Tests of the collector: families present, failures counted, pacing, seqs.

use super::*;

#[test]
fn a_sample_holds_every_enabled_family() {
    let mut c = Collector::new(CollectConfig::default(), 1_000_000).unwrap();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let s = c.sample();
    s.validate().unwrap();
    assert_eq!(s.seq, first_seq(1_000_000) + 1);
    let cpu = s.cpu.unwrap();
    assert!(!cpu.per_core_pct.is_empty());
    let mem = s.memory.unwrap();
    assert!(mem.total_bytes > 0 && mem.used_bytes <= mem.total_bytes);
    let procs = s.processes.unwrap();
    assert!(procs.count > 0);
    let listed: std::collections::HashSet<_> = procs
        .top_cpu
        .iter()
        .chain(&procs.top_memory)
        .map(|p| p.pid)
        .collect();
    assert_eq!(listed.len() as u32 + procs.others.count, procs.count);
    let net = s.network.expect("network");
    assert!(net.interfaces.iter().any(|i| i.name == "lo"), "{net:?}");
    assert!(s.disk.is_some());
    let fs = s.filesystems.expect("filesystems on the first sample");
    assert!(fs.mounts.iter().any(|m| m.mount == "/"), "{fs:?}");
    let sys = s.system.expect("system on the first sample");
    assert!(sys.uptime_secs > 0 && sys.logical_cores >= 1);
    assert_eq!(sys.per_core_frequency_mhz.len(), sys.logical_cores as usize);
    let second = c.sample();
    assert_eq!(second.seq, first_seq(1_000_000) + 2);
    assert!(second.network.is_some() && second.disk.is_some());
    assert!(
        second.filesystems.is_none() && second.system.is_none(),
        "paced families wait for their interval"
    );
}

#[test]
fn families_read_under_an_explicit_root_fail_counted_when_it_lacks_their_files() {
    let dir = std::env::temp_dir().join(format!("hp-empty-root-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = CollectConfig {
        proc_root: dir.clone(),
        sys_root: dir.clone(),
        cpu: false,
        processes: false,
        ..CollectConfig::default()
    };
    let mut c = Collector::new(config, 1).unwrap();
    let s = c.sample();
    assert!(s.network.is_none() && s.disk.is_none() && s.temperatures.is_none());
    // Not the agent's own /proc/net/dev in its place: one failure for the
    // network collector, one for the disk baseline and one per sample.
    assert_eq!(c.errors, 3);
    assert_eq!(c.failed_logged, ["network", "disk"]);
    // A sysfs without sensors is not a failure; sysinfo's families go on.
    assert!(s.memory.is_some() && s.filesystems.is_some());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn paced_families_are_due_once_per_interval() {
    let mut p = Paced::new(10);
    let t0 = Instant::now();
    assert!(p.due(t0), "the first sample carries the family");
    assert!(!p.due(t0 + Duration::from_secs(1)));
    assert!(!p.due(t0 + Duration::from_secs(9)));
    // A sample a little early (jitter) is still on time.
    assert!(p.due(t0 + Duration::from_millis(9_990)));
    assert!(!p.due(t0 + Duration::from_secs(11)));
}

#[test]
fn disabled_families_are_absent() {
    let config = CollectConfig {
        cpu: false,
        processes: false,
        ..CollectConfig::default()
    };
    let s = Collector::new(config, 1).unwrap().sample();
    assert!(s.cpu.is_none() && s.processes.is_none());
    assert!(s.memory.is_some());
    let config = CollectConfig {
        network: false,
        disk: false,
        filesystems: false,
        system: false,
        temperatures: false,
        ..CollectConfig::default()
    };
    let s = Collector::new(config, 1).unwrap().sample();
    assert!(s.network.is_none() && s.disk.is_none() && s.filesystems.is_none());
    assert!(s.system.is_none() && s.temperatures.is_none());
    assert!(s.cpu.is_some());
}

#[test]
fn seqs_keep_rising_across_restarts() {
    // Three runs of the agent, each started as `Agent::new` starts one
    // (its epoch is the time it starts) and sampling at the fastest
    // interval the configuration accepts, the first sample one interval
    // in (as the agent's ticker does).
    let config = CollectConfig {
        cpu: false,
        memory: false,
        processes: false,
        network: false,
        disk: false,
        filesystems: false,
        system: false,
        temperatures: false,
        ..CollectConfig::default()
    };
    let fastest = Duration::from_millis(MIN_INTERVAL_MS);
    let mut last_of_previous: Option<u64> = None;
    for run in 0..3 {
        let mut c = Collector::new(config.clone(), now_ms()).unwrap();
        let seqs: Vec<u64> = (0..25)
            .map(|_| {
                std::thread::sleep(fastest);
                c.sample().seq
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "run {run}: {seqs:?}"
        );
        if let Some(previous) = last_of_previous {
            assert!(
                seqs[0] > previous,
                "run {run} starts at {} but the run before it reached {previous}",
                seqs[0]
            );
        }
        last_of_previous = seqs.last().copied();
    }
}

#[test]
fn the_default_budget_refreshes_a_cheap_table_every_sample_and_a_dear_one_every_few() {
    let budget = CollectConfig::default().processes_budget_pct;
    assert_eq!(budget, 1.0, "the documented default");
    // Samples once a second for 12 s; which of them refresh the table,
    // when each refresh costs `cost`?
    let refreshed_at = |cost: Duration| -> Vec<u64> {
        let t0 = Instant::now();
        let mut next = None;
        (0..12)
            .filter(|s| {
                let now = t0 + Duration::from_secs(*s);
                let due = processes_due(next, now);
                if due {
                    next = Some(next_processes(now, cost, budget));
                }
                due
            })
            .collect()
    };
    // A few hundred processes (about 4 ms): every sample.
    assert_eq!(
        refreshed_at(Duration::from_millis(4)),
        (0..12).collect::<Vec<_>>()
    );
    // Thousands (35 ms, 3.5 s of budget): every fourth sample.
    assert_eq!(refreshed_at(Duration::from_millis(35)), vec![0, 4, 8]);
    // Right at the limit: 10 ms of a 1 s interval is 1 %.
    assert_eq!(refreshed_at(Duration::from_millis(10)).len(), 12);
    assert_eq!(refreshed_at(Duration::from_millis(11)).len(), 6);
}

#[test]
fn samples_carry_the_process_table_only_when_it_is_due() {
    let mut c = Collector::new(CollectConfig::default(), 1).unwrap();
    let before = Instant::now();
    assert!(c.sample().processes.is_some(), "the first sample has it");
    let next = c.next_processes.expect("the next refresh is scheduled");
    assert!(next > before, "a refresh costs something, so it waits");
    c.next_processes = Some(Instant::now() + Duration::from_secs(3600));
    let s = c.sample();
    assert!(s.processes.is_none(), "not due: no processes section");
    assert!(s.load.is_some(), "the rest of the sample is there");
    c.next_processes = Some(Instant::now());
    assert!(c.sample().processes.is_some(), "due again");
}
