//! Simulated hosts whose samples look like a real agent's, so that history
//! compression is measured on data as hard to compress as a real fleet's:
//! every value random-walks (cores, memory, load, network and disk rates,
//! counters that accumulate them), the process tables reorder and change
//! every sample (pids mostly stable, CPU varying, a process now and then
//! exiting and another starting) and every host has names of its own.
//!
//! Sizes follow what the agent sends by default (`agent/src/collect`): 8
//! cores, the top 10 processes by CPU and by memory plus the rest summed, a
//! few interfaces, block devices and mounts; `filesystems` every 30 samples,
//! `system` and `temperatures` every 10 (temperatures only on the quarter of
//! hosts that are "physical"; virtual machines have no sensors).

use super::rng::Rng;
use hostpulse_proto::{
    Cpu, Disk, DiskDevice, Filesystem, Filesystems, Interface, Load, Memory, Network, Process,
    ProcessRollup, Processes, Sample, Sensor, SystemInfo, Temperatures,
};

/// Logical cores of every simulated host.
const CORES: usize = 8;
/// Processes listed in each of `top_cpu` and `top_memory`.
const TOP: usize = 10;
/// Processes each host models individually (the rest are only counted).
const MODELLED: usize = 36;

/// The topic families a simulated host publishes, and every how many
/// samples (counted from seq 1) each is present.
pub(crate) const FAMILIES: &[(&str, u64)] = &[
    ("cpu", 1),
    ("memory", 1),
    ("load", 1),
    ("processes", 1),
    ("network", 1),
    ("disk", 1),
    ("filesystems", 30),
    ("system", 10),
    ("temperatures", 10),
];

/// Whether host `index` has temperature sensors.
pub(crate) fn has_sensors(index: usize) -> bool {
    index.is_multiple_of(4)
}

/// Topic updates one sample makes on average over a fleet of `agents`.
pub(crate) fn updates_per_sample(agents: usize) -> f64 {
    let sensors = (0..agents).filter(|i| has_sensors(*i)).count() as f64 / agents.max(1) as f64;
    FAMILIES
        .iter()
        .map(|(name, period)| {
            let share = if *name == "temperatures" {
                sensors
            } else {
                1.0
            };
            share / *period as f64
        })
        .sum()
}

/// The topic segment of host `index`.
pub(crate) fn host_name(index: usize) -> String {
    format!("fleet-{index:05}")
}

/// Host index and family index of a `host.fleet-NNNNN.<family>` topic.
pub(crate) fn parse_topic(topic: &str) -> Option<(usize, usize)> {
    let rest = topic.strip_prefix("host.fleet-")?;
    let (host, family) = rest.split_once('.')?;
    let host: usize = host.parse().ok()?;
    let family = FAMILIES.iter().position(|(f, _)| *f == family)?;
    Some((host, family))
}

/// How many updates host `host` published on `family` with seqs in
/// `lo..=hi` (its schedule is known: present every `period` samples).
pub(crate) fn family_count(host: usize, family: usize, lo: u64, hi: u64) -> u64 {
    let (name, period) = FAMILIES[family];
    if lo > hi || lo == 0 || (name == "temperatures" && !has_sensors(host)) {
        return 0;
    }
    // Seqs s with (s - 1) % period == 0, in lo..=hi.
    let upto = |s: u64| s.div_ceil(period); // count in 1..=s
    upto(hi) - upto(lo - 1)
}

const COMMON: &[&str] = &[
    "systemd",
    "systemd-journal",
    "sshd",
    "rsyslogd",
    "cron",
    "containerd",
    "dockerd",
    "kubelet",
    "node_exporter",
    "chronyd",
    "fluent-bit",
    "hostpulse-agent",
];
const ROLES: &[&[&str]] = &[
    &["nginx", "php-fpm", "gunicorn", "envoy"],
    &[
        "postgres",
        "pgbouncer",
        "postgres: walwriter",
        "postgres: autovacuum",
    ],
    &["redis-server", "memcached", "haproxy"],
    &["java", "python3", "celery", "spark-worker"],
    &["node", "ruby", "puma", "sidekiq"],
];

