//! The cluster scenario: simulated agents and WebSocket subscribers spread
//! over two aggregators that share updates through a real nats-server, next
//! to the same load on one aggregator with no broker. Subscribers tell the
//! updates of hosts attached to their own aggregator (local) from those that
//! crossed the broker (cross), so the broker's latency cost is one number.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::client::ClientKind;
use crate::load::{self, PublishStats, Received};
use crate::server::{Nats, Pin, Server};
use crate::{Figures, wind_down};

/// One run of `agents` simulated agents (one full sample per second each)
/// and `clients` subscribers of `host.*.cpu`, on `nodes` aggregators (1: no
/// broker; 2: half the agents and half the clients on each), subscribers
/// using `client`.
pub(crate) async fn run_once(
    binary: &PathBuf,
    agents: usize,
    clients: usize,
    nodes: usize,
    secs: u64,
    core: Option<Pin>,
    client: ClientKind,
) -> anyhow::Result<Figures> {
    let nats = if nodes > 1 {
        Some(Nats::start(core)?)
    } else {
        None
    };
    let mut servers = Vec::new();
    for n in 0..nodes {
        let extra = match &nats {
            Some(nats) => format!(
                "[cluster]\nnats_url = \"nats://127.0.0.1:{}\"\nnode = \"bench-{n}\"\n",
                nats.port
            ),
            None => String::new(),
        };
        servers.push(Server::start(binary, &extra, core)?);
    }
    // Let the nodes see each other and finish their first catch-up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(PublishStats::default());
    let per_node = agents / nodes;
    let mut receivers = Vec::new();
    let mut subscribers = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        // Hosts bench-<i> with i in [n × per_node, (n + 1) × per_node) are
        // attached to node n; every other host's updates cross the broker.
        let received = Arc::new(match nodes {
            1 => Received::default(),
            _ => Received::with_remote_hosts(if n == 0 {
                per_node..agents
            } else {
                0..per_node
            }),
        });
        subscribers.extend(
            load::subscribe(
                server.http,
                clients / nodes,
                "host.*.cpu",
                0,
                client,
                received.clone(),
                stop.clone(),
            )
            .await?,
        );
        receivers.push(received);
    }
    let mut publishers = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        publishers.push(tokio::spawn(load::publish(
            server.ingest,
            n * per_node,
            per_node,
            (per_node / 100).max(1),
            load::Pace {
                rate: 1.0,
                per_batch: 1,
                full: true,
                whole_host: false,
            },
            published.clone(),
            stop.clone(),
        )));
    }
    // Ramp-up: every agent attached and sending.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for r in &receivers {
        r.measuring.store(true, Ordering::Relaxed);
    }
    let updates = |rs: &[Arc<Received>]| -> u64 {
        rs.iter().map(|r| r.updates.load(Ordering::Relaxed)).sum()
    };
    let u0 = updates(&receivers);
    let s0 = published.sent.load(Ordering::Relaxed);
    let marks = servers
        .iter()
        .map(|s| s.cpu_mark())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nats_mark = nats.as_ref().map(|n| n.cpu_mark()).transpose()?;
    let measure = Duration::from_secs(secs);
    tokio::time::sleep(measure).await;
    let u1 = updates(&receivers);
    let sent = (published.sent.load(Ordering::Relaxed) - s0) as f64 / measure.as_secs_f64();
    let mut cpus = Vec::new();
    for (s, m) in servers.iter().zip(marks) {
        cpus.push(s.cpu_since(m)?);
    }
    let nats_cpu = match (&nats, nats_mark) {
        (Some(n), Some(m)) => n.cpu_since(m)?,
        _ => 0.0,
    };
    let rss: u64 = servers
        .iter()
        .map(|s| s.rss_kib())
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .sum();
    for r in &receivers {
        r.measuring.store(false, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
    }
    wind_down(&stop, tokio::spawn(async {}), subscribers).await;
    let mut local = receivers[0].latency.lock().expect("lock").clone();
    let mut cross = receivers[0].cross.lock().expect("lock").clone();
    for r in &receivers[1..] {
        let _ = local.add(&*r.latency.lock().expect("lock"));
        let _ = cross.add(&*r.cross.lock().expect("lock"));
    }
    let deliveries = (u1 - u0) as f64 / measure.as_secs_f64();
    // Every client wants every host's cpu topic: one update per sample.
    let wanted = sent * clients as f64;
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64 / 1000.0
        }
    };
    let mean = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() { 0.0 } else { h.mean() / 1000.0 }
    };
    let aggregator_cpu: f64 = cpus.iter().sum();
    Ok(vec![
        ("nodes", nodes as f64),
        ("samples_per_s", sent.round()),
        ("deliveries_per_s", deliveries.round()),
        (
            "delivered_pct",
            if wanted > 0.0 {
                100.0 * deliveries / wanted
            } else {
                100.0
            },
        ),
        ("local_mean_ms", mean(&local)),
        ("cross_mean_ms", mean(&cross)),
        ("local_p50_ms", q(&local, 0.50)),
        ("local_p99_ms", q(&local, 0.99)),
        ("cross_p50_ms", q(&cross, 0.50)),
        ("cross_p99_ms", q(&cross, 0.99)),
        ("aggregators_cpu_pct", aggregator_cpu),
        (
            "busiest_aggregator_cpu_pct",
            cpus.iter().copied().fold(0.0, f64::max),
        ),
        ("nats_cpu_pct", nats_cpu),
        ("aggregators_rss_mib", rss as f64 / 1024.0),
    ])
}
