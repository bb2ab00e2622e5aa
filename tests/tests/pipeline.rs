//! End to end through the libraries: two real agents, one aggregator, real
//! WebSocket clients. Subscriptions deliver exactly what they match.

use std::collections::HashMap;
use std::time::Duration;

use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, agent_config};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_flow_to_a_wildcard_subscriber_in_the_documented_shape() {
    let agg = TestAggregator::start(|_| {}).await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "alpha"));
    let b = TestAgent::start(agent_config(&agg.ingest_url(), "Beta.example.com"));

    let mut client = WsClient::connect(&agg.ws_url()).await;
    client
        .send(json!({"action": "subscribe", "topic": "host.*.cpu", "id": "s1"}))
        .await;
    let reply = client.next_on("$sys.subscribed").await;
    assert_eq!(reply["payload"]["id"], "s1");
    assert_eq!(reply["payload"]["topic"], "host.*.cpu");

    // Collect until both hosts have shown at least five consecutive updates.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    while counts.len() < 2 || counts.values().any(|c| *c < 5) {
        let m = client.next().await;
        let topic = m["topic"].as_str().unwrap().to_string();
        assert!(
            topic == "host.alpha.cpu" || topic == "host.beta-example-com.cpu",
            "only CPU topics of the two hosts arrive, got {m}"
        );
        let seq = m["seq"].as_u64().expect("seq is a number");
        if let Some(prev) = last.insert(topic.clone(), seq) {
            assert_eq!(seq, prev + 1, "seq rises by one per topic: {m}");
        }
        *counts.entry(topic).or_default() += 1;
        // The documented shape.
        for key in ["timestamp", "received"] {
            let t = m[key].as_str().expect("RFC 3339 time");
            assert!(t.ends_with('Z') && t.len() == 24, "{key} {t}");
        }
        let total = m["payload"]["total_pct"].as_f64().expect("total_pct");
        assert!((0.0..=100.0).contains(&total));
        assert!(!m["payload"]["per_core_pct"].as_array().unwrap().is_empty());
    }

    // After unsubscribing nothing more arrives.
    client
        .send(json!({"action": "unsubscribe", "topic": "host.*.cpu", "id": 2}))
        .await;
    let reply = client.next_on("$sys.unsubscribed").await;
    assert_eq!(reply["payload"]["id"], 2);
    // Agents sample every 100 ms: a second of silence is ten missed updates.
    assert_eq!(client.next_within(Duration::from_secs(1)).await, None);

    a.stop().await;
    b.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_subscription_gets_only_its_topic() {
    let agg = TestAggregator::start(|_| {}).await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "alpha"));
    let b = TestAgent::start(agent_config(&agg.ingest_url(), "beta"));

    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.alpha.memory").await;
    for _ in 0..10 {
        let m = client.next().await;
        assert_eq!(m["topic"], "host.alpha.memory", "{m}");
        let p = &m["payload"];
        assert!(p["total_bytes"].as_u64().unwrap() >= p["used_bytes"].as_u64().unwrap());
        assert!(p["available_bytes"].is_u64() && p["swap_total_bytes"].is_u64());
    }
    a.stop().await;
    b.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_and_host_presence_are_published() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("hosts").await;
    client.subscribe("host.gamma.>").await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "gamma"));

    let online = client.next_on("hosts").await;
    assert_eq!(online["payload"]["event"], "online");
    assert_eq!(online["payload"]["host"], "gamma");

    // The first four families; the others have their own test (collectors.rs).
    let wanted = ["cpu", "load", "memory", "processes"];
    let mut seen = std::collections::BTreeSet::new();
    while !wanted.iter().all(|m| seen.contains(*m)) {
        let m = client.next().await;
        let topic = m["topic"].as_str().unwrap();
        if let Some(metric) = topic.strip_prefix("host.gamma.") {
            seen.insert(metric.to_string());
            if metric == "load" {
                assert!(m["payload"]["one"].as_f64().unwrap() >= 0.0);
            }
            if metric == "processes" {
                let p = &m["payload"];
                assert!(p["count"].as_u64().unwrap() > 0);
                assert!(p["top_cpu"].as_array().unwrap().len() <= 3);
                let first = &p["top_memory"][0];
                for key in ["pid", "start_time", "name", "cpu_pct", "memory_bytes"] {
                    assert!(!first[key].is_null(), "process field {key}: {first}");
                }
                assert!(p["others"]["count"].is_u64());
            }
        }
    }
    assert!(
        seen.iter()
            .all(|m| hostpulse_tests::DOCUMENTED_FAMILIES.contains(&m.as_str())),
        "only documented families: {seen:?}"
    );

    agent.stop().await;
    let offline = client.next_on("hosts").await;
    assert_eq!(offline["payload"]["event"], "offline");
    assert_eq!(offline["payload"]["host"], "gamma");
    assert_eq!(
        offline["seq"].as_u64(),
        online["seq"].as_u64().map(|s| s + 1)
    );
    agg.stop().await;
}
