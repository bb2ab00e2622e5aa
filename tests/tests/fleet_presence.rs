//! The `hosts` topic at fleet scale, end to end: a real aggregator, a thousand
//! hand-driven agents ([`FakeAgent`]) each on its own gRPC connection, and
//! real WebSocket clients. Agents attaching at once are each announced
//! `online` exactly once, in one gap-free run of seqs, live and in history.

use std::collections::BTreeSet;
use std::sync::Arc;

use hostpulse_tests::fake::FakeAgent;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAggregator, WAIT};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Agents attaching.
const AGENTS: usize = 1_000;
/// Connections being opened at any moment (each is a TCP connection, an
/// HTTP/2 handshake and a `Hello`, all on loopback).
const IN_FLIGHT: usize = 250;

/// Reads `n` `hosts` updates from `client` as (seq, event, host), failing on
/// anything else in between, then checks with a ping that nothing more was
/// queued before its pong. Fewer than `n` by [`WAIT`]: returns those.
async fn hosts_events(client: &mut WsClient, n: usize) -> Vec<(u64, String, String)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let Some(m) = client.next_within(deadline - Instant::now()).await else {
            return got;
        };
        assert_eq!(m["topic"], "hosts", "after {} events: {m}", got.len());
        got.push((
            m["seq"].as_u64().expect("a seq"),
            m["payload"]["event"]
                .as_str()
                .expect("an event")
                .to_string(),
            m["payload"]["host"].as_str().expect("a host").to_string(),
        ));
    }
    client.send(json!({"action": "ping"})).await;
    let m = client.next().await;
    assert_eq!(m["topic"], "$sys.pong", "more than {n} events: {m}");
    got
}

/// Panics unless `events` are one `online` per host of `hosts`, with seqs
/// rising by exactly one.
fn one_online_each(events: &[(u64, String, String)], hosts: &BTreeSet<String>, what: &str) {
    assert_eq!(events.len(), hosts.len(), "{what}: events announced");
    if let Some((seq, event, host)) = events.iter().find(|(_, e, _)| e != "online") {
        panic!("{what}: {event} for {host} at seq {seq}");
    }
    let announced: BTreeSet<String> = events.iter().map(|(_, _, h)| h.clone()).collect();
    assert_eq!(&announced, hosts, "{what}: some host twice or never");
    if let Some(w) = events.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
        panic!("{what}: seq {} followed by {}", w[0].0, w[1].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_attaching_at_once_are_each_announced_online_once_in_order() {
    let agg = TestAggregator::start(|c| {
        // Room for every event in the topic's history.
        c.hub.history_len = 2 * AGENTS;
        // The fake agents send no batches: keep them online throughout.
        c.ingest.offline_after_ms = 600_000;
    })
    .await;

    // Watching live from before the first agent attaches.
    let mut live = WsClient::connect(&agg.ws_url()).await;
    let reply = live.subscribe("hosts").await;
    assert_eq!(reply["payload"]["topics"], json!([]), "{reply}");

    let hosts: BTreeSet<String> = (0..AGENTS).map(|i| format!("fleet-{i:04}")).collect();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut attaching = JoinSet::new();
    for host in hosts.clone() {
        let (url, slots) = (agg.ingest_url(), slots.clone());
        attaching.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            // Returns once `Welcome` arrived, which ingest sends only after
            // handing the host's `online` event to the hub.
            FakeAgent::connect(&url, &host).await
        });
    }
    let mut agents = Vec::with_capacity(AGENTS);
    while let Some(agent) = attaching.join_next().await {
        agents.push(agent.expect("agent attached"));
    }
    let took = started.elapsed();
    eprintln!("{AGENTS} agents attached in {took:?}");

    let seen_live = hosts_events(&mut live, AGENTS).await;
    one_online_each(&seen_live, &hosts, "live");

    // The topic's history, asked for after they all attached.
    let mut late = WsClient::connect(&agg.ws_url()).await;
    late.send(json!({"action": "subscribe", "topic": "hosts", "history": 2 * AGENTS}))
        .await;
    let reply = late.next().await;
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    let topic = &reply["payload"]["topics"][0];
    let replayed = hosts_events(&mut late, AGENTS).await;
    one_online_each(&replayed, &hosts, "history");
    assert_eq!(
        (topic["history_start"].as_u64(), topic["seq"].as_u64()),
        (Some(replayed[0].0), Some(replayed[AGENTS - 1].0)),
        "history holds exactly these events: {reply}"
    );
    assert_eq!(replayed, seen_live, "history and live agree");

    drop(agents);
    agg.stop().await;
}
