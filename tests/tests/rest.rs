//! The REST snapshot returns the documented shapes for live agents, and the
//! same tokens and grants as WebSocket apply.

use std::collections::{HashMap, HashSet};

use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, agent_config, http_get};
use serde_json::Value;

async fn get(agg: &TestAggregator, path: &str) -> (u16, Value) {
    let (status, body) = http_get(agg.http, path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_their_latest_metrics_in_the_documented_shape() {
    let agg = TestAggregator::start(|_| {}).await;
    // The hub answers the snapshot after publishing whatever it has already
    // sent to subscribers, so once a subscriber has seen a topic, the
    // snapshot holds it.
    let mut watcher = WsClient::connect(&agg.ws_url()).await;
    watcher.subscribe("host.*.>").await;
    watcher.subscribe("hosts").await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "alpha"));
    let b = TestAgent::start(agent_config(&agg.ingest_url(), "beta"));

    // Every family the test agent sends (temperatures only where the host
    // has sensors, so not waited for), from both hosts.
    let families: HashSet<&str> = hostpulse_tests::DOCUMENTED_FAMILIES
        .into_iter()
        .filter(|f| *f != "temperatures")
        .collect();
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    while ["alpha", "beta"].iter().any(|h| {
        seen.get(*h)
            .is_none_or(|f| families.iter().any(|x| !f.contains(*x)))
    }) {
        let m = watcher.next().await;
        let topic = m["topic"].as_str().unwrap_or_default();
        if let Some((host, family)) = topic.strip_prefix("host.").and_then(|t| t.split_once('.')) {
            seen.entry(host.into()).or_default().insert(family.into());
        }
    }
    let (status, hosts) = get(&agg, "/api/v1/hosts").await;
    assert_eq!(status, 200);
    let list = hosts.as_array().unwrap();
    assert_eq!(list.len(), 2, "{hosts}");
    for h in list {
        let latest = h["latest"].as_object().unwrap();
        assert!(families.iter().all(|f| latest.contains_key(*f)), "{h}");
    }
    assert_eq!(list[0]["host"], "alpha");
    assert_eq!(list[1]["host"], "beta");
    for h in list {
        assert_eq!(h["online"], true);
        assert!(h["last_seen"].as_str().unwrap().ends_with('Z'));
        for key in [
            "agent_id",
            "hostname",
            "version",
            "epoch",
            "labels",
            "interval_ms",
        ] {
            assert!(!h[key].is_null(), "{key} in {h}");
        }
        let cpu = &h["latest"]["cpu"];
        assert_eq!(
            cpu["topic"],
            format!("host.{}.cpu", h["host"].as_str().unwrap())
        );
        assert!(cpu["seq"].is_u64() && cpu["payload"]["total_pct"].is_number());
        assert!(h["latest"]["memory"]["payload"]["total_bytes"].is_u64());
        assert!(h["latest"]["load"]["payload"]["one"].is_number());
        assert!(h["latest"]["processes"]["payload"]["count"].is_u64());
        assert!(h["latest"]["network"]["payload"]["interfaces"].is_array());
        assert!(h["latest"]["filesystems"]["payload"]["mounts"].is_array());
        assert!(h["latest"]["system"]["payload"]["uptime_secs"].is_u64());
    }

    let (status, one) = get(&agg, "/api/v1/hosts/beta").await;
    assert_eq!(status, 200);
    assert_eq!(one["host"], "beta");
    // Each key once: JSON parsers differ on duplicate keys.
    let (_, raw) = http_get(agg.http, "/api/v1/hosts/beta").await;
    let top_level = raw.split("\"latest\"").next().unwrap_or_default();
    assert_eq!(top_level.matches("\"host\":").count(), 1, "{raw}");
    assert!(one["latest"]["cpu"]["payload"]["per_core_pct"].is_array());
    // `?metrics=` keeps only the metrics named (what the fleet view asks for).
    let (status, few) = get(&agg, "/api/v1/hosts?metrics=cpu,load").await;
    assert_eq!(status, 200);
    for h in few.as_array().unwrap() {
        let keys: Vec<&String> = h["latest"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["cpu", "load"], "{h}");
        assert!(h["latest"]["cpu"]["payload"]["total_pct"].is_number());
    }
    let (_, none) = get(&agg, "/api/v1/hosts/beta?metrics=none").await;
    assert_eq!(none["latest"], serde_json::json!({}), "{none}");
    let (status, missing) = get(&agg, "/api/v1/hosts/gamma").await;
    assert_eq!(status, 404);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("no host named \"gamma\"")
    );

    b.stop().await;
    // The registry marks a host offline before announcing it.
    loop {
        let m = watcher.next_on("hosts").await;
        if m["payload"]["host"] == "beta" && m["payload"]["event"] == "offline" {
            break;
        }
    }
    let (_, v) = get(&agg, "/api/v1/hosts/beta").await;
    assert_eq!(v["online"], false, "{v}");
    let (_, v) = get(&agg, "/api/v1/hosts/alpha").await;
    assert_eq!(v["online"], true, "{v}");
    a.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_honours_tokens_and_grants() {
    let agg = TestAggregator::start(|c| {
        c.auth.anonymous_clients = false;
        c.auth.client_tokens = vec![
            TokenConfig {
                name: "cpu-view".into(),
                token: Some("cpu-view-token-012345".into()),
                topics: vec!["hosts".into(), "host.*.cpu".into()],
                ..Default::default()
            },
            TokenConfig {
                name: "all-topics".into(),
                token: Some("all-topics-token-012345".into()),
                topics: vec![">".into()],
                ..Default::default()
            },
            TokenConfig {
                name: "no-hosts".into(),
                token: Some("no-hosts-token-012345".into()),
                topics: vec!["host.*.cpu".into()],
                ..Default::default()
            },
        ];
    })
    .await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "alpha"));
    let (status, v) = get(&agg, "/api/v1/hosts").await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = get(&agg, "/api/v1/hosts?token=no-hosts-token-012345").await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("does not grant the hosts topic")
    );
    // Once alpha's cpu and memory have reached a subscriber, the snapshot
    // holds both: the grant, not their absence, keeps memory out of it.
    let mut all =
        WsClient::connect(&format!("{}?token=all-topics-token-012345", agg.ws_url())).await;
    all.subscribe("host.alpha.cpu").await;
    all.subscribe("host.alpha.memory").await;
    all.next_on("host.alpha.cpu").await;
    all.next_on("host.alpha.memory").await;
    let (status, v) = get(&agg, "/api/v1/hosts/alpha?token=all-topics-token-012345").await;
    assert_eq!(status, 200, "{v}");
    let latest = v["latest"].as_object().unwrap();
    assert!(
        latest.contains_key("cpu") && latest.contains_key("memory"),
        "{v}"
    );
    let (status, v) = get(&agg, "/api/v1/hosts/alpha?token=cpu-view-token-012345").await;
    assert_eq!(status, 200, "{v}");
    let metrics: Vec<&String> = v["latest"].as_object().unwrap().keys().collect();
    assert_eq!(metrics, ["cpu"], "only granted topics: {v}");
    a.stop().await;
    agg.stop().await;
}
