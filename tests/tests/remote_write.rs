//! Remote-write export into a real Prometheus (Debian's `prometheus`,
//! started with `--web.enable-remote-write-receiver`): the values a fake
//! agent sends come back from Prometheus' query API exactly, under the
//! `/metrics` series names, at the samples' own times; and a Prometheus
//! that is down at first means retries, then delivery of everything, with
//! nothing dropped when the queue is big enough.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostpulse_proto::{Cpu, Filesystem, Filesystems, Interface, Load, Memory, Network, Sample};
use hostpulse_tests::fake::{FakeAgent, batch};
use hostpulse_tests::prometheus::Prometheus;
use hostpulse_tests::{TestAggregator, WAIT, free_port, metric};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sample `i` of a run starting at `start` (one a second), with values
/// that differ per sample: cpu, memory, load, one interface, one mount.
fn sample(i: u64, start: i64) -> Sample {
    Sample {
        seq: i + 1,
        timestamp_ms: start + i as i64 * 1000,
        cpu: Some(Cpu {
            // Exact in f32 and in decimal: the JSON form is the same number.
            total_pct: 12.5 * (i % 8) as f32,
            per_core_pct: vec![10.0],
        }),
        memory: Some(Memory {
            total_bytes: 8 << 30,
            used_bytes: (1 << 30) + i * 4096,
            available_bytes: (7 << 30) - i * 4096,
            swap_total_bytes: 1 << 30,
            swap_used_bytes: i,
        }),
        load: Some(Load {
            one: 0.25 + i as f64,
            five: 0.5,
            fifteen: 0.125,
        }),
        network: Some(Network {
            interfaces: vec![Interface {
                name: "eth0".into(),
                rx_bytes_total: 1_000_000 + i * 1500,
                tx_bytes_total: 2_000_000 + i * 700,
                ..Interface::default()
            }],
        }),
        filesystems: Some(Filesystems {
            mounts: vec![Filesystem {
                mount: "/".into(),
                device: "/dev/vda1".into(),
                fs_type: "ext4".into(),
                total_bytes: 100 << 30,
                used_bytes: (40 << 30) + i,
                free_bytes: (60 << 30) - i,
            }],
        }),
        ..Sample::default()
    }
}

/// Samples per [`sample`]: cpu 1, memory 4, load 3, network 6, filesystem 3.
const PER_SAMPLE: u64 = 17;

/// The value a series should hold for a sample.
type ValueOf = fn(&Sample) -> f64;

/// (selector, the values expected in Prometheus per sample) for the series
/// the test checks, scaled as `/metrics` shows them.
fn expected(host: &str) -> Vec<(String, ValueOf)> {
    let s = |name: &str, extra: &str| format!("{name}{{host=\"{host}\"{extra}}}");
    vec![
        (s("hostpulse_host_cpu_usage_ratios", ""), |x| {
            x.cpu.as_ref().unwrap().total_pct as f64 * 0.01
        }),
        (s("hostpulse_host_memory_used_bytes", ""), |x| {
            x.memory.as_ref().unwrap().used_bytes as f64
        }),
        (s("hostpulse_host_swap_used_bytes", ""), |x| {
            x.memory.as_ref().unwrap().swap_used_bytes as f64
        }),
        (s("hostpulse_host_load1", ""), |x| {
            x.load.as_ref().unwrap().one
        }),
        (
            s(
                "hostpulse_host_network_receive_bytes_total",
                ",interface=\"eth0\"",
            ),
            |x| x.network.as_ref().unwrap().interfaces[0].rx_bytes_total as f64,
        ),
        (
            s("hostpulse_host_filesystem_free_bytes", ",mount=\"/\""),
            |x| x.filesystems.as_ref().unwrap().mounts[0].free_bytes as f64,
        ),
    ]
}

/// Asserts Prometheus holds exactly `samples`' values of every checked
/// series, at their sample times.
async fn assert_stored(prom: &Prometheus, host: &str, samples: &[Sample], extra_label: &str) {
    let at = (now_ms() as f64) / 1000.0;
    for (selector, value) in expected(host) {
        let selector = match extra_label {
            "" => selector,
            l => selector.replacen('}', &format!(",{l}}}"), 1),
        };
        let want: Vec<(i64, f64)> = samples.iter().map(|s| (s.timestamp_ms, value(s))).collect();
        let got = prom.samples(&selector, "15m", at).await;
        assert_eq!(got, want, "{selector}");
    }
}

