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
//!
//! `store-usage` and `store-fill` ([`usage`]) measure what a store holds,
//! per host, tier and field: an aggregator's, or one filled with simulated
//! hosts. `store-deltas` ([`deltas`]) compresses a store's sealed raw blocks
//! again with each way of choosing pco's delta encoding.

mod deltas;
mod fjall_engine;
mod open;
pub(crate) mod sim;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostpulse_aggregator::store::StoreStats;
use hostpulse_aggregator::store::engine::{Engine, Redb, Table};
use hostpulse_aggregator::store::query;
use hostpulse_aggregator::store::writer::Writer;

use crate::Figures;
use fjall_engine::Fjall;
use sim::SimHost;

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
    /// store-engines: engines to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "redb,fjall")]
    pub(crate) store_engine: Vec<String>,
    /// store-usage, store-deltas, store-open: the data directory of a
    /// stopped aggregator's store;
    /// store-fill: a directory for a new one.
    #[arg(long)]
    pub(crate) store_dir: Option<PathBuf>,
    /// store-fill: simulated seconds between flushes (the sealed blocks
    /// are the same whatever it is; fewer flushes fill faster).
    #[arg(long, default_value_t = 600)]
    pub(crate) store_flush_secs: i64,
}

impl StoreArgs {
    /// `--store-dir`, which `scenario` needs.
    fn dir_for(&self, scenario: &str) -> anyhow::Result<&Path> {
        self.store_dir
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{scenario} needs --store-dir"))
    }
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
    let values = values + writer.flush().expect("flush");
    // As a clean close does: nothing left in the log.
    writer.checkpoint().expect("checkpoint");
    values
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

/// Sealed raw-tier block bytes (with the timestamp columns they share) and
/// the values in them.
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
    (bytes + shared_raw_stamps(engine), values)
}

/// Bytes (keys and values) of the timestamp columns raw blocks (tier 0)
/// share.
fn shared_raw_stamps(engine: &dyn Engine) -> u64 {
    let mut bytes = 0u64;
    engine
        .scan(Table::Stamps, &[0], &[1], &mut |k, v| {
            bytes += (k.len() + v.len()) as u64;
            true
        })
        .expect("scan");
    bytes
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
    println!(
        "  {:32} {:>6} B/value  {:5.3} of the total",
        "(timestamp columns shared)",
        "",
        shared_raw_stamps(engine) as f64 / total_values.max(1) as f64
    );
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
            None,
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
    let used = engine
        .used_bytes()?
        .ok_or_else(|| anyhow::anyhow!("the store's bytes in use are not counted yet"))?;
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
            None,
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
            None,
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
    for engine in &args.store_engine {
        let engine = engine.as_str();
        anyhow::ensure!(
            matches!(engine, "redb" | "fjall"),
            "--store-engine: {engine}? (redb, fjall)"
        );
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

/// `store-usage`: what the store in `--store-dir` holds.
pub(crate) fn usage(args: &StoreArgs) -> anyhow::Result<()> {
    let dir = args.dir_for("store-usage")?;
    usage::run(dir)
}

/// `store-deltas`: the sealed raw blocks of `--store-dir` compressed again
/// with each way of choosing pco's delta encoding.
pub(crate) fn deltas(args: &StoreArgs, runs: usize) -> anyhow::Result<()> {
    let dir = args.dir_for("store-deltas")?;
    deltas::run(dir, runs)
}

/// `store-open`: how long the store in `--store-dir` takes to open after a
/// crash and after a clean close ([`open`]).
pub(crate) fn open_times(args: &StoreArgs, runs: usize) -> anyhow::Result<()> {
    let dir = args.dir_for("store-open")?;
    open::run(dir, runs)
}

/// `store-fill`: `--store-hosts` simulated hosts for `--store-hours` at
/// 1 Hz into a new store in `--store-dir`, then what it holds.
pub(crate) fn fill(args: &StoreArgs) -> anyhow::Result<()> {
    let dir = args.dir_for("store-fill")?;
    usage::fill(
        dir,
        args.store_hosts,
        args.store_hours,
        args.store_flush_secs,
    )
}
