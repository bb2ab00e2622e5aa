//! Fan-out behaviour: encodings carry the same updates, batching keeps order,
//! throttling thins to the newest, and a stalled client is conflated then
//! closed with 1013 while every active client still gets everything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config, http_get};
use serde_json::{Value, json};

/// The first `n` updates on `topic`, keyed by seq.
async fn collect(client: &mut WsClient, topic: &str, n: usize) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let m = client.next().await;
        if m["topic"] == topic {
            out.insert(m["seq"].as_u64().unwrap(), m);
        }
    }
    out
}

/// Every non-integer number as the f32 it was sent as.
fn f32_view(updates: &BTreeMap<u64, Value>) -> Value {
    fn norm(v: &Value) -> Value {
        match v {
            Value::Number(n) if n.is_f64() => json!(n.as_f64().unwrap() as f32),
            Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect())
            }
            other => other.clone(),
        }
    }
    Value::Array(updates.values().map(norm).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_delivers_exactly_the_updates_json_delivers() {
    let agg = TestAggregator::start(|_| {}).await;
    let url = agg.ws_url();
    let mut json_client = WsClient::connect(&format!("{url}?encoding=json")).await;
    let mut packed = WsClient::connect(&format!("{url}?encoding=msgpack")).await;
    let (mut deflated, chosen) =
        WsClient::connect_with_protocol(&url, "hostpulse.v1.msgpack-deflate").await;
    assert_eq!(chosen.as_deref(), Some("hostpulse.v1.msgpack-deflate"));
    assert!(deflated.deflated);
    for c in [&mut json_client, &mut packed, &mut deflated] {
        c.subscribe("host.enc.>").await;
    }
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "enc"));
    let a = collect(&mut json_client, "host.enc.processes", 8).await;
    let b = collect(&mut packed, "host.enc.processes", 8).await;
    let c = collect(&mut deflated, "host.enc.processes", 8).await;
    // MessagePack keeps 32-bit floats as such; JSON prints their shortest
    // decimal form. Both are the same f32.
    assert!(
        f32_view(&a) == f32_view(&b),
        "msgpack decodes to the JSON updates"
    );
    assert!(
        f32_view(&a) == f32_view(&c),
        "msgpack+deflate decodes to the JSON updates"
    );
    assert!(
        a.values()
            .all(|m| m["payload"]["count"].as_u64().unwrap() > 0)
    );

    // A bad choice is refused before the upgrade, naming the options.
    match tokio_tungstenite::connect_async(format!("{url}?encoding=xml")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("json, msgpack or msgpack+deflate"), "{body}");
        }
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_keeps_order_and_seqs_in_every_encoding() {
    let agg = TestAggregator::start(|_| {}).await;
    // The four families sent with every sample, so each sample is four updates.
    let mut config = agent_config(&agg.ingest_url(), "bat");
    config.collect.network = false;
    config.collect.disk = false;
    config.collect.filesystems = false;
    config.collect.system = false;
    config.collect.temperatures = false;
    let agent = TestAgent::start(config);
    for encoding in ["json", "msgpack", "msgpack+deflate"] {
        let mut c = WsClient::connect(&format!(
            "{}?encoding={}&batch_ms=100",
            agg.ws_url(),
            encoding.replace('+', "%2B")
        ))
        .await;
        c.deflated = encoding == "msgpack+deflate";
        c.send(json!({"action": "subscribe", "topic": "host.bat.>"}))
            .await;
        let mut tracker = Tracker::default();
        let mut largest = 0;
        let mut frames = 0;
        while tracker.count.values().sum::<u64>() < 40 {
            let frame = c.next().await;
            assert_eq!(frame["topic"], "batch.update", "{encoding}: {frame}");
            let updates = frame["updates"].as_array().unwrap();
            largest = largest.max(updates.len());
            frames += 1;
            for u in updates {
                tracker.record(u);
            }
        }
        tracker.assert_exactly_once();
        assert_eq!(tracker.range.len(), 4, "{encoding}: four metrics");
        // Samples every 100 ms, four topics each, a 100 ms window: frames
        // carry several updates.
        assert!(
            largest >= 4,
            "{encoding}: at most {largest} updates per frame"
        );
        assert!(frames < 40, "{encoding}: {frames} frames for 40 updates");
    }
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_delivers_at_most_one_update_per_interval_and_the_newest_last() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut config = agent_config(&agg.ingest_url(), "thr");
    config.interval_ms = 20;
    let agent = TestAgent::start(config);
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action":"subscribe","topic":"host.thr.load","throttle_ms":300}))
        .await;
    c.next_on("$sys.subscribed").await;
    // (sample time, seq) of each delivered update. Sample times, not arrival
    // times: a client that is slow to read could see two sends back to back.
    let mut arrivals: Vec<(std::time::SystemTime, u64)> = Vec::new();
    while arrivals.len() < 6 {
        let m = c.next_on("host.thr.load").await;
        let taken = humantime::parse_rfc3339(m["timestamp"].as_str().unwrap()).unwrap();
        arrivals.push((taken, m["seq"].as_u64().unwrap()));
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0).unwrap();
        // One send per 300 ms, each carrying the newest sample: consecutive
        // samples are 300 ms apart, less the age of the newest at sending
        // (one sampling period; a debug build samples in up to ~50 ms).
        assert!(gap >= Duration::from_millis(240), "{gap:?} between updates");
        assert!(pair[1].1 > pair[0].1 + 1, "updates in between were skipped");
    }
    let status = agent.status.clone();
    agent.stop().await;
    let last = status
        .last_sample_seq
        .load(std::sync::atomic::Ordering::SeqCst);
    // Newest wins: after the agent stops, the last update delivered is its
    // last sample (held back until its interval ended, if need be).
    let mut latest = arrivals.last().unwrap().1;
    while latest != last {
        assert!(latest < last);
        latest = c.next_on("host.thr.load").await["seq"].as_u64().unwrap();
    }
    assert_eq!(
        c.next_within(Duration::from_millis(600)).await,
        None,
        "nothing after the newest"
    );
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_conflated_then_closed_while_200_active_clients_get_everything() {
    const QUEUE: u64 = 64 << 10;
    let agg = TestAggregator::start(|c| {
        c.ws.queue_max_bytes = QUEUE as usize;
        c.ws.slow_grace_ms = 1_000;
    })
    .await;
    let mut active = Vec::new();
    for _ in 0..200 {
        // A batching window keeps 200 readers cheap for this 2-core machine.
        let mut c = WsClient::connect(&format!("{}?batch_ms=100", agg.ws_url())).await;
        c.send(json!({"action":"subscribe","topic":"host.bulk.load"}))
            .await;
        active.push(c);
    }
    let mut stalled = WsClient::connect(&agg.ws_url()).await;
    stalled.subscribe("host.bulk.>").await;
    // From here on `stalled` reads nothing.

    let mut publisher = FakeAgent::connect(&agg.ingest_url(), "bulk").await;
    let stats = || async {
        let (_, body) = http_get(agg.http, "/healthz").await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    // About 40 KB per sample (200 processes, listed twice) until the stalled
    // client is given up on.
    let mut seq = 0;
    let started = Instant::now();
    loop {
        seq += 1;
        publisher
            .send(fake::batch(seq, &[fake::sample(seq, 200)]))
            .await;
        publisher.acked(seq).await;
        if seq % 20 == 0 && stats().await["lag_disconnects"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never disconnected"
        );
    }
    let s = stats().await;
    assert!(s["lag_episodes"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["conflated"].as_u64().unwrap() > 0, "conflated first: {s}");
    // Memory stayed bounded: no queue grew past the bound plus one update.
    assert!(
        s["peak_queue_bytes"].as_u64().unwrap() <= QUEUE + (64 << 10),
        "{s}"
    );
    // The stalled client, reading again, finds the 1013 close after its backlog.
    assert_eq!(stalled.closed(WAIT).await, Closed::Code(1013));

    // Every active client got every update, in order, once.
    for (i, c) in active.iter_mut().enumerate() {
        let mut tracker = Tracker::default();
        while tracker.last("host.bulk.load") != Some(seq) {
            let frame = c.next().await;
            for u in frame["updates"].as_array().unwrap() {
                tracker.record(u);
            }
        }
        tracker.assert_exactly_once();
        assert_eq!(tracker.range["host.bulk.load"], (1, seq), "client {i}");
    }
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_aggregator_makes_agents_sample_less_often() {
    // A threshold of 0 makes the aggregator count as overloaded all the time.
    let agg = TestAggregator::start(|c| {
        c.ingest.overload_queue_fraction = 0.0;
        c.ingest.overload_interval_ms = 400;
    })
    .await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "slowed"));
    let status = agent.status.clone();
    hostpulse_tests::wait_until("the agent to slow down", || {
        status.interval_ms.load(std::sync::atomic::Ordering::SeqCst) == 400
    })
    .await;
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.subscribe("host.slowed.load").await;
    let first = c.next_on("host.slowed.load").await["seq"].as_u64().unwrap();
    let started = Instant::now();
    let mut last = first;
    while started.elapsed() < Duration::from_millis(1_300) {
        last = c.next_on("host.slowed.load").await["seq"].as_u64().unwrap();
    }
    // At the configured 100 ms this would be about 13 samples; at 400 ms, 3 or 4.
    assert!(last - first <= 5, "{} samples in 1.3 s", last - first);
    assert_eq!(
        status
            .interval_hint_ms
            .load(std::sync::atomic::Ordering::SeqCst),
        400
    );
    agent.stop().await;
    agg.stop().await;
}
