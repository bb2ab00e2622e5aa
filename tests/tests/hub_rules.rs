//! The hub's delivery rules end to end, through a real aggregator, hand-driven
//! agents ([`FakeAgent`], so every count is exact) and real WebSocket clients:
//! `[[hub.rate_limit]]` (and `min_interval_ms` in `$sys.subscribed`), each
//! update once when several of a connection's patterns match it, and replays
//! from history never throttled while the live updates after them are.

use std::collections::BTreeMap;
use std::time::Duration;

use hostpulse_aggregator::config::RateLimitConfig;
use hostpulse_proto::{Cpu, Sample};
use hostpulse_tests::fake::{self, FakeAgent, batch};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAggregator, WAIT, http_get};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A sample with the families asked for: `cpu`, `load`, and `processes`
/// listed processes (none: no `processes` family).
fn sample_with(seq: u64, cpu: bool, load: bool, processes: usize) -> Sample {
    let mut s = fake::sample(seq, processes);
    if !load {
        s.load = None;
    }
    s.cpu = cpu.then(|| Cpu {
        total_pct: 12.5,
        per_core_pct: vec![10.0, 15.0],
    });
    s
}

/// Sends one batch holding `sample` and waits for its ack. An ack means the
/// batch's updates are queued to the hub, ahead of any command sent after.
async fn publish(agent: &mut FakeAgent, sample: Sample) {
    let seq = sample.seq;
    agent.send(batch(seq, &[sample])).await;
    agent.acked(seq).await;
}

/// Reads `client` in its own task, noting when each message arrived, until
/// `last` says a message was the last one wanted.
fn record(
    mut client: WsClient,
    last: impl Fn(&Value) -> bool + Send + 'static,
) -> JoinHandle<(WsClient, Vec<(Instant, Value)>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let m = client.next().await;
            let done = last(&m);
            seen.push((Instant::now(), m));
            if done {
                return (client, seen);
            }
        }
    })
}

/// Topic and seq of each update among `messages` on `topic`, in arrival order.
fn seqs_on(messages: &[(Instant, Value)], topic: &str) -> Vec<(Instant, u64)> {
    messages
        .iter()
        .filter(|(_, m)| m["topic"] == topic)
        .map(|(at, m)| (*at, m["seq"].as_u64().expect("an update has a seq")))
        .collect()
}

