//! The steady observer, in a process of its own so that its timing is its
//! own and not the load generator's. It publishes `hosts` hosts of its own
//! (`bench-observer-NN`, a `load` sample every 1/`hz` s each, so no
//! `host.*.cpu` pattern and no fleet host page includes them), each on its
//! own gRPC stream as an agent, and follows their topics live with one
//! tokio-tungstenite client. Each update's latency runs from the moment its
//! batch was handed to the stream to the moment the client read it, both on
//! this process's clock.
//!
//! By default 50 hosts at 1 Hz: 50 latencies a second, each host at the
//! fleet's own pace, so when the aggregator's ingest is saturated (every
//! stream waiting its turn for the hub queue) the observer is served like a
//! fleet host. One host at 50 Hz (`--observer-hosts 1 --observer-hz 50`,
//! as the end-to-end tests do) instead falls ever further behind then, since
//! a stream gets about one turn per queue wait whatever its rate.
//!
//! The child prints `ready`, then `s <host> <seq> <unix µs> <µs late>` per
//! update sent (how late its timer fired: whether this process itself was
//! kept waiting for the core) and `r <host> <seq> <unix µs> <ms to ingest>`
//! per update received (its `received` minus its `timestamp`: the share
//! spent before the aggregator's ingest had it, in whole ms); it stops
//! publishing when its standard input closes, waits (up to a minute) for
//! the last updates, and exits. The parent reads the lines and cuts them
//! into windows by send time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hostpulse_proto::v1::{AgentMessage, Batch, Hello, agent_message, ingest_client::IngestClient};
use hostpulse_proto::{Load, Sample, encode_batch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;

/// How long, once publishing stopped, the observer waits for updates still
/// on their way (so a long stall is measured rather than counted missing).
const STRAGGLERS: Duration = Duration::from_secs(60);

/// How long the observer may take to attach its hosts and subscribe.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// The observed host `i`.
fn host(i: usize) -> String {
    format!("bench-observer-{i:02}")
}

/// Unix time in microseconds.
pub(crate) fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The child: runs until its standard input closes.
pub(crate) fn child_main(ingest: &str, ws: &str, hosts: usize, hz: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(observe(ingest, ws, hosts.clamp(1, 100), hz.max(1)))
}

/// One observed host: attaches, then publishes until `stop`; returns its
/// last seq.
async fn publish(
    ingest: String,
    i: usize,
    hosts: usize,
    hz: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<u64> {
    let mut client = IngestClient::connect(format!("http://{ingest}")).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: host(i),
            hostname: host(i),
            version: "bench".into(),
            labels: Default::default(),
            epoch: crate::load::now_ms() as u64,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 1000 / hz,
            instance: 0,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?; // Welcome
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    // A first sample makes the topic, so the client can subscribe to it.
    let mut seq = 1u64;
    tx.send(batch(seq)).await?;
    ready.send(()).await?;
    drop(ready);
    // The hosts spread over the period.
    let period = Duration::from_secs_f64(1.0 / hz as f64);
    tokio::time::sleep(period.mul_f64(i as f64 / hosts as f64)).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            due = tick.tick() => due,
        };
        seq += 1;
        let message = batch(seq);
        let late = due.elapsed().as_micros();
        let at = unix_us();
        if tx.send(message).await.is_err() {
            break;
        }
        println!("s {i} {seq} {at} {late}");
    }
    Ok(seq)
}

/// A batch of one `load` sample, taken now.
fn batch(seq: u64) -> AgentMessage {
    let sample = Sample {
        seq,
        timestamp_ms: crate::load::now_ms(),
        load: Some(Load {
            one: 1.0,
            five: 0.5,
            fifteen: 0.25,
        }),
        ..Sample::default()
    };
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq,
            sample_count: 1,
            samples: encode_batch(&[sample]).into(),
        })),
    }
}

