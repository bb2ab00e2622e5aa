//! `hostpulse-alert-latency`: alerting's detection latency, end to end. For
//! each of `--alerts` hosts it opens a real gRPC ingest stream to a running
//! aggregator (whose rules hold `cpu.total_pct > 90` with `for = "2s"`,
//! selecting `lat-*`), sends two samples above 90 stamped 2 s and 1 s ago
//! (the rule goes pending), then at T0 the sample that completes the `for`
//! window, and polls a real Alertmanager (`GET /api/v2/alerts` filtered on
//! the host, every 10 ms) until it holds the alert. It prints each latency
//! and the median, p95 and max. `scripts/alert-bench.sh latency` starts the
//! aggregator and Alertmanager and runs it.
//!
//! ```sh
//! hostpulse-alert-latency --ingest 127.0.0.1:7070 --alertmanager 127.0.0.1:9093 --alerts 20
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use hostpulse_proto::v1::{
    AgentMessage, Batch, Hello, agent_message, aggregator_message, ingest_client::IngestClient,
};
use hostpulse_proto::{Cpu, Sample, encode_batch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Measures how long a completed `for` window takes to reach Alertmanager.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The aggregator's gRPC ingest address (loopback only).
    #[arg(long)]
    ingest: SocketAddr,
    /// Alertmanager's HTTP address (loopback only).
    #[arg(long)]
    alertmanager: SocketAddr,
    /// Alerts to measure, one host each.
    #[arg(long, default_value_t = 20)]
    alerts: usize,
    /// Give up on one alert after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn cpu_batch(batch_seq: u64, first_seq: u64, stamps: &[i64], pct: f32) -> AgentMessage {
    let samples: Vec<Sample> = stamps
        .iter()
        .enumerate()
        .map(|(k, &at)| Sample {
            seq: first_seq + k as u64,
            timestamp_ms: at,
            cpu: Some(Cpu {
                total_pct: pct,
                per_core_pct: vec![pct; 2],
            }),
            ..Sample::default()
        })
        .collect();
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: batch_seq,
            sample_count: samples.len() as u32,
            samples: encode_batch(&samples).into(),
        })),
    }
}

/// `GET path` over HTTP/1.1 (Connection: close); the whole response.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One alert: the time from sending the completing sample to Alertmanager
/// holding the alert.
async fn measure(args: &Args, host: &str, epoch: u64) -> anyhow::Result<Duration> {
    let mut client = IngestClient::connect(format!("http://{}", args.ingest)).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: host.to_string(),
            hostname: host.to_string(),
            version: "alert-latency".into(),
            labels: Default::default(),
            epoch,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 1000,
            instance: 0,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?.context("no Welcome")?;
    let start = now_ms();
    tx.send(cpu_batch(1, 1, &[start - 2000, start - 1000], 99.0))
        .await?;
    loop {
        let m = inbound.message().await?.context("stream ended")?;
        if let Some(aggregator_message::Kind::Ack(a)) = m.kind
            && a.seq >= 1
        {
            break;
        }
    }
    let filter = format!("/api/v2/alerts?filter=host%3D%22{host}%22");
    if get(args.alertmanager, &filter).await?.contains(host) {
        bail!("{host}: alert held before the completing sample");
    }
    // T0: the sample that completes the 2 s `for` window.
    let t0 = Instant::now();
    tx.send(cpu_batch(2, 3, &[now_ms()], 99.0)).await?;
    let latency = loop {
        if get(args.alertmanager, &filter).await?.contains(host) {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_millis(args.timeout_ms) {
            bail!(
                "{host}: no alert in Alertmanager after {} ms",
                args.timeout_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Resolve it and leave.
    tx.send(cpu_batch(3, 4, &[now_ms()], 10.0)).await?;
    loop {
        let m = inbound.message().await?.context("stream ended")?;
        if let Some(aggregator_message::Kind::Ack(a)) = m.kind
            && a.seq >= 3
        {
            break;
        }
    }
    Ok(latency)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.ingest.ip().is_loopback() || !args.alertmanager.ip().is_loopback() {
        bail!("--ingest and --alertmanager must be loopback addresses: this is a test tool");
    }
    if args.alerts == 0 {
        bail!("--alerts must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let epoch = now_ms() as u64;
        let mut all = Vec::new();
        for i in 0..args.alerts {
            let host = format!("lat-{epoch}-{i:03}");
            let d = measure(&args, &host, epoch).await?;
            println!("alert {i:3} {host}: {:.1} ms", d.as_secs_f64() * 1e3);
            all.push(d);
        }
        all.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p95 = all[(all.len() * 95).div_ceil(100) - 1];
        println!(
            "alert-latency alerts={} median_ms={:.1} p95_ms={:.1} max_ms={:.1}",
            all.len(),
            ms(all[all.len() / 2]),
            ms(p95),
            ms(all[all.len() - 1])
        );
        Ok(())
    })
}
