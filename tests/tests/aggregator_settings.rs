//! Aggregator settings that no other test exercises, each end to end against
//! a real aggregator tuned for it (in-process, or the real binary where its
//! log is the evidence): `ingest.hello_timeout_ms`,
//! `ingest.max_batches_per_sec`, `ws.max_connections`, `ws.write_timeout_ms`,
//! `hub.history_max_bytes` and `auth.anonymous_topics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_proto::v1::ingest_client::IngestClient;
use hostpulse_proto::v1::{AggregatorMessage, aggregator_message};
use hostpulse_proto::{Cpu, Sample};
use hostpulse_tests::fake::{self, FakeAgent, batch, hello};
use hostpulse_tests::process::{Proc, addr_in, temp_file};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{TestAggregator, WAIT, http_get, metric, wait_until};
use serde_json::{Value, json};
use tokio::time::Instant;

async fn healthz(http: std::net::SocketAddr) -> Value {
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("healthz is JSON")
}

/// Sends one batch holding `sample` and waits for its ack.
async fn publish(agent: &mut FakeAgent, sample: Sample) {
    let seq = sample.seq;
    agent.send(batch(seq, &[sample])).await;
    agent.acked(seq).await;
}

/// The next message on an agent's stream, which must be an `Ack`; its seq.
async fn next_ack(agent: &mut FakeAgent) -> u64 {
    match tokio::time::timeout(WAIT, agent.inbound.message()).await {
        Ok(Ok(Some(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Ack(a)),
        }))) => a.seq,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_says_hello_is_ended_after_hello_timeout_and_others_are_not() {
    const HELLO: Duration = Duration::from_millis(1_000);
    let agg = TestAggregator::start(|c| c.ingest.hello_timeout_ms = HELLO.as_millis() as u64).await;
    let url = agg.ingest_url();
    let mut healthy = FakeAgent::connect(&url, "healthy").await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("host.healthy.load").await;
    publish(&mut healthy, fake::sample(1, 0)).await;
    let refused_before = metric(agg.http, "hostpulse_ingest_refused_streams_total").await;

    // A stream that opens and then says nothing.
    let opened = Instant::now();
    let status = fake::refusal_of(&url, None, Vec::new()).await;
    let took = opened.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no Hello within 1s"),
        "{}",
        status.message()
    );
    assert!(took >= HELLO, "ended after {took:?}");
    // Ended at the deadline, not at some later cleanup (slack for a loaded machine).
    assert!(
        took < HELLO + Duration::from_secs(4),
        "ended after {took:?}"
    );
    assert_eq!(
        metric(agg.http, "hostpulse_ingest_refused_streams_total").await,
        refused_before + 1.0,
        "the refusal is counted"
    );

    // A Hello that comes late, but within the timeout, is welcomed.
    let mut client = IngestClient::connect(url.clone()).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(hello("late", 1)).await.expect("queue Hello");
        tx
    });
    let mut late = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a Hello within the timeout is accepted")
        .into_inner();
    match tokio::time::timeout(WAIT, late.message()).await {
        Ok(Ok(Some(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(_)),
        }))) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    let _late_tx = sender.await.expect("sender task");

    // The healthy agent, connected all along, is untouched.
    publish(&mut healthy, fake::sample(2, 0)).await;
    let mut tracker = Tracker::default();
    while tracker.last("host.healthy.load") != Some(2) {
        tracker.record(&watcher.next_on("host.healthy.load").await);
    }
    tracker.assert_exactly_once();
    assert_eq!(tracker.range["host.healthy.load"], (1, 2));
    assert_eq!(healthz(agg.http).await["agents_connected"], 2);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_max_batches_per_sec_is_slowed_not_refused_and_others_are_not_slowed() {
    // 10 a second, with bursts of five seconds' worth (50).
    const RATE: u64 = 10;
    const BURST: u64 = 5 * RATE;
    const TOTAL: u64 = BURST + 40;
    let agg = TestAggregator::start(|c| c.ingest.max_batches_per_sec = RATE as u32).await;
    let url = agg.ingest_url();
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("host.fast.load").await;
    let mut fast = FakeAgent::connect(&url, "fast").await;
    let mut other = FakeAgent::connect(&url, "other").await;

    // Every batch at once; acks are read in a task of their own.
    let started = Instant::now();
    let tx = fast.tx.clone();
    let sender = tokio::spawn(async move {
        for seq in 1..=TOTAL {
            tx.send(batch(seq, &[fake::sample(seq, 0)]))
                .await
                .expect("stream open");
        }
    });
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let acks = tokio::spawn(async move {
        let mut acked_at = Vec::new();
        for seq in 1..=TOTAL {
            assert_eq!(next_ack(&mut fast).await, seq, "acks in order");
            acked_at.push(started.elapsed());
            seen.store(seq, Ordering::SeqCst);
        }
        (fast, acked_at)
    });

    // While the fast agent waits out its budget, another agent's batches go
    // through at once: the budget is per stream.
    wait_until("the fast agent is past its burst", || {
        progress.load(Ordering::SeqCst) > BURST
    })
    .await;
    for seq in 1..=5 {
        publish(&mut other, fake::sample(seq, 0)).await;
    }
    let fast_then = progress.load(Ordering::SeqCst);
    assert!(
        fast_then < TOTAL,
        "the other agent's 5 batches took as long as the fast agent's last {}",
        TOTAL - BURST
    );

    let (mut fast, acked_at) = tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .expect("every batch acknowledged in time")
        .expect("ack task");
    sender.await.expect("sender task");
    // The burst went through unpaced: at 10 a second without it, batch 50
    // could not be acknowledged before 4.9 s.
    let burst_done = acked_at[BURST as usize - 1];
    assert!(burst_done < Duration::from_secs(4), "{burst_done:?}");
    // Past the burst, never faster than the rate: batch k no sooner than
    // (k - 50) / 10 s after the first was sent.
    for (i, at) in acked_at.iter().enumerate() {
        let k = i as u64 + 1;
        let earliest = Duration::from_millis(k.saturating_sub(BURST) * 1000 / RATE);
        assert!(
            *at + Duration::from_millis(1) >= earliest,
            "batch {k} acknowledged after {at:?}, before {earliest:?}"
        );
    }
    // Nothing refused: the stream is still open and everything was published.
    publish(&mut fast, fake::sample(TOTAL + 1, 0)).await;
    assert_eq!(
        metric(agg.http, "hostpulse_ingest_refused_streams_total").await,
        0.0
    );
    let mut tracker = Tracker::default();
    while tracker.last("host.fast.load") != Some(TOTAL + 1) {
        tracker.record(&watcher.next_on("host.fast.load").await);
    }
    tracker.assert_exactly_once();
    assert_eq!(tracker.range["host.fast.load"], (1, TOTAL + 1));
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_get_503_until_one_closes() {
    const MAX: usize = 3;
    let agg = TestAggregator::start(|c| c.ws.max_connections = MAX).await;
    let url = agg.ws_url();
    let mut open = Vec::new();
    for _ in 0..MAX {
        let mut c = WsClient::try_connect(&url)
            .await
            .expect("accepted under the limit");
        c.send(json!({"action": "ping"})).await;
        c.next_on("$sys.pong").await;
        open.push(c);
    }
    let mut refused = 0;
    let expect_refusal = async || {
        let r = WsClient::try_connect(&url)
            .await
            .err()
            .expect("refused at the limit");
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.retry_after.is_some(), "Retry-After: {r:?}");
        assert!(r.body.contains("limit of 3 connections"), "{r:?}");
    };
    // The next one and every one after it.
    for _ in 0..2 {
        expect_refusal().await;
        refused += 1;
    }

    // One closes; its place is given back once its session has ended.
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match WsClient::try_connect(&url).await {
            Ok(c) => break c,
            Err(r) => {
                assert_eq!(r.status, 503, "{r:?}");
                refused += 1;
                assert!(Instant::now() < deadline, "no place given back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    again.send(json!({"action": "ping"})).await;
    again.next_on("$sys.pong").await;
    // And the limit holds again.
    expect_refusal().await;
    refused += 1;
    for c in &mut open {
        c.send(json!({"action": "ping"})).await;
        c.next_on("$sys.pong").await;
    }
    let h = healthz(agg.http).await;
    assert_eq!(h["ws_connections"], MAX, "{h}");
    assert_eq!(h["ws_refused"], refused, "{h}");
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_stops_taking_writes_is_closed_after_write_timeout() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
    // The real binary, so that its log says which limit closed the client.
    // The slow-client path (queue bound, grace period) and the heartbeat are
    // set far out of reach, so only the write timeout can close anyone.
    let config = temp_file(
        "aggregator.toml",
        &format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [ws]\nwrite_timeout_ms = {}\nqueue_max_bytes = {}\nslow_grace_ms = 600000\n\
             ping_interval_ms = 60000\nping_timeout_ms = 120000\n",
            WRITE_TIMEOUT.as_millis(),
            256u64 << 20
        ),
    );
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap()],
    );
    let line = agg.wait_for_line("aggregator listening");
    let (ingest, http) = (addr_in(&line, "ingest_addr"), addr_in(&line, "http_addr"));
    let ws = format!("ws://{http}/ws");

    let mut healthy = WsClient::connect(&ws).await;
    healthy.subscribe("host.w.processes").await;
    // A 4 KiB receive window, and from here on it reads nothing.
    let mut stalled = WsClient::connect_with_recv_buffer(&ws, 4096).await;
    stalled.subscribe("host.w.processes").await;
    let stalled_since = Instant::now();

    // About 100 KB per update; the healthy client reads each one.
    let mut publisher = FakeAgent::connect(&format!("http://{ingest}"), "w").await;
    let mut tracker = Tracker::default();
    let mut seq = 0;
    loop {
        seq += 1;
        publish(&mut publisher, fake::sample(seq, 500)).await;
        tracker.record(&healthy.next_on("host.w.processes").await);
        if seq % 5 == 0 && healthz(http).await["ws_connections"] == 1 {
            break;
        }
        assert!(
            stalled_since.elapsed() < Duration::from_secs(60),
            "the stalled client is still connected after {seq} updates"
        );
    }
    let took = stalled_since.elapsed();
    assert!(took >= WRITE_TIMEOUT, "closed after {took:?}");
    let h = healthz(http).await;
    assert_eq!(h["lag_disconnects"], 0, "not the slow-client grace: {h}");
    // Its log names the cause (and panics if it never does).
    agg.wait_for_line("client stopped reading; disconnecting");
    assert!(
        !agg.log
            .iter()
            .any(|l| l.contains("does not keep up") || l.contains("no answer to pings")),
        "{}",
        agg.log.join("\n")
    );

    // The healthy client keeps receiving, every update once.
    for _ in 0..5 {
        seq += 1;
        publish(&mut publisher, fake::sample(seq, 500)).await;
        tracker.record(&healthy.next_on("host.w.processes").await);
    }
    tracker.assert_exactly_once();
    assert_eq!(tracker.range["host.w.processes"], (1, seq));
    // The stalled client, reading again, finds its backlog cut off without a
    // close frame: the server gave up writing to it.
    assert_eq!(stalled.closed(WAIT).await, Closed::Abrupt);
    agg.terminate();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_max_bytes_trims_the_largest_topics_and_spares_the_small_ones() {
    const BOUND: usize = 30_000;
    const SAMPLES: u64 = 60;
    let agg = TestAggregator::start(|c| {
        c.hub.history_max_bytes = BOUND;
        // Far more than is kept, so only the byte bound can limit it.
        c.hub.history_len = 1_000;
    })
    .await;
    // Each sample: a small load update, then a processes update about
    // twenty times its size. A fair bound trims the processes topic, which
    // holds the most, and leaves the small topics (and `hosts`) whole; a
    // hub-wide oldest-first bound would cut every topic at the same sample.
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "h").await;
    for seq in 1..=SAMPLES {
        publish(&mut agent, fake::sample(seq, 10)).await;
    }

    // Replay everything still held, of every topic, as the exact bytes sent.
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action": "subscribe", "topic": ">", "history": 1_000}))
        .await;
    let reply: Value = serde_json::from_str(&c.next_text().await).unwrap();
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    let held: BTreeMap<String, (Option<u64>, u64)> = reply["payload"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["topic"].as_str().unwrap().to_string();
            (
                name,
                (t["history_start"].as_u64(), t["seq"].as_u64().unwrap()),
            )
        })
        .collect();
    let expected: usize = held
        .values()
        .map(|(start, seq)| start.map_or(0, |s| (seq - s + 1) as usize))
        .sum();
    let mut replayed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut json_bytes = 0;
    let mut largest = 0;
    for _ in 0..expected {
        let text = c.next_text().await;
        let m: Value = serde_json::from_str(&text).unwrap();
        json_bytes += text.len();
        largest = largest.max(text.len());
        replayed
            .entry(m["topic"].as_str().unwrap().to_string())
            .or_default()
            .push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(
        c.next_within(Duration::from_millis(300)).await,
        None,
        "nothing beyond what $sys.subscribed announced"
    );

    // Within the bound, counting what history really holds.
    let health = healthz(agg.http).await;
    let history_bytes = health["history_bytes"].as_u64().unwrap() as usize;
    assert!(history_bytes <= BOUND, "{history_bytes}");
    assert!(health["history_trimmed"].as_u64().unwrap() > 0, "{health}");
    assert!(json_bytes > BOUND / 2, "only {json_bytes} bytes kept");
    let load = &replayed["host.h.load"];
    let processes = &replayed["host.h.processes"];
    // Each topic keeps its newest updates, consecutive up to the latest.
    for (topic, seqs) in [("host.h.load", load), ("host.h.processes", processes)] {
        assert_eq!(seqs.last(), Some(&SAMPLES), "{topic}: {seqs:?}");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{topic}: {seqs:?}"
        );
        assert_eq!(
            held[topic].0,
            seqs.first().copied(),
            "{topic} history_start"
        );
    }
    // The largest topic was trimmed; the small ones kept everything.
    assert!(processes.len() < SAMPLES as usize, "{processes:?}");
    assert_eq!(load.len(), SAMPLES as usize, "{load:?}");
    assert_eq!(replayed["hosts"].len(), 1, "{held:?}");
    let p = processes[0];

    // A resume from before what is held says the history is incomplete.
    let mut r = WsClient::connect(&agg.ws_url()).await;
    r.send(json!({"action": "subscribe", "topic": "host.h.processes", "since": 0}))
        .await;
    let reply = r.next_on("$sys.subscribed").await;
    assert_eq!(reply["payload"]["complete"], false, "{reply}");
    assert_eq!(reply["payload"]["topics"][0]["history_start"], p, "{reply}");
    agg.stop().await;
}