async fn observe(ingest: &str, ws: &str, hosts: usize, hz: u32) -> anyhow::Result<()> {
    // Standard input closing is the signal to stop.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = stop_tx.send(true);
    });
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(hosts);
    let mut publishers = Vec::new();
    for i in 0..hosts {
        publishers.push(tokio::spawn(publish(
            ingest.to_string(),
            i,
            hosts,
            hz,
            stop.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..hosts {
        ready
            .recv()
            .await
            .context("an observed host failed to attach")?;
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws")).await?;
    for i in 0..hosts {
        let topic = format!("host.{}.load", host(i));
        socket
            .send(Message::text(format!(
                "{{\"action\":\"subscribe\",\"topic\":\"{topic}\"}}"
            )))
            .await?;
    }
    let mut subscribed = 0;
    while subscribed < hosts {
        match socket.next().await {
            Some(Ok(Message::Text(t))) if t.contains("$sys.subscribed") => subscribed += 1,
            Some(Ok(_)) => {}
            other => anyhow::bail!("observer: no subscription: {other:?}"),
        }
    }
    println!("ready");

    let mut last_seen = vec![0u64; hosts];
    let mut stopping: Option<(Vec<u64>, Instant)> = None;
    loop {
        if let Some((last, since)) = &stopping
            && (last_seen.iter().zip(last).all(|(s, l)| s >= l) || since.elapsed() > STRAGGLERS)
        {
            break;
        }
        tokio::select! {
            m = socket.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let at = unix_us();
                    if let Some((i, seq)) = host_and_seq(&t).filter(|(i, _)| *i < hosts) {
                        last_seen[i] = last_seen[i].max(seq);
                        let mut times = crate::load::timestamps(&t).chain(received_of(&t));
                        let to_ingest = match (times.next(), times.next()) {
                            (Some(taken), Some(received)) => received - taken,
                            _ => -1,
                        };
                        println!("r {i} {seq} {at} {to_ingest}");
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = stop.wait_for(|s| *s), if stopping.is_none() => {
                let mut last = Vec::new();
                for p in publishers.drain(..) {
                    last.push(p.await??);
                }
                stopping = Some((last, Instant::now()));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// The host index and seq of an update of an observed topic.
fn host_and_seq(text: &str) -> Option<(usize, u64)> {
    let rest = text.strip_prefix("{\"topic\":\"host.bench-observer-")?;
    let (i, rest) = rest.split_once(".load\",\"seq\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    Some((i.parse().ok()?, rest[..digits].parse().ok()?))
}

/// The `received` time of an update (Unix ms).
fn received_of(text: &str) -> Option<i64> {
    const KEY: &str = "\"received\":\"";
    let at = text.find(KEY)? + KEY.len();
    crate::load::parse_rfc3339_ms(text.get(at..at + 24)?)
}

#[derive(Debug, Default)]
struct Timeline {
    /// ((host, seq), sent at unix µs, µs late), in order.
    sent: Vec<((u64, u64), i64, i64)>,
    /// (host, seq) → (received at unix µs, ms to ingest), first arrival.
    received: HashMap<(u64, u64), (i64, i64)>,
}

/// The observer process, seen from the scenario.
pub(crate) struct Observer {
    child: Child,
    timeline: Arc<Mutex<Timeline>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Latency over one window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    /// Updates sent in the window.
    pub(crate) updates: usize,
    /// Of those, never received.
    pub(crate) missing: usize,
    /// Milliseconds; a missing update counts as infinitely late.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// p99 of the share before the aggregator's ingest had it (whole ms).
    pub(crate) ingest_p99_ms: f64,
    /// The observer's own timer's worst lateness (its process waiting for
    /// the core, not the server).
    pub(crate) late_max_ms: f64,
}

impl Latency {
    /// No observer: every figure not a number.
    pub(crate) fn none() -> Self {
        Self {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            max_ms: f64::NAN,
            ingest_p99_ms: f64::NAN,
            late_max_ms: f64::NAN,
            ..Self::default()
        }
    }
}

impl Observer {
    /// Starts `exe` as the observer of the aggregator at `ingest` / `http`;
    /// returns once it follows its topic.
    pub(crate) fn start(
        exe: &Path,
        ingest: &str,
        http: &str,
        hosts: usize,
        hz: u32,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(["--observe", ingest, http])
            .args(["--observe-hosts", &hosts.to_string()])
            .args(["--observe-hz", &hz.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = {
            let timeline = timeline.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut f = line.split(' ');
                    let kind = f.next();
                    let mut n = f.map(|v| v.parse::<i64>().ok());
                    let (Some(Some(host)), Some(Some(seq)), Some(Some(at)), Some(Some(x))) =
                        (n.next(), n.next(), n.next(), n.next())
                    else {
                        let _ = ready_tx.send(line == "ready");
                        continue;
                    };
                    let key = (host as u64, seq as u64);
                    let mut t = timeline.lock().expect("lock");
                    match kind {
                        Some("s") => t.sent.push((key, at, x)),
                        Some("r") => {
                            t.received.entry(key).or_insert((at, x));
                        }
                        _ => {}
                    }
                }
            })
        };
        // Generous: with the hub queue full, each of the observer's attaches
        // and subscribes waits its turn behind every agent's batches.
        match ready_rx.recv_timeout(READY_WITHIN) {
            Ok(true) => Ok(Self {
                child,
                timeline,
                reader: Some(reader),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the observer did not start within {READY_WITHIN:?}")
            }
        }
    }

    /// Latency of the updates sent in any of `windows` (unix µs).
    pub(crate) fn windows(&self, windows: &[(i64, i64)]) -> Latency {
        let t = self.timeline.lock().expect("lock");
        let sent: Vec<&((u64, u64), i64, i64)> = t
            .sent
            .iter()
            .filter(|(_, at, _)| windows.iter().any(|(from, to)| (from..=to).contains(&at)))
            .collect();
        if sent.is_empty() {
            return Latency::default();
        }
        let mut each: Vec<f64> = sent
            .iter()
            .map(|(seq, at, _)| {
                t.received
                    .get(seq)
                    .map_or(f64::INFINITY, |(r, _)| (r - at) as f64 / 1000.0)
            })
            .collect();
        let mut ingest: Vec<f64> = sent
            .iter()
            .filter_map(|(seq, _, _)| t.received.get(seq).map(|(_, i)| *i as f64))
            .collect();
        // Nearest rank.
        let rank = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v.get(((p * v.len() as f64).ceil() as usize).max(1) - 1)
                .copied()
                .unwrap_or(0.0)
        };
        Latency {
            updates: each.len(),
            missing: each.iter().filter(|l| l.is_infinite()).count(),
            p50_ms: rank(&mut each, 0.50),
            p99_ms: rank(&mut each, 0.99),
            max_ms: rank(&mut each, 1.0),
            ingest_p99_ms: rank(&mut ingest, 0.99),
            late_max_ms: sent.iter().map(|(_, _, l)| *l).max().unwrap_or(0) as f64 / 1000.0,
        }
    }

    /// Stops it and waits (bounded) for its last lines.
    pub(crate) fn stop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + STRAGGLERS + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
