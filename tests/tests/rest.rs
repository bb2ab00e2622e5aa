//! The REST snapshot returns the documented shapes for live agents, and the
//! same tokens and grants as WebSocket apply.

use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config, http_get};
use serde_json::Value;

async fn get(agg: &TestAggregator, path: &str) -> (u16, Value) {
    let (status, body) = http_get(agg.http, path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_their_latest_metrics_in_the_documented_shape() {
    let agg = TestAggregator::start(|_| {}).await;
    let a = TestAgent::start(agent_config(&agg.ingest_url(), "alpha"));
    let b = TestAgent::start(agent_config(&agg.ingest_url(), "beta"));

    let deadline = tokio::time::Instant::now() + WAIT;
    let hosts = loop {
        let (status, v) = get(&agg, "/api/v1/hosts").await;
        assert_eq!(status, 200);
        // Every family the test agent sends (temperatures only where the
        // host has sensors, so not waited for).
        let families = hostpulse_tests::DOCUMENTED_FAMILIES
            .iter()
            .filter(|f| **f != "temperatures");
        let ready = v.as_array().is_some_and(|h| {
            h.len() == 2
                && h.iter().all(|h| {
                    h["latest"]
                        .as_object()
                        .is_some_and(|l| families.clone().all(|f| l.contains_key(*f)))
                })
        });
        if ready {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hosts never complete: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let list = hosts.as_array().unwrap();
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
    let (status, missing) = get(&agg, "/api/v1/hosts/gamma").await;
    assert_eq!(status, 404);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("no host named \"gamma\"")
    );

    b.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = get(&agg, "/api/v1/hosts/beta").await;
        if v["online"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "beta still online: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = get(&agg, "/api/v1/hosts/alpha?token=cpu-view-token-012345").await;
        if status == 200 && v["latest"]["cpu"].is_object() {
            let metrics: Vec<&String> = v["latest"].as_object().unwrap().keys().collect();
            assert_eq!(metrics, ["cpu"], "only granted topics");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.stop().await;
    agg.stop().await;
}
