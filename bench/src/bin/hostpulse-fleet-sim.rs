//! `hostpulse-fleet-sim`: a simulated fleet for the dashboard's browser test
//! (and for trying the fleet view by hand): N hosts, each its own real gRPC
//! ingest stream to a real aggregator on loopback, with labels (`role`,
//! `rack`) and a backlog of history, then one sample per interval.
//! `--backlog-step-ms` spaces the backlog out (a host with a day of history,
//! one sample a minute: `--hosts 1 --backlog 1440 --backlog-step-ms 60000`;
//! up to 10 hosts may have such long backlogs), so an aggregator with
//! `[storage]` gets past data with real rollups, as the host page's time
//! ranges test needs.
//!
//! It stays small and stops by itself: at most [`MAX_HOSTS`] hosts, over a
//! few HTTP/2 connections, on one thread; every `--offline-every`th host
//! closes its stream once its backlog is acknowledged (announced offline);
//! everything ends after `--duration-secs` (or, with `--stop-on-stdin-eof`,
//! when its standard input closes, so a test that dies takes it along). It prints `fleet-sim ready hosts=N` once
//! every host's backlog is acknowledged.
//!
//! With `--stdin-control`, lines on its standard input steer one host's CPU
//! (for the dashboard's alerts test: a real aggregator evaluates its rules
//! on these real samples): `cpu <n> <pct>` makes host n (1-based, as in its
//! name) report `pct` in its live samples from the next one on, and
//! `cpu <n> -` gives it back its simulated value.
//!
//! ```sh
//! hostpulse-fleet-sim --ingest 127.0.0.1:7070 --hosts 5000
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use hostpulse_proto::v1::{
    AgentMessage, Batch, Hello, agent_message, aggregator_message, ingest_client::IngestClient,
};
use hostpulse_proto::{Cpu, Load, Memory, Sample, encode_batch};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Most hosts one simulator runs.
const MAX_HOSTS: usize = 10_000;
/// Streams per HTTP/2 connection (servers allow 200 by default).
const STREAMS_PER_CONNECTION: usize = 100;
/// Roles handed out in turn.
const ROLES: &[&str] = &["web", "db", "cache", "queue", "batch"];
/// Hosts per rack.
const RACK_SIZE: usize = 250;
/// Most backlog samples in one batch (the aggregator's default
/// `ingest.max_samples_per_batch` is 1,000).
const BACKLOG_BATCH: usize = 500;
/// Most backlog samples over all hosts (5,000 hosts with 600 each).
const MAX_BACKLOG_TOTAL: u64 = 3_000_000;

/// Simulates a fleet of hosts over real gRPC streams.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The aggregator's gRPC ingest address (loopback only).
    #[arg(long)]
    ingest: SocketAddr,
    /// Hosts to simulate (at most 10,000).
    #[arg(long, default_value_t = 5000)]
    hosts: usize,
    /// Milliseconds between one host's samples.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Samples each host sends first, `--backlog-step-ms` apart and ending
    /// now (its history): at most 600, or 100,000 for up to 10 hosts.
    #[arg(long, default_value_t = 60)]
    backlog: u64,
    /// Milliseconds between backlog samples (1,000 to 3,600,000).
    #[arg(long, default_value_t = 1000)]
    backlog_step_ms: u64,
    /// Every Nth host (N > 0) goes offline once its backlog is acknowledged.
    #[arg(long, default_value_t = 10)]
    offline_every: usize,
    /// Seconds after which the simulator stops by itself (at most 3,600).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Stop when standard input closes (for a parent holding a pipe).
    #[arg(long)]
    stop_on_stdin_eof: bool,
    /// Host names are `<prefix>-<n>` (n zero-padded to five digits).
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Read `cpu <n> <pct>` / `cpu <n> -` lines on standard input (host n's
    /// CPU in its live samples); the simulator stops when it closes.
    #[arg(long)]
    stdin_control: bool,
}

/// CPU values set by `--stdin-control`, by host index (0-based).
type Overrides = Arc<Mutex<HashMap<usize, f32>>>;

/// Applies one control line; says what it did, or why not.
fn control(line: &str, hosts: usize, overrides: &Overrides) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["cpu", n, value] = words[..] else {
        return Err(format!("{line:?}: expected `cpu <n> <pct>` or `cpu <n> -`"));
    };
    let n: usize = n
        .parse()
        .map_err(|_| format!("{n:?} is not a host number"))?;
    if n == 0 || n > hosts {
        return Err(format!("host {n} is not 1 to {hosts}"));
    }
    let mut o = overrides.lock().expect("overrides lock");
    if value == "-" {
        o.remove(&(n - 1));
        return Ok(format!("host {n} cpu simulated"));
    }
    let pct: f32 = value
        .parse()
        .ok()
        .filter(|p: &f32| (0.0..=100.0).contains(p))
        .ok_or_else(|| format!("{value:?} is not a percentage"))?;
    o.insert(n - 1, pct);
    Ok(format!("host {n} cpu {pct}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Host `i`'s sample `seq` at `at` (Unix ms): values differ per host (so
/// sorting means something) and drift a little over time.
fn sample(i: usize, seq: u64, at: i64) -> Sample {
    let base = ((i * 37) % 97) as f64;
    let wave = ((at / 1000) as f64 / 20.0 + i as f64).sin() * 3.0;
    let cpu = (base + wave).clamp(0.0, 100.0) as f32;
    let total: u64 = 8 << 30;
    Sample {
        seq,
        timestamp_ms: at,
        cpu: Some(Cpu {
            total_pct: cpu,
            per_core_pct: vec![cpu; 4],
        }),
        memory: Some(Memory {
            total_bytes: total,
            used_bytes: total / 100 * ((i * 53) % 90 + 5) as u64,
            available_bytes: total / 2,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
        }),
        load: Some(Load {
            one: ((i * 13) % 400) as f64 / 100.0,
            five: 1.0,
            fifteen: 1.0,
        }),
        ..Sample::default()
    }
}

fn batch(seq: u64, samples: &[Sample]) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq,
            sample_count: samples.len() as u32,
            samples: encode_batch(samples).into(),
        })),
    }
}

