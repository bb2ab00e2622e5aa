//! Agent settings that no other test exercises, each end to end against a
//! real aggregator: `flush_interval_ms`, a token read from `token_file` and
//! from `token_env` (through the real binary, whose environment the test
//! sets), and HTTP/2 keepalive noticing an aggregator that stops answering
//! (through a loopback proxy the test freezes). Also the aggregator's side
//! of resending: a batch that arrives twice is published once and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hostpulse_agent::config::Aggregators;
use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::process::{Proc, temp_file};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, agent_config, http_get, metric, wait_until};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn time_of(m: &Value, key: &str) -> SystemTime {
    humantime::parse_rfc3339(m[key].as_str().unwrap_or_else(|| panic!("{key} in {m}")))
        .unwrap_or_else(|e| panic!("{key} in {m}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_interval_gathers_samples_until_the_oldest_has_waited_that_long() {
    const FLUSH_MS: u64 = 600;
    const TOPIC: &str = "host.flusher.cpu";
    let agg = TestAggregator::start(|_| {}).await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe(TOPIC).await;
    let mut config = agent_config(&agg.ingest_url(), "flusher");
    config.flush_interval_ms = FLUSH_MS;
    // Far more than a flush interval holds (100 ms samples): only the
    // timer can cut these batches.
    config.batch_max_samples = 1_000;
    let agent = TestAgent::start(config);

    // Every sample of a batch is published with the time the aggregator
    // received that batch, so updates sharing `received` are one batch.
    let mut tracker = Tracker::default();
    let mut batches: Vec<Vec<Value>> = Vec::new();
    // The first batch may have been cut early by the connection coming up;
    // then five whole batches, the last known whole when a sixth begins.
    while batches.len() < 7 {
        let m = watcher.next_on(TOPIC).await;
        tracker.record(&m);
        match batches.last_mut() {
            Some(b) if b[0]["received"] == m["received"] => b.push(m),
            _ => batches.push(vec![m]),
        }
    }
    tracker.assert_exactly_once();
    for (i, b) in batches[1..6].iter().enumerate() {
        let seqs: Vec<u64> = b.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(
            b.len() >= 2,
            "batch {i}: one sample ({seqs:?}), so samples were not gathered"
        );
        // The batch left when its first sample had waited the interval
        // (times are truncated to milliseconds, hence the 1 ms), and not
        // much later (slack for a loaded machine; with the timer broken it
        // would wait for 1000 samples).
        let waited = time_of(&b[0], "received")
            .duration_since(time_of(&b[0], "timestamp"))
            .expect("received after it was taken");
        assert!(
            waited >= Duration::from_millis(FLUSH_MS - 1),
            "batch {i} ({seqs:?}) sent after its first sample waited {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(FLUSH_MS + 2_000),
            "batch {i} ({seqs:?}): its first sample waited {waited:?}"
        );
    }
    // The aggregator's own counters agree: several samples per batch.
    let batches_in = metric(agg.http, "hostpulse_ingest_batches_total").await;
    let samples_in = metric(agg.http, "hostpulse_ingest_samples_total").await;
    assert!(
        batches_in >= 7.0 && samples_in >= 2.0 * batches_in,
        "{samples_in} samples in {batches_in} batches"
    );
    agent.stop().await;
    agg.stop().await;
}

const AGENT_TOKEN: &str = "settings-agent-token-0123";

/// How an agent shows the aggregator's refusal of its token: the gRPC
/// status `UNAUTHENTICATED` (as tonic describes it) and the reason.
const UNAUTHENTICATED: &str = "code: 'The request does not have valid authentication credentials', \
     message: \"agent token refused: unknown token\"";

/// An aggregator that accepts agents presenting [`AGENT_TOKEN`] only.
async fn token_aggregator() -> TestAggregator {
    TestAggregator::start(|c| {
        c.auth.anonymous_agents = false;
        c.auth.agent_tokens = vec![TokenConfig {
            name: "fleet".into(),
            token: Some(AGENT_TOKEN.into()),
            ..Default::default()
        }];
    })
    .await
}

/// Waits for the `hosts` event `event` about `host`.
async fn host_event(watcher: &mut WsClient, host: &str, event: &str) {
    loop {
        let m = watcher.next_on("hosts").await;
        if m["payload"]["host"] == host && m["payload"]["event"] == event {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_presents_the_token_in_its_token_file_and_a_wrong_one_is_refused() {
    let agg = token_aggregator().await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;

    // Surrounding white space in the file is not part of the token.
    let mut right = agent_config(&agg.ingest_url(), "file-right");
    right.token_file = Some(temp_file("right.token", &format!("  {AGENT_TOKEN}\n")));
    let mut wrong = agent_config(&agg.ingest_url(), "file-wrong");
    wrong.token_file = Some(temp_file("wrong.token", "settings-wrong-token-0123\n"));
    let right = TestAgent::start(right);
    let wrong = TestAgent::start(wrong);

    host_event(&mut watcher, "file-right", "online").await;
    wait_until("the agent with the right token streams", || {
        right.status.connected.load(Ordering::SeqCst)
            && right.status.acked_batch_seq.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(right.status.failed_connects.load(Ordering::SeqCst), 0);

    wait_until("the agent with the wrong token is refused twice", || {
        wrong.status.failed_connects.load(Ordering::SeqCst) >= 2
    })
    .await;
    let cause = wrong.status.last_link_error.lock().unwrap().clone();
    assert!(cause.contains(UNAUTHENTICATED), "{cause}");
    assert!(!cause.contains("settings-wrong-token"), "{cause}");
    assert_eq!(wrong.status.connections.load(Ordering::SeqCst), 0);
    right.stop().await;
    wrong.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_presents_the_token_in_its_token_env_and_a_wrong_one_is_refused() {
    const VAR: &str = "HOSTPULSE_TEST_AGENT_TOKEN";
    let agg = token_aggregator().await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;
    let config = |host: &str| {
        format!(
            "aggregator = \"{}\"\nhostname = \"{host}\"\ntoken_env = \"{VAR}\"\n\
             interval_ms = 100\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n",
            agg.ingest_url()
        )
    };
    let agent = |host: &str, token: &str| {
        let path = temp_file("agent.toml", &config(host));
        Proc::spawn_with_env(
            "hostpulse-agent",
            &["--config", path.to_str().unwrap()],
            &[(VAR, token)],
        )
    };
    let right = agent("env-right", AGENT_TOKEN);
    let mut wrong = agent("env-wrong", "settings-wrong-token-0123");

    host_event(&mut watcher, "env-right", "online").await;
    let refusal = tokio::task::block_in_place(|| wrong.wait_for_line("agent token refused"));
    assert!(refusal.contains(UNAUTHENTICATED), "{refusal}");
    assert!(!refusal.contains("settings-wrong-token"), "{refusal}");
    // The refused agent goes on trying and never gets through.
    tokio::task::block_in_place(|| wrong.wait_for_line("agent token refused"));
    let (status, body) = http_get(agg.http, "/api/v1/hosts").await;
    assert_eq!(status, 200, "{body}");
    let hosts: Value = serde_json::from_str(&body).expect("JSON hosts");
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap_or_else(|| panic!("a host list: {hosts}"))
        .iter()
        .filter_map(|h| h["host"].as_str())
        .collect();
    assert_eq!(names, vec!["env-right"], "{hosts}");
    drop((right, wrong));
    agg.stop().await;
}

/// A TCP proxy on loopback that the test can freeze: frozen, it forwards no
/// byte in either direction and closes nothing (a black-holed peer).
struct FreezableProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
    /// Directions that saw an end of stream or an error.
    ended: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FreezableProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (frozen, rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (accepted, ended) = (accepted.clone(), ended.clone());
            async move {
                // Dropped with this task: every connection closes with it.
                let mut pumps = tokio::task::JoinSet::new();
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    pumps.spawn(pump(ri, wo, rx.clone(), ended.clone()));
                    pumps.spawn(pump(ro, wi, rx.clone(), ended.clone()));
                }
            }
        });
        Self {
            addr,
            frozen,
            accepted,
            ended,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while not frozen; what it read when the freeze
/// came is held back, not forwarded.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    ended: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    ended.fetch_add(1, Ordering::SeqCst);
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_notices_a_black_holed_aggregator_and_the_agent_fails_over() {
    const INTERVAL_MS: u64 = 300;
    const TIMEOUT_MS: u64 = 700;
    const TOPIC: &str = "host.keepalive.cpu";
    let agg = TestAggregator::start(|_| {}).await;
    let proxy = FreezableProxy::start(agg.ingest).await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe(TOPIC).await;

    // First through the proxy; the aggregator's own address second.
    let mut config = agent_config(&proxy.url(), "keepalive");
    config.aggregator = Aggregators::Many(vec![proxy.url(), agg.ingest_url()]);
    config.keepalive_interval_ms = INTERVAL_MS;
    config.keepalive_timeout_ms = TIMEOUT_MS;
    let agent = TestAgent::start(config);
    let status = agent.status.clone();
    // The control: the same path, but a keepalive that would take a minute.
    let mut config = agent_config(&proxy.url(), "keepalive-slow");
    config.keepalive_interval_ms = 60_000;
    config.keepalive_timeout_ms = 60_000;
    let control = TestAgent::start(config);
    let mut tracker = Tracker::default();
    while tracker.count.get(TOPIC).copied().unwrap_or(0) < 5 {
        tracker.record(&watcher.next_on(TOPIC).await);
    }
    wait_until("the control agent to stream", || {
        control.status.acked_batch_seq.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(
        proxy.accepted.load(Ordering::SeqCst),
        2,
        "both through the proxy"
    );
    assert_eq!(status.connections.load(Ordering::SeqCst), 1);

    proxy.freeze();
    let frozen_at = tokio::time::Instant::now();
    wait_until("the agent to notice the silence", || {
        !status.connected.load(Ordering::SeqCst)
    })
    .await;
    let noticed = frozen_at.elapsed();
    // Nothing was closed, and the control, whose path is just as silent,
    // noticed nothing: only the unanswered keepalive ping can have told.
    assert_eq!(
        proxy.ended.load(Ordering::SeqCst),
        0,
        "the proxy closed nothing"
    );
    assert!(control.status.connected.load(Ordering::SeqCst));
    // A ping goes out once nothing was read for the interval, and the link
    // ends when its answer is the timeout late. So not at once, and not
    // much later (slack for a loaded machine).
    assert!(
        noticed >= Duration::from_millis(TIMEOUT_MS / 2),
        "noticed after {noticed:?}, before a ping could have timed out"
    );
    assert!(
        noticed < Duration::from_millis(INTERVAL_MS + TIMEOUT_MS + 1_500),
        "noticed after {noticed:?}"
    );

    // It moves on to the next address, and every sample arrives once: the
    // batches stuck in the proxy are sent again.
    wait_until("the agent to reconnect directly", || {
        status.connected.load(Ordering::SeqCst) && status.connections.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        proxy.accepted.load(Ordering::SeqCst),
        2,
        "not through the proxy"
    );
    let target = status.last_sample_seq.load(Ordering::SeqCst);
    while tracker.last(TOPIC) < Some(target) {
        tracker.record(&watcher.next_on(TOPIC).await);
    }
    tracker.assert_exactly_once();
    assert!(
        control.status.connected.load(Ordering::SeqCst),
        "the control still believes in its frozen link"
    );
    agent.stop().await;
    // The control cannot drain through the frozen proxy: it gives up after
    // its drain timeout.
    control.stop().await;
    drop(proxy);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_is_published_once_and_counted_as_a_duplicate() {
    const TOPIC: &str = "host.twice.load";
    let agg = TestAggregator::start(|_| {}).await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe(TOPIC).await;
    let counters = [
        "hostpulse_ingest_duplicate_batches_total",
        "hostpulse_ingest_batches_total",
        "hostpulse_ingest_samples_total",
        "hostpulse_updates_duplicate_total",
    ];
    let mut before = Vec::new();
    for c in counters {
        before.push(metric(agg.http, c).await);
    }

    let mut agent = FakeAgent::connect(&agg.ingest_url(), "twice").await;
    let first = fake::batch(1, &[fake::sample(101, 0), fake::sample(102, 0)]);
    agent.send(first.clone()).await;
    agent.acked(1).await;
    // The same (epoch, seq) again, as after a lost ack: acknowledged again.
    agent.send(first).await;
    agent.acked(1).await;
    agent.send(fake::batch(2, &[fake::sample(103, 0)])).await;
    agent.acked(2).await;

    let mut tracker = Tracker::default();
    while tracker.last(TOPIC) < Some(103) {
        tracker.record(&watcher.next_on(TOPIC).await);
    }
    tracker.assert_exactly_once();
    assert_eq!(tracker.range[TOPIC], (101, 103));

    let mut delta = Vec::new();
    for (c, b) in counters.iter().zip(&before) {
        delta.push(metric(agg.http, c).await - b);
    }
    // One duplicate batch, dropped before the hub: two batches and three
    // samples published, and no update the hub had to drop as already held.
    assert_eq!(delta, vec![1.0, 2.0, 3.0, 0.0], "{counters:?}");
    drop(agent);
    agg.stop().await;
}