/// Polls `/metrics` until `name` (with its labels) reaches `at_least`.
async fn wait_metric(agg: &TestAggregator, name: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(agg.http, name).await;
        if v >= at_least {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {v}, expected {at_least} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SENT: &str = "hostpulse_remote_write_samples_total{result=\"sent\"}";
const FAILED: &str = "hostpulse_remote_write_samples_total{result=\"failed\"}";
const RETRIED: &str = "hostpulse_remote_write_requests_total{result=\"retried\"}";
const DROPPED: &str = "hostpulse_remote_write_updates_dropped_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_sent_by_an_agent_come_back_from_prometheus_exactly() {
    let prom = Prometheus::start_on(free_port()).await;
    let url = prom.write_url();
    let agg = TestAggregator::start(move |c| {
        let rw = &mut c.export.remote_write;
        rw.url = Some(url);
        rw.batch_wait_ms = 100;
        rw.external_labels.insert("region".into(), "test-1".into());
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "rw-exact").await;
    // Sample times a minute back: what Prometheus keeps is the sample's
    // time, not the arrival's.
    let start = now_ms() - 60_000;
    let samples: Vec<Sample> = (0..10).map(|i| sample(i, start)).collect();
    agent.send(batch(1, &samples)).await;
    agent.acked(1).await;

    let total = samples.len() as u64 * PER_SAMPLE;
    assert_eq!(wait_metric(&agg, SENT, total as f64).await, total as f64);
    assert_eq!(metric(agg.http, FAILED).await, 0.0);
    assert_eq!(metric(agg.http, DROPPED).await, 0.0);
    assert_stored(&prom, "rw-exact", &samples, "region=\"test-1\"").await;
    // The exporter's own families are valid Prometheus text.
    hostpulse_tests::process::promtool_check(
        &hostpulse_tests::http_get(agg.http, "/metrics").await.1,
    );
    // Counters keep the `_total` name and type of `/metrics`.
    let series = prom
        .query(
            "count({__name__=~\"hostpulse_.+\",host=\"rw-exact\"})",
            (now_ms() as f64) / 1000.0,
        )
        .await;
    assert_eq!(series[0]["value"][1], PER_SAMPLE.to_string());

    // A sample older than what Prometheus holds is refused (400, out of
    // order): counted as failed, not retried; the next batch goes through.
    let mut late = sample(3, start - 5_000);
    late.seq = 11;
    agent.send(batch(2, &[late])).await;
    agent.acked(2).await;
    wait_metric(&agg, FAILED, 1.0).await;
    wait_metric(
        &agg,
        "hostpulse_remote_write_requests_total{result=\"refused\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(agg.http, RETRIED).await,
        0.0,
        "a refusal is not retried"
    );
    let mut next = sample(10, start);
    next.seq = 12;
    agent.send(batch(3, std::slice::from_ref(&next))).await;
    agent.acked(3).await;
    wait_metric(&agg, SENT, (total + PER_SAMPLE) as f64).await;
    assert_eq!(
        metric(agg.http, "hostpulse_remote_write_failing").await,
        0.0
    );
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_down_at_first_gets_everything_once_it_is_up() {
    let port = free_port();
    let agg = TestAggregator::start(move |c| {
        let rw = &mut c.export.remote_write;
        rw.url = Some(format!("http://127.0.0.1:{port}/api/v1/write"));
        rw.batch_wait_ms = 50;
        // Several batches wait behind the one being retried: they must
        // reach Prometheus in order (it refuses out-of-order samples).
        rw.batch_size = 40;
        rw.min_backoff_ms = 50;
        rw.max_backoff_ms = 400;
        rw.timeout_ms = 2_000;
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "rw-late").await;
    let start = now_ms() - 120_000;
    let samples: Vec<Sample> = (0..20).map(|i| sample(i, start)).collect();
    for (i, chunk) in samples.chunks(5).enumerate() {
        agent.send(batch(i as u64 + 1, chunk)).await;
        agent.acked(i as u64 + 1).await;
    }
    // Nothing listens: retries, with backoff, and the failure shows.
    wait_metric(&agg, RETRIED, 3.0).await;
    assert_eq!(
        metric(agg.http, "hostpulse_remote_write_failing").await,
        1.0
    );
    assert_eq!(metric(agg.http, SENT).await, 0.0);
    let total = samples.len() as u64 * PER_SAMPLE;
    let waiting = metric(agg.http, "hostpulse_remote_write_pending_samples").await
        + metric(agg.http, "hostpulse_remote_write_queue").await;
    assert!(waiting > 0.0, "the data waits");

    let prom = Prometheus::start_on(port).await;
    assert_eq!(wait_metric(&agg, SENT, total as f64).await, total as f64);
    assert_eq!(metric(agg.http, FAILED).await, 0.0);
    assert_eq!(
        metric(agg.http, DROPPED).await,
        0.0,
        "the queue was big enough"
    );
    assert_eq!(
        metric(agg.http, "hostpulse_remote_write_failing").await,
        0.0
    );
    assert_eq!(
        metric(agg.http, "hostpulse_remote_write_pending_samples").await,
        0.0
    );
    assert_stored(&prom, "rw-late", &samples, "").await;
    agg.stop().await;
}
