//! Fan-out behaviour: encodings carry the same updates, batching keeps order,
//! throttling thins to the newest, and a stalled client is conflated then
//! closed with 1013 while every active client still gets everything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostpulse_proto::{
    Cpu, Disk, DiskDevice, Filesystem, Filesystems, Interface, Memory, Network, Sample, Sensor,
    SystemInfo, Temperatures,
};
use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{
    DOCUMENTED_FAMILIES, TestAgent, TestAggregator, WAIT, agent_config, http_get,
};
use serde_json::{Value, json};

/// A sample carrying every documented family, with fractional figures that
/// 32-bit and 64-bit floats do not hold exactly.
fn full_sample(seq: u64) -> Sample {
    let f = seq as f32 / 10.0;
    let mut s = fake::sample(seq, 3);
    s.cpu = Some(Cpu {
        total_pct: 12.3 + f,
        per_core_pct: vec![10.1 + f, 14.5 + f],
    });
    s.memory = Some(Memory {
        total_bytes: 8 << 30,
        used_bytes: (3 << 30) + seq,
        available_bytes: 5 << 30,
        swap_total_bytes: 1 << 30,
        swap_used_bytes: seq,
    });
    s.load.as_mut().expect("fake samples carry a load").one = 0.1 * seq as f64;
    s.network = Some(Network {
        interfaces: vec![Interface {
            name: "eth0".into(),
            rx_bytes_per_sec: 1024.7 * seq as f64,
            tx_bytes_per_sec: 0.3,
            rx_packets_per_sec: 3.0,
            rx_bytes_total: seq << 20,
            ..Default::default()
        }],
    });
    s.disk = Some(Disk {
        devices: vec![DiskDevice {
            name: "vda".into(),
            read_bytes_per_sec: 4096.1,
            write_bytes_per_sec: 0.7 * seq as f64,
            read_bytes_total: 1 << 30,
            written_bytes_total: seq << 20,
        }],
    });
    s.filesystems = Some(Filesystems {
        mounts: vec![Filesystem {
            mount: "/".into(),
            device: "/dev/vda1".into(),
            fs_type: "ext4".into(),
            total_bytes: 100 << 30,
            used_bytes: (40 << 30) + seq,
            free_bytes: 60 << 30,
        }],
    });
    s.system = Some(SystemInfo {
        uptime_secs: 1000 + seq,
        boot_time: 1_795_000_000,
        logical_cores: 2,
        physical_cores: Some(1),
        cpu_frequency_mhz: 2400,
        per_core_frequency_mhz: vec![2400, 2399],
    });
    s.temperatures = Some(Temperatures {
        sensors: vec![Sensor {
            label: "cpu".into(),
            celsius: 45.3 + f,
            max_celsius: Some(90.1),
            critical_celsius: None,
        }],
    });
    s
}

/// Every update on the topics in `expected` until each has `counts` of
/// them, by topic and seq; panics on a duplicate or an unexpected topic.
async fn collect_topics(
    client: &mut WsClient,
    expected: &BTreeMap<String, usize>,
) -> BTreeMap<String, BTreeMap<u64, Value>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    while expected
        .iter()
        .any(|(topic, n)| out.get(topic).map_or(0, |u| u.len()) < *n)
    {
        let m = client.next().await;
        let topic = m["topic"].as_str().expect("a topic").to_string();
        assert!(expected.contains_key(&topic), "unexpected {m}");
        let seq = m["seq"].as_u64().expect("a seq");
        assert!(
            out.entry(topic).or_default().insert(seq, m).is_none(),
            "seq {seq} twice"
        );
    }
    out
}

