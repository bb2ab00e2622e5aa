//! Alerting end to end: the real aggregator binary with a rules file, a
//! hand-driven agent sending exact values, a real Alertmanager and a test
//! webhook receiver (and the real agent binary, SIGKILLed, for `absent`).
//! Rules fire and resolve as documented, exactly once,
//! and reach Alertmanager even when it comes up late; bad rules are refused
//! saying where and why; the shipped rules file loads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;

use hostpulse_proto::{Cpu, Filesystem, Filesystems, Process, ProcessRollup, Processes, Sample};
use hostpulse_tests::alertmanager::Alertmanager;
use hostpulse_tests::fake::{FakeAgent, batch};
use hostpulse_tests::hook::JsonHook;
use hostpulse_tests::now_ms;
use hostpulse_tests::process::{Proc, addr_in, run, temp_file};
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{WAIT, free_port, http_get};
use serde_json::Value;
use tokio::sync::mpsc;

/// The real aggregator, its rules written next to its config.
struct Aggregator {
    _proc: Proc,
    ingest: SocketAddr,
    http: SocketAddr,
}

fn write_config(rules: &str, alerts: &str) -> PathBuf {
    let config = temp_file(
        "aggregator.toml",
        &format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [alerts]\nrules = \"alerts.toml\"\n{alerts}\n"
        ),
    );
    std::fs::write(config.parent().unwrap().join("alerts.toml"), rules).unwrap();
    config
}

impl Aggregator {
    fn start(rules: &str, alerts: &str) -> Self {
        let config = write_config(rules, alerts);
        let mut proc = Proc::spawn(
            "hostpulse-aggregator",
            &["--config", config.to_str().unwrap()],
        );
        let line = proc.wait_for_line("aggregator listening");
        Self {
            ingest: addr_in(&line, "ingest_addr"),
            http: addr_in(&line, "http_addr"),
            _proc: proc,
        }
    }

    fn ingest_url(&self) -> String {
        format!("http://{}", self.ingest)
    }

    async fn api(&self) -> Value {
        let (status, body) = http_get(self.http, "/api/v1/alerts").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the `/metrics` line starting with `series` reads `want`.
    async fn wait_metric(&self, series: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.metric(series).await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never reached {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of the `/metrics` line starting with `series`.
    async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// A webhook receiver: every JSON body POSTed to it, in order.
struct Webhook(JsonHook);

impl std::ops::Deref for Webhook {
    type Target = JsonHook;
    fn deref(&self) -> &JsonHook {
        &self.0
    }
}

impl std::ops::DerefMut for Webhook {
    fn deref_mut(&mut self) -> &mut JsonHook {
        &mut self.0
    }
}

impl Webhook {
    async fn start() -> Self {
        Self(JsonHook::start().await)
    }

    async fn next(&mut self) -> (String, Value) {
        let v = self.0.next_body("a webhook call").await;
        (
            v["status"].as_str().unwrap().to_string(),
            v["alert"].clone(),
        )
    }
}

/// A sample taken `t` seconds after `base` ms, with CPU at `pct` and one
/// busy process.
fn cpu_sample(seq: u64, base: i64, t: i64, pct: f32) -> Sample {
    let burner = Process {
        pid: 4242,
        start_time: 1,
        name: "burner".into(),
        cpu_pct: 380.0,
        memory_bytes: 64 << 20,
    };
    Sample {
        seq,
        timestamp_ms: base + t * 1000,
        cpu: Some(Cpu {
            total_pct: pct,
            per_core_pct: vec![pct; 4],
        }),
        processes: Some(Processes {
            count: 1,
            top_cpu: vec![burner.clone()],
            top_memory: vec![burner],
            others: ProcessRollup::default(),
        }),
        ..Sample::default()
    }
}

/// Sends `values` (one a second of sample time from `t0`) as one batch.
async fn send_cpu(agent: &mut FakeAgent, seq: &mut u64, base: i64, t0: i64, values: &[f32]) {
    let samples: Vec<Sample> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            *seq += 1;
            cpu_sample(*seq, base, t0 + i as i64, *v)
        })
        .collect();
    agent.send(batch(*seq, &samples)).await;
    agent.acked(*seq).await;
}

const CPU_RULE: &str = r#"
[[rule]]
name = "HostCpu"
expr = "cpu.total_pct > 90"
for = "3s"
clear = 80
severity = "critical"
labels = { team = "ops" }
summary = "CPU on {{host}} at {{value}} %"
description = "above {{threshold}} for {{window}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_threshold_with_for_fires_once_reaches_both_alertmanagers_and_resolves() {
    let (am1, am2) = (Alertmanager::start().await, Alertmanager::start().await);
    let mut hook = Webhook::start().await;
    let agg = Aggregator::start(
        CPU_RULE,
        &format!(
            "alertmanager_urls = [\"{}\", \"{}\"]\nwebhook_urls = [\"{}\"]\nresend_interval_secs = 1\n",
            am1.url(),
            am2.url(),
            hook.url
        ),
    );
    let mut ws = WsClient::connect(&format!("ws://{}/ws", agg.http)).await;
    ws.subscribe("alerts").await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "web-1").await;
    let (base, mut seq) = (now_ms() - 120_000, 0);

