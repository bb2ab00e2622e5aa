//! No sample lost: aggregator restarts, subscribers dropping off, a dead
//! aggregator during which agents spool, heartbeats, silence, and resume.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::process::{Proc, temp_file};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{
    TestAgent, TestAggregator, WAIT, agent_config, free_port, http_get, wait_until,
};
use serde_json::json;

/// Reads from `client` into `tracker` until `done` holds (true) or the
/// connection ends (false).
async fn follow(
    client: &mut WsClient,
    tracker: &mut Tracker,
    done: impl Fn(&Tracker) -> bool,
) -> bool {
    loop {
        match client.recv(Duration::from_millis(200)).await {
            Ok(Some(m)) => tracker.record(&m),
            Ok(None) => {}
            Err(_) => return false,
        }
        if done(tracker) {
            return true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_aggregator_five_times_loses_and_repeats_nothing() {
    let ingest = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let config = temp_file(
        "aggregator.toml",
        &format!("[ingest]\nlisten = \"{ingest}\"\n[http]\nlisten = \"{http}\"\n"),
    );
    let start = move || {
        let mut p = Proc::spawn(
            "hostpulse-aggregator",
            &["--config", config.to_str().unwrap()],
        );
        p.wait_for_line("aggregator listening");
        p
    };
    let mut agg = tokio::task::spawn_blocking(start.clone()).await.unwrap();

    let hosts = ["r1", "r2", "r3"];
    let agents: Vec<TestAgent> = hosts
        .iter()
        .map(|h| TestAgent::start(agent_config(&format!("http://{ingest}"), h)))
        .collect();
    let statuses: Vec<_> = agents.iter().map(|a| a.status.clone()).collect();

    // The subscriber: reconnects whenever the aggregator goes away and resumes
    // every host from its last seq.
    let stopped = Arc::new(AtomicBool::new(false));
    let url = format!("ws://{http}/ws");
    let subscriber = tokio::spawn({
        let stopped = stopped.clone();
        let statuses = statuses.clone();
        async move {
            let mut tracker = Tracker::default();
            let mut sessions = 0;
            let done = |t: &Tracker| {
                stopped.load(Ordering::SeqCst)
                    && hosts.iter().zip(&statuses).all(|(h, s)| {
                        t.last(&format!("host.{h}.cpu"))
                            == Some(s.last_sample_seq.load(Ordering::SeqCst))
                    })
            };
            loop {
                let mut client = WsClient::connect_retrying(&url, Duration::from_secs(20)).await;
                sessions += 1;
                client.send(tracker.resume("host.*.cpu")).await;
                if follow(&mut client, &mut tracker, done).await {
                    return (tracker, sessions);
                }
            }
        }
    });

    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(6_000 + fastrand_ms(2_000))).await;
        agg.kill();
        tokio::time::sleep(Duration::from_millis(300 + fastrand_ms(700))).await;
        agg = tokio::task::spawn_blocking(start.clone()).await.unwrap();
        eprintln!("restart {} done", round + 1);
    }
    // The last aggregator takes traffic for a while before the agents stop:
    // every agent has its next 20 batches acknowledged by it.
    let marks: Vec<u64> = statuses
        .iter()
        .map(|s| s.acked_batch_seq.load(Ordering::SeqCst))
        .collect();
    wait_until("every agent delivering to the last aggregator", || {
        statuses
            .iter()
            .zip(&marks)
            .all(|(s, m)| s.acked_batch_seq.load(Ordering::SeqCst) >= m + 20)
    })
    .await;
    for a in agents {
        a.stop().await;
    }
    stopped.store(true, Ordering::SeqCst);
    let (tracker, sessions) = tokio::time::timeout(Duration::from_secs(30), subscriber)
        .await
        .expect("the subscriber catches up with every agent")
        .unwrap();
    tracker.assert_exactly_once();
    assert!(
        sessions >= 6,
        "the subscriber reconnected after each kill ({sessions} sessions)"
    );
    for (h, s) in hosts.iter().zip(&statuses) {
        let (first, last) = tracker.range[&format!("host.{h}.cpu")];
        assert_eq!(last, s.last_sample_seq.load(Ordering::SeqCst));
        // About 40 s at 10 samples/s.
        assert!(last - first > 300, "{h}: {first}..{last}");
        assert_eq!(
            s.spooled_batches.load(Ordering::SeqCst),
            0,
            "{h}: all acked"
        );
    }
    agg.terminate();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
}

fn fastrand_ms(max: u64) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    RandomState::new().hash_one(std::time::Instant::now()) % max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_dropping_off_twenty_times_resumes_without_gap_or_duplicate() {
    let agg = TestAggregator::start(|_| {}).await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "d1"));
    let b = TestAgent::start(agent_config(&agg.ingest_url(), "d2"));
    let mut tracker = Tracker::default();
    {
        let mut c = WsClient::connect(&agg.ws_url()).await;
        c.subscribe("host.*.memory").await;
        while tracker.range.len() < 2 {
            tracker.record(&c.next().await);
        }
    }
    for _ in 0..20 {
        // Away for up to 3 s, then back for a moment at a random point.
        tokio::time::sleep(Duration::from_millis(fastrand_ms(3_000))).await;
        let mut c = WsClient::connect(&agg.ws_url()).await;
        c.send(tracker.resume("host.*.memory")).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(50 + fastrand_ms(500));
        while let Ok(Some(m)) = c
            .recv(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            tracker.record(&m);
        }
    }
    let (sa, sb) = (a.status.clone(), b.status.clone());
    a.stop().await;
    b.stop().await;
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(tracker.resume("host.*.memory")).await;
    let target = |t: &Tracker| {
        t.last("host.d1.memory") == Some(sa.last_sample_seq.load(Ordering::SeqCst))
            && t.last("host.d2.memory") == Some(sb.last_sample_seq.load(Ordering::SeqCst))
    };
    assert!(
        tokio::time::timeout(WAIT, follow(&mut c, &mut tracker, target))
            .await
            .expect("caught up in time"),
        "connection stayed up"
    );
    tracker.assert_exactly_once();
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_closed_and_the_others_are_not_disturbed() {
    use hostpulse_tests::ws::{RawFrame, SilentClient};
    const PING_INTERVAL_MS: u64 = 200;
    const PING_TIMEOUT_MS: u64 = 1_000;
    let agg = TestAggregator::start(|c| {
        c.ws.ping_interval_ms = PING_INTERVAL_MS;
        c.ws.ping_timeout_ms = PING_TIMEOUT_MS;
    })
    .await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "hb"));
    let mut healthy = WsClient::connect(&agg.ws_url()).await;
    healthy.subscribe("host.hb.cpu").await;
    // The silent client goes on reading every frame, but after its subscribe
    // it sends nothing: no pong, no request. The server last heard from it
    // no earlier than the moment before that subscribe was written.
    let mut silent = SilentClient::connect(agg.http, "/ws").await;
    let silent_from = tokio::time::Instant::now();
    silent.subscribe("host.hb.cpu").await;
    let silent_reader = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            match silent.next_frame(WAIT).await {
                Some(RawFrame::Ping(_)) => pings += 1,
                Some(RawFrame::Text(_)) => {}
                Some(RawFrame::Close(code, reason)) => {
                    let closed_at = tokio::time::Instant::now();
                    // Then the server lets go of the connection.
                    let after = silent.next_frame(WAIT).await;
                    return (pings, code, reason, closed_at, after);
                }
                other => panic!("the silent client got {other:?} instead of a close"),
            }
        }
    });

    // The healthy client reads (and so answers pings) all along.
    let mut tracker = Tracker::default();
    tokio::pin!(silent_reader);
    let (pings, code, reason, closed_at, after) = loop {
        tokio::select! {
            done = &mut silent_reader => break done.expect("silent reader"),
            m = healthy.recv(WAIT) => match m {
                Ok(Some(m)) => tracker.record(&m),
                Ok(None) => panic!("the healthy client got nothing for {WAIT:?}"),
                Err(Closed::Code(code)) => panic!("the healthy client was closed with {code}"),
                Err(Closed::Abrupt) => panic!("the healthy client's connection broke"),
            },
        }
    };
    assert!(pings >= 1, "the server never pinged the silent client");
    assert_eq!(
        (code, reason.as_str()),
        (Some(1008), "heartbeat timeout"),
        "close frame for a client that stopped answering"
    );
    assert_eq!(
        after,
        Some(RawFrame::End),
        "connection ends after the close"
    );
    // Silence is counted from the client's last frame: the close cannot come
    // before the timeout has passed since then...
    let took = closed_at - silent_from;
    assert!(
        took >= Duration::from_millis(PING_TIMEOUT_MS),
        "closed after {took:?} of silence, before the {PING_TIMEOUT_MS} ms timeout"
    );
    // ...and comes at the first heartbeat tick after it, plus slack for a
    // loaded 2-core machine running other tests (a disabled heartbeat would
    // leave the client open for good).
    let latest = Duration::from_millis(PING_TIMEOUT_MS + PING_INTERVAL_MS + 1_500);
    assert!(took < latest, "closed after {took:?} of silence");
    // The server no longer counts it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(agg.http, "/healthz").await;
        let health: serde_json::Value = serde_json::from_str(&body).expect("JSON health");
        if health["ws_connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted after its close: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The healthy client, answering pings, stays connected and misses nothing.
    let until = tracker.last("host.hb.cpu").expect("updates while waiting") + 5;
    while tracker.last("host.hb.cpu") < Some(until) {
        match healthy.recv(WAIT).await {
            Ok(Some(m)) => tracker.record(&m),
            other => panic!("the healthy client: {other:?}"),
        }
    }
    tracker.assert_exactly_once();
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_its_spool_bounded_while_the_aggregator_is_down_then_delivers_it() {
    const BOUND: usize = 64 << 10;
    let first = TestAggregator::start(|_| {}).await;
    let (ingest, http) = (first.ingest.to_string(), first.http.to_string());
    let mut config = agent_config(&first.ingest_url(), "spooler");
    config.interval_ms = 50;
    config.spool_max_bytes = BOUND;
    let agent = TestAgent::start(config);
    let status = agent.status.clone();

    let mut tracker = Tracker::default();
    let mut c = WsClient::connect(&first.ws_url()).await;
    c.subscribe("host.spooler.cpu").await;
    for _ in 0..5 {
        tracker.record(&c.next().await);
    }
    first.stop().await;
    while let Ok(Some(m)) = c.recv(WAIT).await {
        tracker.record(&m);
    }

    // 20 s down: the spool never exceeds its bound; the oldest batches go.
    let down = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    while tokio::time::Instant::now() < down {
        peak = peak.max(status.spooled_bytes.load(Ordering::SeqCst) as usize);
        assert!(peak <= BOUND, "spool at {peak} bytes, bound {BOUND}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = status.dropped_batches.load(Ordering::SeqCst);
    assert!(
        dropped > 0,
        "20 s of samples exceed 64 KiB, so some batches were dropped"
    );
    assert!(
        peak > BOUND / 2,
        "the spool filled up to its bound ({peak})"
    );

    let second = TestAggregator::start_at(&ingest, &http, |_| {}).await;
    wait_until("spool drained", || {
        status.connected.load(Ordering::SeqCst)
            && status.spooled_batches.load(Ordering::SeqCst) == 0
    })
    .await;
    agent.stop().await;
    let last = status.last_sample_seq.load(Ordering::SeqCst);
    let mut c = WsClient::connect(&second.ws_url()).await;
    c.send(tracker.resume("host.spooler.cpu")).await;
    let before_gap = tracker.last("host.spooler.cpu").unwrap();
    let caught_up = |t: &Tracker| t.last("host.spooler.cpu") == Some(last);
    assert!(
        tokio::time::timeout(WAIT, follow(&mut c, &mut tracker, caught_up))
            .await
            .expect("the spool is delivered in time")
    );
    // Exactly one hole, announced by the seq jump, and it is exactly what
    // the agent reports dropped: batches it evicted in flight (after sending
    // them, before their ack) arrived and are not counted, and batches sent
    // just before the stop, perhaps published, perhaps not, were kept and
    // sent again (so the hole may start after them). Everything after the
    // hole arrived, once.
    assert!(tracker.duplicates.is_empty(), "{:?}", tracker.duplicates);
    assert_eq!(tracker.gaps.len(), 1, "{:?}", tracker.gaps);
    let (_, from, to) = tracker.gaps[0].clone();
    assert!(from > before_gap, "{from} after {before_gap}");
    let hole = to - from + 1;
    let dropped = status.dropped_samples.load(Ordering::SeqCst);
    assert_eq!(
        hole, dropped,
        "samples missing at the subscriber vs samples the agent reports dropped"
    );
    assert_eq!(
        status.unconfirmed_samples.load(Ordering::SeqCst),
        0,
        "every batch evicted in flight was settled by its ack"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_announced_offline_and_online_again_when_it_speaks() {
    let agg = TestAggregator::start(|c| c.ingest.offline_after_ms = 300).await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;

    let quiet = FakeAgent::connect(&agg.ingest_url(), "quiet").await;
    quiet.send(fake::batch(1, &[fake::sample(1, 0)])).await;
    let online = watcher.next_on("hosts").await;
    assert_eq!(online["payload"]["event"], "online");
    let silent_from = std::time::Instant::now();
    let offline = watcher.next_on("hosts").await;
    assert_eq!(offline["payload"]["event"], "offline");
    assert_eq!(offline["payload"]["host"], "quiet");
    assert!(silent_from.elapsed() >= Duration::from_millis(250));
    quiet.send(fake::batch(2, &[fake::sample(2, 0)])).await;
    let back = watcher.next_on("hosts").await;
    assert_eq!(back["payload"]["event"], "online");
    assert_eq!(
        back["seq"].as_u64().unwrap(),
        offline["seq"].as_u64().unwrap() + 1
    );
    drop(quiet);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_followed_and_says_when_history_ran_out() {
    let agg = TestAggregator::start(|c| c.hub.history_len = 5).await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "hist"));
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.subscribe("host.hist.load").await;
    let first = c.next_on("host.hist.load").await["seq"].as_u64().unwrap();
    let mut latest = first;
    while latest < first + 10 {
        latest = c.next_on("host.hist.load").await["seq"].as_u64().unwrap();
    }
    drop(c);

    // Too old: incomplete, with where history starts, then all it holds and live.
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action":"subscribe","topic":"host.hist.>","since":{"host.hist.load": first}}))
        .await;
    let reply = c.next_on("$sys.subscribed").await;
    assert_eq!(reply["payload"]["complete"], false, "{reply}");
    let info = reply["payload"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "host.hist.load")
        .unwrap()
        .clone();
    let start = info["history_start"].as_u64().unwrap();
    assert!(start > first + 1);
    let mut tracker = Tracker::default();
    while tracker.count.get("host.hist.load").copied().unwrap_or(0) < 12 {
        let m = c.next().await;
        if m["topic"] == "host.hist.load" {
            tracker.record(&m);
        }
    }
    assert_eq!(
        tracker.range["host.hist.load"].0, start,
        "replay starts at history_start"
    );
    tracker.assert_exactly_once();

    // Recent enough: complete, and exactly the updates after `since`.
    let since = tracker.last("host.hist.load").unwrap() - 2;
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action":"subscribe","topic":"host.hist.load","since": since, "id": "r"}))
        .await;
    let reply = c.next_on("$sys.subscribed").await;
    assert_eq!(reply["payload"]["complete"], true);
    assert_eq!(c.next().await["seq"].as_u64().unwrap(), since + 1);
    assert_eq!(c.next().await["seq"].as_u64().unwrap(), since + 2);

    // `history: N` sends the last N first.
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action":"subscribe","topic":"host.hist.load","history": 3}))
        .await;
    let reply = c.next_on("$sys.subscribed").await;
    let current = reply["payload"]["topics"][0]["seq"].as_u64().unwrap();
    let replayed: Vec<u64> = [c.next().await, c.next().await, c.next().await]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, vec![current - 2, current - 1, current]);
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_is_announced_and_its_seqs_keep_rising() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;
    watcher.subscribe("host.phoenix.load").await;

    let first = TestAgent::start(agent_config(&agg.ingest_url(), "phoenix"));
    assert_eq!(watcher.next_on("hosts").await["payload"]["event"], "online");
    let before = watcher.next_on("host.phoenix.load").await["seq"]
        .as_u64()
        .unwrap();
    first.stop().await;
    assert_eq!(
        watcher.next_on("hosts").await["payload"]["event"],
        "offline"
    );

    // Same agent id and host, new process: a new run epoch.
    let second = TestAgent::start(agent_config(&agg.ingest_url(), "phoenix"));
    let restarted = watcher.next_on("hosts").await;
    assert_eq!(restarted["payload"]["event"], "restarted", "{restarted}");
    let after = watcher.next_on("host.phoenix.load").await["seq"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "seqs continue above the previous run: {before} then {after}"
    );
    second.stop().await;
    agg.stop().await;
}