/// Waits for the `$sys.subscribed` of a client with a batching window (it
/// comes inside a `batch.update` frame); nothing else may come before it.
async fn subscribed_in_batch(client: &mut WsClient) {
    let frame = client.next().await;
    assert_eq!(frame["topic"], "batch.update", "{frame}");
    let items = frame["updates"].as_array().expect("a list of updates");
    assert!(
        items.len() == 1 && items[0]["topic"] == "$sys.subscribed",
        "{frame}"
    );
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
    const SAMPLES: u64 = 5;
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
        c.subscribe("hosts").await;
    }
    // Every documented family once per sample, and the host's arrival.
    let mut expected: BTreeMap<String, usize> = DOCUMENTED_FAMILIES
        .iter()
        .map(|f| (format!("host.enc.{f}"), SAMPLES as usize))
        .collect();
    expected.insert("hosts".into(), 1);
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "enc").await;
    for seq in 1..=SAMPLES {
        agent.send(fake::batch(seq, &[full_sample(seq)])).await;
        agent.acked(seq).await;
    }
    let a = collect_topics(&mut json_client, &expected).await;
    let b = collect_topics(&mut packed, &expected).await;
    let c = collect_topics(&mut deflated, &expected).await;
    for (topic, updates) in &a {
        if topic != "hosts" {
            assert!(
                updates.keys().copied().eq(1..=SAMPLES),
                "{topic}: seqs {:?}",
                updates.keys()
            );
        }
        assert!(
            updates
                .values()
                .all(|m| m["payload"].as_object().is_some_and(|p| !p.is_empty())),
            "{topic}: an empty payload"
        );
        // MessagePack keeps 32-bit floats as such; JSON prints their
        // shortest decimal form. Both are the same f32.
        assert!(
            f32_view(updates) == f32_view(&b[topic]),
            "{topic}: msgpack decodes to the JSON updates"
        );
        assert!(
            f32_view(updates) == f32_view(&c[topic]),
            "{topic}: msgpack+deflate decodes to the JSON updates"
        );
    }
    assert_eq!(
        a["hosts"].values().next().unwrap()["payload"]["host"],
        "enc"
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

/// The two topics of [`two_topic_sample`] on host `thr`.
const TOPICS: [&str; 2] = ["host.thr.cpu", "host.thr.load"];

/// A sample with a CPU figure and a load average: two topics per sample.
fn two_topic_sample(seq: u64) -> Sample {
    let mut s = fake::sample(seq, 0);
    s.cpu = Some(Cpu {
        total_pct: 1.0,
        per_core_pct: vec![1.0],
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_delivers_at_most_one_update_per_interval_and_the_newest_last() {
    const THROTTLE: Duration = Duration::from_millis(300);
    let agg = TestAggregator::start(|_| {}).await;
    let mut c = WsClient::connect(&agg.ws_url()).await;
    c.send(json!({"action":"subscribe","topic":"host.thr.>","throttle_ms":THROTTLE.as_millis() as u64}))
        .await;
    c.next_on("$sys.subscribed").await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "thr").await;
    // Arrival time and seq of each update, per topic.
    let mut got: BTreeMap<&str, Vec<(Instant, u64)>> = BTreeMap::new();
    /// Reads until every topic has delivered `seq`, recording arrivals.
    async fn read_until(c: &mut WsClient, seq: u64, got: &mut BTreeMap<&str, Vec<(Instant, u64)>>) {
        while TOPICS
            .iter()
            .any(|t| got.get(t).and_then(|v| v.last()).is_none_or(|l| l.1 < seq))
        {
            let Some(m) = c.next_within(WAIT).await else {
                panic!("seq {seq} not delivered on every topic within {WAIT:?}: {got:?}");
            };
            let topic = TOPICS
                .into_iter()
                .find(|t| m["topic"] == *t)
                .unwrap_or_else(|| panic!("unexpected {m}"));
            got.entry(topic)
                .or_default()
                .push((Instant::now(), m["seq"].as_u64().unwrap()));
        }
    }

    // A burst: 50 samples in one batch, published at once. Per topic, the
    // first goes out at once and the newest when the interval ends; the 48
    // in between are replaced before they are due.
    let burst_sent = Instant::now();
    agent
        .send(fake::batch(
            1,
            &(1..=50).map(two_topic_sample).collect::<Vec<_>>(),
        ))
        .await;
    agent.acked(1).await;
    read_until(&mut c, 50, &mut got).await;
    for topic in TOPICS {
        let seqs: Vec<u64> = got[topic].iter().map(|a| a.1).collect();
        assert_eq!(seqs, [1, 50], "{topic}");
        // The newest was sent no sooner than one interval after the first,
        // which was sent after the burst left this client.
        let waited = got[topic][1].0 - burst_sent;
        assert!(waited >= THROTTLE, "{topic}: newest after {waited:?}");
    }
    assert_eq!(
        c.next_within(THROTTLE * 2).await,
        None,
        "nothing after the newest of the burst"
    );

    // A steady stream, one sample every 10 ms for 1.5 s: sends are at least
    // an interval apart on the server, and each was sent after this window
    // opened and before it was read, so a window of length W holds at most
    // 1 + W / interval of them per topic (however slowly this machine runs;
    // unthrottled it would be every sample).
    got.clear();
    let window_opened = Instant::now();
    let mut seq = 50;
    let mut batch = 1;
    while window_opened.elapsed() < Duration::from_millis(1_500) {
        seq += 1;
        batch += 1;
        agent
            .send(fake::batch(batch, &[two_topic_sample(seq)]))
            .await;
        agent.acked(batch).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let published = seq - 50;
    // Newest wins: the last sample is delivered, held back if need be.
    read_until(&mut c, seq, &mut got).await;
    for topic in TOPICS {
        let updates = &got[topic];
        let window = updates.last().unwrap().0 - window_opened;
        let allowed = 1 + (window.as_millis() / THROTTLE.as_millis()) as u64;
        let delivered = updates.len() as u64;
        assert!(
            delivered <= allowed,
            "{topic}: {delivered} updates in {window:?} at one per {THROTTLE:?}"
        );
        // Enough was published for the bound to mean something.
        assert!(
            published >= 3 * allowed,
            "only {published} samples published against a bound of {allowed}"
        );
        assert!(
            updates.windows(2).all(|p| p[0].1 < p[1].1),
            "{topic}: seqs rise: {updates:?}"
        );
        assert_eq!(updates.last().unwrap().1, seq, "{topic}: the newest last");
    }
    assert_eq!(
        c.next_within(THROTTLE * 2).await,
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
    // Each holds its subscription before the first update is published.
    for c in &mut active {
        subscribed_in_batch(c).await;
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
    // Counted by cause: the hub, as the store is off here.
    let slowed = |cause: &'static str| {
        let http = agg.http;
        async move {
            hostpulse_tests::metric(
                http,
                &format!("hostpulse_ingest_slow_down_acks_total{{cause=\"{cause}\"}}"),
            )
            .await
        }
    };
    assert!(slowed("hub").await >= 1.0);
    assert_eq!(slowed("store").await, 0.0);
    agent.stop().await;
    agg.stop().await;
}