const FULL: &str = "full-client-token-0123";
const AGENT: &str = "agent-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_may_watch_exactly_the_anonymous_topics() {
    let agg = TestAggregator::start(|c| {
        c.auth.anonymous_agents = false;
        c.auth.anonymous_clients = true;
        c.auth.anonymous_topics = vec!["hosts".into(), "host.*.cpu".into()];
        c.auth.agent_tokens = vec![TokenConfig {
            name: "agents".into(),
            token: Some(AGENT.into()),
            ..Default::default()
        }];
        c.auth.client_tokens = vec![TokenConfig {
            name: "full".into(),
            token: Some(FULL.into()),
            topics: vec![">".into()],
            ..Default::default()
        }];
    })
    .await;
    // Tokens are required of agents.
    let status = fake::refusal_of(&agg.ingest_url(), None, vec![hello("a", 1)]).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut anon = WsClient::connect(&agg.ws_url()).await;
    // The anonymous patterns themselves, a topic inside one, and patterns
    // that overlap them (delivering only what they grant).
    for pattern in ["hosts", "host.*.cpu", "host.a.cpu", "host.a.>", ">"] {
        let reply = anon.subscribe(pattern).await;
        assert_eq!(reply["payload"]["topic"], pattern, "{reply}");
    }
    // Anything else is forbidden, and the connection stays open.
    for pattern in ["host.a.load", "host.*.memory", "host.a"] {
        anon.expect_error(
            &json!({"action": "subscribe", "topic": pattern}).to_string(),
            "forbidden",
            "token \"anonymous\" grants no topic",
        )
        .await;
    }
    let mut full = WsClient::connect(&format!("{}?token={FULL}", agg.ws_url())).await;
    full.subscribe("host.a.>").await;

    let mut agent = fake::open_as(&agg.ingest_url(), Some(AGENT), vec![hello("a", 1)])
        .await
        .expect("the agent's token is accepted");
    match tokio::time::timeout(WAIT, agent.inbound.message()).await {
        Ok(Ok(Some(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(_)),
        }))) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    let cpu = |seq: u64, load: bool| Sample {
        cpu: Some(Cpu {
            total_pct: 12.5,
            per_core_pct: vec![10.0, 15.0],
        }),
        load: load.then(|| fake::sample(seq, 0).load.unwrap()),
        ..fake::sample(seq, 0)
    };
    for seq in 1..=10 {
        publish(&mut agent, cpu(seq, true)).await;
    }
    // A cpu-only sentinel: any load update would have arrived before it.
    publish(&mut agent, cpu(11, false)).await;

    let read = async |c: &mut WsClient| {
        let mut t = Tracker::default();
        let mut hosts = Vec::new();
        while t.last("host.a.cpu") != Some(11) {
            let m = c.next().await;
            if m["topic"] == "hosts" {
                hosts.push(m["payload"]["event"].clone());
            }
            t.record(&m);
        }
        (t, hosts)
    };
    let (anon_seen, anon_hosts) = read(&mut anon).await;
    anon_seen.assert_exactly_once();
    assert_eq!(
        anon_seen.count.keys().collect::<Vec<_>>(),
        ["host.a.cpu", "hosts"],
        "only the granted topics"
    );
    assert_eq!(anon_seen.range["host.a.cpu"], (1, 11));
    assert_eq!(anon_hosts, vec![json!("online")]);
    // The load updates existed; a token granting them gets them.
    let (full_seen, _) = read(&mut full).await;
    full_seen.assert_exactly_once();
    assert_eq!(full_seen.range["host.a.load"], (1, 10));
    agg.stop().await;
}
