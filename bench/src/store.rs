//! `store-engines`: the aggregator's store (its writer, codec and queries,
//! unchanged) over each candidate engine: redb (the aggregator's
//! `store::engine::Redb`) and fjall (an implementation of the same
//! `Engine` trait here). No aggregator process: the store is driven
//! directly, on simulated time, with realistic hosts ([`SimHost`]: random
//! walks at the precision agents report).
//!
//! Prints, per engine and run: ingest CPU per raw value (process CPU, so
//! an engine's background threads count), bytes on disk per raw value (the
//! whole data directory, rollups and open chunks included) and per value in
//! sealed raw blocks, and the time of three queries: 1 h at 1 s, 24 h at
//! 1 min, 30 d at 1 h.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use hostpulse_aggregator::store::engine::{Engine, Entry, Op, Redb, Table};
use hostpulse_aggregator::store::query;
use hostpulse_aggregator::store::writer::Writer;
use hostpulse_aggregator::store::{StoreError, StoreStats};
use hostpulse_proto::{
    Cpu, Disk, DiskDevice, Filesystem, Filesystems, Interface, Load, Memory, Network,
    ProcessRollup, Processes, Sample, Sensor, SystemInfo, Temperatures,
};

use crate::Figures;

/// The store over fjall, one keyspace per table; every apply is one atomic
/// batch persisted with `SyncAll` (as redb's commits are).
struct Fjall {
    db: Database,
    tables: Vec<Keyspace>,
    dir: PathBuf,
}

fn ferr(e: fjall::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Fjall {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).open().map_err(ferr)?;
        let tables = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), KeyspaceCreateOptions::default)
                    .map_err(ferr)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            db,
            tables,
            dir: dir.into(),
        })
    }

    fn table(&self, t: Table) -> &Keyspace {
        &self.tables[Table::ALL.iter().position(|x| *x == t).expect("listed")]
    }
}

