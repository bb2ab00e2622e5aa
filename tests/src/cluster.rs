//! Aggregator binaries in cluster mode for the end-to-end tests: a [`Node`]
//! started from a TOML file against a real nats-server, polling with a
//! deadline ([`eventually`]), and a hand-driven agent whose samples each
//! make one update ([`Burst`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::fake::{self, FakeAgent};
use crate::nats::NatsServer;
use crate::process::{Proc, addr_in, temp_file};
use crate::track::Tracker;
use crate::ws::WsClient;
use crate::{WAIT, http_get};

/// The `[cluster]` settings every node gets unless a test overrides them.
pub const CLUSTER_DEFAULTS: [(&str, &str); 4] = [
    ("presence_interval_ms", "200"),
    ("peer_timeout_ms", "1500"),
    ("catchup_wait_ms", "500"),
    ("reconnect_max_ms", "500"),
];

/// One aggregator binary in cluster mode.
pub struct Node {
    /// The process.
    pub proc: Proc,
    /// Its gRPC ingest address.
    pub ingest: std::net::SocketAddr,
    /// Its HTTP address.
    pub http: std::net::SocketAddr,
}

impl Node {
    /// Starts node `name` with the default `[cluster]` settings; returns
    /// once it has connected to NATS.
    pub async fn start(nats: &NatsServer, name: &str) -> Self {
        Self::start_with(nats, name, &[]).await
    }

    /// Starts a node with `[cluster]` keys in `tune` replacing the defaults;
    /// returns once it has connected to NATS.
    pub async fn start_with(nats: &NatsServer, name: &str, tune: &[(&str, &str)]) -> Self {
        Self::start_with_hub(nats, name, tune, "").await
    }

    /// Like [`Node::start_with`], with `hub` as the `[hub]` section's keys.
    pub async fn start_with_hub(
        nats: &NatsServer,
        name: &str,
        tune: &[(&str, &str)],
        hub: &str,
    ) -> Self {
        Self::start_with_sections(nats, name, tune, hub, "").await
    }

    /// Like [`Node::start_with_hub`], with `sections` (whole TOML sections,
    /// such as `[storage]`) added to the configuration.
    pub async fn start_with_sections(
        nats: &NatsServer,
        name: &str,
        tune: &[(&str, &str)],
        hub: &str,
        sections: &str,
    ) -> Self {
        let mut keys: BTreeMap<&str, &str> = CLUSTER_DEFAULTS.into_iter().collect();
        keys.extend(tune.iter().copied());
        let cluster: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let config = temp_file(
            "aggregator.toml",
            &format!(
                "[ingest]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                 [hub]\n{hub}\n[cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\n{cluster}\n{sections}",
                nats.url()
            ),
        );
        tokio::task::spawn_blocking(move || {
            let mut proc = Proc::spawn(
                "hostpulse-aggregator",
                &["--config", config.to_str().unwrap()],
            );
            let line = proc.wait_for_line("aggregator listening");
            proc.wait_for_line("connected to NATS");
            Node {
                ingest: addr_in(&line, "ingest_addr"),
                http: addr_in(&line, "http_addr"),
                proc,
            }
        })
        .await
        .unwrap()
    }

    /// `http://` URL of its ingest endpoint.
    pub fn ingest_url(&self) -> String {
        format!("http://{}", self.ingest)
    }

    /// `ws://` URL of its WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Waits (up to [`WAIT`]) for a log line containing `needle`, without
    /// stalling the runtime's other tasks.
    pub fn line(&mut self, needle: &str) -> String {
        tokio::task::block_in_place(|| self.proc.wait_for_line(needle))
    }

    /// `(aggregator, online)` of each host in `/api/v1/hosts`.
    pub async fn hosts(&self) -> BTreeMap<String, (String, bool)> {
        let (status, body) = http_get(self.http, "/api/v1/hosts").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap_or_else(|| panic!("a host list: {body}"))
            .iter()
            .map(|h| {
                (
                    h["host"].as_str().unwrap().to_string(),
                    (
                        h["aggregator"].as_str().unwrap_or("").to_string(),
                        h["online"].as_bool().unwrap(),
                    ),
                )
            })
            .collect()
    }

    /// The value of one sample in `/metrics` (`name` with any labels, as
    /// written there).
    pub async fn metric(&self, name: &str) -> u64 {
        crate::metric(self.http, name).await as u64
    }

    /// Host updates taken from peers, live or by catch-up.
    pub async fn from_peers(&self) -> u64 {
        self.metric("hostpulse_cluster_received_total").await
            + self.metric("hostpulse_cluster_caught_up_total").await
    }

    /// `load` updates the hub has taken (a fake agent's sample makes one).
    pub async fn load_updates(&self) -> u64 {
        self.metric("hostpulse_topic_updates_published_total{kind=\"load\"}")
            .await
    }
}

