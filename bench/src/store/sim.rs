//! Simulated hosts for `store-engines` (and the ingest scenarios'
//! `--whole-host` samples): the values a real agent sends, as random walks
//! at their real precision.

use hostpulse_proto::{
    Cpu, Disk, DiskDevice, Filesystem, Filesystems, Interface, Load, Memory, Network,
    ProcessRollup, Processes, Sample, Sensor, SystemInfo, Temperatures,
};

/// A random walk within `[lo, hi]`.
struct Walk {
    v: f64,
    step: f64,
    lo: f64,
    hi: f64,
}

impl Walk {
    fn new(v: f64, step: f64, lo: f64, hi: f64) -> Self {
        Self { v, step, lo, hi }
    }
    fn next(&mut self, rng: &mut fastrand::Rng) -> f64 {
        self.v = (self.v + (rng.f64() - 0.5) * 2.0 * self.step).clamp(self.lo, self.hi);
        self.v
    }
}

/// One simulated host, sampled once a second: the values a real agent
/// sends, at their real precision (f32 percentages, loads with two
/// decimals, memory in pages, counters that grow, rates from counters
/// rounded to whole units a second).
pub(crate) struct SimHost {
    rng: fastrand::Rng,
    cpu: Vec<Walk>,
    used: Walk,
    load: Walk,
    procs: Walk,
    net: Vec<(Walk, Walk, u64, u64)>,
    disk: (Walk, Walk, u64, u64),
    fs_used: [f64; 2],
    freq: Vec<Walk>,
    temp: Vec<Walk>,
    seq: u64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl SimHost {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            cpu: (0..4).map(|_| Walk::new(20.0, 4.0, 0.0, 100.0)).collect(),
            used: Walk::new(6.0 * GIB, 8.0e6, 1.0 * GIB, 15.0 * GIB),
            load: Walk::new(1.0, 0.05, 0.0, 8.0),
            procs: Walk::new(180.0, 1.0, 100.0, 400.0),
            net: (0..2)
                .map(|_| {
                    (
                        Walk::new(2.0e5, 3.0e4, 0.0, 1.0e8),
                        Walk::new(1.0e5, 2.0e4, 0.0, 1.0e8),
                        0,
                        0,
                    )
                })
                .collect(),
            disk: (
                Walk::new(1.0e5, 4.0e4, 0.0, 5.0e8),
                Walk::new(3.0e5, 6.0e4, 0.0, 5.0e8),
                0,
                0,
            ),
            fs_used: [20.0 * GIB, 0.2 * GIB],
            freq: (0..4)
                .map(|_| Walk::new(2400.0, 100.0, 800.0, 3600.0))
                .collect(),
            temp: (0..2).map(|_| Walk::new(45.0, 0.5, 30.0, 90.0)).collect(),
            seq: 0,
        }
    }

    pub(crate) fn sample(&mut self, ts: i64) -> Sample {
        let r = &mut self.rng;
        self.seq += 1;
        let cores: Vec<f32> = self.cpu.iter_mut().map(|w| w.next(r) as f32).collect();
        let total = cores.iter().sum::<f32>() / cores.len() as f32;
        let page = 4096.0;
        let used = (self.used.next(r) / page).round() * page;
        let load = |v: f64| (v * 100.0).round() / 100.0;
        let l1 = self.load.next(r);
        let interfaces = self
            .net
            .iter_mut()
            .enumerate()
            .map(|(i, (rx, tx, rxt, txt))| {
                let (rxb, txb) = (rx.next(r).round() as u64, tx.next(r).round() as u64);
                *rxt += rxb;
                *txt += txb;
                // Rates from counters over a measured, jittery interval,
                // rounded to whole units a second as the agent sends them.
                let elapsed = 1.0 + (r.f64() - 0.5) * 0.004;
                Interface {
                    name: ["eth0", "lo"][i].into(),
                    rx_bytes_per_sec: (rxb as f64 / elapsed).round(),
                    tx_bytes_per_sec: (txb as f64 / elapsed).round(),
                    rx_packets_per_sec: ((rxb / 900) as f64 / elapsed).round(),
                    tx_packets_per_sec: ((txb / 900) as f64 / elapsed).round(),
                    rx_errors_per_sec: 0.0,
                    tx_errors_per_sec: 0.0,
                    rx_bytes_total: *rxt,
                    tx_bytes_total: *txt,
                    rx_packets_total: *rxt / 900,
                    tx_packets_total: *txt / 900,
                    rx_errors_total: 0,
                    tx_errors_total: 0,
                }
            })
            .collect();
        let (dr, dw) = (
            self.disk.0.next(r).round() as u64 / 512 * 512,
            self.disk.1.next(r).round() as u64 / 512 * 512,
        );
        self.disk.2 += dr;
        self.disk.3 += dw;
        let elapsed = 1.0 + (r.f64() - 0.5) * 0.004;
        self.fs_used[0] += (dw / 64) as f64 - (dw / 64 % 4096) as f64;
        let freq: Vec<u64> = self
            .freq
            .iter_mut()
            .map(|w| w.next(r).round() as u64)
            .collect();
        Sample {
            seq: self.seq,
            timestamp_ms: ts,
            cpu: Some(Cpu {
                total_pct: total,
                per_core_pct: cores,
            }),
            memory: Some(Memory {
                total_bytes: 16 << 30,
                used_bytes: used as u64,
                available_bytes: (16u64 << 30) - used as u64,
                swap_total_bytes: 2 << 30,
                swap_used_bytes: 0,
            }),
            load: Some(Load {
                one: load(l1),
                five: load(l1 * 0.9),
                fifteen: load(l1 * 0.8),
            }),
            processes: Some(Processes {
                count: self.procs.next(r).round() as u32,
                top_cpu: Vec::new(),
                top_memory: Vec::new(),
                others: ProcessRollup {
                    count: 170,
                    cpu_pct: (total * 0.3).max(0.0),
                    memory_bytes: (used as u64 / 3) / 4096 * 4096,
                },
            }),
            network: Some(Network { interfaces }),
            disk: Some(Disk {
                devices: vec![DiskDevice {
                    name: "vda".into(),
                    read_bytes_per_sec: (dr as f64 / elapsed).round(),
                    write_bytes_per_sec: (dw as f64 / elapsed).round(),
                    read_bytes_total: self.disk.2,
                    written_bytes_total: self.disk.3,
                }],
            }),
            filesystems: Some(Filesystems {
                mounts: ["/", "/boot"]
                    .iter()
                    .zip([100.0 * GIB, GIB])
                    .zip(self.fs_used)
                    .map(|((m, total), used)| Filesystem {
                        mount: (*m).into(),
                        device: "/dev/vda1".into(),
                        fs_type: "ext4".into(),
                        total_bytes: total as u64,
                        used_bytes: used as u64,
                        free_bytes: (total - used) as u64,
                    })
                    .collect(),
            }),
            system: Some(SystemInfo {
                uptime_secs: 86_400 + self.seq,
                boot_time: 1_795_000_000,
                logical_cores: 4,
                physical_cores: Some(2),
                cpu_frequency_mhz: freq.iter().sum::<u64>() / 4,
                per_core_frequency_mhz: freq,
            }),
            temperatures: Some(Temperatures {
                sensors: self
                    .temp
                    .iter_mut()
                    .enumerate()
                    .map(|(i, w)| Sensor {
                        label: format!("coretemp Core {i}"),
                        // hwmon reports whole degrees here (millidegrees / 1000).
                        celsius: w.next(r).round() as f32,
                        max_celsius: Some(100.0),
                        critical_celsius: Some(105.0),
                    })
                    .collect(),
            }),
        }
    }
}