impl Engine for Fjall {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.insert(self.table(*t), k.as_slice(), v.as_slice()),
                Op::Delete(t, k) => batch.remove(self.table(*t), k.as_slice()),
            }
        }
        batch.commit().map_err(ferr)?;
        self.db.persist(PersistMode::SyncAll).map_err(ferr)
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for g in self.table(table).range(from..to) {
            let (k, v) = g.into_inner().map_err(ferr)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, table: Table, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.table(table).range(from..to).next_back() {
            Some(g) => {
                let (k, v) = g.into_inner().map_err(ferr)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn used_bytes(&self) -> Result<u64, StoreError> {
        self.db.disk_space().map_err(ferr)
    }

    fn file_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

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
/// decimals, memory in pages, counters that grow, rates from counters).
struct SimHost {
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
    fn new(seed: u64) -> Self {
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

    fn sample(&mut self, ts: i64) -> Sample {
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
                // Rates from counters over a measured, jittery interval.
                let elapsed = 1.0 + (r.f64() - 0.5) * 0.004;
                Interface {
                    name: ["eth0", "lo"][i].into(),
                    rx_bytes_per_sec: rxb as f64 / elapsed,
                    tx_bytes_per_sec: txb as f64 / elapsed,
                    rx_packets_per_sec: (rxb / 900) as f64 / elapsed,
                    tx_packets_per_sec: (txb / 900) as f64 / elapsed,
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
                    read_bytes_per_sec: dr as f64 / elapsed,
                    write_bytes_per_sec: dw as f64 / elapsed,
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

/// The process's CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Options of the scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// store-engines: simulated hosts in the per-second phase.
    #[arg(long, default_value_t = 10)]
    pub(crate) store_hosts: usize,
    /// store-engines: hours of per-second samples per host.
    #[arg(long, default_value_t = 6)]
    pub(crate) store_hours: i64,
}

/// 2026-10-01T00:00:00Z.
const START: i64 = 1_790_812_800_000;
const FLUSH_MS: i64 = 2_000;

/// Feeds `hosts` hosts for `secs` seconds at one sample per `every_ms`,
/// flushing every [`FLUSH_MS`] of simulated time but at most once per
/// `per_flush` samples of a host (a bulk load of a month need not pay one
/// transaction per sample); returns raw values stored.
fn feed(
    writer: &mut Writer,
    hosts: usize,
    from: i64,
    secs: i64,
    every_ms: i64,
    per_flush: i64,
) -> u64 {
    let mut sims: Vec<SimHost> = (0..hosts).map(|h| SimHost::new(h as u64 + 1)).collect();
    let names: Vec<String> = (0..hosts).map(|h| format!("host-{h:04}")).collect();
    let mut values = 0;
    let flush_ms = FLUSH_MS.max(per_flush * every_ms);
    let mut next_flush = from + flush_ms;
    let mut t = from;
    while t < from + secs * 1000 {
        for (sim, name) in sims.iter_mut().zip(&names) {
            writer.ingest(name, &sim.sample(t)).expect("ingest");
        }
        t += every_ms;
        if t >= next_flush {
            values += writer.flush().expect("flush");
            next_flush = t + flush_ms;
        }
    }
    values + writer.flush().expect("flush")
}

/// Median time of `f` over 15 calls, in ms; also returns the points.
fn time_query(f: impl Fn() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..15 {
        let t = Instant::now();
        n = f();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], n)
}

/// Sealed raw-tier block bytes and the values in them.
fn sealed_raw(engine: &dyn Engine) -> (u64, u64) {
    let (mut bytes, mut values) = (0u64, 0u64);
    engine
        .scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
            if k.get(4) == Some(&0) {
                bytes += v.len() as u64 + k.len() as u64;
                values += u64::from(u32::from_le_bytes(v[2..6].try_into().expect("4")));
            }
            true
        })
        .expect("scan");
    (bytes, values)
}

/// Prints which fields take the sealed raw bytes (the codec's figure, the
/// same on every engine): bytes per value of each field, over its hosts and
/// labels, and its share of the total bytes per value.
fn print_breakdown(engine: &dyn Engine, total_values: u64) {
    let mut names = std::collections::HashMap::new();
    engine
        .scan(Table::Series, &[], &[0xff], &mut |k, v| {
            if let (Ok(name), Ok(id)) = (std::str::from_utf8(k), <[u8; 4]>::try_from(v)) {
                let field = name.split('\0').nth(1).unwrap_or(name);
                let field = field.split('{').next().unwrap_or(field).to_string();
                names.insert(u32::from_be_bytes(id), field);
            }
            true
        })
        .expect("scan");
    let mut by_field: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    engine
        .scan(Table::Blocks, &[], &[0xff; 14], &mut |k, v| {
            if k.get(4) == Some(&0) {
                let id = u32::from_be_bytes(k[..4].try_into().expect("4"));
                let e = by_field
                    .entry(names.get(&id).cloned().unwrap_or_default())
                    .or_default();
                e.0 += v.len() as u64 + k.len() as u64;
                e.1 += u64::from(u32::from_le_bytes(v[2..6].try_into().expect("4")));
            }
            true
        })
        .expect("scan");
    let mut rows: Vec<_> = by_field.into_iter().collect();
    rows.sort_by_key(|(_, (b, _))| std::cmp::Reverse(*b));
    println!("store-engines: sealed raw bytes per value by field (share of the total per value):");
    for (field, (b, n)) in rows.iter().take(12) {
        println!(
            "  {field:32} {:6.2} B/value  {:5.3} of the total",
            *b as f64 / *n as f64,
            *b as f64 / total_values.max(1) as f64
        );
    }
}

/// One run on one engine: figures to print.
fn run_engine(name: &str, args: &StoreArgs, root: &Path) -> anyhow::Result<Figures> {
    let open = |dir: &Path| -> anyhow::Result<Arc<dyn Engine>> {
        std::fs::create_dir_all(dir)?;
        Ok(match name {
            "redb" => Arc::new(Redb::open(dir)?),
            _ => Arc::new(Fjall::open(dir)?),
        })
    };
    // Per-second phase: ingest cost, bytes, the 1 h at 1 s query.
    let dir = root.join(format!("{name}-1hz"));
    let engine = open(&dir)?;
    let mut writer = Writer::new(engine.clone(), Arc::new(StoreStats::default()))?;
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let values = feed(
        &mut writer,
        args.store_hosts,
        START,
        args.store_hours * 3600,
        1000,
        2,
    );
    let cpu = cpu_time().saturating_sub(cpu0);
    let wall = wall0.elapsed();
    drop(writer);
    let (sealed_bytes, sealed_values) = sealed_raw(engine.as_ref());
    if name == "redb" {
        print_breakdown(engine.as_ref(), sealed_values);
    }
    let end = START + args.store_hours * 3_600_000;
    let last_host = format!("host-{:04}", args.store_hosts.max(1) - 1);
    let (q1h, n1) = time_query(|| {
        query::series(
            engine.as_ref(),
            &last_host,
            "cpu.total_pct",
            end - 3_600_000,
            end,
            1000,
        )
        .expect("query")
        .len()
    });
    anyhow::ensure!(n1 == 3600, "1 h at 1 s gave {n1} points");
    let disk = engine.file_bytes();
    let used = engine.used_bytes()?;
    drop(engine);
    // A month at one sample a minute: the 24 h and 30 d queries.
    let dir = root.join(format!("{name}-month"));
    let engine = open(&dir)?;
    let mut writer = Writer::new(engine.clone(), Arc::new(StoreStats::default()))?;
    feed(&mut writer, 1, START, 31 * 86_400, 60_000, 120);
    drop(writer);
    let end = START + 31 * 86_400_000;
    let (q24h, n24) = time_query(|| {
        query::series(
            engine.as_ref(),
            "host-0000",
            "memory.used_bytes",
            end - 86_400_000,
            end,
            60_000,
        )
        .expect("query")
        .len()
    });
    anyhow::ensure!(n24 >= 1439, "24 h at 1 min gave {n24} points");
    let (q30d, n30) = time_query(|| {
        query::series(
            engine.as_ref(),
            "host-0000",
            "cpu.total_pct",
            end - 30 * 86_400_000,
            end,
            3_600_000,
        )
        .expect("query")
        .len()
    });
    anyhow::ensure!(n30 >= 719, "30 d at 1 h gave {n30} points");
    Ok(vec![
        ("values", values as f64),
        (
            "ingest_cpu_us_per_value",
            cpu.as_secs_f64() * 1e6 / values as f64,
        ),
        ("ingest_wall_s", wall.as_secs_f64()),
        ("disk_bytes_per_value", disk as f64 / values as f64),
        ("used_bytes_per_value", used as f64 / values as f64),
        (
            "sealed_raw_bytes_per_value",
            sealed_bytes as f64 / sealed_values.max(1) as f64,
        ),
        ("query_1h_1s_ms", q1h),
        ("query_24h_1m_ms", q24h),
        ("query_30d_1h_ms", q30d),
    ])
}

/// Runs the scenario `runs` times per engine, printing each run and medians.
pub(crate) fn run(args: &StoreArgs, runs: usize) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("hostpulse-store-bench-{}", std::process::id()));
    for engine in ["redb", "fjall"] {
        let mut all = Vec::new();
        for run in 1..=runs {
            let _ = std::fs::remove_dir_all(&root);
            let figures = run_engine(engine, args, &root);
            let _ = std::fs::remove_dir_all(&root);
            let figures = figures?;
            println!(
                "store-engines [{engine}] run {run}: {}",
                crate::format_figures(&figures)
            );
            all.push(figures);
        }
        println!(
            "store-engines [{engine}] MEDIAN: {}\n",
            crate::format_figures(&crate::median(&all))
        );
    }
    Ok(())
}
