//! What each of the newer metric families costs per collection, and how
//! much they add to an encoded sample: a measurement, not a check, so it is
//! ignored by default. Run it on a release build:
//!
//! ```sh
//! cargo test --release -p hostpulse-agent --lib -- --ignored per_family_cost --nocapture
//! ```

use std::time::Instant;

use std::path::Path;

use sysinfo::{Disks, System};

use super::*;

fn time(name: &str, mut f: impl FnMut()) {
    const RUNS: u32 = 300;
    let start = Instant::now();
    for _ in 0..RUNS {
        f();
    }
    eprintln!("{name}: {:?} per collection", start.elapsed() / RUNS);
}

#[test]
#[ignore = "a measurement; run on a release build with --nocapture"]
fn per_family_cost() {
    let proc_root = Path::new(crate::config::DEFAULT_PROC_ROOT);
    let mut net = network::NetworkCollector::new(proc_root).unwrap();
    time("network", || {
        std::hint::black_box(net.collect());
    });
    let mut disks = Disks::new().unwrap();
    let mut io = disk::DiskIo::new(proc_root);
    time("disk (mount list + I/O counters)", || {
        if io.uses_sysinfo() {
            disk::refresh(&mut disks, true, false);
        }
        std::hint::black_box(io.collect(Some(&disks)).unwrap());
    });
    time("filesystems (mount list + statvfs)", || {
        disk::refresh(&mut disks, false, true);
        std::hint::black_box(filesystems::collect(&disks));
    });
    let mut sys = System::new().unwrap();
    let physical = system::physical_cores();
    time("system", || {
        system::refresh(&mut sys);
        std::hint::black_box(system::collect(&sys, physical).unwrap());
    });
    let mut sensors =
        temperatures::TemperatureCollector::new(Path::new(crate::config::DEFAULT_SYS_ROOT))
            .unwrap();
    time("temperatures", || {
        std::hint::black_box(sensors.collect());
    });

    let mut c = Collector::new(CollectConfig::default(), 1).unwrap();
    let first = c.sample();
    let steady = c.sample();
    let without = |s: &Sample| Sample {
        network: None,
        disk: None,
        filesystems: None,
        system: None,
        temperatures: None,
        ..s.clone()
    };
    let size = |s: Sample| hostpulse_proto::encode_batch(&[s]).len();
    eprintln!(
        "MessagePack bytes per sample: first {} (without the new sections {}), \
         steady {} (without {})",
        size(first.clone()),
        size(without(&first)),
        size(steady.clone()),
        size(without(&steady)),
    );
}
