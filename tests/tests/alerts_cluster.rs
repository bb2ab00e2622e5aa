//! Alerting in a cluster, end to end: two aggregator binaries over a real
//! nats-server with the same rules file and the same real Alertmanager,
//! whose route notifies a test webhook. A host's alert survives its
//! aggregator being SIGKILLed as one alert: the node the agent fails over
//! to fires it again with the same labels, Alertmanager holds and notifies
//! it once, and resolves it once.

use std::time::Duration;

use hostpulse_proto::{Cpu, Sample};
use hostpulse_tests::alertmanager::Alertmanager;
use hostpulse_tests::cluster::Node;
use hostpulse_tests::fake::{FakeAgent, batch};
use hostpulse_tests::hook::JsonHook;
use hostpulse_tests::nats::NatsServer;
use hostpulse_tests::now_ms;
use hostpulse_tests::process::temp_file;
use hostpulse_tests::{WAIT, http_get};
use serde_json::Value;

const RULE: &str = r#"
[[rule]]
name = "HostCpu"
expr = "cpu.total_pct > 90"
for = "3s"
clear = 80
severity = "critical"
summary = "CPU on {{host}} at {{value}} %"
"#;

const FIRING: &str = "hostpulse_alerts_firing{rule=\"HostCpu\",severity=\"critical\"}";

/// What Alertmanager notifies: every JSON body POSTed to the hook.
struct Notifications(JsonHook);

impl std::ops::Deref for Notifications {
    type Target = JsonHook;
    fn deref(&self) -> &JsonHook {
        &self.0
    }
}

impl std::ops::DerefMut for Notifications {
    fn deref_mut(&mut self) -> &mut JsonHook {
        &mut self.0
    }
}

impl Notifications {
    async fn start() -> Self {
        Self(JsonHook::start().await)
    }

    async fn next(&mut self) -> (String, Vec<Value>) {
        let v = self.0.next_body("a notification").await;
        (
            v["status"].as_str().unwrap().to_string(),
            v["alerts"].as_array().unwrap().clone(),
        )
    }
}

/// Sends `values` as one batch, one a second of sample time from `t0`.
async fn send_cpu(agent: &mut FakeAgent, seq: &mut u64, base: i64, t0: i64, values: &[f32]) {
    let samples: Vec<Sample> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            *seq += 1;
            Sample {
                seq: *seq,
                timestamp_ms: base + (t0 + i as i64) * 1000,
                cpu: Some(Cpu {
                    total_pct: *v,
                    per_core_pct: vec![*v; 2],
                }),
                ..Sample::default()
            }
        })
        .collect();
    agent.send(batch(*seq, &samples)).await;
    agent.acked(*seq).await;
}

/// The HostCpu alerts Alertmanager holds.
async fn held(am: &Alertmanager) -> Vec<Value> {
    am.alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "HostCpu")
        .collect()
}