async fn healthz(agg: &TestAggregator) -> Value {
    let (status, body) = http_get(agg.http, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("healthz is JSON")
}

/// `min_interval_ms` of each topic listed in a `$sys.subscribed` reply
/// (`None`: the field is absent).
fn intervals(reply: &Value) -> BTreeMap<String, Option<u64>> {
    reply["payload"]["topics"]
        .as_array()
        .expect("a topics list")
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().expect("a topic name").to_string(),
                t.get("min_interval_ms").map(|v| v.as_u64().expect("ms")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_topics_publish_at_most_one_update_per_interval_and_subscribed_says_so() {
    const INTERVAL: Duration = Duration::from_millis(300);
    let agg = TestAggregator::start(|c| {
        c.hub.rate_limit = vec![
            RateLimitConfig {
                topic: "host.*.processes".into(),
                min_interval_ms: INTERVAL.as_millis() as u64,
            },
            // Shadowed by the entry above: the first match wins.
            RateLimitConfig {
                topic: "host.rl.processes".into(),
                min_interval_ms: 60_000,
            },
            // Longer than this test: only a topic's first update gets through.
            RateLimitConfig {
                topic: "host.*.load".into(),
                min_interval_ms: 60_000,
            },
        ];
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "rl").await;
    // Seq 1 creates the topics, so that `$sys.subscribed` lists them.
    publish(&mut agent, sample_with(1, true, true, 3)).await;

    let mut client = WsClient::connect(&agg.ws_url()).await;
    let reply = client.subscribe("host.rl.>").await;
    assert_eq!(
        intervals(&reply),
        BTreeMap::from([
            ("host.rl.cpu".to_string(), None),
            ("host.rl.load".to_string(), Some(60_000)),
            ("host.rl.processes".to_string(), Some(300)),
        ]),
        "{reply}"
    );
    let mut exact = WsClient::connect(&agg.ws_url()).await;
    let reply = exact.subscribe("host.rl.processes").await;
    assert_eq!(
        intervals(&reply),
        BTreeMap::from([("host.rl.processes".to_string(), Some(300))]),
        "{reply}"
    );
    drop(exact);

    // A sample with all three families every 20 ms (75 of them, so at
    // least 1.48 s), then a cpu-only sentinel after which nothing is published.
    const LAST: u64 = 76;
    const SENTINEL: u64 = LAST + 1;
    let recorder = record(client, |m| {
        m["topic"] == "host.rl.cpu" && m["seq"].as_u64() == Some(SENTINEL)
    });
    let started = Instant::now();
    let mut sent_at: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 2..=LAST {
        tick.tick().await;
        sent_at.insert(seq, Instant::now());
        publish(&mut agent, sample_with(seq, true, true, 3)).await;
    }
    publish(&mut agent, sample_with(SENTINEL, true, false, 0)).await;
    let (_client, seen) = tokio::time::timeout(WAIT, recorder)
        .await
        .expect("the sentinel arrives in time")
        .expect("recorder task");
    let window = started.elapsed();

    // The unlimited topic got every update.
    let cpu: Vec<u64> = seqs_on(&seen, "host.rl.cpu").iter().map(|s| s.1).collect();
    assert_eq!(cpu, (2..=SENTINEL).collect::<Vec<_>>());
    // The 60 s limit let nothing through after seq 1.
    assert_eq!(seqs_on(&seen, "host.rl.load"), Vec::new());
    // The 300 ms limit (not the shadowed 60 s entry) let some through,
    // skipping seqs in between.
    let processes = seqs_on(&seen, "host.rl.processes");
    let published: Vec<u64> = processes.iter().map(|s| s.1).collect();
    assert!(
        published.len() >= 2,
        "1.48 s of samples under a 300 ms limit publish more than one: {published:?}"
    );
    assert!(
        published.windows(2).all(|w| w[1] > w[0] + 1),
        "seqs are skipped between published updates: {published:?}"
    );
    // At most one per interval over the whole window, however it is sliced.
    let most = (window.as_millis() / INTERVAL.as_millis()) as usize + 1;
    assert!(
        published.len() <= most,
        "{} published in {window:?}: {published:?}",
        published.len()
    );
    // And pair by pair: update b was published at least 300 ms after a, so
    // it arrived at least 300 ms after a's batch was sent.
    for pair in processes.windows(2) {
        let (a, (arrived, b)) = (pair[0].1, pair[1]);
        let gap = arrived.duration_since(sent_at[&a]);
        assert!(
            gap >= INTERVAL,
            "seq {b} arrived {gap:?} after seq {a} was sent"
        );
    }
    // The rest were neither published nor kept: history holds only seq 1 and
    // what was delivered live, and the counter says how many were dropped.
    let mut late = WsClient::connect(&agg.ws_url()).await;
    late.send(json!({"action": "subscribe", "topic": "host.rl.processes", "history": 1000}))
        .await;
    late.next_on("$sys.subscribed").await;
    let mut kept = Vec::new();
    while kept.last() != published.last() {
        kept.push(
            late.next_on("host.rl.processes").await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let mut expected = vec![1];
    expected.extend(&published);
    assert_eq!(kept, expected);
    let live = LAST - 1;
    let dropped = (live - published.len() as u64) + live;
    assert_eq!(healthz(&agg).await["rate_limited"], dropped);
    agg.stop().await;
}

/// Reads `client` until `host.a.cpu` brings seq `sentinel`, recording every
/// update; fails on anything else than updates of the expected topics.
async fn until_sentinel(client: &mut WsClient, sentinel: u64, tracker: &mut Tracker) {
    loop {
        let m = client.next().await;
        let topic = m["topic"].as_str().expect("a topic").to_string();
        assert!(topic.starts_with("host."), "unexpected message {m}");
        tracker.record(&m);
        if topic == "host.a.cpu" && m["seq"].as_u64() == Some(sentinel) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_update_arrives_once_however_many_of_a_connections_patterns_match_it() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut a = FakeAgent::connect(&agg.ingest_url(), "a").await;
    let mut b = FakeAgent::connect(&agg.ingest_url(), "b").await;
    // host.a.load exists before the subscriptions (routed when subscribing);
    // the cpu topics and host.b.load do not (routed when first published).
    publish(&mut a, sample_with(1, false, true, 0)).await;
    let mut c = WsClient::connect(&agg.ws_url()).await;
    for pattern in ["host.*.cpu", "host.a.>", "host.a.cpu", "host.*.load"] {
        c.subscribe(pattern).await;
    }
    // host.a.cpu matches three patterns, host.a.load two, host.b.* one each.
    for seq in 2..=21 {
        publish(&mut a, sample_with(seq, true, true, 0)).await;
        publish(&mut b, sample_with(seq - 1, true, true, 0)).await;
    }
    publish(&mut a, sample_with(22, true, false, 0)).await;
    let mut tracker = Tracker::default();
    until_sentinel(&mut c, 22, &mut tracker).await;
    tracker.assert_exactly_once();
    assert_eq!(
        tracker.range,
        BTreeMap::from([
            ("host.a.cpu".to_string(), (2, 22)),
            ("host.a.load".to_string(), (2, 21)),
            ("host.b.cpu".to_string(), (1, 20)),
            ("host.b.load".to_string(), (1, 20)),
        ])
    );

    // Dropping two of host.a.cpu's three patterns keeps it (once, through
    // host.a.>) and ends host.b.cpu, which only host.*.cpu matched.
    for pattern in ["host.*.cpu", "host.a.cpu"] {
        c.send(json!({"action": "unsubscribe", "topic": pattern}))
            .await;
        let reply = c.next_on("$sys.unsubscribed").await;
        assert_eq!(reply["payload"]["topic"], pattern);
    }
    for seq in 23..=27 {
        publish(&mut b, sample_with(seq - 2, true, true, 0)).await;
        publish(&mut a, sample_with(seq, true, true, 0)).await;
    }
    publish(&mut a, sample_with(28, true, false, 0)).await;
    let mut after = Tracker::default();
    until_sentinel(&mut c, 28, &mut after).await;
    after.assert_exactly_once();
    assert_eq!(
        after.range,
        BTreeMap::from([
            ("host.a.cpu".to_string(), (23, 28)),
            ("host.a.load".to_string(), (23, 27)),
            ("host.b.load".to_string(), (21, 25)),
        ])
    );
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_history_are_never_throttled_and_the_live_updates_after_them_are() {
    const THROTTLE: Duration = Duration::from_millis(1_000);
    const LAST: u64 = 30;
    let agg = TestAggregator::start(|_| {}).await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "r").await;
    for seq in 1..=10 {
        publish(&mut agent, fake::sample(seq, 0)).await;
    }
    // One client asks for the last 10, another resumes after seq 3; both
    // throttle to one update a second. A throttled replay would collapse
    // into its first and newest update.
    let mut clients = Vec::new();
    for (request, replay) in [
        (json!({"history": 10}), (1..=10).collect::<Vec<u64>>()),
        (json!({"since": 3}), (4..=10).collect()),
    ] {
        let mut c = WsClient::connect(&agg.ws_url()).await;
        let mut subscribe = json!({"action": "subscribe", "topic": "host.r.load",
            "throttle_ms": THROTTLE.as_millis() as u64});
        for (k, v) in request.as_object().unwrap() {
            subscribe[k] = v.clone();
        }
        c.send(subscribe.clone()).await;
        c.next_on("$sys.subscribed").await;
        let mut got = Vec::new();
        while got.len() < replay.len() {
            got.push(c.next_on("host.r.load").await["seq"].as_u64().unwrap());
        }
        assert_eq!(got, replay, "{subscribe}");
        clients.push(record(c, |m| {
            m["topic"] == "host.r.load" && m["seq"].as_u64() == Some(LAST)
        }));
    }

    // Live: 20 updates, one every 50 ms (at least 950 ms in all).
    let mut sent_at: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    for seq in 11..=LAST {
        tick.tick().await;
        sent_at.insert(seq, Instant::now());
        publish(&mut agent, fake::sample(seq, 0)).await;
    }
    for recorder in clients {
        // The newest is always delivered in the end, when its interval ends.
        let (_client, seen) = tokio::time::timeout(WAIT, recorder)
            .await
            .expect("the newest update arrives in time")
            .expect("recorder task");
        let window = started.elapsed();
        let live = seqs_on(&seen, "host.r.load");
        let seqs: Vec<u64> = live.iter().map(|s| s.1).collect();
        assert!(
            seqs.len() >= 2 && seqs.windows(2).all(|w| w[1] > w[0]),
            "{seqs:?}"
        );
        assert!(seqs.len() < 20, "live updates were thinned: {seqs:?}");
        let most = (window.as_millis() / THROTTLE.as_millis()) as usize + 1;
        assert!(seqs.len() <= most, "{seqs:?} in {window:?}");
        for pair in live.windows(2) {
            let (a, (arrived, b)) = (pair[0].1, pair[1]);
            let gap = arrived.duration_since(sent_at[&a]);
            assert!(
                gap >= THROTTLE,
                "seq {b} arrived {gap:?} after seq {a} was sent"
            );
        }
    }
    agg.stop().await;
}
