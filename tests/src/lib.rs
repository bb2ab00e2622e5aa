//! Shared helpers for hostpulse's end-to-end tests: start real aggregators and
//! agents on loopback ports chosen at run time (in-process through their
//! libraries, or as the real binaries with TOML files), and talk to them with
//! real WebSocket and gRPC clients. Every wait has a timeout.

pub mod alertmanager;
pub mod cluster;
pub mod fake;
pub mod hook;
pub mod nats;
pub mod process;
pub mod prometheus;
pub mod track;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hostpulse_agent::{Agent, AgentConfig, AgentStatus};
use hostpulse_aggregator::{AggregatorConfig, Listeners};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The host metric families README documents (`host.<host>.<family>`), as
/// the tests expect them: stated here, not taken from the aggregator.
pub const DOCUMENTED_FAMILIES: [&str; 9] = [
    "cpu",
    "memory",
    "load",
    "processes",
    "network",
    "disk",
    "filesystems",
    "system",
    "temperatures",
];

/// The default limit for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// An aggregator running in this process.
pub struct TestAggregator {
    /// gRPC ingest address.
    pub ingest: SocketAddr,
    /// HTTP/WebSocket address.
    pub http: SocketAddr,
    /// Fires its shutdown.
    pub shutdown: CancellationToken,
    /// The serving task.
    pub task: JoinHandle<()>,
}

impl TestAggregator {
    /// Starts an aggregator on two free loopback ports; `tune` adjusts the config.
    pub async fn start(tune: impl FnOnce(&mut AggregatorConfig)) -> Self {
        Self::start_at("127.0.0.1:0", "127.0.0.1:0", tune).await
    }

    /// Starts an aggregator on the given addresses (to restart one in place).
    pub async fn start_at(
        ingest: &str,
        http: &str,
        tune: impl FnOnce(&mut AggregatorConfig),
    ) -> Self {
        let mut config = AggregatorConfig::default();
        tune(&mut config);
        let listeners = Listeners {
            ingest: TcpListener::bind(ingest).await.expect("bind ingest"),
            http: TcpListener::bind(http).await.expect("bind http"),
        };
        let ingest = listeners.ingest.local_addr().unwrap();
        let http = listeners.http.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            hostpulse_aggregator::run(config, listeners, token)
                .await
                .expect("aggregator run");
        });
        Self {
            ingest,
            http,
            shutdown,
            task,
        }
    }

    /// `ws://` URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// `http://` URL of the ingest endpoint, as agents take it.
    pub fn ingest_url(&self) -> String {
        format!("http://{}", self.ingest)
    }

    /// Shuts down and waits for the task to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("aggregator stops in time")
            .expect("aggregator task");
    }
}

/// An agent running in this process, with the real collector.
pub struct TestAgent {
    /// Its live counters.
    pub status: Arc<AgentStatus>,
    /// Fires its shutdown.
    pub shutdown: CancellationToken,
    /// The running task.
    pub task: JoinHandle<()>,
}

/// A fast agent config for tests: 100 ms samples, quick reconnects.
pub fn agent_config(aggregator: &str, hostname: &str) -> AgentConfig {
    let mut c = AgentConfig {
        aggregator: hostpulse_agent::config::Aggregators::One(aggregator.into()),
        hostname: hostname.into(),
        interval_ms: 100,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        drain_timeout_ms: 2_000,
        ..AgentConfig::default()
    };
    c.collect.top_processes = 3;
    // Debug builds read /proc slowly; refresh the process table every sample.
    c.collect.processes_budget_pct = 100.0;
    c
}

impl TestAgent {
    /// Starts an agent with `config`.
    pub fn start(config: AgentConfig) -> Self {
        let agent = Agent::new(config);
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            agent.run(token).await.expect("agent run");
        });
        Self {
            status,
            shutdown,
            task,
        }
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task");
    }
}

/// Polls `check` every 20 ms until it holds, panicking with `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over plain HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http_request(addr, path, &[]).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// An HTTP/1.1 response read to its end.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent (not decoded).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with extra request headers, over a fresh connection.
pub async fn http_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: response[split + 4..].to_vec(),
    }
}

/// The value of counter or gauge `name` (without labels) in `/metrics`.
pub async fn metric(http: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// A loopback port that was free a moment ago (for binaries configured by file).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
