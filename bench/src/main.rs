//! `hostpulse-bench`: runs named load scenarios against the real aggregator
//! binary (pinned to core 0) with this generator pinned to core 1, and prints
//! deliveries/s, latency percentiles from sample creation to receipt, the
//! aggregator's CPU and memory, and medians over several runs.
//!
//! `--baseline` also runs each unbatched fan-out scenario against a naive
//! server of the benchmark's own ([`naive`]: one encode and one flush per
//! client per update, fed by the same agent streams), so the gain is a ratio
//! measured in the same run on the same machine. `--reference` does the same
//! against a minimal tuned server of its own (one encode per update, feed
//! then flush, 4 KiB buffers), the bar the aggregator's fan-out is held to;
//! both also run `idle-10000`.
//!
//! `--client raw,tungstenite` runs each scenario with subscribers once per
//! client kind: the lean raw reader and a standard client library; `thin`
//! is the raw reader doing next to nothing per update, and with
//! `--server-cores 2` (the server on cores 0 and 1) shows how the fan-out
//! scales with the server's cores (`fanout-64x50000`, `fanout-128x50000`).
//!
//! The fleet scenarios (`fleet-5000`, `fleet-5000-heavy`; see [`fleet`]) take
//! minutes and run only when named.
//!
//! `store-engines` (see [`store`]) needs no aggregator process: it drives the
//! aggregator's embedded store over each candidate engine and runs only when
//! named; so do `store-usage`, `store-fill`, `store-deltas` and `store-open`,
//! which measure a store.

mod client;
mod cluster;
mod fleet;
mod load;
mod naive;
mod rawws;
mod server;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::client::ClientKind;
use crate::load::{PublishStats, Received};
use crate::server::{Pin, Server};

/// When this process started (for progress notes).
pub(crate) fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// Benchmarks the hostpulse aggregator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Scenarios to run (see --list); default: all but the fleet scenarios.
    scenarios: Vec<String>,
    /// Runs per scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds per run (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The embedded store in the ingest scenarios: `on` adds an empty
    /// `[storage]` section (defaults; its directory is the run's own).
    #[arg(long, value_enum, default_value = "off")]
    store: Switch,
    /// With `--store on`: a line added to the `[storage]` section, e.g.
    /// `checkpoint_interval_ms = 300000` (repeatable).
    #[arg(long = "storage-set", value_name = "KEY = VALUE")]
    storage_set: Vec<String>,
    /// With `--store on`: print the store's queue, drops, waits and flushes every
    /// 5 s (one scrape of `/metrics` each, 27-39 ms of the aggregator's
    /// time at 10,000 hosts).
    #[arg(long)]
    store_timeline: bool,
    /// Ingest scenarios: every sample a whole host's (all families, 66
    /// numeric values, as `store-engines` simulates them) instead of CPU,
    /// memory, load and top processes (21 values).
    #[arg(long)]
    whole_host: bool,
    /// Aggregator binary (default: the release build next to this one).
    #[arg(long)]
    aggregator: Option<PathBuf>,
    /// Do not pin the aggregator and the generator to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Cores the server is pinned to (`0..N`); with 2 it shares core 1 with
    /// the generator, so pair it with `--client thin`.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=64), usize::from))]
    server_cores: usize,
    /// Also run unbatched fan-out and idle scenarios against the naive baseline.
    #[arg(long)]
    baseline: bool,
    /// Be the naive baseline server (started by `--baseline` runs).
    #[arg(long, hide = true)]
    naive_server: bool,
    /// Also run unbatched fan-out and idle scenarios against the tuned reference server (one
    /// encode per update, feed then flush, 4 KiB buffers).
    #[arg(long)]
    reference: bool,
    /// Be the tuned reference server (started by `--reference` runs).
    #[arg(long, hide = true)]
    reference_server: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Subscribers' client, or several (comma-separated) to run each
    /// scenario with subscribers once per kind: `raw` (lean reader) or
    /// `tungstenite` (tokio-tungstenite, default settings).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw")]
    client: Vec<ClientKind>,
    #[command(flatten)]
    fleet: fleet::FleetArgs,
    #[command(flatten)]
    store_args: store::StoreArgs,
    /// Internal: run as the fleet scenarios' observer process (gRPC ingest
    /// address, HTTP address).
    #[arg(long, hide = true, num_args = 2, value_names = ["INGEST", "HTTP"])]
    observe: Option<Vec<String>>,
    /// Internal: the observer's hosts.
    #[arg(long, hide = true, default_value_t = 50)]
    observe_hosts: usize,
    /// Internal: each observed host's samples per second.
    #[arg(long, hide = true, default_value_t = 1)]
    observe_hz: u32,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    Off,
    On,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `clients` subscribers of `host.*.cpu`, `rate` updates/s in total.
    Fanout {
        clients: usize,
        rate: f64,
        batch_ms: u64,
    },
    /// `conns` connections, each subscribed to a silent topic.
    Idle { conns: usize },
    /// `agents` streams at `rate` samples/s each (full samples), one subscriber.
    Ingest { agents: usize, rate: f64 },
    /// `agents` streams sending 100-sample batches as fast as acks allow.
    IngestMax { agents: usize },
    /// `agents` at one full sample/s and `clients` subscribers of
    /// `host.*.cpu`, spread over `nodes` aggregators (2: through nats-server).
    Cluster {
        agents: usize,
        clients: usize,
        nodes: usize,
    },
    /// `agents` realistic simulated hosts at 1 Hz on their own gRPC streams,
    /// history filled, a steady observer, then `load` (see [`fleet`]).
    Fleet { agents: usize, load: fleet::Load },
}