struct SimProc {
    pid: u32,
    start_time: u64,
    name: String,
    /// Mean CPU it tends to (% of one core) and its current reading.
    base_cpu: f32,
    cpu: f32,
    memory: u64,
    /// Part of the host's fixed set (never exits).
    resident: bool,
}

struct SimIface {
    name: String,
    rx_rate: f64,
    tx_rate: f64,
    totals: [u64; 6],
}

struct SimDisk {
    name: String,
    read_rate: f64,
    write_rate: f64,
    read_total: u64,
    written_total: u64,
}

/// One simulated host: its state, walked one step per sample.
pub(crate) struct SimHost {
    index: usize,
    rng: Rng,
    role: usize,
    cores: [f32; CORES],
    busy: f32,
    mem_total: u64,
    mem_used: f64,
    swap_total: u64,
    swap_used: f64,
    load: [f64; 3],
    procs: Vec<SimProc>,
    next_pid: u32,
    others: u32,
    ifaces: Vec<SimIface>,
    disks: Vec<SimDisk>,
    mounts: Vec<(String, String, String, u64, f64)>,
    boot_time: u64,
    freq: [u64; CORES],
    temps: Vec<(String, f32, f32)>,
}

/// A step of at most `step` either way, kept within `lo..=hi` by reflection.
fn walk(rng: &mut Rng, x: f64, step: f64, lo: f64, hi: f64) -> f64 {
    let y = x + (rng.f64() * 2.0 - 1.0) * step;
    if y < lo {
        (2.0 * lo - y).min(hi)
    } else if y > hi {
        (2.0 * hi - y).max(lo)
    } else {
        y
    }
}

impl SimHost {
    /// Host `index`, its state seeded from the index (runs are repeatable).
    pub(crate) fn new(index: usize, now_secs: u64) -> Self {
        let mut rng = Rng::with_seed(0x5eed_0000 + index as u64);
        let role = rng.usize(..ROLES.len());
        let mem_total = [8u64, 16, 32, 64][rng.usize(..4)] << 30;
        let boot_time = now_secs - rng.u64(3_600..90 * 86_400);
        let mut host = Self {
            index,
            role,
            cores: [0.0; CORES],
            busy: rng.f32() * 60.0 + 5.0,
            mem_total,
            mem_used: mem_total as f64 * (0.2 + rng.f64() * 0.5),
            swap_total: if rng.bool() { 2 << 30 } else { 0 },
            swap_used: 0.0,
            load: [1.0, 1.0, 1.0],
            procs: Vec::with_capacity(MODELLED),
            next_pid: rng.u32(300..2_000),
            others: rng.u32(80..400),
            ifaces: Vec::new(),
            disks: Vec::new(),
            mounts: Vec::new(),
            boot_time,
            freq: [0; CORES],
            temps: Vec::new(),
            rng,
        };
        for c in 0..CORES {
            host.cores[c] = host.busy;
            host.freq[c] = 2_400;
        }
        for i in 0..MODELLED {
            let resident = i < MODELLED * 2 / 3;
            host.spawn_process(resident, boot_time);
        }
        let mut ifaces = vec!["eth0".to_string(), "lo".to_string()];
        if index.is_multiple_of(3) {
            ifaces.push("docker0".into());
            ifaces.push(format!("veth{:07x}", host.rng.u32(..1 << 28)));
        }
        ifaces.sort();
        for name in ifaces {
            let rate = host.rng.f64() * 5e6;
            host.ifaces.push(SimIface {
                name,
                rx_rate: rate,
                tx_rate: rate * 0.6,
                totals: [host.rng.u64(1 << 30..1 << 40), 0, 0, 0, 0, 0],
            });
        }
        let mut disks = vec!["vda".to_string()];
        if index.is_multiple_of(2) {
            disks.push("vdb".into());
        }
        for name in disks {
            host.disks.push(SimDisk {
                name,
                read_rate: host.rng.f64() * 2e6,
                write_rate: host.rng.f64() * 4e6,
                read_total: host.rng.u64(1 << 30..1 << 40),
                written_total: host.rng.u64(1 << 30..1 << 40),
            });
        }
        for (mount, dev, size) in [
            ("/", "/dev/vda1", 40u64 << 30),
            ("/boot", "/dev/vda15", 1 << 30),
            ("/srv", "/dev/vdb", 200 << 30),
        ] {
            if mount != "/srv" || index.is_multiple_of(2) {
                let used = size as f64 * (0.1 + host.rng.f64() * 0.7);
                host.mounts
                    .push((mount.into(), dev.into(), "ext4".into(), size, used));
            }
        }
        if has_sensors(index) {
            for (label, t) in [
                ("coretemp Package id 0", 45.0),
                ("coretemp Core 0", 43.0),
                ("nvme Composite", 38.0),
            ] {
                host.temps.push((label.into(), t, t));
            }
        }
        host
    }

