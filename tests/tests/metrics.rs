//! `/metrics` parses as Prometheus text, its counters move as traffic flows,
//! host gauges appear behind their switch, and `promtool check metrics`
//! accepts a scrape.

use std::collections::HashMap;

use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, agent_config, http_get};

/// Labels of a series: `host=metr,interface=lo` (sorted), empty for none.
type Series = (String, String);

/// Every sample of a scrape, keyed by name and labels.
async fn scrape(agg: &TestAggregator) -> (String, HashMap<Series, f64>) {
    let (status, body) = http_get(agg.http, "/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let mut values = HashMap::new();
    for s in parsed.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("unexpected {other:?}"),
        };
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        values.insert((s.metric, labels.join(",")), v);
    }
    (body, values)
}

fn get(m: &HashMap<Series, f64>, name: &str, labels: &str) -> f64 {
    *m.get(&(name.to_string(), labels.to_string()))
        .unwrap_or_else(|| panic!("{name}{{{labels}}} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic_and_host_gauges_are_exposed() {
    let agg = TestAggregator::start(|c| c.metrics.host_gauges = true).await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "metr"));
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.metr.cpu").await;
    client.next_on("host.metr.cpu").await;
    let (_, before) = scrape(&agg).await;
    for _ in 0..5 {
        client.next_on("host.metr.cpu").await;
    }
    // The hub counts a delivery just after queueing it (on its own thread),
    // so the last one may reach the client before its count: scrape until
    // every counter has moved, within the usual bound.
    let moved = |after: &HashMap<Series, f64>| {
        [
            "hostpulse_ingest_batches_total",
            "hostpulse_ingest_samples_total",
            "hostpulse_updates_published_total",
            "hostpulse_deliveries_total",
        ]
        .iter()
        .all(|c| get(after, c, "") >= get(&before, c, "") + 5.0)
    };
    let deadline = tokio::time::Instant::now() + hostpulse_tests::WAIT;
    let (body, after) = loop {
        let (body, after) = scrape(&agg).await;
        if moved(&after) || tokio::time::Instant::now() > deadline {
            break (body, after);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    for counter in [
        "hostpulse_ingest_batches_total",
        "hostpulse_ingest_samples_total",
        "hostpulse_updates_published_total",
        "hostpulse_deliveries_total",
    ] {
        assert!(
            get(&after, counter, "") >= get(&before, counter, "") + 5.0,
            "{counter} did not move: {} -> {}",
            get(&before, counter, ""),
            get(&after, counter, "")
        );
    }
    assert_eq!(get(&after, "hostpulse_agents_connected", ""), 1.0);
    assert_eq!(get(&after, "hostpulse_ws_connections", ""), 1.0);
    assert!(get(&after, "hostpulse_history_bytes", "") > 0.0);
    assert_eq!(get(&after, "hostpulse_host_up", "host=metr"), 1.0);
    let total = get(&after, "hostpulse_host_memory_total_bytes", "host=metr");
    assert!(total > 0.0 && get(&after, "hostpulse_host_memory_used_bytes", "host=metr") <= total);
    let cpu = get(&after, "hostpulse_host_cpu_usage_ratios", "host=metr");
    assert!((0.0..=1.0).contains(&cpu), "{cpu}");
    assert!(get(&after, "hostpulse_host_processes", "host=metr") > 0.0);

    // Per topic kind: the client takes cpu only, so cpu updates are both
    // published and delivered, the other kinds only published.
    let kind =
        |m: &HashMap<Series, f64>, name: &str, kind: &str| get(m, name, &format!("kind={kind}"));
    let published = "hostpulse_topic_updates_published_total";
    let delivered = "hostpulse_topic_deliveries_total";
    for k in ["cpu", "memory", "network", "disk"] {
        assert!(
            kind(&after, published, k) >= kind(&before, published, k) + 5.0,
            "{published}{{kind={k}}} did not move"
        );
    }
    assert!(kind(&after, delivered, "cpu") >= kind(&before, delivered, "cpu") + 5.0);
    assert_eq!(kind(&after, delivered, "memory"), 0.0);
    assert_eq!(kind(&after, delivered, "network"), 0.0);
    assert_eq!(kind(&after, published, "other"), 0.0);

    // The new host signals, labelled by interface, device, mount.
    let lo = "host=metr,interface=lo";
    assert!(get(&after, "hostpulse_host_network_receive_bytes_total", lo) > 0.0);
    assert!(get(&after, "hostpulse_host_network_transmit_packets_total", lo) > 0.0);
    get(&after, "hostpulse_host_network_receive_errors_total", lo);
    let root = "host=metr,mount=/";
    let size = get(&after, "hostpulse_host_filesystem_size_bytes", root);
    assert!(size > 0.0 && get(&after, "hostpulse_host_filesystem_used_bytes", root) <= size);
    assert!(get(&after, "hostpulse_host_filesystem_free_bytes", root) <= size);
    assert!(get(&after, "hostpulse_host_uptime_seconds", "host=metr") > 0.0);
    let boot = get(&after, "hostpulse_host_boot_time_seconds", "host=metr");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(boot > 0.0 && boot < now);
    assert!(get(&after, "hostpulse_host_cpu_logical_cores", "host=metr") >= 1.0);
    get(&after, "hostpulse_host_cpu_frequency_hertz", "host=metr");
    let block_device_mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("/dev/"));
    assert!(
        !block_device_mounted
            || after.keys().any(|(n, l)| {
                n == "hostpulse_host_disk_read_bytes_total" && l.contains("device=")
            }),
        "disk counters by device"
    );

    // promtool (Debian package prometheus, installed by .ci/run) agrees.
    hostpulse_tests::process::promtool_check(&body);
    agent.stop().await;
    agg.stop().await;
}

#[tokio::test]
async fn host_gauges_stay_off_unless_switched_on() {
    let agg = TestAggregator::start(|_| {}).await;
    let agent = TestAgent::start(agent_config(&agg.ingest_url(), "quiet"));
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.quiet.cpu").await;
    client.next_on("host.quiet.cpu").await;
    let (_, values) = scrape(&agg).await;
    assert!(
        values
            .keys()
            .all(|(name, _)| !name.starts_with("hostpulse_host_"))
    );
    assert!(get(&values, "hostpulse_updates_published_total", "") > 0.0);
    assert!(
        get(
            &values,
            "hostpulse_topic_updates_published_total",
            "kind=cpu"
        ) > 0.0
    );
    agent.stop().await;
    agg.stop().await;
}