/// Polls `probe` every 50 ms until `done` holds for its value; returns it.
/// Panics after [`WAIT`] with `what` and the last value.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = probe().await;
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subscribes to `pattern` on `node`, asking for `history` updates first,
/// and records what arrives until `done` holds of it (within [`WAIT`]).
pub async fn track_until(
    node: &Node,
    pattern: &str,
    history: u64,
    done: impl Fn(&Tracker) -> bool,
) -> Tracker {
    let mut client = WsClient::connect(&node.ws_url()).await;
    client
        .send(serde_json::json!({"action": "subscribe", "topic": pattern, "history": history}))
        .await;
    client.next_on("$sys.subscribed").await;
    let mut tracker = Tracker::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&tracker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pattern} on {}: not all there; got {:?}, gaps {:?}",
            node.http,
            tracker.range,
            tracker.gaps
        );
        if let Ok(Some(m)) = client.recv(Duration::from_millis(200)).await {
            tracker.record(&m);
        }
    }
    tracker
}

/// A hand-driven agent whose samples each make exactly one update
/// (`host.<host>.load`), numbered 1, 2, 3…
pub struct Burst {
    /// The stream.
    pub agent: FakeAgent,
    /// Batches sent.
    pub batches: u64,
    /// The last sample seq sent.
    pub seq: u64,
}

impl Burst {
    /// Attaches as `host` to `node`.
    pub async fn connect(node: &Node, host: &str) -> Self {
        Self {
            agent: FakeAgent::connect(&node.ingest_url(), host).await,
            batches: 0,
            seq: 0,
        }
    }

    /// Sends the next `n` samples in one batch and waits for its ack.
    pub async fn send(&mut self, n: u64) {
        let samples: Vec<_> = (self.seq + 1..=self.seq + n)
            .map(|s| fake::sample(s, 0))
            .collect();
        self.batches += 1;
        self.agent.send(fake::batch(self.batches, &samples)).await;
        self.agent.acked(self.batches).await;
        self.seq += n;
    }

    /// Like [`Burst::send`], then waits until `node`'s hub has taken every
    /// sample sent so far (an ack only means the batch was queued to it).
    pub async fn send_taken(&mut self, node: &Node, n: u64) {
        self.send(n).await;
        let want = self.seq;
        eventually(
            "the hub to take every sample sent",
            async || node.load_updates().await,
            |&taken| taken == want,
        )
        .await;
    }
}

/// `hostpulse-fleet-sim` (the bench crate's simulated fleet: one real gRPC
/// stream per host over a few HTTP/2 connections) as a child process,
/// stopped when dropped (its standard input closes, and it is killed).
pub struct FleetSim {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl FleetSim {
    /// Starts `hosts` hosts named `<prefix>-00001`... against `ingest`, each
    /// first sending `backlog` samples (3 host updates each: cpu, memory,
    /// load), then one sample every `interval_ms`. None goes offline.
    pub fn start(
        ingest: std::net::SocketAddr,
        hosts: usize,
        backlog: u64,
        interval_ms: u64,
        prefix: &str,
    ) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(crate::process::binary("hostpulse-fleet-sim"))
            .args([
                "--ingest",
                &ingest.to_string(),
                "--hosts",
                &hosts.to_string(),
                "--backlog",
                &backlog.to_string(),
                "--interval-ms",
                &interval_ms.to_string(),
                "--offline-every",
                "1000000",
                "--duration-secs",
                "900",
                "--prefix",
                prefix,
                "--stop-on-stdin-eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hostpulse-fleet-sim");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (up to `limit`, off the async workers) until every host's
    /// backlog is acknowledged; returns how long that took.
    pub async fn ready(&mut self, limit: Duration) -> Duration {
        let started = std::time::Instant::now();
        let lines = &self.lines;
        tokio::task::block_in_place(|| {
            loop {
                let left = limit.saturating_sub(started.elapsed());
                match lines.recv_timeout(left) {
                    Ok(line) if line.starts_with("fleet-sim ready") => return,
                    Ok(_) => {}
                    Err(e) => panic!("fleet-sim not ready within {limit:?}: {e}"),
                }
            }
        });
        started.elapsed()
    }
}

impl Drop for FleetSim {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's `/api/v1/hosts` once it lists at least `n` hosts online (polled
/// every 500 ms, up to `limit`): host → (aggregator, online).
pub async fn hosts_online(
    node: &Node,
    n: usize,
    limit: Duration,
) -> BTreeMap<String, (String, bool)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let hosts = node.hosts().await;
        let online = hosts.values().filter(|(_, on)| *on).count();
        if online >= n {
            return hosts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{online} of {n} hosts online after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