/// The labels of the one alert firing on `node` (`GET /api/v1/alerts`).
async fn firing_labels(node: &Node) -> Value {
    let (status, body) = http_get(node.http, "/api/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let firing = v["firing"].as_array().unwrap();
    assert_eq!(firing.len(), 1, "{v}");
    firing[0]["labels"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_two_aggregators_with_a_failover_sends_one_alert_not_two() {
    let mut notified = Notifications::start().await;
    let am = Alertmanager::start_notifying(&notified.url).await;
    let nats = NatsServer::start();
    // One rules file for both nodes, by its absolute path.
    let rules = temp_file("alerts.toml", RULE);
    let alerts = format!(
        "[alerts]\nrules = \"{}\"\nalertmanager_urls = [\"{}\"]\nresend_interval_secs = 2\n",
        rules.display(),
        am.url()
    );
    let mut n1 = Node::start_with_sections(&nats, "agg-1", &[], "", &alerts).await;
    let n2 = Node::start_with_sections(&nats, "agg-2", &[], "", &alerts).await;

    // Above 90 for 3 s of sample time on aggregator 1: it fires there.
    let mut agent = FakeAgent::connect(&n1.ingest_url(), "web-1").await;
    let (base, mut seq) = (now_ms() - 60_000, 0);
    send_cpu(&mut agent, &mut seq, base, 0, &[95.0, 96.0, 97.0, 98.0]).await;
    let (status, alerts) = notified.next().await;
    assert_eq!(status, "firing");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["host"], "web-1");
    let first = held(&am).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["status"]["state"], "active");
    let labels_1 = firing_labels(&n1).await;
    assert_eq!(n1.metric(FIRING).await, 1);
    assert_eq!(
        n2.metric(FIRING).await,
        0,
        "aggregator 2 does not watch it yet"
    );

    // Aggregator 1 dies without a word; the agent fails over to
    // aggregator 2 and its samples, still above 90, continue there.
    n1.proc.kill();
    drop(agent);
    let mut agent = FakeAgent::connect(&n2.ingest_url(), "web-1").await;
    send_cpu(&mut agent, &mut seq, base, 4, &[95.0, 96.0, 97.0, 98.0]).await;

    // The evaluation moved: aggregator 2 fires it. All along, Alertmanager
    // holds one alert for the rule and host, active.
    let deadline = tokio::time::Instant::now() + WAIT;
    while n2.metric(FIRING).await != 1 {
        let now = held(&am).await;
        assert_eq!(now.len(), 1, "one alert during the failover: {now:?}");
        assert_eq!(now[0]["status"]["state"], "active", "{now:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator 2 never fired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        firing_labels(&n2).await,
        labels_1,
        "both nodes give the alert the same labels"
    );
    // Alertmanager deduplicated: the same alert (same fingerprint, the
    // earliest start kept), still one, and not notified again.
    notified.silent_for(Duration::from_millis(2500)).await;
    let after = held(&am).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["fingerprint"], first[0]["fingerprint"]);
    assert_eq!(after[0]["startsAt"], first[0]["startsAt"]);
    assert_eq!(after[0]["status"]["state"], "active");

    // CPU drops: aggregator 2 resolves it, once.
    send_cpu(&mut agent, &mut seq, base, 8, &[50.0]).await;
    am.wait_for("HostCpu resolved", |a| {
        !a.iter().any(|x| x["labels"]["alertname"] == "HostCpu")
    })
    .await;
    let (status, alerts) = notified.next().await;
    assert_eq!(status, "resolved", "{alerts:?}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(n2.metric(FIRING).await, 0);
    notified.silent_for(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moving_between_live_aggregators_keeps_one_alert_and_resolves_once() {
    let mut notified = Notifications::start().await;
    let am = Alertmanager::start_notifying(&notified.url).await;
    let nats = NatsServer::start();
    let rules = temp_file("alerts.toml", RULE);
    let alerts = format!(
        "[alerts]\nrules = \"{}\"\nalertmanager_urls = [\"{}\"]\nresend_interval_secs = 1\n",
        rules.display(),
        am.url()
    );
    let n1 = Node::start_with_sections(&nats, "agg-1", &[], "", &alerts).await;
    let n2 = Node::start_with_sections(&nats, "agg-2", &[], "", &alerts).await;

    let mut agent = FakeAgent::connect(&n1.ingest_url(), "web-2").await;
    let (base, mut seq) = (now_ms() - 60_000, 0);
    send_cpu(&mut agent, &mut seq, base, 0, &[95.0, 96.0, 97.0, 98.0]).await;
    let (status, _) = notified.next().await;
    assert_eq!(status, "firing");
    let first = held(&am).await;
    assert_eq!(first.len(), 1, "{first:?}");

    // The agent leaves aggregator 1, which stays up, for aggregator 2.
    // Aggregator 1 lets go of it, and Alertmanager still holds it active:
    // it is not resolved there while aggregator 2 has yet to fire it.
    drop(agent);
    let mut agent = FakeAgent::connect(&n2.ingest_url(), "web-2").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while n1.metric(FIRING).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator 1 never let go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notified.silent_for(Duration::from_millis(1500)).await;
    let between = held(&am).await;
    assert_eq!(between.len(), 1, "{between:?}");
    assert_eq!(between[0]["status"]["state"], "active", "{between:?}");
    send_cpu(&mut agent, &mut seq, base, 4, &[95.0, 96.0, 97.0, 98.0]).await;
    while n2.metric(FIRING).await != 1 || n1.metric(FIRING).await != 0 {
        let now = held(&am).await;
        assert_eq!(now.len(), 1, "one alert during the move: {now:?}");
        assert_eq!(now[0]["status"]["state"], "active", "{now:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the evaluation never moved: firing on agg-1 {}, on agg-2 {}",
            n1.metric(FIRING).await,
            n2.metric(FIRING).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notified.silent_for(Duration::from_millis(2500)).await;
    let after = held(&am).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["fingerprint"], first[0]["fingerprint"]);
    assert_eq!(after[0]["status"]["state"], "active");

    // Resolved on aggregator 2, once; aggregator 1 does not bring it back.
    send_cpu(&mut agent, &mut seq, base, 8, &[50.0]).await;
    let (status, _) = notified.next().await;
    assert_eq!(status, "resolved");
    notified.silent_for(Duration::from_millis(3500)).await;
    let left = held(&am).await;
    assert!(left.is_empty(), "{left:?}");
}
