//! The fleet scenarios of issue 13: thousands of simulated agents at 1 Hz
//! with full samples, each on its own gRPC stream, against a release
//! aggregator on `deploy/aggregator.toml`; history filled (a backlog
//! preloaded, then live sampling); a steady observer in a process of its
//! own; then WebSocket clients doing what dashboards do at that size.
//!
//! * `fleet-5000`: 500 host pages (`host.<h>.>`, `history: 300`) and 50
//!   fleet views (`host.*.cpu`, `throttle_ms: 5000`, `history: 12`, on
//!   `batch_ms=1000` connections) all connect at once, get their history,
//!   then all drop and reconnect at once.
//! * `fleet-5000-heavy`: 100 clients each asking `host.*.cpu` with
//!   `history: 120` over every host at once.
//!
//! Threads: the aggregator is pinned to core 0 (one tokio worker); this
//! process to core 1, with the agents on one runtime and thread and the
//! WebSocket clients on another, and the observer a separate process.

mod agents;
mod observer;
mod report;
mod rng;
mod sim;
mod storm;
mod tally;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

pub(crate) use observer::child_main as observer_main;

use self::agents::{FleetPlan, FleetStats};
use self::observer::{Latency, Observer, unix_us};
use self::storm::{Group, Plan, Round};
use crate::Figures;
use crate::client::ClientKind;
use crate::server::{self, Pin, Server};

/// The aggregator's configuration as shipped, used unless
/// `--aggregator-config` names another.
const DEPLOY_CONFIG: &str = include_str!("../../../deploy/aggregator.toml");

/// Options of the fleet scenarios.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FleetArgs {
    /// Fleet scenarios: simulated hosts (default: the scenario's 5,000).
    #[arg(long)]
    pub(crate) agents: Option<usize>,
    /// Fleet scenarios: backlog samples each agent sends before sampling
    /// live (1 s apart in sample time, the newest now), so history is full
    /// without waiting `history_len` seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) preload: u64,
    /// Fleet scenarios: seconds of live 1 Hz sampling after every agent
    /// attached (and sent its backlog), before anything is measured.
    #[arg(long, default_value_t = 60)]
    pub(crate) fill_secs: u64,
    /// Fleet scenarios: agents connecting (and preloading) at any moment.
    #[arg(long, default_value_t = 64)]
    pub(crate) connect_in_flight: usize,
    /// Fleet scenarios: agent streams per HTTP/2 connection (1: each its
    /// own connection, as real agents).
    #[arg(long, default_value_t = 1)]
    pub(crate) streams_per_connection: usize,
    /// Fleet scenarios: send without gzip (the real agent gzips).
    #[arg(long)]
    pub(crate) no_gzip: bool,
    /// `fleet-5000`: host-page clients.
    #[arg(long, default_value_t = 500)]
    pub(crate) host_pages: usize,
    /// `fleet-5000`: fleet-view clients.
    #[arg(long, default_value_t = 50)]
    pub(crate) fleet_views: usize,
    /// `fleet-5000-heavy`: clients replaying `host.*.cpu` with `history: 120`.
    #[arg(long, default_value_t = 100)]
    pub(crate) heavy_clients: usize,
    /// `fleet-5000-heavy`: `batch_ms` of the heavy clients' connections.
    #[arg(long, default_value_t = 1000)]
    pub(crate) heavy_batch_ms: u64,
    /// Fleet scenarios: a storm round ends when every client is live again,
    /// or after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) settle_timeout: u64,
    /// `fleet-5000-heavy`: give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) heavy_timeout: u64,
    /// Fleet scenarios: hosts the observer publishes and follows live, each
    /// on its own gRPC stream (at most 100).
    #[arg(long, default_value_t = 50)]
    pub(crate) observer_hosts: usize,
    /// Fleet scenarios: samples per second of each observed host.
    #[arg(long, default_value_t = 1)]
    pub(crate) observer_hz: u32,
    /// Fleet scenarios: the aggregator's configuration file (default:
    /// deploy/aggregator.toml as built in; the listen addresses are set on
    /// the command line).
    #[arg(long)]
    pub(crate) aggregator_config: Option<PathBuf>,
}

