//! Cluster mode end to end: a real nats-server, two real aggregator
//! binaries, in-process agents and WebSocket clients. Every host reaches
//! both aggregators with the same seqs, an agent fails over with no gap for
//! a resuming subscriber, and a broker outage leaves local traffic alone, is
//! reported, and is recovered from.

use std::collections::BTreeMap;
use std::time::Duration;

use hostpulse_agent::config::Aggregators;
use hostpulse_tests::nats::NatsServer;
use hostpulse_tests::process::{Proc, addr_in, temp_file};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, WAIT, agent_config, http_get, wait_until};
use serde_json::Value;

/// One aggregator binary in cluster mode.
struct Node {
    proc: Proc,
    ingest: std::net::SocketAddr,
    http: std::net::SocketAddr,
}

impl Node {
    async fn start(nats: &NatsServer, name: &str) -> Self {
        let config = temp_file(
            "aggregator.toml",
            &format!(
                "[ingest]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                 [cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\n\
                 presence_interval_ms = 200\npeer_timeout_ms = 1500\ncatchup_wait_ms = 500\n\
                 reconnect_max_ms = 500\n",
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

    fn ingest_url(&self) -> String {
        format!("http://{}", self.ingest)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// `(aggregator, online)` of each host in `/api/v1/hosts`.
    async fn hosts(&self) -> BTreeMap<String, (String, bool)> {
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

    /// The value of one sample in `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{body}"))
            .parse()
            .unwrap()
    }
}

/// Every update received, by (topic, seq), as JSON text.
type Seen = BTreeMap<(String, u64), String>;

/// Reads into `tracker` (and `seen`, and `notices` for `$sys` messages)
/// until `done` holds; panics after `limit`.
async fn follow(
    client: &mut WsClient,
    tracker: &mut Tracker,
    seen: &mut Seen,
    notices: &mut Vec<Value>,
    limit: Duration,
    what: &str,
    done: impl Fn(&Tracker, &[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(tracker, notices) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; seen {:?}, notices {notices:?}",
            tracker.range
        );
        match client.recv(Duration::from_millis(200)).await {
            Ok(Some(m)) => {
                if let (Some(t), Some(s)) = (m["topic"].as_str(), m["seq"].as_u64()) {
                    tracker.record(&m);
                    seen.insert((t.to_string(), s), m.to_string());
                } else if m["topic"].as_str().is_some_and(|t| t.starts_with("$sys.")) {
                    notices.push(m);
                }
            }
            Ok(None) => {}
            Err(closed) => panic!("connection closed ({closed:?}) waiting for {what}"),
        }
    }
}

fn count(t: &Tracker, topic: &str) -> u64 {
    t.count.get(topic).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_reaches_both_aggregators_with_the_same_seqs() {
    let nats = NatsServer::start();
    let n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    let a = TestAgent::start(agent_config(&n1.ingest_url(), "host-a"));
    let b = TestAgent::start(agent_config(&n2.ingest_url(), "host-b"));

    let mut c1 = WsClient::connect(&n1.ws_url()).await;
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c1.subscribe("host.*.cpu").await;
    c2.subscribe("host.*.cpu").await;
    let (mut t1, mut t2) = (Tracker::default(), Tracker::default());
    let (mut s1, mut s2) = (Seen::new(), Seen::new());
    let mut notices = Vec::new();
    let both = |t: &Tracker, _: &[Value]| {
        count(t, "host.host-a.cpu") >= 15 && count(t, "host.host-b.cpu") >= 15
    };
    follow(
        &mut c1,
        &mut t1,
        &mut s1,
        &mut notices,
        WAIT,
        "both hosts on aggregator 1",
        both,
    )
    .await;
    follow(
        &mut c2,
        &mut t2,
        &mut s2,
        &mut notices,
        WAIT,
        "both hosts on aggregator 2",
        both,
    )
    .await;

    // Each client saw each host exactly once per seq, in order.
    t1.assert_exactly_once();
    t2.assert_exactly_once();
    // The same seqs carry the same update, byte for byte, on both.
    for topic in ["host.host-a.cpu", "host.host-b.cpu"] {
        let (f1, l1) = t1.range[topic];
        let (f2, l2) = t2.range[topic];
        let (from, to) = (f1.max(f2), l1.min(l2));
        assert!(to >= from + 5, "{topic}: overlap {from}..={to} too short");
        for seq in from..=to {
            let k = (topic.to_string(), seq);
            assert_eq!(s1.get(&k), s2.get(&k), "{topic} seq {seq}");
        }
    }

    // Presence: both aggregators list both hosts, each with its aggregator.
    for node in [&n1, &n2] {
        let mut hosts = BTreeMap::new();
        for _ in 0..100 {
            hosts = node.hosts().await;
            if hosts.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            hosts.contains_key("host-a") && hosts.contains_key("host-b"),
            "{hosts:?}"
        );
        assert_eq!(hosts["host-a"], ("agg-1".to_string(), true), "{hosts:?}");
        assert_eq!(hosts["host-b"], ("agg-2".to_string(), true), "{hosts:?}");
    }
    // The hosts topic of aggregator 1 announced the host attached to 2.
    let mut c3 = WsClient::connect(&n1.ws_url()).await;
    c3.send(serde_json::json!({"action": "subscribe", "topic": "hosts", "history": 100}))
        .await;
    loop {
        let m = c3.next().await;
        if m["topic"] == "hosts" && m["payload"]["host"] == "host-b" {
            assert_eq!(m["payload"]["aggregator"], "agg-2", "{m}");
            assert_eq!(m["payload"]["event"], "online", "{m}");
            break;
        }
    }
    // Each aggregator published only its own agent's updates (no echo loop):
    // 4 topics per sample, so about 4 × samples, never twice that.
    let published = n1.metric("hostpulse_cluster_published_total").await;
    let received = n1.metric("hostpulse_cluster_received_total").await;
    assert!(published > 0.0 && received > 0.0, "{published} {received}");
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 1.0);
    assert_eq!(n1.metric("hostpulse_cluster_peers").await, 1.0);
    check_metrics_format(&n2).await;

    a.stop().await;
    b.stop().await;
}

/// The cluster families parse as Prometheus text, and promtool agrees.
async fn check_metrics_format(node: &Node) {
    let (_, body) = http_get(node.http, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    for name in [
        "hostpulse_cluster_nats_connected",
        "hostpulse_cluster_nats_reconnects_total",
        "hostpulse_cluster_published_total",
        "hostpulse_cluster_received_total",
        "hostpulse_cluster_dropped_total",
        "hostpulse_cluster_export_dropped_total",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing:\n{body}"
        );
    }
    hostpulse_tests::process::promtool_check(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_and_a_resuming_subscriber_sees_no_gap() {
    let nats = NatsServer::start();
    let mut n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    let mut config = agent_config(&n1.ingest_url(), "host-a");
    config.aggregator = Aggregators::Many(vec![n1.ingest_url(), n2.ingest_url()]);
    let a = TestAgent::start(config);

    let topic = "host.host-a.cpu";
    let mut tracker = Tracker::default();
    let (mut seen, mut notices) = (Seen::new(), Vec::new());
    let mut c1 = WsClient::connect(&n1.ws_url()).await;
    c1.subscribe(topic).await;
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "samples via aggregator 1",
        |t, _| count(t, topic) >= 10,
    )
    .await;
    let before = tracker.last(topic).unwrap();
    assert_eq!(
        a.status
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Aggregator 1 dies without a goodbye.
    n1.proc.kill();
    drop(c1);
    let status = a.status.clone();
    wait_until("the agent to fail over to aggregator 2", || {
        status
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
            && status.connected.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;

    // Resume on aggregator 2 from the last seq seen on aggregator 1.
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c2.send(tracker.resume(topic)).await;
    let subscribed = c2.next_on("$sys.subscribed").await;
    assert_eq!(subscribed["payload"]["complete"], true, "{subscribed}");
    follow(
        &mut c2,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "samples via aggregator 2",
        |t, _| t.last(topic).unwrap() >= before + 20,
    )
    .await;
    tracker.assert_exactly_once();

    // The host now shows on aggregator 2.
    wait_until_hosts(&n2, "host-a", "agg-2").await;
    a.stop().await;
}

async fn wait_until_hosts(node: &Node, host: &str, aggregator: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let hosts = node.hosts().await;
        if hosts.get(host) == Some(&(aggregator.to_string(), true)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never shown online on {aggregator}: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_local_traffic_is_reported_and_recovers() {
    let mut nats = NatsServer::start();
    let n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    let a = TestAgent::start(agent_config(&n1.ingest_url(), "host-a"));
    let b = TestAgent::start(agent_config(&n2.ingest_url(), "host-b"));
    let (local, remote) = ("host.host-a.cpu", "host.host-b.cpu");

    let mut c1 = WsClient::connect(&n1.ws_url()).await;
    c1.subscribe("host.*.cpu").await;
    let mut tracker = Tracker::default();
    let (mut seen, mut notices) = (Seen::new(), Vec::new());
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "both hosts",
        |t, _| count(t, local) >= 5 && count(t, remote) >= 5,
    )
    .await;

    nats.stop();
    let is = |state: &'static str| {
        move |n: &Value| n["topic"] == "$sys.cluster" && n["payload"]["state"] == state
    };
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "the outage notice",
        |_, n| n.iter().any(is("disconnected")),
    )
    .await;
    // Local traffic goes on without the broker.
    let local_then = tracker.last(local).unwrap();
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "local samples during the outage",
        |t, _| t.last(local).unwrap() >= local_then + 15,
    )
    .await;
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 0.0);
    let remote_then = tracker.last(remote).unwrap();

    nats.restart();
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "the reconnect notice",
        |_, n| n.iter().any(is("connected")),
    )
    .await;
    // Cross-aggregator traffic resumes, and nothing was lost or repeated
    // across the outage: what the client library held back while the broker
    // was away, or the catch-up from aggregator 2's history, fills the hole.
    follow(
        &mut c1,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "remote samples after the outage",
        |t, _| t.last(remote).unwrap() >= remote_then + 30,
    )
    .await;
    tracker.assert_exactly_once();
    assert!(n1.metric("hostpulse_cluster_nats_reconnects_total").await >= 1.0);
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 1.0);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_joining_late_catches_up_the_history_of_the_others() {
    let nats = NatsServer::start();
    let n1 = Node::start(&nats, "agg-1").await;
    let a = TestAgent::start(agent_config(&n1.ingest_url(), "host-a"));
    let topic = "host.host-a.cpu";
    let mut early = Tracker::default();
    let (mut seen, mut notices) = (Seen::new(), Vec::new());
    let mut c1 = WsClient::connect(&n1.ws_url()).await;
    c1.subscribe(topic).await;
    follow(
        &mut c1,
        &mut early,
        &mut seen,
        &mut notices,
        WAIT,
        "samples before aggregator 2 starts",
        |t, _| count(t, topic) >= 10,
    )
    .await;
    let (first, _) = early.range[topic];

    // Aggregator 2 starts now, yet holds what aggregator 1 had before it.
    let n2 = Node::start(&nats, "agg-2").await;
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    let mut tracker = Tracker::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c2.send(serde_json::json!({"action": "subscribe", "topic": topic, "since": first - 1}))
            .await;
        let subscribed = c2.next_on("$sys.subscribed").await;
        let start = subscribed["payload"]["topics"][0]["history_start"].as_u64();
        if start.is_some_and(|s| s <= first) {
            assert_eq!(subscribed["payload"]["complete"], true, "{subscribed}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator 2 never caught up: {subscribed}"
        );
        c2.send(serde_json::json!({"action": "unsubscribe", "topic": topic}))
            .await;
        c2.next_on("$sys.unsubscribed").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_early = early.last(topic).unwrap();
    follow(
        &mut c2,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "the replay and live samples on aggregator 2",
        |t, _| t.last(topic).is_some_and(|l| l >= last_early + 5),
    )
    .await;
    assert_eq!(tracker.range[topic].0, first, "{:?}", tracker.range);
    tracker.assert_exactly_once();
    a.stop().await;
}