impl Kind {
    /// Whether it has subscribers, so runs once per `--client`.
    fn has_subscribers(self) -> bool {
        match self {
            Kind::Fanout { .. } | Kind::Fleet { .. } => true,
            Kind::Cluster { clients, .. } => clients > 0,
            Kind::Idle { .. } | Kind::Ingest { .. } | Kind::IngestMax { .. } => false,
        }
    }
}

const SCENARIOS: &[(&str, Kind)] = &[
    (
        "fanout-100x10000",
        Kind::Fanout {
            clients: 100,
            rate: 10_000.0,
            batch_ms: 0,
        },
    ),
    (
        "fanout-1000x100",
        Kind::Fanout {
            clients: 1000,
            rate: 100.0,
            batch_ms: 0,
        },
    ),
    (
        "fanout-5000x20",
        Kind::Fanout {
            clients: 5000,
            rate: 20.0,
            batch_ms: 0,
        },
    ),
    (
        "fanout-1000x100-batch50",
        Kind::Fanout {
            clients: 1000,
            rate: 100.0,
            batch_ms: 50,
        },
    ),
    (
        "fanout-5000x20-batch50",
        Kind::Fanout {
            clients: 5000,
            rate: 20.0,
            batch_ms: 50,
        },
    ),
    // Offers twice what one core was first measured to deliver, to find
    // where it saturates.
    (
        "fanout-100x20000",
        Kind::Fanout {
            clients: 100,
            rate: 20_000.0,
            batch_ms: 0,
        },
    ),
    // Few connections, each taking many updates per read: with `--client
    // thin` the generator needs little CPU, so `--server-cores 1` and `2`
    // show how the fan-out scales with the server's cores.
    (
        "fanout-64x50000",
        Kind::Fanout {
            clients: 64,
            rate: 50_000.0,
            batch_ms: 0,
        },
    ),
    (
        "fanout-128x50000",
        Kind::Fanout {
            clients: 128,
            rate: 50_000.0,
            batch_ms: 0,
        },
    ),
    ("idle-10000", Kind::Idle { conns: 10_000 }),
    (
        "ingest-10000-agents",
        Kind::Ingest {
            agents: 10_000,
            rate: 1.0,
        },
    ),
    ("ingest-max-rate", Kind::IngestMax { agents: 20 }),
    (
        "cluster-1node-1000a-100c",
        Kind::Cluster {
            agents: 1000,
            clients: 100,
            nodes: 1,
        },
    ),
    (
        "cluster-2nodes-1000a-100c",
        Kind::Cluster {
            agents: 1000,
            clients: 100,
            nodes: 2,
        },
    ),
    // No subscribers: what ingest plus the broker path cost on their own.
    (
        "cluster-1node-1000a-0c",
        Kind::Cluster {
            agents: 1000,
            clients: 0,
            nodes: 1,
        },
    ),
    (
        "cluster-2nodes-1000a-0c",
        Kind::Cluster {
            agents: 1000,
            clients: 0,
            nodes: 2,
        },
    ),
    (
        "fleet-5000",
        Kind::Fleet {
            agents: 5000,
            load: fleet::Load::Storm,
        },
    ),
    (
        "fleet-5000-heavy",
        Kind::Fleet {
            agents: 5000,
            load: fleet::Load::Heavy,
        },
    ),
];

