//! Departed hosts are forgotten after `hub.forget_after`, end to end: a real
//! aggregator with a short `forget_after_ms`, hand-driven agents
//! ([`FakeAgent`]) on real gRPC streams, real WebSocket clients and the REST
//! snapshot. A departed host is announced `forgotten` on `hosts`, its topics
//! leave the snapshot and a `>` history subscription, and the memory its
//! history held is returned; it starts fresh if it comes back; a host that
//! stays attached is never forgotten.

use std::time::Duration;

use hostpulse_proto::v1::{AggregatorMessage, aggregator_message};
use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAggregator, WAIT, http_get};
use serde_json::{Value, json};
use tokio::time::Instant;

/// `hub.forget_after_ms` in these tests.
const FORGET_AFTER: Duration = Duration::from_millis(1500);

async fn start() -> TestAggregator {
    TestAggregator::start(|c| {
        c.hub.forget_after_ms = FORGET_AFTER.as_millis() as u64;
        // No host goes offline for silence during a test: only departures.
        c.ingest.offline_after_ms = 600_000;
    })
    .await
}

async fn get(agg: &TestAggregator, path: &str) -> Value {
    let (status, body) = http_get(agg.http, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// The REST snapshot, read through the hub: everything published before
/// the call has been taken in when it answers, so `/healthz` read after it
/// counts it.
async fn hosts_snapshot(agg: &TestAggregator) -> Vec<String> {
    get(agg, "/api/v1/hosts")
        .await
        .as_array()
        .expect("a list")
        .iter()
        .map(|h| h["host"].as_str().expect("host").to_string())
        .collect()
}

/// `/healthz`'s topic count and history bytes, after the hub took in
/// everything sent so far.
async fn held(agg: &TestAggregator) -> (u64, u64) {
    hosts_snapshot(agg).await;
    let h = get(agg, "/healthz").await;
    (
        h["topics"].as_u64().expect("topics"),
        h["history_bytes"].as_u64().expect("history_bytes"),
    )
}

/// The host that stays attached: once it is online, no `hosts` event may
/// name it.
const STAYER: &str = "stayer";

/// The next `hosts` event about `host`, as its `event` field (failing on
/// any about [`STAYER`] meanwhile).
async fn next_event(watcher: &mut WsClient, host: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let m = watcher
            .next_within(deadline - Instant::now())
            .await
            .unwrap_or_else(|| panic!("no hosts event about {host} within {within:?}"));
        assert!(
            host == STAYER || m["payload"]["host"] != STAYER,
            "an event about the attached host: {m}"
        );
        if m["topic"] == "hosts" && m["payload"]["host"] == host {
            return m["payload"]["event"].as_str().expect("event").to_string();
        }
    }
}

/// Sends batches `seqs` of one sample each (with `processes` listed
/// processes) and waits for the last ack.
async fn publish(agent: &mut FakeAgent, seqs: std::ops::RangeInclusive<u64>, processes: usize) {
    let last = *seqs.end();
    for seq in seqs {
        agent
            .send(fake::batch(seq, &[fake::sample(seq, processes)]))
            .await;
    }
    agent.acked(last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_host_is_forgotten_and_its_memory_returned_while_an_attached_one_stays() {
    let agg = start().await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;

    let mut stayer = FakeAgent::connect(&agg.ingest_url(), "stayer").await;
    assert_eq!(next_event(&mut watcher, "stayer", WAIT).await, "online");
    publish(&mut stayer, 1..=1, 0).await;
    let (topics_before, bytes_before) = held(&agg).await;

    let mut gone = FakeAgent::connect(&agg.ingest_url(), "gone").await;
    assert_eq!(next_event(&mut watcher, "gone", WAIT).await, "online");
    publish(&mut gone, 1..=20, 50).await;
    assert_eq!(hosts_snapshot(&agg).await, ["gone", "stayer"]);
    let (topics_with, bytes_with) = held(&agg).await;
    assert!(topics_with > topics_before, "{topics_with} {topics_before}");

    drop(gone);
    let departed = Instant::now();
    assert_eq!(next_event(&mut watcher, "gone", WAIT).await, "offline");
    assert_eq!(
        next_event(&mut watcher, "gone", FORGET_AFTER + WAIT).await,
        "forgotten"
    );
    assert!(
        departed.elapsed() >= FORGET_AFTER,
        "forgotten {:?} after leaving, before forget_after",
        departed.elapsed()
    );

    // Its topics and their history are gone; what is left of it is the
    // three `hosts` events that told its story (online, offline, forgotten).
    let (topics_after, bytes_after) = held(&agg).await;
    assert_eq!(topics_after, topics_before);
    let events_bytes = 3 * 1024;
    assert!(
        bytes_after <= bytes_before + events_bytes,
        "history {bytes_after} bytes, {bytes_before} before the host came"
    );
    assert!(
        bytes_with > bytes_before + 20 * events_bytes,
        "the host held {} bytes, too few to tell",
        bytes_with - bytes_before
    );
    assert_eq!(hosts_snapshot(&agg).await, ["stayer"]);

    let mut late = WsClient::connect(&agg.ws_url()).await;
    late.send(json!({"action": "subscribe", "topic": ">", "history": 1000}))
        .await;
    let subscribed = late.next_on("$sys.subscribed").await;
    let listed: Vec<&str> = subscribed["payload"]["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t["topic"].as_str().expect("topic"))
        .collect();
    assert!(
        !listed.iter().any(|t| t.starts_with("host.gone.")),
        "{listed:?}"
    );
    // The stayer was idle for longer than forget_after when that sweep ran
    // (its only batch came before the other host's), and is kept because it
    // is attached.
    assert!(listed.contains(&"host.stayer.load"), "{listed:?}");
    let snapshot = get(&agg, "/api/v1/hosts").await;
    assert_eq!(snapshot[0]["online"], true, "{snapshot}");
    assert!(snapshot[0]["latest"]["load"].is_object(), "{snapshot}");

    // And it stays kept: a later host comes, goes and is forgotten, so a
    // later sweep ran with the stayer idle for twice forget_after, and the
    // `hosts` topic said nothing about the stayer. A ping's pong marks the
    // end of what was queued.
    let mut later = FakeAgent::connect(&agg.ingest_url(), "later").await;
    publish(&mut later, 1..=1, 0).await;
    drop(later);
    let since_stayer_spoke = Instant::now();
    assert_eq!(
        next_event(&mut watcher, "later", FORGET_AFTER + WAIT).await,
        "online"
    );
    assert_eq!(next_event(&mut watcher, "later", WAIT).await, "offline");
    assert_eq!(
        next_event(&mut watcher, "later", FORGET_AFTER + WAIT).await,
        "forgotten"
    );
    assert!(since_stayer_spoke.elapsed() >= FORGET_AFTER);
    watcher.send(json!({"action": "ping", "id": "end"})).await;
    loop {
        let m = watcher.next().await;
        assert_ne!(m["payload"]["host"], STAYER, "{m}");
        if m["topic"] == "$sys.pong" {
            break;
        }
    }
    assert_eq!(hosts_snapshot(&agg).await, ["stayer"]);
    drop(stayer);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_back_after_being_forgotten_starts_fresh_and_is_announced_online() {
    let agg = start().await;
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("hosts").await;

    let mut first = FakeAgent::connect(&agg.ingest_url(), "phoenix").await;
    assert_eq!(next_event(&mut watcher, "phoenix", WAIT).await, "online");
    publish(&mut first, 1..=5, 0).await;
    drop(first);
    assert_eq!(next_event(&mut watcher, "phoenix", WAIT).await, "offline");
    assert_eq!(
        next_event(&mut watcher, "phoenix", FORGET_AFTER + WAIT).await,
        "forgotten"
    );

    // The same agent, same run: nothing of it is held any more.
    let mut again = fake::open(&agg.ingest_url(), vec![fake::hello("phoenix", 1)])
        .await
        .expect("stream accepted");
    match tokio::time::timeout(WAIT, again.inbound.message()).await {
        Ok(Ok(Some(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(w)),
        }))) => {
            assert_eq!(w.last_seq, 0, "{w:?}");
            assert!(!w.known, "{w:?}");
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    assert_eq!(next_event(&mut watcher, "phoenix", WAIT).await, "online");

    // Batch 1 again is new, and its topics' history starts there.
    publish(&mut again, 1..=1, 0).await;
    let mut reader = WsClient::connect(&agg.ws_url()).await;
    reader
        .send(json!({"action": "subscribe", "topic": "host.phoenix.>", "history": 100}))
        .await;
    let subscribed = reader.next_on("$sys.subscribed").await;
    let topics = subscribed["payload"]["topics"].as_array().expect("topics");
    let load = topics
        .iter()
        .find(|t| t["topic"] == "host.phoenix.load")
        .unwrap_or_else(|| panic!("{subscribed}"));
    assert_eq!(load["seq"], 1, "{subscribed}");
    assert_eq!(load["history_start"], 1, "{subscribed}");
    let replayed = reader.next_on("host.phoenix.load").await;
    assert_eq!(replayed["seq"], 1, "{replayed}");
    let snapshot = get(&agg, "/api/v1/hosts").await;
    assert_eq!(snapshot[0]["host"], "phoenix", "{snapshot}");
    assert_eq!(snapshot[0]["online"], true, "{snapshot}");
    drop(again);
    agg.stop().await;
}