/// What the scenario does once the fleet is up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// Host pages and fleet views connect, then drop and reconnect.
    Storm,
    /// Clients replay `host.*.cpu` with `history: 120`.
    Heavy,
}

/// Stops the agents and joins their thread (bounded) when dropped.
struct Fleet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn note(what: std::fmt::Arguments<'_>) {
    eprintln!(
        "[fleet {:>8.1}s] {what}",
        crate::started().elapsed().as_secs_f64()
    );
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// One run of a fleet scenario.
pub(crate) async fn run_once(
    binary: &PathBuf,
    default_agents: usize,
    load: Load,
    args: &FleetArgs,
    secs: u64,
    core: Option<Pin>,
    kind: ClientKind,
) -> anyhow::Result<Figures> {
    let agents = args.agents.unwrap_or(default_agents);
    let config = match &args.aggregator_config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEPLOY_CONFIG.to_string(),
    };
    let listen = [
        "--ingest-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let server = Server::with_config(binary, &config, &listen, core)?;
    server
        .healthz()
        .context("the aggregator's /healthz did not answer")?;

    // The fleet: attach, preload, then live.
    let stats = Arc::new(FleetStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let plan = FleetPlan {
        agents,
        preload: args.preload,
        in_flight: args.connect_in_flight,
        per_connection: args.streams_per_connection,
        gzip: !args.no_gzip,
    };
    let thread = {
        let (stats, stop, ingest) = (stats.clone(), stop.clone(), server.ingest);
        std::thread::Builder::new()
            .name("agents".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the agents' runtime");
                if let Err(e) = runtime.block_on(agents::run(ingest, plan, stats, stop)) {
                    eprintln!("fleet: {e}");
                }
            })?
    };
    let _fleet = Fleet {
        stop: stop.clone(),
        thread: Some(thread),
    };
    let started = Instant::now();
    let (attach_cpu0, attach_gen0) = (server.cpu_mark()?, server::own_cpu_mark()?);
    let mut last_note = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (attached, preloaded, failed) = (
            stats.attached.load(Ordering::Relaxed),
            stats.preloaded.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
        );
        if preloaded + failed >= agents as u64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "agents not attached and preloaded within 30 min ({preloaded} of {agents})"
        );
        if last_note.elapsed() > Duration::from_secs(10) {
            last_note = Instant::now();
            note(format_args!(
                "{attached}/{agents} attached, {preloaded} preloaded, {failed} failed, aggregator RSS {} MiB",
                server.rss_kib()? / 1024
            ));
        }
    }
    let attach_secs = started.elapsed().as_secs_f64();
    let attach_cpu = server.cpu_since(attach_cpu0)?;
    let attach_overload = stats.overload_acks.load(Ordering::Relaxed);
    let attach_gen = server::own_cpu_since(attach_gen0)?;
    note(format_args!(
        "{agents} agents attached and preloaded in {attach_secs:.1} s (aggregator {attach_cpu:.0} % \
         of a core, generator {attach_gen:.0} %); filling {} s",
        args.fill_secs
    ));
    tokio::time::sleep(Duration::from_secs(args.fill_secs)).await;

    // The observer, then a quiet window: the fleet alone.
    // This very binary, even if it was replaced on disk since it started.
    let exe = match std::path::Path::new("/proc/self/exe") {
        p if p.exists() => p.to_path_buf(),
        _ => std::env::current_exe()?,
    };
    let mut observer = match Observer::start(
        &exe,
        &server.ingest.to_string(),
        &server.http.to_string(),
        args.observer_hosts,
        args.observer_hz,
    ) {
        Ok(o) => Some(o),
        Err(e) => {
            // Run on without it: what the clients see still counts.
            note(format_args!("no observer, its figures are NaN: {e}"));
            None
        }
    };
    let window = |o: &Option<Observer>, w: &[(i64, i64)]| {
        o.as_ref().map_or_else(Latency::none, |o| o.windows(w))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The window runs from one /healthz answer to the next (each may be
    // slow on a saturated aggregator), every count read at its edges.
    let h0 = server.healthz()?;
    let quiet_start = Instant::now();
    let (cpu0, gen0, live0, q0) = (
        server.cpu_mark()?,
        server::own_cpu_mark()?,
        stats.live_sent.load(Ordering::Relaxed),
        unix_us(),
    );
    let overload0 = stats.overload_acks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let h1 = server.healthz()?;
    let quiet_secs = quiet_start.elapsed().as_secs_f64();
    let quiet_cpu = server.cpu_since(cpu0)?;
    let quiet_gen = server::own_cpu_since(gen0)?;
    let q1 = unix_us();
    let live_rate = (stats.live_sent.load(Ordering::Relaxed) - live0) as f64 / quiet_secs;
    let overload1 = stats.overload_acks.load(Ordering::Relaxed);
    let updates = num(&h1, "updates_published") - num(&h0, "updates_published");
    let rss_quiet = server.rss_kib()? as f64 / 1024.0;
    let quiet = window(&observer, &[(q0, q1)]);
    note(format_args!(
        "quiet: {:.0} updates/s, aggregator {quiet_cpu:.1} % CPU, observer p99 {:.1} ms; {}",
        updates / quiet_secs,
        quiet.p99_ms,
        h1
    ));

    let mut figures: Figures = vec![
        ("agents", agents as f64),
        ("attach_secs", attach_secs),
        ("attach_aggregator_cpu_pct", attach_cpu),
        ("attach_generator_cpu_pct", attach_gen),
        // Acks asking agents to slow down (hub queue over half full); the
        // simulated agents keep their pace regardless.
        ("attach_overload_acks", attach_overload as f64),
        ("quiet_overload_acks", (overload1 - overload0) as f64),
        ("live_samples_per_s", live_rate.round()),
        // What the fleet's and the observer's samples make, against what the
        // hub published: under 100 %, ingest is falling behind.
        (
            "quiet_offered_updates_per_s",
            (live_rate * sim::updates_per_sample(agents)
                + (args.observer_hosts * args.observer_hz as usize) as f64)
                .round(),
        ),
        ("quiet_updates_per_s", (updates / quiet_secs).round()),
        ("quiet_aggregator_cpu_pct", quiet_cpu),
        (
            "cpu_us_per_update",
            quiet_cpu / 100.0 * quiet_secs * 1e6 / updates.max(1.0),
        ),
        ("quiet_generator_cpu_pct", quiet_gen),
        ("topics", num(&h1, "topics")),
        ("history_updates", num(&h1, "history_updates")),
        ("history_mib", num(&h1, "history_bytes") / 1048576.0),
        (
            "bytes_per_held_update",
            num(&h1, "history_bytes") / num(&h1, "history_updates").max(1.0),
        ),
        ("history_trimmed", num(&h1, "history_trimmed")),
        ("rss_quiet_mib", rss_quiet),
    ];
    report::push_latency(
        &mut figures,
        [
            "obs_quiet_p50_ms",
            "obs_quiet_p99_ms",
            "obs_quiet_max_ms",
            "obs_quiet_ingest_p99_ms",
            "obs_quiet_self_late_max_ms",
        ],
        quiet,
    );

    // The clients, on a runtime and thread of their own.
    let plan = client_plan(load, args, agents, server.http, kind);
    let clients: usize = plan.groups.iter().map(|g| g.clients).sum();
    let names: Vec<&'static str> = plan.groups.iter().map(|g| g.name).collect();
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("clients".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the clients' runtime");
            let _ = done_tx.send(runtime.block_on(storm::run(plan)));
        })?;
    let (cpu0, gen0) = (server.cpu_mark()?, server::own_cpu_mark()?);
    let (mut rss_peak, mut subs_peak, mut conns_peak) = (0u64, 0.0f64, 0.0f64);
    let mut last_note = Instant::now();
    let rounds: Vec<Round> = loop {
        tokio::select! {
            r = &mut done => break r.context("the clients' thread failed")?,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                rss_peak = rss_peak.max(server.rss_kib()?);
                if let Ok(h) = server.healthz() {
                    subs_peak = subs_peak.max(num(&h, "subscriptions"));
                    conns_peak = conns_peak.max(num(&h, "ws_connections"));
                }
                if last_note.elapsed() > Duration::from_secs(10) {
                    last_note = Instant::now();
                    note(format_args!("clients at work; aggregator RSS {} MiB", rss_peak / 1024));
                }
            }
        }
    };
    let clients_cpu = server.cpu_since(cpu0)?;
    let clients_gen = server::own_cpu_since(gen0)?;
    // The clients have all dropped their connections: how long until the
    // aggregator has closed every session but the observer's (bounded).
    let dropped = Instant::now();
    let mut h2 = server.healthz()?;
    while num(&h2, "ws_connections") > 1.0 && dropped.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h2 = server.healthz()?;
    }
    let drain_secs = dropped.elapsed().as_secs_f64();
    let rss_after = server.rss_kib()? as f64 / 1024.0;
    if let Some(o) = observer.as_mut() {
        o.stop();
    }

    let round_names: &[&str] = match load {
        Load::Storm => &["connect", "reconnect"],
        Load::Heavy => &["heavy"],
    };
    let mut windows = Vec::new();
    for (r, round) in rounds.iter().enumerate() {
        let name = round_names[r];
        println!("  {name}: {}", report::describe(round, &names));
        windows.push((round.start_us, round.settled_us));
        let lat = window(&observer, &[(round.start_us, round.settled_us)]);
        report::round_figures(&mut figures, name, round, &names, lat);
    }
    if windows.len() > 1 {
        report::push_latency(
            &mut figures,
            [
                "obs_storm_p50_ms",
                "obs_storm_p99_ms",
                "obs_storm_max_ms",
                "obs_storm_ingest_p99_ms",
                "obs_storm_self_late_max_ms",
            ],
            window(&observer, &windows),
        );
    }
    figures.extend([
        ("clients", clients as f64),
        ("clients_aggregator_cpu_pct", clients_cpu),
        ("clients_generator_cpu_pct", clients_gen),
        ("subscriptions_peak", subs_peak),
        ("ws_connections_peak", conns_peak),
        ("rss_peak_mib", rss_peak as f64 / 1024.0),
        ("rss_after_mib", rss_after),
        ("sessions_drain_s", drain_secs),
        (
            "kib_per_client",
            (rss_peak as f64 - rss_quiet * 1024.0) / clients.max(1) as f64,
        ),
        ("lag_episodes", num(&h2, "lag_episodes")),
        (
            "agent_failures",
            stats.failed.load(Ordering::Relaxed) as f64,
        ),
        (
            "clients_overload_acks",
            (stats.overload_acks.load(Ordering::Relaxed) - overload1) as f64,
        ),
        ("late_sends", stats.late.load(Ordering::Relaxed) as f64),
    ]);
    Ok(figures)
}