    // Above 90 for 2 s only (interrupted): pending, never firing.
    send_cpu(&mut agent, &mut seq, base, 0, &[95.0, 96.0, 97.0, 50.0]).await;
    // Above 90 from 10 s on: fires when 3 s have passed, at 13 s, once.
    send_cpu(
        &mut agent,
        &mut seq,
        base,
        10,
        &[95.0, 95.0, 95.0, 99.0, 97.0, 96.0],
    )
    .await;
    let (status, alert) = hook.next().await;
    assert_eq!(status, "firing", "{alert}");
    assert_eq!(alert["value"], 99.0, "{alert}");
    assert_eq!(alert["host"], "web-1");
    assert_eq!(alert["window_secs"], 3.0);
    assert_eq!(alert["labels"]["alertname"], "HostCpu");
    assert_eq!(alert["labels"]["team"], "ops");
    assert_eq!(alert["annotations"]["summary"], "CPU on web-1 at 99 %");
    assert_eq!(alert["top_cpu"][0]["name"], "burner", "{alert}");
    assert_eq!(alert["top_memory"][0]["pid"], 4242, "{alert}");

    // Both Alertmanagers of the pair hold it, active, with its annotations.
    for am in [&am1, &am2] {
        let held = am
            .wait_for("HostCpu active", |a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "HostCpu" && x["status"]["state"] == "active"
                })
            })
            .await;
        let x = held
            .iter()
            .find(|x| x["labels"]["alertname"] == "HostCpu")
            .unwrap();
        assert_eq!(x["labels"]["host"], "web-1");
        assert_eq!(x["labels"]["severity"], "critical");
        assert_eq!(x["annotations"]["value"], "99");
        assert!(
            x["annotations"]["top_cpu"]
                .as_str()
                .unwrap()
                .contains("burner (pid 4242)"),
            "{x}"
        );
        assert!(
            x["generatorURL"]
                .as_str()
                .unwrap()
                .ends_with("/api/v1/alerts")
        );
    }
    // Visible: the alerts topic, the API, /metrics.
    let event = ws.next_within(WAIT).await.expect("an alerts update");
    assert_eq!(event["topic"], "alerts");
    assert_eq!(event["payload"]["status"], "firing");
    let api = agg.api().await;
    assert_eq!(api["firing"].as_array().unwrap().len(), 1, "{api}");
    // promtool agrees with the alert families.
    hostpulse_tests::process::promtool_check(&http_get(agg.http, "/metrics").await.1);
    assert_eq!(
        agg.metric("hostpulse_alerts_firing{rule=\"HostCpu\",severity=\"critical\"}")
            .await,
        1.0
    );

    // Still above the clear level (80): stays firing, no new event, while
    // resends keep it active in Alertmanager.
    send_cpu(&mut agent, &mut seq, base, 20, &[85.0, 91.0, 82.0, 88.0]).await;
    hook.silent_for(Duration::from_millis(1500)).await;
    let sent = format!(
        "hostpulse_alert_notifications_total{{receiver=\"alertmanager {}\",result=\"sent\"}}",
        am1.url()
    );
    assert!(agg.metric(&sent).await >= 2.0, "resent while firing");

    // Down to the clear level: resolved, with endsAt, and gone from both.
    send_cpu(&mut agent, &mut seq, base, 30, &[80.0]).await;
    let (status, alert) = hook.next().await;
    assert_eq!(status, "resolved", "{alert}");
    assert_eq!(alert["value"], 80.0);
    assert!(alert["ends_at"].is_string());
    for am in [&am1, &am2] {
        am.wait_for("HostCpu resolved", |a| {
            !a.iter().any(|x| x["labels"]["alertname"] == "HostCpu")
        })
        .await;
    }
    let api = agg.api().await;
    assert!(api["firing"].as_array().unwrap().is_empty(), "{api}");
    let statuses: Vec<&str> = api["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["resolved", "firing"], "newest first: {api}");
    hook.silent_for(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hysteresis_keeps_a_noisy_series_from_flapping() {
    let mut hook = Webhook::start().await;
    let rule = CPU_RULE.replace("for = \"3s\"", "for = \"0s\"");
    let agg = Aggregator::start(&rule, &format!("webhook_urls = [\"{}\"]\n", hook.url));
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "noisy").await;
    let (base, mut seq) = (now_ms() - 120_000, 0);
    // Crossing 90 back and forth ten times, never under 80.
    let noisy: Vec<f32> = (0..20)
        .map(|i| if i % 2 == 0 { 92.0 } else { 84.0 })
        .collect();
    send_cpu(&mut agent, &mut seq, base, 0, &noisy).await;
    let (status, _) = hook.next().await;
    assert_eq!(status, "firing");
    hook.silent_for(Duration::from_millis(800)).await;
    send_cpu(&mut agent, &mut seq, base, 20, &[79.0]).await;
    assert_eq!(hook.next().await.0, "resolved");
    hook.silent_for(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_fires_when_the_agent_stops_and_resolves_when_it_returns() {
    let mut hook = Webhook::start().await;
    let rules = r#"
[[rule]]
name = "Silent"
kind = "absent"
after = "1s"
hosts = ["lost-*"]
summary = "{{host}} silent"
"#;
    let agg = Aggregator::start(rules, &format!("webhook_urls = [\"{}\"]\n", hook.url));
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "lost-1").await;
    // Another host the rule does not select stays quiet without alerts.
    let _other = FakeAgent::connect(&agg.ingest_url(), "kept-1").await;
    let mut seq = 0;
    send_cpu(&mut agent, &mut seq, now_ms() - 1000, 0, &[10.0]).await;
    drop(agent);
    let (status, alert) = hook.next().await;
    assert_eq!(status, "firing", "{alert}");
    assert_eq!(alert["host"], "lost-1");
    assert_eq!(alert["kind"], "absent");
    assert!(alert["value"].as_f64().unwrap() >= 1.0, "{alert}");

    let mut agent = FakeAgent::connect(&agg.ingest_url(), "lost-1").await;
    send_cpu(&mut agent, &mut seq, now_ms() - 100, 0, &[10.0]).await;
    let (status, alert) = hook.next().await;
    assert_eq!(status, "resolved", "{alert}");
    assert_eq!(alert["host"], "lost-1");
    drop(agent);
}

/// Whether `/api/v1/hosts` of the aggregator lists `host` online.
async fn online(agg: &Aggregator, host: &str) -> bool {
    let (status, body) = http_get(agg.http, "/api/v1/hosts").await;
    assert_eq!(status, 200, "{body}");
    let hosts: Value = serde_json::from_str(&body).unwrap();
    hosts
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["host"] == host && h["online"] == true)
}

/// Starts the real agent binary as `host`, sampling every 100 ms.
fn real_agent(agg: &Aggregator, host: &str) -> Proc {
    let config = temp_file(
        "agent.toml",
        &format!(
            "aggregator = \"{}\"\nhostname = \"{host}\"\ninterval_ms = 100\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 400\n",
            agg.ingest_url()
        ),
    );
    Proc::spawn("hostpulse-agent", &["--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_fires_when_a_real_agent_is_sigkilled_and_resolves_when_it_returns() {
    let mut hook = Webhook::start().await;
    let am = Alertmanager::start().await;
    let rules = r#"
[[rule]]
name = "Silent"
kind = "absent"
after = "1s"
hosts = ["node-*"]
summary = "{{host}} silent for {{value}} s"
"#;
    let agg = Aggregator::start(
        rules,
        &format!(
            "webhook_urls = [\"{}\"]\nalertmanager_urls = [\"{}\"]\n",
            hook.url,
            am.url()
        ),
    );
    let mut agent = real_agent(&agg, "node-1");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !online(&agg, "node-1").await {
        assert!(tokio::time::Instant::now() < deadline, "node-1 never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Streaming every 100 ms: nothing fires.
    hook.silent_for(Duration::from_millis(1500)).await;

    // SIGKILL: no goodbye, the stream just breaks.
    agent.kill();
    let (status, alert) = hook.next().await;
    assert_eq!(status, "firing", "{alert}");
    assert_eq!(alert["host"], "node-1");
    assert_eq!(alert["kind"], "absent");
    assert!(alert["value"].as_f64().unwrap() >= 1.0, "{alert}");
    am.wait_for("Silent active", |a| {
        a.iter().any(|x| {
            x["labels"]["alertname"] == "Silent"
                && x["labels"]["host"] == "node-1"
                && x["status"]["state"] == "active"
        })
    })
    .await;
    assert_eq!(
        agg.metric("hostpulse_alerts_firing{rule=\"Silent\",severity=\"warning\"}")
            .await,
        1.0
    );

    // The agent comes back (a new process, a new run): resolved, once.
    let _agent = real_agent(&agg, "node-1");
    let (status, alert) = hook.next().await;
    assert_eq!(status, "resolved", "{alert}");
    assert_eq!(alert["host"], "node-1");
    am.wait_for("Silent resolved", |a| {
        !a.iter().any(|x| x["labels"]["alertname"] == "Silent")
    })
    .await;
    agg.wait_metric(
        "hostpulse_alerts_firing{rule=\"Silent\",severity=\"warning\"}",
        0.0,
    )
    .await;
    hook.silent_for(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_fires_for_a_filling_filesystem() {
    let mut hook = Webhook::start().await;
    let rules = r#"
[[rule]]
name = "RootFillingUp"
kind = "predict"
expr = 'filesystems.mounts[mount="/"].free_bytes < 0'
window = "30s"
horizon = "60s"
summary = "/ on {{host}}: {{value}} bytes free in 60 s"
"#;
    let agg = Aggregator::start(rules, &format!("webhook_urls = [\"{}\"]\n", hook.url));
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "db-1").await;
    let base = now_ms() - 120_000;
    let fs = |seq: u64, t: i64, free: u64| Sample {
        seq,
        timestamp_ms: base + t * 1000,
        filesystems: Some(Filesystems {
            mounts: vec![
                Filesystem {
                    mount: "/".into(),
                    total_bytes: 100_000,
                    used_bytes: 100_000 - free,
                    free_bytes: free,
                    ..Default::default()
                },
                Filesystem {
                    mount: "/data".into(),
                    total_bytes: 100_000,
                    used_bytes: 1000,
                    free_bytes: 99_000,
                    ..Default::default()
                },
            ],
        }),
        ..Sample::default()
    };
    // Steady for 40 s: a flat line never crosses.
    let steady: Vec<Sample> = (0..40).map(|t| fs(t as u64 + 1, t, 50_000)).collect();
    agent.send(batch(40, &steady)).await;
    agent.acked(40).await;
    hook.silent_for(Duration::from_millis(500)).await;
    // Then losing 1000 bytes a second: at 50_000 - 1000 t, the line reaches
    // 0 within 60 s once under 60_000 on its trend.
    let filling: Vec<Sample> = (40..80)
        .map(|t| fs(t as u64 + 1, t, 50_000 - 1000 * (t as u64 - 40)))
        .collect();
    agent.send(batch(80, &filling)).await;
    agent.acked(80).await;
    let (status, alert) = hook.next().await;
    assert_eq!(status, "firing", "{alert}");
    assert_eq!(alert["kind"], "predict");
    assert!(alert["value"].as_f64().unwrap() < 0.0, "{alert}");
    assert_eq!(alert["window_secs"], 30.0);
    hook.silent_for(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_an_alertmanager_that_comes_up_late() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let rule = CPU_RULE.replace("for = \"3s\"", "for = \"0s\"");
    let agg = Aggregator::start(
        &rule,
        &format!(
            "alertmanager_urls = [\"{url}\"]\nretry_min_ms = 100\nretry_max_ms = 400\nresend_interval_secs = 600\n"
        ),
    );
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "web-2").await;
    let mut seq = 0;
    send_cpu(&mut agent, &mut seq, now_ms() - 10_000, 0, &[99.0]).await;
    let failed = format!(
        "hostpulse_alert_notifications_total{{receiver=\"alertmanager {url}\",result=\"failed\"}}"
    );
    let sent = failed.replace("failed", "sent");
    let deadline = tokio::time::Instant::now() + WAIT;
    while agg.metric(&failed).await < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempts counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agg.metric(&sent).await, 0.0);
    // Up now: the retry delivers it (no resend is due for ten minutes).
    let am = Alertmanager::start_on(port).await;
    am.wait_for("HostCpu from web-2", |a| {
        a.iter()
            .any(|x| x["labels"]["host"] == "web-2" && x["status"]["state"] == "active")
    })
    .await;
    agg.wait_metric(&sent, 1.0).await;
}

fn check_config(rules: &str) -> (Option<i32>, String) {
    let config = write_config(rules, "");
    let out = run(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn bad_rules_are_refused_each_with_where_and_why() {
    for (rule, why) in [
        (
            "name = \"A\"\nexpr = \"cpu.total_pct >> 90\"",
            "rule[0] \"A\" expr`: \"cpu.total_pct >> 90\" at column 16: unexpected `>`",
        ),
        (
            "name = \"A\"\nexpr = \"cpu.totl_pct > 90\"",
            "`cpu.totl_pct` is not a numeric field",
        ),
        (
            "name = \"A\"\nexpr = 'filesystems.mounts.used_bytes > 1'",
            "choose entries with `[mount=\"...\"]` or `[*]`",
        ),
        (
            "name = \"A\"\nexpr = \"cpu.total_pct > 90\"\nclear = 95",
            "rule[0] \"A\" clear`: 95 is on the firing side",
        ),
        (
            "name = \"A\"\nkind = \"absent\"",
            "rule[0] \"A\" after`: an absent rule needs it",
        ),
        (
            "name = \"A\"\nkind = \"predict\"\nexpr = \"load.one > 1\"\nwindow = \"1h\"",
            "rule[0] \"A\" horizon`",
        ),
        (
            "name = \"A\"\nexpr = \"cpu.total_pct > 90\"\nfor = \"a while\"",
            "rule[0] \"A\" for`: \"a while\" is not a duration",
        ),
        (
            "name = \"A\"\nexpr = \"cpu.total_pct > 90\"\nsummary = \"{{hots}}\"",
            "unknown placeholder `{{hots}}`",
        ),
        (
            "name = \"A\"\nexpr = \"cpu.total_pct > 90\"\nseverity = \"urgent\"",
            "rule[0] \"A\" severity`: must be one of critical, warning, info",
        ),
        (
            "name = \"A\"\nexpresion = \"cpu.total_pct > 90\"",
            "expresion",
        ),
    ] {
        let (code, out) = check_config(&format!("[[rule]]\n{rule}\n"));
        assert_eq!(code, Some(64), "{rule}: {out}");
        assert!(out.contains("alerts.toml"), "names the file: {out}");
        assert!(out.contains(why), "{rule}:\n{out}");
    }
    // A missing rules file is named too.
    let config = temp_file("aggregator.toml", "[alerts]\nrules = \"nowhere.toml\"\n");
    let out = run(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.toml"));
}

#[test]
fn the_shipped_rules_file_loads_and_is_printed() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts.toml");
    let (code, out) = check_config(&std::fs::read_to_string(shipped).unwrap());
    assert_eq!(code, Some(0), "{out}");
    for name in [
        "HostCpuHigh",
        "RootFilesystemFull",
        "RootFilesystemFillingUp",
        "SensorHot",
        "HostSilent",
    ] {
        assert!(out.contains(&format!("#   {name} [")), "{name}: {out}");
    }
    // The shipped aggregator config with its [alerts] section is valid too.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aggregator.toml");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("dir = \"/var/lib/hostpulse\"", "");
    let path = temp_file("aggregator.toml", &text);
    let out = run(
        "hostpulse-aggregator",
        &["--config", path.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_with_backoff_and_counted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    // Answers 500 twice, then takes the call.
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut got) = mpsc::channel::<Value>(10);
    let app = axum::Router::new()
        .route(
            "/flaky",
            post(
                |State((calls, tx)): State<(Arc<AtomicU32>, mpsc::Sender<Value>)>,
                 Json(v): Json<Value>| async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let _ = tx.send(v).await;
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state((calls.clone(), tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/flaky", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let rule = CPU_RULE.replace("for = \"3s\"", "for = \"0s\"");
    let agg = Aggregator::start(
        &rule,
        &format!("webhook_urls = [\"{url}\"]\nretry_min_ms = 100\nretry_max_ms = 200\n"),
    );
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "web-3").await;
    let mut seq = 0;
    send_cpu(&mut agent, &mut seq, now_ms() - 10_000, 0, &[99.0]).await;
    let v = tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("delivered after the retries")
        .unwrap();
    assert_eq!(v["status"], "firing");
    assert_eq!(v["alert"]["host"], "web-3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let series = |result: &str| {
        format!(
            "hostpulse_alert_notifications_total{{receiver=\"webhook {url}\",result=\"{result}\"}}"
        )
    };
    // Counted once the answer is back, just after the handler ran.
    agg.wait_metric(&series("sent"), 1.0).await;
    assert_eq!(agg.metric(&series("failed")).await, 2.0);
    assert_eq!(agg.metric(&series("dropped")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_api_takes_the_same_tokens_and_needs_the_alerts_topic() {
    let agg = Aggregator::start(
        CPU_RULE,
        "[auth]\nanonymous_clients = false\n[[auth.client_tokens]]\nname = \"ops\"\ntoken = \"ops-secret-0123456789\"\ntopics = [\"alerts\"]\n\
         [[auth.client_tokens]]\nname = \"cpu\"\ntoken = \"cpu-secret-0123456789\"\ntopics = [\"host.*.cpu\"]\n",
    );
    let get = |token: Option<&'static str>| async move {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        hostpulse_tests::http_request(agg.http, "/api/v1/alerts", &headers)
            .await
            .status
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("cpu-secret-0123456789")).await, 403);
    assert_eq!(get(Some("ops-secret-0123456789")).await, 200);
    let (status, body) = http_get(agg.http, "/api/v1/alerts?token=ops-secret-0123456789").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rules"], 1, "{v}");
}
