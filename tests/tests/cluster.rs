//! Cluster mode end to end: a real nats-server, real aggregator binaries,
//! in-process agents (real and hand-driven) and WebSocket clients. Every
//! host reaches every aggregator with the same seqs and each aggregator
//! publishes exactly its own agents' updates; an agent fails over with no
//! gap for a resuming subscriber; a broker outage leaves local traffic
//! alone, is reported and is recovered from; a late aggregator catches up;
//! the publish queue and the catch-up buffer stay within their bounds and
//! count what they drop; a dead peer's hosts go offline after the timeout;
//! a departed host is forgotten by every aggregator alike.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use hostpulse_agent::config::Aggregators;
use hostpulse_tests::cluster::{Burst, Node, eventually, track_until};
use hostpulse_tests::nats::{NatsServer, Spy};
use hostpulse_tests::process::number_in;
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, WAIT, agent_config, http_get, wait_until};
use serde_json::Value;

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

/// Updates `t` received on the topics of `host`.
fn host_count(t: &Tracker, host: &str) -> u64 {
    let prefix = format!("host.{host}.");
    t.count
        .iter()
        .filter(|(topic, _)| topic.starts_with(&prefix))
        .map(|(_, n)| n)
        .sum()
}

/// Reads whatever `client` has waiting (until 100 ms pass with nothing).
async fn drain(client: &mut WsClient, tracker: &mut Tracker, seen: &mut Seen) {
    loop {
        match client.recv(Duration::from_millis(100)).await {
            Ok(Some(m)) => {
                if let (Some(t), Some(s)) = (m["topic"].as_str(), m["seq"].as_u64()) {
                    tracker.record(&m);
                    seen.insert((t.to_string(), s), m.to_string());
                }
            }
            Ok(None) => return,
            Err(closed) => panic!("connection closed ({closed:?}) while draining"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_reaches_both_aggregators_with_the_same_seqs() {
    let nats = NatsServer::start();
    let n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    // Everything put on the broker, from before the first update on.
    let spy = Spy::subscribe(nats.port, "hostpulse.host.>").await;
    // Both clients are subscribed before any agent starts, so each sees
    // every update its aggregator takes.
    let mut c1 = WsClient::connect(&n1.ws_url()).await;
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c1.subscribe("host.>").await;
    c2.subscribe("host.>").await;
    let a = TestAgent::start(agent_config(&n1.ingest_url(), "host-a"));
    let b = TestAgent::start(agent_config(&n2.ingest_url(), "host-b"));

    let (mut t1, mut t2) = (Tracker::default(), Tracker::default());
    let (mut s1, mut s2) = (Seen::new(), Seen::new());
    let (mut notices1, mut notices2) = (Vec::new(), Vec::new());
    let both = |t: &Tracker, _: &[Value]| {
        count(t, "host.host-a.cpu") >= 15 && count(t, "host.host-b.cpu") >= 15
    };
    tokio::join!(
        follow(
            &mut c1,
            &mut t1,
            &mut s1,
            &mut notices1,
            WAIT,
            "both hosts on aggregator 1",
            both,
        ),
        follow(
            &mut c2,
            &mut t2,
            &mut s2,
            &mut notices2,
            WAIT,
            "both hosts on aggregator 2",
            both,
        ),
    );

    // Presence: both aggregators list both hosts, each with its aggregator.
    for node in [&n1, &n2] {
        eventually(
            "both hosts listed with their aggregators",
            async || node.hosts().await,
            |hosts| {
                hosts.get("host-a") == Some(&("agg-1".to_string(), true))
                    && hosts.get("host-b") == Some(&("agg-2".to_string(), true))
            },
        )
        .await;
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
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 1);
    assert_eq!(n1.metric("hostpulse_cluster_peers").await, 1);
    check_metrics_format(&n2).await;

    // No echo loop, exactly. Once the agents are stopped and everything
    // has arrived, for each aggregator: what it published equals the
    // updates of its own agent (all of which its client saw), the broker
    // carried exactly that many under its name, and the other aggregator
    // received exactly that many and showed them all.
    a.stop().await;
    b.stop().await;
    let node_is = |node: &'static str| {
        move |m: &hostpulse_tests::nats::NatsMessage| m.header("Hostpulse-Node") == Some(node)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        drain(&mut c1, &mut t1, &mut s1).await;
        drain(&mut c2, &mut t2, &mut s2).await;
        let counts = [
            // aggregator 1 and its agent's updates
            host_count(&t1, "host-a"),
            n1.metric("hostpulse_cluster_published_total").await,
            spy.count(node_is("agg-1")) as u64,
            n2.metric("hostpulse_cluster_received_total").await,
            host_count(&t2, "host-a"),
            // aggregator 2 and its agent's updates
            host_count(&t2, "host-b"),
            n2.metric("hostpulse_cluster_published_total").await,
            spy.count(node_is("agg-2")) as u64,
            n1.metric("hostpulse_cluster_received_total").await,
            host_count(&t1, "host-b"),
        ];
        if counts[..5].iter().all(|&n| n == counts[0])
            && counts[5..].iter().all(|&n| n == counts[5])
        {
            assert!(counts[0] > 0 && counts[5] > 0, "{counts:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "published and received never matched local updates: \
             [local a on agg-1, published by agg-1, on the broker from agg-1, received by agg-2, host-a on agg-2, \
             local b on agg-2, published by agg-2, on the broker from agg-2, received by agg-1, host-b on agg-1] = {counts:?}"
        );
    }
    // Each client saw each host exactly once per seq, in order.
    t1.assert_exactly_once();
    t2.assert_exactly_once();
    // The same seqs carry the same update, byte for byte, on both: every
    // topic, every seq (both clients saw each host from its first update).
    assert_eq!(
        t1.range, t2.range,
        "both aggregators hold the same topics and seqs"
    );
    assert_eq!(s1, s2, "the same updates on both aggregators");
    // On the broker: each update under its own host's aggregator, once.
    let mut on_broker = HashSet::new();
    for m in spy.messages() {
        let host = m.subject.split('.').nth(2).unwrap_or("");
        let origin = m.header("Hostpulse-Node");
        let expected = match host {
            "host-a" => "agg-1",
            "host-b" => "agg-2",
            other => panic!("an update of an unknown host {other:?} on the broker: {m:?}"),
        };
        assert_eq!(origin, Some(expected), "{m:?}");
        let seq = m.header("Hostpulse-Seq").map(str::to_string);
        assert!(
            on_broker.insert((m.subject.clone(), seq.clone())),
            "{} seq {seq:?} published twice",
            m.subject
        );
    }
    for node in [&n1, &n2] {
        assert_eq!(node.metric("hostpulse_cluster_dropped_total").await, 0);
        assert_eq!(
            node.metric("hostpulse_cluster_export_dropped_total").await,
            0
        );
    }
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
    let want = (aggregator.to_string(), true);
    eventually(
        &format!("{host} shown online on {aggregator}"),
        async || node.hosts().await,
        |hosts| hosts.get(host) == Some(&want),
    )
    .await;
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
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 0);
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
    assert_eq!(
        n1.metric("hostpulse_cluster_nats_reconnects_total").await,
        1
    );
    assert_eq!(n1.metric("hostpulse_cluster_nats_connected").await, 1);

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

    // Aggregator 2 starts now, yet holds what aggregator 1 had before it
    // once its first catch-up is applied (time enough for the answer on a
    // loaded machine: it ends early once aggregator 1 is known and done).
    let mut n2 = Node::start_with(&nats, "agg-2", &[("catchup_wait_ms", "3000")]).await;
    let applied = n2.line("catch-up applied");
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    let mut tracker = Tracker::default();
    c2.send(serde_json::json!({"action": "subscribe", "topic": topic, "since": first - 1}))
        .await;
    let subscribed = c2.next_on("$sys.subscribed").await;
    let start = subscribed["payload"]["topics"][0]["history_start"].as_u64();
    assert!(
        start.is_some_and(|s| s <= first),
        "aggregator 2 did not catch up the history from seq {first}: {subscribed}\n{applied}"
    );
    assert_eq!(subscribed["payload"]["complete"], true, "{subscribed}");
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

/// `(published, export_dropped)` of a node's broker export.
async fn export(node: &Node) -> (u64, u64) {
    (
        node.metric("hostpulse_cluster_published_total").await,
        node.metric("hostpulse_cluster_export_dropped_total").await,
    )
}

/// How many publishes async-nats' own command buffer takes while the
/// broker is away (its `client_capacity`, 2048 by default; the aggregator
/// does not change it). The publisher then waits, and the publish queue
/// fills behind it.
const NATS_CLIENT_BUFFER: u64 = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_queue_stays_bounded_without_a_broker_and_counts_what_it_drops() {
    // Not a divisor of NATS_CLIENT_BUFFER: the chunk that fills the
    // client's buffer leaves the rest of itself in the queue, and the
    // publisher waiting with one update in hand.
    const QUEUE: u64 = 300;
    let mut nats = NatsServer::start();
    // Presence goes out at start and on attach only, so during the outage
    // nothing but host updates enters the NATS client's buffer.
    let n1 = Node::start_with(
        &nats,
        "agg-1",
        &[
            ("publish_queue", "300"),
            ("presence_interval_ms", "60000"),
            ("peer_timeout_ms", "120000"),
        ],
    )
    .await;
    let mut burst = Burst::connect(&n1, "burst").await;

    // With the broker up, every update is published.
    burst.send_taken(&n1, 20).await;
    let (p0, d0) = eventually(
        "the first 20 updates published",
        async || export(&n1).await,
        |&(p, d)| p + d == 20,
    )
    .await;
    assert_eq!((p0, d0), (20, 0));

    nats.stop();
    eventually(
        "the aggregator to notice the broker is gone",
        async || n1.metric("hostpulse_cluster_nats_connected").await,
        |&c| c == 0,
    )
    .await;
    // Each chunk fits the empty queue whole (nothing dropped); the
    // publisher moves it on into the client's buffer until that is full.
    let (p_full, backlog) = loop {
        burst.send_taken(&n1, QUEUE).await;
        let total = burst.seq;
        let (p, d) = eventually(
            "the publisher to empty the queue or fill the NATS client's buffer",
            async || export(&n1).await,
            |&(p, d)| p + d == total || p - p0 >= NATS_CLIENT_BUFFER,
        )
        .await;
        assert_eq!(d, 0, "dropped while the queue had room");
        if p - p0 >= NATS_CLIENT_BUFFER {
            assert_eq!(
                p - p0,
                NATS_CLIENT_BUFFER,
                "the NATS client took more than its buffer while the broker was away"
            );
            break (p, total - p);
        }
        assert!(
            burst.seq < 20 + 2 * NATS_CLIENT_BUFFER,
            "the NATS client's buffer never filled"
        );
    };
    // The queue, plus the one update the publisher waits with.
    assert!(
        (1..=QUEUE).contains(&backlog),
        "held {backlog} with the client's buffer full"
    );

    // Now the queue fills up to publish_queue and everything beyond is
    // dropped and counted, one for one; nothing more is published.
    let more = 2 * QUEUE;
    burst.send_taken(&n1, more).await;
    let (p, d) = export(&n1).await;
    assert_eq!(p, p_full, "published while the broker was away");
    assert_eq!(
        d,
        backlog + more - (QUEUE + 1),
        "dropped beyond a full queue of {QUEUE} and the update in hand"
    );
    assert_eq!(burst.seq - p - d, QUEUE + 1, "held towards NATS");
    burst.send_taken(&n1, 50).await;
    assert_eq!(
        export(&n1).await,
        (p_full, d + 50),
        "each update beyond the full queue dropped and counted"
    );
    let d_outage = d + 50;

    // The broker returns: what was held goes out, what was dropped stays
    // dropped, and nothing is lost uncounted.
    nats.restart();
    let total = burst.seq;
    let (p_back, d_back) = eventually(
        "every held update published after the broker returned",
        async || export(&n1).await,
        |&(p, d)| p + d == total,
    )
    .await;
    assert_eq!(d_back, d_outage);
    assert_eq!(p_back - p_full, QUEUE + 1);
    burst.send_taken(&n1, 50).await;
    let want = (p_back + 50, d_back);
    eventually(
        "new updates published again",
        async || export(&n1).await,
        |&pd| pd == want,
    )
    .await;
    assert_eq!(n1.metric("hostpulse_cluster_dropped_total").await, 0);
}

/// After a broker restart the nodes come back in any order. Aggregator 1
/// dropped updates it could not publish during the outage (its queue
/// overflowed) and comes back last, after aggregator 2 has already asked for
/// a catch-up that nobody could answer for it. Its own request says it is
/// back, so aggregator 2 catches up from it in turn: every seq arrives,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_its_peers_is_caught_up_from_and_loses_nothing() {
    const QUEUE: u64 = 100;
    let tune = [
        ("publish_queue", "100"),
        ("presence_interval_ms", "500"),
        ("peer_timeout_ms", "60000"),
        ("catchup_wait_ms", "1000"),
    ];
    let hub = "history_len = 4000";
    let mut nats = NatsServer::start();
    let mut n1 = Node::start_with_hub(&nats, "agg-1", &tune, hub).await;
    let mut n2 = Node::start_with_hub(&nats, "agg-2", &tune, hub).await;
    let mut burst = Burst::connect(&n1, "late").await;
    burst.send_taken(&n1, 20).await;
    eventually(
        "aggregator 2 to take the first 20 updates",
        async || n2.from_peers().await,
        |&n| n == 20,
    )
    .await;

    nats.stop();
    for node in [&n1, &n2] {
        eventually(
            "both aggregators to notice the broker is gone",
            async || node.metric("hostpulse_cluster_nats_connected").await,
            |&c| c == 0,
        )
        .await;
    }
    // More than the NATS client's buffer and the publish queue hold: the
    // rest is dropped from the export, and kept only in aggregator 1's
    // history.
    let outage = NATS_CLIENT_BUFFER + QUEUE + 400;
    for _ in 0..outage / 100 {
        burst.send_taken(&n1, 100).await;
    }
    let (_, dropped) = export(&n1).await;
    assert!(dropped >= 300, "only {dropped} export updates dropped");

    // Aggregator 2 reconnects first and asks while aggregator 1 is away.
    n1.proc.signal("STOP");
    let applied_before = n2.proc.count_lines("catch-up applied");
    nats.restart();
    eventually(
        "aggregator 2 to reconnect",
        async || n2.metric("hostpulse_cluster_nats_connected").await,
        |&c| c == 1,
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while n2.proc.count_lines("catch-up applied") == applied_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator 2 never ended its catch-up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Aggregator 1 comes back; aggregator 2 hears its request and catches
    // up from it.
    n1.proc.signal("CONT");
    n2.line("a peer is back from losing the broker");
    n1.line("answering a catch-up to=agg-2");
    burst.send_taken(&n1, 10).await;
    let last = burst.seq;
    let tracker = track_until(&n2, "host.late.load", 4000, |t| {
        t.last("host.late.load") == Some(last)
    })
    .await;
    tracker.assert_exactly_once();
    assert_eq!(tracker.range["host.late.load"], (1, last));
    assert_eq!(tracker.count["host.late.load"], last);
}

/// With the broker up all along, updates a peer never published (its
/// export queue of one overflowed in a burst) leave a gap in its numbering:
/// aggregator 2 sees it, holds what came after it, fills it from
/// aggregator 1's history (asking aggregator 1 only: aggregator 3 is not
/// troubled) and only then goes on. Every seq, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_peers_numbering_is_filled_from_its_history() {
    let hub = "history_len = 4000";
    let nats = NatsServer::start();
    let n1 = Node::start_with_hub(&nats, "agg-1", &[("publish_queue", "1")], hub).await;
    let n2 = Node::start_with_hub(&nats, "agg-2", &[], hub).await;
    let mut n3 = Node::start_with_hub(&nats, "agg-3", &[], hub).await;
    let mut burst = Burst::connect(&n1, "gappy").await;
    burst.send_taken(&n1, 1).await;
    eventually(
        "aggregator 2 to take the first update",
        async || n2.from_peers().await,
        |&n| n == 1,
    )
    .await;
    let n3_asked = n3.proc.count_lines("answering a catch-up to=agg-2");
    // Batches of 1,000: the hub offers them to a queue of one far faster
    // than the publisher empties it.
    burst.send_taken(&n1, 1_000).await;
    burst.send_taken(&n1, 1_000).await;
    let (_, dropped) = export(&n1).await;
    assert!(
        dropped > 0,
        "the burst fitted the export queue: no gap made"
    );
    for _ in 0..5 {
        burst.send_taken(&n1, 1).await;
    }
    let last = burst.seq;
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c2.send(
        serde_json::json!({"action": "subscribe", "topic": "host.gappy.load", "history": 4000}),
    )
    .await;
    c2.next_on("$sys.subscribed").await;
    let mut tracker = Tracker::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tracker.last("host.gappy.load") != Some(last) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator 2 lacks updates of aggregator 1: {:?}",
            tracker.range
        );
        if let Ok(Some(m)) = c2.recv(Duration::from_millis(200)).await {
            tracker.record(&m);
        }
    }
    tracker.assert_exactly_once();
    assert_eq!(tracker.count["host.gappy.load"], last);
    let gaps = n2.metric("hostpulse_cluster_gaps_total").await;
    assert!(
        gaps >= dropped,
        "{gaps} found missing, {dropped} never published"
    );
    assert_eq!(
        n3.proc.count_lines("answering a catch-up to=agg-2"),
        n3_asked,
        "a gap of aggregator 1's is asked of aggregator 1 only"
    );
}

/// Each aggregator stores what it takes from its peers as well as from its
/// own agents: aggregator 2 answers range queries for a host attached to
/// aggregator 1, with the exact values sent and rollups of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregator_stores_its_peers_hosts_and_answers_range_queries_for_them() {
    const N: u64 = 180;
    let dirs: Vec<std::path::PathBuf> = (1..=2)
        .map(|i| {
            let d = std::env::temp_dir().join(format!(
                "hostpulse-cluster-store-{i}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            d
        })
        .collect();
    let storage = |d: &std::path::Path| {
        format!(
            "[storage]\ndir = \"{}\"\nflush_interval_ms = 200\n",
            d.display()
        )
    };
    let nats = NatsServer::start();
    let n1 = Node::start_with_sections(&nats, "agg-1", &[], "", &storage(&dirs[0])).await;
    let n2 = Node::start_with_sections(&nats, "agg-2", &[], "", &storage(&dirs[1])).await;
    // Three minutes of one-second samples, an hour ago, starting on a minute.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now - 3_600_000) / 60_000 * 60_000;
    let value = |i: u64| ((i * 37) % 1000) as f32 / 10.0;
    let mut agent =
        hostpulse_tests::fake::FakeAgent::connect(&n1.ingest_url(), "stored-remote").await;
    let samples: Vec<hostpulse_proto::Sample> = (0..N)
        .map(|i| hostpulse_proto::Sample {
            seq: i + 1,
            timestamp_ms: base + i as i64 * 1000,
            cpu: Some(hostpulse_proto::Cpu {
                total_pct: value(i),
                per_core_pct: vec![value(i)],
            }),
            ..Default::default()
        })
        .collect();
    agent.send(hostpulse_tests::fake::batch(1, &samples)).await;
    agent.acked(1).await;

    let query = format!(
        "/api/v1/hosts/stored-remote/series?fields=cpu.total_pct&from={base}&to={}&step=1s",
        base + N as i64 * 1000
    );
    let raw = eventually(
        "aggregator 2 to store the peer's samples",
        async || {
            let (status, body) = http_get(n2.http, &query).await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (status, v)
        },
        |(status, v)| {
            *status == 200 && v["series"][0]["last"].as_array().map(Vec::len) == Some(N as usize)
        },
    )
    .await
    .1;
    let last: Vec<f64> = raw["series"][0]["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (i, v) in last.iter().enumerate() {
        assert_eq!(*v, f64::from(value(i as u64)), "value {i}: {raw}");
    }
    // A one-minute step: min, max and last of each minute, as sent.
    let query = format!(
        "/api/v1/hosts/stored-remote/series?fields=cpu.total_pct&from={base}&to={}&step=1m",
        base + N as i64 * 1000
    );
    let (status, body) = http_get(n2.http, &query).await;
    assert_eq!(status, 200, "{body}");
    let minutes: Value = serde_json::from_str(&body).unwrap();
    for (k, name) in ["min", "max", "last"].iter().enumerate() {
        let got: Vec<f64> = minutes["series"][0][name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} in {minutes}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = (0..N / 60)
            .map(|m| {
                let mut v = (m * 60..(m + 1) * 60).map(|i| f64::from(value(i)));
                match k {
                    0 => v.fold(f64::INFINITY, f64::min),
                    1 => v.fold(f64::NEG_INFINITY, f64::max),
                    _ => v.next_back().unwrap(),
                }
            })
            .collect();
        assert_eq!(got, want, "{name} per minute: {minutes}");
    }
    drop(n1);
    drop(n2);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_aggregator_holds_at_most_catchup_buffer_live_updates_dropping_the_oldest() {
    const BUFFER: u64 = 8;
    const BURST: u64 = 30;
    let nats = NatsServer::start();
    // Aggregator 1 announces itself at start and on attach only, so
    // aggregator 2 does not know it when its catch-up begins, and holds
    // live updates back for the whole catchup_wait_ms.
    let mut n1 = Node::start_with(
        &nats,
        "agg-1",
        &[
            ("presence_interval_ms", "60000"),
            ("peer_timeout_ms", "120000"),
        ],
    )
    .await;
    let mut burst = Burst::connect(&n1, "late").await;
    burst.send_taken(&n1, 20).await;
    let mut n2 = Node::start_with(
        &nats,
        "agg-2",
        &[("catchup_wait_ms", "4000"), ("catchup_buffer", "8")],
    )
    .await;
    // Aggregator 2's request follows its live subscription on the same
    // connection: once aggregator 1 answers, that subscription is in force.
    let answered = n1.line("catch-up answered");
    assert!(answered.contains("to=agg-2"), "{answered}");
    assert_eq!(number_in(&answered, "updates"), 20, "{answered}");
    // Live updates while aggregator 2 holds back.
    burst.send_taken(&n1, BURST).await;
    eventually(
        "aggregator 1 to publish the burst",
        async || export(&n1).await,
        |&(p, _)| p == 20 + BURST,
    )
    .await;
    let applied = n2.line("catch-up applied");
    assert_eq!(number_in(&applied, "expected"), 0, "{applied}");
    assert_eq!(number_in(&applied, "updates"), 20, "{applied}");
    assert_eq!(number_in(&applied, "held"), BUFFER, "{applied}");
    assert_eq!(
        n2.metric("hostpulse_cluster_dropped_total").await,
        BURST - BUFFER,
        "held updates beyond catchup_buffer are counted as dropped"
    );
    assert_eq!(n2.metric("hostpulse_cluster_caught_up_total").await, 20);
    // The held ones go to the hub just after that line.
    eventually(
        "the held updates taken in",
        async || n2.metric("hostpulse_cluster_received_total").await,
        |&r| r == BUFFER,
    )
    .await;

    // Aggregator 2 holds the caught-up history and the newest BUFFER of
    // the burst: the oldest held were the ones dropped.
    let topic = "host.late.load";
    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c2.send(serde_json::json!({"action": "subscribe", "topic": topic, "since": 0}))
        .await;
    c2.next_on("$sys.subscribed").await;
    let mut tracker = Tracker::default();
    let (mut seen, mut notices) = (Seen::new(), Vec::new());
    let last = 20 + BURST;
    follow(
        &mut c2,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "the replay on aggregator 2",
        |t, _| t.last(topic) == Some(last),
    )
    .await;
    assert_eq!(tracker.range[topic], (1, last));
    assert_eq!(tracker.duplicates, vec![]);
    assert_eq!(
        tracker.gaps,
        vec![(topic.to_string(), 21, last - BUFFER)],
        "exactly the oldest {} of the burst missing",
        BURST - BUFFER
    );
    // And it is live now.
    burst.send_taken(&n1, 1).await;
    follow(
        &mut c2,
        &mut tracker,
        &mut seen,
        &mut notices,
        WAIT,
        "a live update after the catch-up",
        |t, _| t.last(topic) == Some(last + 1),
    )
    .await;
    assert_eq!(
        n2.metric("hostpulse_cluster_received_total").await,
        BUFFER + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peers_hosts_are_announced_offline_after_the_peer_timeout() {
    // As in CLUSTER_DEFAULTS.
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(1500));
    let nats = NatsServer::start();
    let mut n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    let presence = Spy::subscribe(nats.port, "hostpulse._cluster.presence.agg-1").await;
    let _agent = Burst::connect(&n1, "doomed").await;

    let mut c2 = WsClient::connect(&n2.ws_url()).await;
    c2.send(serde_json::json!({"action": "subscribe", "topic": "hosts", "history": 100}))
        .await;
    c2.next_on("$sys.subscribed").await;
    let event_of = async |c: &mut WsClient, event: &str| loop {
        let m = c.next().await;
        if m["topic"] == "hosts"
            && m["payload"]["host"] == "doomed"
            && m["payload"]["event"] == event
        {
            return m;
        }
    };
    let online = event_of(&mut c2, "online").await;
    assert_eq!(online["payload"]["aggregator"], "agg-1", "{online}");

    // Aggregator 1 dies without a goodbye.
    n1.proc.kill();
    let killed = Instant::now();
    let offline = event_of(&mut c2, "offline").await;
    let seen = Instant::now();
    assert_eq!(offline["payload"]["aggregator"], "agg-1", "{offline}");
    // A peer's presence changes are numbered by this node's hub like its
    // own agents' are: the next seq of its `hosts` topic, no gap.
    assert_eq!(
        offline["seq"].as_u64(),
        online["seq"].as_u64().map(|s| s + 1),
        "{online} then {offline}"
    );
    // Not before aggregator 1 had been silent for the timeout (the spy
    // and aggregator 2 hear each announcement at about the same moment)...
    let last_heard = presence
        .messages()
        .last()
        .map(|m| m.at)
        .expect("aggregator 1 announced itself");
    assert!(
        seen + Duration::from_millis(500) >= last_heard + timeout,
        "offline {:?} after the last announcement, before the {timeout:?} peer timeout",
        seen - last_heard
    );
    // ...and within the timeout plus one sweep interval of the kill
    // (with a second for a loaded machine).
    assert!(
        seen - killed <= timeout + interval + Duration::from_secs(1),
        "offline {:?} after the kill, later than the {timeout:?} peer timeout and a {interval:?} sweep",
        seen - killed
    );
    assert_eq!(
        n2.hosts().await.get("doomed"),
        Some(&("agg-1".to_string(), false))
    );
    assert_eq!(n2.metric("hostpulse_cluster_peers").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_host_is_forgotten_by_every_aggregator_alike() {
    let forget_after = Duration::from_millis(1500);
    let hub = format!("forget_after_ms = {}", forget_after.as_millis());
    let nats = NatsServer::start();
    let n1 = Node::start_with_hub(&nats, "agg-1", &[], &hub).await;
    let n2 = Node::start_with_hub(&nats, "agg-2", &[], &hub).await;
    let mut watchers = Vec::new();
    for node in [&n1, &n2] {
        let mut c = WsClient::connect(&node.ws_url()).await;
        c.subscribe("hosts").await;
        watchers.push(c);
    }
    // The next `hosts` event about the drifter, as (event, aggregator).
    let event = async |c: &mut WsClient| loop {
        let m = c.next_within(WAIT + forget_after).await.expect("an event");
        if m["topic"] == "hosts" && m["payload"]["host"] == "drifter" {
            return (
                m["payload"]["event"].as_str().unwrap().to_string(),
                m["payload"]["aggregator"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
    };
    let mut agent = Burst::connect(&n1, "drifter").await;
    agent.send_taken(&n1, 3).await;
    eventually(
        "the peer to take the drifter's samples",
        async || n2.load_updates().await,
        |&taken| taken == 3,
    )
    .await;
    for c in &mut watchers {
        assert_eq!(event(c).await, ("online".into(), "agg-1".into()));
    }

    drop(agent);
    let mut forgotten_at = Vec::new();
    for c in &mut watchers {
        assert_eq!(event(c).await, ("offline".into(), "agg-1".into()));
    }
    let departed = Instant::now();
    for c in &mut watchers {
        assert_eq!(event(c).await, ("forgotten".into(), "agg-1".into()));
        forgotten_at.push(Instant::now());
    }
    // Each forgets it forget_after after seeing it leave (the peer learns
    // it from the next announcement), within a sweep (a quarter of
    // forget_after) and an announcement of each other, plus a second for a
    // loaded machine.
    let spread = forgotten_at[1].saturating_duration_since(forgotten_at[0]);
    assert!(
        spread <= forget_after / 4 + Duration::from_millis(200) + Duration::from_secs(1),
        "forgotten {spread:?} apart"
    );
    assert!(departed.elapsed() + Duration::from_millis(500) >= forget_after);
    for node in [&n1, &n2] {
        assert!(!node.hosts().await.contains_key("drifter"));
        let mut c = WsClient::connect(&node.ws_url()).await;
        c.send(serde_json::json!({"action": "subscribe", "topic": ">", "history": 100}))
            .await;
        let subscribed = c.next_on("$sys.subscribed").await;
        let topics = subscribed["payload"]["topics"].as_array().unwrap();
        assert!(
            topics
                .iter()
                .all(|t| !t["topic"].as_str().unwrap().starts_with("host.drifter.")),
            "{subscribed}"
        );
        assert_eq!(node.metric("hostpulse_hosts_forgotten_total").await, 1);
    }
}

#[test]
fn a_nats_server_that_cannot_listen_is_not_taken_for_ready() {
    let mut nats = NatsServer::start();
    nats.stop();
    // Another process holds the port now: a connect there would succeed,
    // but this server never becomes ready.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", nats.port)).expect("take the port");
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nats.restart()))
        .expect_err("a restart on a taken port must fail");
    let message = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("did not restart") && message.contains("address already in use"),
        "{message}"
    );
}