/// The clients of `load`.
fn client_plan(
    load: Load,
    args: &FleetArgs,
    agents: usize,
    http: std::net::SocketAddr,
    kind: ClientKind,
) -> Plan {
    let all = |n: usize| -> Arc<[String]> { vec!["host.*.cpu".to_string(); n].into() };
    let (groups, rounds, timeout) = match load {
        Load::Storm => (
            vec![
                Group {
                    name: "host_pages",
                    clients: args.host_pages,
                    batch_ms: 0,
                    // Spread over the fleet.
                    patterns: (0..args.host_pages)
                        .map(|i| {
                            format!(
                                "host.{}.>",
                                sim::host_name(i * agents / args.host_pages.max(1))
                            )
                        })
                        .collect(),
                    history: 300,
                    throttle_ms: 0,
                    leave_when_live: false,
                },
                Group {
                    name: "fleet_views",
                    clients: args.fleet_views,
                    batch_ms: 1000,
                    patterns: all(args.fleet_views),
                    history: 12,
                    throttle_ms: 5000,
                    leave_when_live: false,
                },
            ],
            2,
            args.settle_timeout,
        ),
        Load::Heavy => (
            vec![Group {
                name: "heavy",
                clients: args.heavy_clients,
                batch_ms: args.heavy_batch_ms,
                patterns: all(args.heavy_clients),
                history: 120,
                throttle_ms: 0,
                leave_when_live: true,
            }],
            1,
            args.heavy_timeout,
        ),
    };
    Plan {
        http,
        kind,
        groups,
        rounds,
        settle_timeout: Duration::from_secs(timeout),
        stall: Duration::from_secs(30),
        hold: Duration::from_secs(3),
    }
}