/// One run's figures; the names are printed as they are.
pub(crate) type Figures = Vec<(&'static str, f64)>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.naive_server || args.reference_server {
        return naive::run(args.reference_server);
    }
    started();
    if let Some(observe) = &args.observe {
        return fleet::observer_main(
            &observe[0],
            &observe[1],
            args.observe_hosts,
            args.observe_hz,
        );
    }
    if args.list {
        for (name, kind) in SCENARIOS {
            println!("{name:28} {kind:?}");
        }
        println!(
            "{:28} the embedded store on redb and on fjall",
            "store-engines"
        );
        println!(
            "{:28} what a stopped aggregator's store holds (--store-dir)",
            "store-usage"
        );
        println!(
            "{:28} simulated hosts into a new store (--store-dir), then store-usage",
            "store-fill"
        );
        println!(
            "{:28} a stopped aggregator's sealed raw blocks, each way of choosing pco's deltas",
            "store-deltas"
        );
        println!(
            "{:28} how long a stopped aggregator's store takes to open, after a crash and a clean close",
            "store-open"
        );
        return Ok(());
    }
    for (name, run) in [
        (
            "store-engines",
            store::run as fn(&store::StoreArgs, usize) -> anyhow::Result<()>,
        ),
        ("store-usage", |a, _| store::usage(a)),
        ("store-deltas", store::deltas),
        ("store-open", store::open_times),
        ("store-fill", |a, _| store::fill(a)),
    ] {
        if args.scenarios.iter().any(|s| s == name) {
            anyhow::ensure!(
                args.scenarios.len() == 1,
                "{name} runs on its own (no aggregator process)"
            );
            return run(&args.store_args, args.runs);
        }
    }
    let binary = match &args.aggregator {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("hostpulse-aggregator"),
    };
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it first (make bench does)",
        binary.display()
    );
    let server_core = if args.no_pin {
        None
    } else {
        // The generator takes core 1; the aggregator gets core 0.
        let pid = std::process::id().to_string();
        let ok = std::process::Command::new("taskset")
            .args(["-p", "-c", "1", &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        anyhow::ensure!(
            ok,
            "taskset failed; run with --no-pin on a machine without it"
        );
        Some(Pin {
            cores: args.server_cores,
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let wanted: Vec<&(&str, Kind)> = SCENARIOS
        .iter()
        .filter(|(n, k)| match args.scenarios.is_empty() {
            true => !matches!(k, Kind::Fleet { .. }),
            false => args.scenarios.iter().any(|s| s == n),
        })
        .collect();
    anyhow::ensure!(!wanted.is_empty(), "no such scenario; see --list");
    for (name, kind) in wanted {
        let mut modes = vec![Against::Aggregator];
        // The baseline and the reference have no batching; they are compared
        // with the unbatched runs.
        if matches!(kind, Kind::Fanout { batch_ms: 0, .. } | Kind::Idle { .. }) {
            if args.baseline {
                modes.push(Against::Naive);
            }
            if args.reference {
                modes.push(Against::Reference);
            }
        }
        let clients: &[ClientKind] = if kind.has_subscribers() {
            &args.client
        } else {
            &[ClientKind::Raw]
        };
        for &client in clients {
            for &naive in &modes {
                let mut label = name.to_string();
                if kind.has_subscribers() && args.client != [ClientKind::Raw] {
                    label = format!("{label} [{} client]", client.name());
                }
                match naive {
                    Against::Aggregator => {}
                    Against::Naive => label = format!("{label} (naive baseline)"),
                    Against::Reference => label = format!("{label} (tuned reference)"),
                }
                let mut runs: Vec<Figures> = Vec::new();
                for run in 1..=args.runs {
                    let run_args = RunArgs {
                        binary: &binary,
                        naive,
                        secs: args.secs,
                        core: server_core,
                        client,
                        fleet: &args.fleet,
                        store: (args.store == Switch::On).then(|| {
                            let mut section = String::from("[storage]\n");
                            args.storage_set.iter().for_each(|l| {
                                section.push_str(l);
                                section.push('\n');
                            });
                            section
                        }),
                        whole_host: args.whole_host,
                        store_timeline: args.store_timeline,
                    };
                    // Interrupted: the run is dropped, which stops every
                    // process it started, before this one exits.
                    let figures = runtime.block_on(async {
                        tokio::select! {
                            r = run_once(*kind, run_args) => r,
                            s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}")),
                        }
                    })?;
                    println!("{label} run {run}: {}", format_figures(&figures));
                    runs.push(figures);
                }
                println!("{label} MEDIAN: {}\n", format_figures(&median(&runs)));
            }
        }
    }
    Ok(())
}

/// Waits `measure`, printing the store's figures every 5 s to stderr:
/// samples dropped at its queue, the time ingest waited for room in it
/// (summed over agents), the queue's depth, flushes and their mean
/// and latest duration, so a run shows when the store fell behind, not
/// only that it did. Scrapes run on a blocking thread.
async fn print_store_timeline(server: &Server, measure: Duration) -> anyhow::Result<()> {
    const EVERY: Duration = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let names = [
        "hostpulse_store_dropped_samples",
        "hostpulse_store_ingest_wait_seconds",
        "hostpulse_store_flushes",
        "hostpulse_store_flush_seconds",
        "hostpulse_store_queue_depth",
        "hostpulse_store_queue_bytes",
        "hostpulse_store_last_flush_duration_seconds",
    ];
    // Off the runtime's threads: a blocking scrape there held up the
    // subscriber measuring latency (p50 130-320 ms instead of 2-7).
    let http = server.http;
    let read = move || async move {
        tokio::task::spawn_blocking(move || server::scrape(http, &names)).await?
    };
    // Each scrape bound by name, in the order of `names`: a column printed
    // under another's heading went unnoticed for a whole session once.
    let values = |v: Vec<f64>| -> anyhow::Result<[f64; 7]> {
        v.try_into()
            .map_err(|v: Vec<f64>| anyhow::anyhow!("{} values scraped, 7 asked", v.len()))
    };
    let mut last = values(read().await?)?;
    eprintln!(
        "store at 0 s: {} samples dropped during the ramp-up",
        last[0]
    );
    while started.elapsed() < measure {
        tokio::time::sleep(EVERY.min(measure.saturating_sub(started.elapsed()))).await;
        let now = values(read().await?)?;
        let [
            dropped,
            waited,
            flushes,
            flush_s,
            depth,
            bytes,
            last_flush_s,
        ] = now;
        let [dropped_0, waited_0, flushes_0, flush_s_0, ..] = last;
        let flushes = flushes - flushes_0;
        eprintln!(
            "store at {:>4} s: dropped {:>7}  waited {:>7.1} s  queue {:>6} ({:>4.0} MiB)  flushes {:>2}  mean {:>6.0} ms  last {:>6.0} ms  rss {:>5.0} MiB",
            started.elapsed().as_secs(),
            dropped - dropped_0,
            waited - waited_0,
            depth,
            bytes / f64::from(1 << 20),
            flushes,
            if flushes > 0.0 {
                1e3 * (flush_s - flush_s_0) / flushes
            } else {
                0.0
            },
            1e3 * last_flush_s,
            server.rss_kib()? as f64 / 1024.0,
        );
        last = now;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, with its name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// Stops the publishers and subscribers of a run and waits (bounded) for them.
pub(crate) async fn wind_down<T>(
    stop: &AtomicBool,
    publisher: tokio::task::JoinHandle<T>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
) {
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
    for t in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
}

fn format_figures(f: &Figures) -> String {
    f.iter()
        .map(|(k, v)| {
            if v.fract() == 0.0 && v.abs() >= 100.0 {
                format!("{k}={v:.0}")
            } else {
                format!("{k}={v:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(runs: &[Figures]) -> Figures {
    runs[0]
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let mut v: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            (*k, v[v.len() / 2])
        })
        .collect()
}

/// The server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    /// The aggregator binary.
    Aggregator,
    /// The naive baseline ([`naive`]).
    Naive,
    /// The tuned reference ([`naive`]).
    Reference,
}

/// How one run goes, beside its scenario.
struct RunArgs<'a> {
    binary: &'a PathBuf,
    /// The server measured.
    naive: Against,
    /// Measured seconds.
    secs: u64,
    /// The aggregator's core, when pinned.
    core: Option<Pin>,
    /// The subscribers' client.
    client: ClientKind,
    fleet: &'a fleet::FleetArgs,
    /// With the embedded store (ingest scenarios): its `[storage]` section.
    store: Option<String>,
    /// Whole hosts' samples (ingest scenarios).
    whole_host: bool,
    /// Print the store's figures every 5 s (ingest scenarios).
    store_timeline: bool,
}

async fn run_once(kind: Kind, run: RunArgs<'_>) -> anyhow::Result<Figures> {
    let RunArgs {
        binary,
        naive,
        secs,
        core,
        client,
        fleet: fleet_args,
        store,
        whole_host,
        store_timeline,
    } = run;
    if let Kind::Cluster {
        agents,
        clients,
        nodes,
    } = kind
    {
        return cluster::run_once(binary, agents, clients, nodes, secs, core, client).await;
    }
    if let Kind::Fleet { agents, load } = kind {
        return fleet::run_once(binary, agents, load, fleet_args, secs, core, client).await;
    }
    let server = match naive {
        Against::Aggregator => {
            let storage = match (kind, &store) {
                (Kind::Ingest { .. } | Kind::IngestMax { .. }, Some(section)) => section.as_str(),
                _ => "",
            };
            Server::start(binary, storage, core)?
        }
        Against::Naive => Server::start_naive(core, false)?,
        Against::Reference => Server::start_naive(core, true)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Received::default());
    let published = Arc::new(PublishStats::default());
    let measure = Duration::from_secs(secs);
    match kind {
        Kind::Idle { conns } => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = server.rss_kib()?;
            let tasks = load::subscribe(
                server.http,
                conns,
                "host.idle.cpu",
                0,
                ClientKind::Raw,
                received,
                stop.clone(),
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = server.rss_kib()?;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.abort();
            }
            Ok(vec![
                ("connections", conns as f64),
                ("rss_before_mib", before as f64 / 1024.0),
                ("rss_after_mib", after as f64 / 1024.0),
                (
                    "kib_per_connection",
                    (after.saturating_sub(before)) as f64 / conns as f64,
                ),
            ])
        }
        Kind::Fanout {
            clients,
            rate,
            batch_ms,
        } => {
            let tasks = load::subscribe(
                server.http,
                clients,
                "host.*.cpu",
                batch_ms,
                client,
                received.clone(),
                stop.clone(),
            )
            .await?;
            let agents = ((rate / 1000.0).ceil() as usize).max(1);
            let per_agent = rate / agents as f64;
            let per_batch = ((per_agent / 100.0).round() as usize).max(1);
            let publisher = tokio::spawn(load::publish(
                server.ingest,
                0,
                agents,
                agents,
                load::Pace {
                    rate: per_agent,
                    per_batch,
                    full: false,
                    whole_host: false,
                },
                published.clone(),
                stop.clone(),
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            received.measuring.store(true, Ordering::Relaxed);
            let (u0, f0, cpu0) = (
                received.updates.load(Ordering::Relaxed),
                received.frames.load(Ordering::Relaxed),
                server.cpu_mark()?,
            );
            let s0 = published.sent.load(Ordering::Relaxed);
            let gen0 = server::own_cpu_mark()?;
            tokio::time::sleep(measure).await;
            let (u1, f1) = (
                received.updates.load(Ordering::Relaxed),
                received.frames.load(Ordering::Relaxed),
            );
            let sent = (published.sent.load(Ordering::Relaxed) - s0) as f64 / measure.as_secs_f64();
            let cpu = server.cpu_since(cpu0)?;
            let generator = server::own_cpu_since(gen0)?;
            received.measuring.store(false, Ordering::Relaxed);
            let rss = server.rss_kib()?;
            wind_down(&stop, publisher, tasks).await;
            let h = received.latency.lock().expect("lock");
            let deliveries = (u1 - u0) as f64 / measure.as_secs_f64();
            Ok(vec![
                ("deliveries_per_s", deliveries.round()),
                ("published_per_s", sent.round()),
                (
                    "delivered_pct",
                    100.0 * deliveries / (sent * clients as f64),
                ),
                (
                    "frames_per_s",
                    ((f1 - f0) as f64 / measure.as_secs_f64()).round(),
                ),
                ("p50_ms", h.value_at_quantile(0.50) as f64 / 1000.0),
                ("p99_ms", h.value_at_quantile(0.99) as f64 / 1000.0),
                ("p999_ms", h.value_at_quantile(0.999) as f64 / 1000.0),
                ("aggregator_cpu_pct", cpu),
                ("aggregator_rss_mib", rss as f64 / 1024.0),
                ("generator_cpu_pct", generator),
            ])
        }
        Kind::Ingest { agents, rate } => {
            let tasks = load::subscribe(
                server.http,
                1,
                "host.*.cpu",
                0,
                ClientKind::Raw,
                received.clone(),
                stop.clone(),
            )
            .await?;
            let publisher = tokio::spawn(load::publish(
                server.ingest,
                0,
                agents,
                agents / 100,
                load::Pace {
                    rate,
                    per_batch: 1,
                    full: true,
                    whole_host,
                },
                published.clone(),
                stop.clone(),
            ));
            // Ramp-up: every agent attached and sending.
            tokio::time::sleep(Duration::from_secs(8)).await;
            received.measuring.store(true, Ordering::Relaxed);
            let (a0, cpu0) = (published.acked.load(Ordering::Relaxed), server.cpu_mark()?);
            if store.is_some() && store_timeline {
                print_store_timeline(&server, measure).await?;
            } else {
                tokio::time::sleep(measure).await;
            }
            let a1 = published.acked.load(Ordering::Relaxed);
            let cpu = server.cpu_since(cpu0)?;
            received.measuring.store(false, Ordering::Relaxed);
            let rss = server.rss_kib()?;
            // What the store took and dropped (0 without a store).
            let stored = server.metric("hostpulse_store_values_written")?;
            let dropped = server.metric("hostpulse_store_dropped_samples")?;
            // Time ingest waited for room in the store's queue (the store
            // behind ingest slows agents instead of dropping samples).
            let waited = server.metric("hostpulse_store_ingest_wait_seconds")?;
            // Which queue was behind when acks asked agents to slow down.
            let slowed = |cause| {
                server.metric(&format!(
                    "hostpulse_ingest_slow_down_acks_total{{cause=\"{cause}\"}}"
                ))
            };
            let (by_hub, by_store) = (slowed("hub")?, slowed("store")?);
            wind_down(&stop, publisher, tasks).await;
            let h = received.latency.lock().expect("lock");
            Ok(vec![
                ("agents", agents as f64),
                (
                    "samples_per_s",
                    ((a1 - a0) as f64 / measure.as_secs_f64()).round(),
                ),
                ("p50_ms", h.value_at_quantile(0.50) as f64 / 1000.0),
                ("p99_ms", h.value_at_quantile(0.99) as f64 / 1000.0),
                ("aggregator_cpu_pct", cpu),
                ("aggregator_rss_mib", rss as f64 / 1024.0),
                ("store_values_written", stored),
                ("store_dropped_samples", dropped),
                ("store_ingest_wait_s", waited),
                (
                    "overload_acks",
                    published.overload_acks.load(Ordering::Relaxed) as f64,
                ),
                ("slowed_by_hub", by_hub),
                ("slowed_by_store", by_store),
            ])
        }
        Kind::Cluster { .. } | Kind::Fleet { .. } => unreachable!("handled above"),
        Kind::IngestMax { agents } => {
            let publisher = tokio::spawn(load::publish(
                server.ingest,
                0,
                agents,
                agents,
                load::Pace {
                    rate: 0.0,
                    per_batch: 100,
                    full: true,
                    whole_host,
                },
                published.clone(),
                stop.clone(),
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (a0, cpu0) = (published.acked.load(Ordering::Relaxed), server.cpu_mark()?);
            if store.is_some() && store_timeline {
                print_store_timeline(&server, measure).await?;
            } else {
                tokio::time::sleep(measure).await;
            }
            let a1 = published.acked.load(Ordering::Relaxed);
            let cpu = server.cpu_since(cpu0)?;
            wind_down(&stop, publisher, Vec::new()).await;
            Ok(vec![
                (
                    "samples_per_s",
                    ((a1 - a0) as f64 / measure.as_secs_f64()).round(),
                ),
                (
                    "updates_per_s",
                    (4.0 * (a1 - a0) as f64 / measure.as_secs_f64()).round(),
                ),
                ("aggregator_cpu_pct", cpu),
            ])
        }
    }
}