    fn process_name(&mut self, resident: bool) -> String {
        let r = self.rng.usize(..100);
        if resident && r < 45 {
            COMMON[self.rng.usize(..COMMON.len())].to_string()
        } else if r < 80 {
            let names = ROLES[self.role];
            names[self.rng.usize(..names.len())].to_string()
        } else {
            // Names of this host's own: services and short-lived jobs.
            format!("job-{:05}-{}", self.index, self.rng.u32(..500))
        }
    }

    fn spawn_process(&mut self, resident: bool, start_time: u64) {
        self.next_pid += self.rng.u32(1..40);
        let heavy = self.rng.usize(..10) == 0;
        let base_cpu = if heavy {
            self.rng.f32() * 150.0
        } else {
            self.rng.f32() * self.rng.f32() * 20.0
        };
        let memory = if heavy {
            self.rng.u64(200 << 20..4 << 30)
        } else {
            self.rng.u64(4 << 20..300 << 20)
        };
        let name = self.process_name(resident);
        self.procs.push(SimProc {
            pid: self.next_pid,
            start_time,
            name,
            base_cpu,
            cpu: base_cpu,
            memory: memory & !4095,
            resident,
        });
    }

    /// The next sample: every value one step on. `seq` decides which of
    /// the slower families it carries.
    pub(crate) fn sample(&mut self, seq: u64, timestamp_ms: i64) -> Sample {
        let rng = &mut self.rng;
        let now_secs = (timestamp_ms / 1000) as u64;
        // CPU: the host's busyness wanders; each core around it.
        self.busy = walk(rng, self.busy as f64, 4.0, 1.0, 95.0) as f32;
        for c in self.cores.iter_mut() {
            let pull = (self.busy - *c) * 0.3;
            *c = walk(rng, (*c + pull) as f64, 9.0, 0.0, 100.0) as f32;
        }
        let total = self.cores.iter().sum::<f32>() / CORES as f32;
        // Memory and swap, in whole KiB as /proc/meminfo gives them.
        self.mem_used = walk(
            rng,
            self.mem_used,
            self.mem_total as f64 * 0.004,
            self.mem_total as f64 * 0.1,
            self.mem_total as f64 * 0.95,
        );
        if self.swap_total > 0 {
            self.swap_used = walk(rng, self.swap_used, 1e6, 0.0, self.swap_total as f64 * 0.5);
        }
        let kib = |x: f64| (x as u64) & !1023;
        let used = kib(self.mem_used);
        let cache = kib((self.mem_total - used) as f64 * 0.3);
        // Load: runnable tasks, averaged the kernel's way (two decimals).
        let runnable = total as f64 / 100.0 * CORES as f64 + rng.f64() * 0.8;
        for (l, n) in self.load.iter_mut().zip([12.0, 60.0, 180.0]) {
            *l += (runnable - *l) / n;
        }
        let two = |x: f64| (x * 100.0).round() / 100.0;
        // Processes: CPU reverts to each one's mean with noise and bursts;
        // memory drifts; now and then a job exits and another starts.
        for p in self.procs.iter_mut() {
            let burst = if rng.usize(..50) == 0 {
                rng.f32() * 80.0
            } else {
                0.0
            };
            let next = p.cpu + (p.base_cpu - p.cpu) * 0.4 + (rng.f32() - 0.5) * 6.0 + burst;
            p.cpu = next.max(0.0);
            let m = walk(rng, p.memory as f64, p.memory as f64 * 0.01, 1e6, 8e9);
            p.memory = (m as u64) & !4095;
        }
        if rng.usize(..25) == 0
            && let Some(i) = self.procs.iter().position(|p| !p.resident)
        {
            self.procs.swap_remove(i);
            self.spawn_process(false, now_secs);
        }
        let rng = &mut self.rng;
        self.others = (self.others as i64 + rng.i64(-2..=2)).clamp(40, 600) as u32;
        let listed = |p: &SimProc| Process {
            pid: p.pid,
            start_time: p.start_time,
            name: p.name.clone(),
            cpu_pct: p.cpu,
            memory_bytes: p.memory,
        };
        let mut order: Vec<usize> = (0..self.procs.len()).collect();
        order.sort_by(|&a, &b| self.procs[b].cpu.total_cmp(&self.procs[a].cpu));
        let top_cpu: Vec<Process> = order[..TOP]
            .iter()
            .map(|&i| listed(&self.procs[i]))
            .collect();
        let mut in_top = vec![false; self.procs.len()];
        for &i in &order[..TOP] {
            in_top[i] = true;
        }
        order.sort_by_key(|&i| std::cmp::Reverse(self.procs[i].memory));
        let top_memory: Vec<Process> = order[..TOP]
            .iter()
            .map(|&i| listed(&self.procs[i]))
            .collect();
        for &i in &order[..TOP] {
            in_top[i] = true;
        }
        let rest = self.procs.iter().zip(&in_top).filter(|(_, t)| !**t);
        let (rest_n, rest_cpu, rest_mem) = rest.fold((0u32, 0f32, 0u64), |(n, c, m), (p, _)| {
            (n + 1, c + p.cpu, m + p.memory)
        });
        let others = ProcessRollup {
            count: rest_n + self.others,
            cpu_pct: rest_cpu + self.others as f32 * 0.05 * rng.f32(),
            memory_bytes: rest_mem + self.others as u64 * (6 << 20),
        };
        // Network and disk: rates wander, counters add them up over the
        // time between readings (never exactly a second); the rates sent are
        // rounded to whole units a second, as the agent sends them.
        let elapsed = 1.0 + (rng.f64() - 0.5) * 0.004;
        let per_sec = |n: u64| (n as f64 / elapsed).round();
        let interfaces = self
            .ifaces
            .iter_mut()
            .map(|i| {
                let lo = i.name == "lo";
                let cap = if lo { 2e6 } else { 1.2e8 };
                i.rx_rate = walk(rng, i.rx_rate, cap * 0.02, 0.0, cap);
                i.tx_rate = walk(rng, i.tx_rate, cap * 0.02, 0.0, cap);
                let rx = (i.rx_rate * elapsed) as u64;
                let tx = (i.tx_rate * elapsed) as u64;
                let rx_p = rx / rng.u64(200..1_400) + 1;
                let tx_p = tx / rng.u64(200..1_400) + 1;
                let errs = [u64::from(rng.usize(..200) == 0), 0];
                let add = [rx, tx, rx_p, tx_p, errs[0], errs[1]];
                for (t, a) in i.totals.iter_mut().zip(add) {
                    *t += a;
                }
                Interface {
                    name: i.name.clone(),
                    rx_bytes_per_sec: per_sec(rx),
                    tx_bytes_per_sec: per_sec(tx),
                    rx_packets_per_sec: per_sec(rx_p),
                    tx_packets_per_sec: per_sec(tx_p),
                    rx_errors_per_sec: per_sec(errs[0]),
                    tx_errors_per_sec: 0.0,
                    rx_bytes_total: i.totals[0],
                    tx_bytes_total: i.totals[1],
                    rx_packets_total: i.totals[2],
                    tx_packets_total: i.totals[3],
                    rx_errors_total: i.totals[4],
                    tx_errors_total: i.totals[5],
                }
            })
            .collect();
        let devices = self
            .disks
            .iter_mut()
            .map(|d| {
                d.read_rate = walk(rng, d.read_rate, 4e5, 0.0, 2e8);
                d.write_rate = walk(rng, d.write_rate, 8e5, 0.0, 2e8);
                // Whole sectors.
                let read = (d.read_rate * elapsed) as u64 & !511;
                let written = (d.write_rate * elapsed) as u64 & !511;
                d.read_total += read;
                d.written_total += written;
                DiskDevice {
                    name: d.name.clone(),
                    read_bytes_per_sec: per_sec(read),
                    write_bytes_per_sec: per_sec(written),
                    read_bytes_total: d.read_total,
                    written_bytes_total: d.written_total,
                }
            })
            .collect();
        let due = |family: usize| (seq - 1).is_multiple_of(FAMILIES[family].1);
        let filesystems = due(6).then(|| Filesystems {
            mounts: self
                .mounts
                .iter_mut()
                .map(|(mount, device, fs_type, total, used)| {
                    *used = (*used + rng.f64() * 3e7).min(*total as f64 * 0.98);
                    let used_bytes = (*used as u64) & !4095;
                    Filesystem {
                        mount: mount.clone(),
                        device: device.clone(),
                        fs_type: fs_type.clone(),
                        total_bytes: *total,
                        used_bytes,
                        free_bytes: (*total - used_bytes) * 95 / 100,
                    }
                })
                .collect(),
        });
        let system = due(7).then(|| {
            for f in self.freq.iter_mut() {
                *f = walk(rng, *f as f64, 300.0, 800.0, 3_600.0) as u64;
            }
            SystemInfo {
                uptime_secs: now_secs.saturating_sub(self.boot_time),
                boot_time: self.boot_time,
                logical_cores: CORES as u32,
                physical_cores: Some(CORES as u32 / 2),
                cpu_frequency_mhz: self.freq.iter().sum::<u64>() / CORES as u64,
                per_core_frequency_mhz: self.freq.to_vec(),
            }
        });
        let temperatures = (due(8) && !self.temps.is_empty()).then(|| Temperatures {
            sensors: self
                .temps
                .iter_mut()
                .map(|(label, c, max)| {
                    *c = walk(rng, *c as f64, 1.5, 30.0, 90.0) as f32;
                    *max = max.max(*c);
                    Sensor {
                        label: label.clone(),
                        celsius: (*c * 10.0).round() / 10.0,
                        max_celsius: Some(*max),
                        critical_celsius: Some(100.0),
                    }
                })
                .collect(),
        });
        Sample {
            seq,
            timestamp_ms,
            cpu: Some(Cpu {
                total_pct: total,
                per_core_pct: self.cores.to_vec(),
            }),
            memory: Some(Memory {
                total_bytes: self.mem_total,
                used_bytes: used,
                available_bytes: self.mem_total - used - cache / 4,
                swap_total_bytes: self.swap_total,
                swap_used_bytes: kib(self.swap_used),
            }),
            load: Some(Load {
                one: two(self.load[0]),
                five: two(self.load[1]),
                fifteen: two(self.load[2]),
            }),
            processes: Some(Processes {
                count: self.procs.len() as u32 + self.others,
                top_cpu,
                top_memory,
                others,
            }),
            network: Some(Network { interfaces }),
            disk: Some(Disk { devices }),
            filesystems,
            system,
            temperatures,
        }
    }
}

#[cfg(test)]
mod tests;