/// One host: Hello, the backlog, then a sample per interval until stopped.
async fn host(
    channel: tonic::transport::Channel,
    i: usize,
    args: Arc<Args>,
    epoch: u64,
    ready: Arc<AtomicUsize>,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let labels = [
        ("role".to_string(), ROLES[i % ROLES.len()].to_string()),
        ("rack".to_string(), format!("r{:02}", i / RACK_SIZE + 1)),
    ]
    .into_iter()
    .collect();
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: format!("{}-{i}", args.prefix),
            hostname: format!("{}-{:05}", args.prefix, i + 1),
            version: "fleet-sim".into(),
            labels,
            epoch,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: args.interval_ms as u32,
            instance: 0,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?.context("no Welcome")?;
    let now = now_ms();
    let step = args.backlog_step_ms as i64;
    let backlog: Vec<Sample> = (1..=args.backlog)
        .map(|s| sample(i, s, now - (args.backlog - s) as i64 * step))
        .collect();
    let mut seq = args.backlog;
    let mut batch_seq = 0;
    for chunk in backlog.chunks(BACKLOG_BATCH) {
        batch_seq += 1;
        tx.send(batch(batch_seq, chunk)).await?;
    }
    if batch_seq > 0 {
        loop {
            let m = inbound.message().await?.context("stream ended")?;
            if let Some(aggregator_message::Kind::Ack(a)) = m.kind
                && a.seq >= batch_seq
            {
                break;
            }
        }
    }
    ready.fetch_add(1, Ordering::Relaxed);
    if args.offline_every > 0 && i % args.offline_every == args.offline_every - 1 {
        return Ok(());
    }
    // Acks are not waited for from here on; read them so the stream flows.
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        seq += 1;
        batch_seq += 1;
        let mut s = sample(i, seq, now_ms());
        if let Some(&pct) = overrides.lock().expect("overrides lock").get(&i) {
            s.cpu = Some(Cpu {
                total_pct: pct,
                per_core_pct: vec![pct; 4],
            });
        }
        if tx.send(batch(batch_seq, &[s])).await.is_err() {
            return Ok(());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if !args.ingest.ip().is_loopback() {
        bail!("--ingest must be a loopback address: this is a test tool");
    }
    if args.hosts == 0 || args.hosts > MAX_HOSTS {
        bail!("--hosts must be 1 to {MAX_HOSTS}");
    }
    let max_backlog = if args.hosts <= 10 { 100_000 } else { 600 };
    if args.backlog > max_backlog
        || args.backlog * args.hosts as u64 > MAX_BACKLOG_TOTAL
        || args.duration_secs > 3600
        || args.interval_ms < 100
    {
        bail!(
            "--backlog at most 600 (100,000 for up to 10 hosts), --duration-secs at most 3600, --interval-ms at least 100"
        );
    }
    if !(1000..=3_600_000).contains(&args.backlog_step_ms) {
        bail!("--backlog-step-ms must be 1,000 to 3,600,000");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Arc<Args>) -> anyhow::Result<()> {
    let epoch = now_ms() as u64;
    let ready = Arc::new(AtomicUsize::new(0));
    let overrides: Overrides = Arc::default();
    let mut channels = Vec::new();
    for _ in 0..args.hosts.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{}", args.ingest))?
                .connect()
                .await
                .context("connecting to the aggregator")?,
        );
    }
    for i in 0..args.hosts {
        let channel = channels[i / STREAMS_PER_CONNECTION].clone();
        let (args, ready, overrides) = (args.clone(), ready.clone(), overrides.clone());
        tokio::spawn(async move {
            if let Err(e) = host(channel, i, args, epoch, ready, overrides).await {
                eprintln!("fleet-sim: host {i}: {e:#}");
            }
        });
        if i % 100 == 99 {
            // Ramp up without a thundering herd of stream set-ups.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = tokio::time::sleep(Duration::from_secs(args.duration_secs));
    tokio::pin!(deadline);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut announced = false;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut deadline => {
                println!("fleet-sim stopping: --duration-secs reached");
                return Ok(());
            }
            line = lines.next_line(), if args.stop_on_stdin_eof || args.stdin_control => {
                match line {
                    Ok(Some(line)) if args.stdin_control => match control(&line, args.hosts, &overrides) {
                        Ok(done) => println!("fleet-sim control: {done}"),
                        Err(why) => eprintln!("fleet-sim control: {why}"),
                    },
                    Ok(Some(_)) => {}
                    _ => {
                        println!("fleet-sim stopping: stdin closed");
                        return Ok(());
                    }
                }
            }
            _ = poll.tick(), if !announced => {
                let n = ready.load(Ordering::Relaxed);
                if n == args.hosts {
                    println!("fleet-sim ready hosts={n}");
                    announced = true;
                }
            }
        }
    }
}
