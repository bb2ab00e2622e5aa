//! The embedded store end to end: the real aggregator binary with
//! `[storage]`, samples with chosen timestamps and values sent through the
//! gRPC ingest (the hand-driven agent), read back over
//! `GET /api/v1/hosts/{host}/series`: across a restart (exact raw values,
//! rollups equal to what this test computes), after a SIGKILL (the unclean
//! start logged, nothing flushed lost), under retention and
//! `max_disk_bytes`, and with tokens, grants and bad parameters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hostpulse_aggregator::auth::TokenConfig;
use hostpulse_proto::{Cpu, Load, Sample};
use hostpulse_tests::fake::{FakeAgent, batch};
use hostpulse_tests::process::{Proc, start_aggregator_binary};
use hostpulse_tests::{TestAggregator, WAIT, http_get, metric};
use serde_json::Value;

const HOUR: i64 = 3_600_000;

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hostpulse-store-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn toml(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[ingest]\nlisten = \"127.0.0.1:0\"\nmax_batches_per_sec = 1000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [storage]\ndir = \"{}\"\n{extra}",
        dir.display()
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The value sent for sample `i`: a deterministic walk with f32 precision.
fn cpu_at(i: i64) -> f32 {
    (((i * 7919) % 1000) as f32 / 10.0 + (i % 13) as f32 * 0.37).min(100.0)
}

fn sample(seq: u64, ts: i64, i: i64) -> Sample {
    Sample {
        seq,
        timestamp_ms: ts,
        cpu: Some(Cpu {
            total_pct: cpu_at(i),
            per_core_pct: vec![cpu_at(i + 1), cpu_at(i + 2)],
        }),
        load: Some(Load {
            one: (i % 400) as f64 / 100.0,
            five: 0.5,
            fifteen: 0.25,
        }),
        ..Default::default()
    }
}

/// Sends samples `range` (one a second from `base`) in batches of 500,
/// each acknowledged, numbering batches from `first_batch`.
async fn send(
    agent: &mut FakeAgent,
    base: i64,
    range: std::ops::Range<i64>,
    first_batch: u64,
) -> u64 {
    let mut seq = first_batch;
    let indices: Vec<i64> = range.collect();
    for chunk in indices.chunks(500) {
        let samples: Vec<Sample> = chunk
            .iter()
            .map(|i| sample(*i as u64 + 1, base + i * 1000, *i))
            .collect();
        agent.send(batch(seq, &samples)).await;
        agent.acked(seq).await;
        seq += 1;
    }
    seq
}

async fn series(http: SocketAddr, host: &str, query: &str) -> (u16, Value) {
    let (status, body) = http_get(http, &format!("/api/v1/hosts/{host}/series?{query}")).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn column(v: &Value, field: usize, name: &str) -> Vec<f64> {
    v["series"][field][name]
        .as_array()
        .unwrap_or_else(|| panic!("{name} in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

struct Expected {
    min: f64,
    max: f64,
    avg: f64,
    last: f64,
}

fn rollup(values: impl Iterator<Item = f64>) -> Expected {
    let v: Vec<f64> = values.collect();
    Expected {
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        avg: v.iter().sum::<f64>() / v.len() as f64,
        last: *v.last().unwrap(),
    }
}

fn assert_rollups(answer: &Value, bucket_secs: i64, n: i64) {
    let (min, max, avg, last) = (
        column(answer, 0, "min"),
        column(answer, 0, "max"),
        column(answer, 0, "avg"),
        column(answer, 0, "last"),
    );
    assert_eq!(
        min.len() as i64,
        (n + bucket_secs - 1) / bucket_secs,
        "{answer}"
    );
    for b in 0..min.len() {
        let lo = b as i64 * bucket_secs;
        let e = rollup((lo..(lo + bucket_secs).min(n)).map(|i| f64::from(cpu_at(i))));
        assert_eq!(
            (min[b], max[b], last[b]),
            (e.min, e.max, e.last),
            "bucket {b}"
        );
        assert!(
            (avg[b] - e.avg).abs() < 1e-9,
            "bucket {b}: {} vs {}",
            avg[b],
            e.avg
        );
    }
}

fn stop(agg: &mut Proc) {
    agg.terminate();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn a_restarted_aggregator_serves_exact_raw_values_and_rollups_of_what_it_was_sent() {
    let dir = data_dir("restart");
    let config = toml(&dir, "flush_interval_ms = 200\n");
    // Two and a half hours of one-second samples, starting on an hour.
    let base = (now_ms() - 4 * HOUR) / HOUR * HOUR;
    let n = 9000;
    let (mut agg, ingest, http) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "store-a").await;
    send(&mut agent, base, 0..n, 1).await;
    // The writer took every sample offered (the queue drains, none was
    // dropped), and the time of its flushes is counted.
    wait_until_async(|| async {
        metric(http, "hostpulse_store_queue_depth").await == 0.0
            && metric(http, "hostpulse_store_flush_seconds_total").await > 0.0
    })
    .await;
    assert_eq!(metric(http, "hostpulse_store_queue_bytes").await, 0.0);
    assert_eq!(
        metric(http, "hostpulse_store_dropped_samples_total").await,
        0.0
    );
    drop(agent);
    stop(&mut agg);
    agg.stderr_to_end();
    assert!(
        agg.count_lines("store closed cleanly") == 1,
        "{:?}",
        agg.log
    );

    // The bytes in use are saved for the next start, which takes them
    // rather than count every page again.
    assert!(dir.join("usage").exists());
    let (mut agg, _, http) = start_aggregator_binary(&config);
    let opened = agg.wait_for_line("store opened");
    assert!(!opened.contains("not clean"), "{opened}");
    assert!(!dir.join("usage").exists());
    assert_eq!(
        agg.count_lines("bytes in use as saved at the last clean close"),
        1,
        "{:?}",
        agg.log
    );
    assert!(metric(http, "hostpulse_store_used_bytes").await > 0.0);
    // Raw: every value exactly, one point a second.
    let (status, raw) = series(
        http,
        "store-a",
        &format!(
            "fields=cpu.total_pct&from={base}&to={}&step=1s",
            base + HOUR
        ),
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["tier"], "raw");
    let ts = column(&raw, 0, "ts");
    let last = column(&raw, 0, "last");
    assert_eq!(ts.len(), 3600);
    for i in 0..3600 {
        assert_eq!(ts[i] as i64, base + i as i64 * 1000);
        assert_eq!(last[i], f64::from(cpu_at(i as i64)), "value {i}");
    }
    // Labelled fields, several in one request, RFC 3339 times.
    let from = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(base as u64),
    );
    let (status, two) = series(
        http,
        "store-a",
        &format!(
            "fields=load.one,cpu.per_core_pct%7Bcore=%221%22%7D&from={from}&to={}&step=1s",
            base + 10_000
        ),
    )
    .await;
    assert_eq!(status, 200, "{two}");
    assert_eq!(two["series"][1]["field"], "cpu.per_core_pct{core=\"1\"}");
    assert_eq!(column(&two, 1, "last")[3], f64::from(cpu_at(5)));
    assert_eq!(column(&two, 0, "last")[7], 0.07);
    // Rollups at 10 s (raw rolled up on the fly), 1 min and 1 h (the last
    // hour partly from finer tiers) equal those computed here.
    let to = base + n * 1000;
    for (step, secs, tier) in [("10s", 10, "raw"), ("1m", 60, "1m"), ("1h", 3600, "1h")] {
        let (status, v) = series(
            http,
            "store-a",
            &format!("fields=cpu.total_pct&from={base}&to={to}&step={step}"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["tier"], tier);
        assert_rollups(&v, secs, n);
    }
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_ingest_makes_agents_wait_and_keeps_every_sample() {
    // A queue of one batch: agents sending at once wait for the store's
    // writer in turn, instead of having samples dropped, and are asked to
    // sample less often.
    let dir = data_dir("behind");
    // Acks ask at the first sight of the queue full (no
    // ingest.overload_after_ms), so this short burst sees requests.
    let config = toml(&dir, "flush_interval_ms = 200\nqueue = 1\n")
        .replace("[ingest]\n", "[ingest]\noverload_after_ms = 0\n");
    let base = (now_ms() - 2 * HOUR) / HOUR * HOUR;
    const AGENTS: i64 = 6;
    const BATCHES: i64 = 30;
    const PER_BATCH: i64 = 40;
    let (mut agg, ingest, http) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    let url = format!("http://{ingest}");
    let mut senders = Vec::new();
    for a in 0..AGENTS {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut agent = FakeAgent::connect(&url, &format!("behind-{a}")).await;
            // Every batch sent without waiting for its ack: the stream's
            // flow control holds the agent while the store is behind.
            for b in 0..BATCHES {
                let samples: Vec<Sample> = (b * PER_BATCH..(b + 1) * PER_BATCH)
                    .map(|i| sample(i as u64 + 1, base + i * 1000, i + a))
                    .collect();
                agent.send(batch(b as u64 + 1, &samples)).await;
            }
            agent.acks_through(BATCHES as u64).await
        }));
    }
    let mut overload_acks = 0;
    for s in senders {
        let acks = tokio::time::timeout(WAIT * 4, s)
            .await
            .expect("every batch acknowledged in time")
            .unwrap();
        overload_acks += acks.iter().filter(|a| a.min_interval_ms > 0).count();
    }
    // While the store's queue was at least 0.9 full (the default
    // storage.overload_queue_fraction), acks asked agents to slow down
    // and said so in the counter of that cause.
    assert!(overload_acks > 0, "no ack asked agents to slow down");
    let slowed_by_store = metric(
        http,
        "hostpulse_ingest_slow_down_acks_total{cause=\"store\"}",
    )
    .await;
    assert!(slowed_by_store >= 1.0, "{slowed_by_store}");
    // Acknowledged means queued for the store: nothing dropped, and the
    // queue of one filled (ingest waited for it).
    assert_eq!(
        metric(http, "hostpulse_store_dropped_samples_total").await,
        0.0
    );
    let waits = metric(http, "hostpulse_store_ingest_waits_total").await;
    eprintln!("ingest waited for the store {waits} times");
    assert!(waits > 0.0, "ingest never waited for the store");
    assert!(metric(http, "hostpulse_store_ingest_wait_seconds_total").await > 0.0);
    // Every value reads back once flushed (within flush_interval_ms), and
    // again after a restart.
    let n = BATCHES * PER_BATCH;
    let complete = |http| async move {
        for a in 0..AGENTS {
            let (status, raw) = series(
                http,
                &format!("behind-{a}"),
                &format!(
                    "fields=cpu.total_pct&from={base}&to={}&step=1s",
                    base + n * 1000
                ),
            )
            .await;
            assert_eq!(status, 200, "{raw}");
            let last = column(&raw, 0, "last");
            let sent: Vec<f64> = (0..n).map(|i| f64::from(cpu_at(i + a))).collect();
            // Flushed rows are a prefix of what was sent, never other values.
            let differ = (0..last.len()).find(|&i| last[i] != sent[i]);
            assert_eq!(differ, None, "agent {a}: first value that differs");
            if last.len() < sent.len() {
                return false;
            }
        }
        true
    };
    wait_until_async(|| complete(http)).await;
    stop(&mut agg);
    let (mut agg, _, http) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    assert!(complete(http).await, "every value after a restart");
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_a_sigkill_during_ingest_the_store_reopens_with_everything_flushed() {
    let dir = data_dir("sigkill");
    let config = toml(&dir, "flush_interval_ms = 300\n");
    let base = (now_ms() - 2 * HOUR) / 1000 * 1000;
    let (mut agg, ingest, _) = start_aggregator_binary(&config);
    let url = format!("http://{ingest}");
    let mut agent = FakeAgent::connect(&url, "store-k").await;
    let next = send(&mut agent, base, 0..2000, 1).await;
    // Longer than a flush interval: all of that is on disk.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Keep sending while the aggregator is killed.
    let sender = tokio::spawn(async move {
        let mut seq = next;
        let mut i = 2000;
        loop {
            let samples: Vec<Sample> = (i..i + 50)
                .map(|j| sample(j as u64 + 1, base + j * 1000, j))
                .collect();
            agent.send(batch(seq, &samples)).await;
            seq += 1;
            i += 50;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    agg.kill();
    sender.abort();

    let (mut agg, _, http) = start_aggregator_binary(&config);
    let line = agg.wait_for_line("last shutdown was not clean");
    assert!(line.contains("recovered"), "{line}");
    let (status, v) = series(
        http,
        "store-k",
        &format!(
            "fields=cpu.total_pct&from={base}&to={}&step=1s",
            base + HOUR
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ts = column(&v, 0, "ts");
    let last = column(&v, 0, "last");
    // Everything sent before the pause, then a gapless prefix of the rest.
    assert!(ts.len() >= 2000, "{} points", ts.len());
    for i in 0..ts.len() {
        assert_eq!(ts[i] as i64, base + i as i64 * 1000, "point {i}");
        assert_eq!(last[i], f64::from(cpu_at(i as i64)), "point {i}");
    }
    stop(&mut agg);
    agg.stderr_to_end();
    assert_eq!(agg.count_lines("store closed cleanly"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn retention_deletes_old_raw_values_and_max_disk_bytes_evicts_the_oldest() {
    let dir = data_dir("retention");
    let config = toml(
        &dir,
        "flush_interval_ms = 200\ncheckpoint_interval_ms = 1000\nmaintenance_interval_ms = 200\nraw_retention_hours = 1\n",
    );
    let (mut agg, ingest, http) = start_aggregator_binary(&config);
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "store-r").await;
    let old = (now_ms() - 4 * HOUR) / HOUR * HOUR;
    let seq = send(&mut agent, old, 0..1800, 1).await;
    // A recent sample closes the old windows.
    let recent = now_ms() - 5_000;
    agent.send(batch(seq, &[sample(5000, recent, 0)])).await;
    agent.acked(seq).await;
    let query = format!("fields=cpu.total_pct&from={old}&to={}&step=1s", old + HOUR);
    // Old windows expire as they are sealed (the last once the recent sample
    // closes it, or once it has been idle past its end); the 1-minute tier
    // (90 days) keeps all 30 minutes, the last written with the recent sample.
    let minutes = format!("fields=cpu.total_pct&from={old}&to={}&step=1m", old + HOUR);
    wait_until_async(|| async {
        let (_, raw) = series(http, "store-r", &query).await;
        let (_, m) = series(http, "store-r", &minutes).await;
        column(&raw, 0, "ts").is_empty() && column(&m, 0, "ts").len() == 30
    })
    .await;
    // Counted once the pass that deleted them ends, on the store's thread
    // (niced): a query can see them gone a moment before.
    wait_until_async(|| async { metric(http, "hostpulse_store_expired_blocks_total").await > 0.0 })
        .await;
    agg.wait_for_line("retention deleted old blocks");
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(&dir);

    // A 1 MiB bound, and several MiB of hard-to-compress values.
    let dir = data_dir("maxdisk");
    let config = toml(
        &dir,
        "flush_interval_ms = 200\ncheckpoint_interval_ms = 1000\nmaintenance_interval_ms = 300\nmax_disk_bytes = 1048576\n",
    );
    let (mut agg, ingest, http) = start_aggregator_binary(&config);
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "store-d").await;
    let base = (now_ms() - 20 * HOUR) / HOUR * HOUR;
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 8 * 3600i64;
    for (b, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let samples: Vec<Sample> = chunk
            .iter()
            .map(|i| Sample {
                seq: *i as u64 + 1,
                timestamp_ms: base + i * 1000,
                load: Some(Load {
                    one: rng.f64() * 8.0,
                    five: rng.f64() * 8.0,
                    fifteen: rng.f64() * 8.0,
                }),
                cpu: Some(Cpu {
                    total_pct: rng.f32() * 100.0,
                    per_core_pct: (0..16).map(|_| rng.f32() * 100.0).collect(),
                }),
                ..Default::default()
            })
            .collect();
        agent.send(batch(b as u64 + 1, &samples)).await;
        agent.acked(b as u64 + 1).await;
    }
    wait_until_async(|| async { metric(http, "hostpulse_store_evicted_blocks_total").await > 0.0 })
        .await;
    agg.wait_for_line("over max_disk_bytes, evicted the oldest window");
    // The oldest raw values go first; the newest are there. Windows that
    // ended are sealed a share per flush and eviction takes sealed blocks,
    // oldest first, so the oldest window goes once it is sealed: wait for
    // it rather than expect it at the first eviction.
    let oldest = format!("fields=load.one&from={base}&to={}&step=1s", base + 900_000);
    wait_until_async(|| async {
        let (_, first) = series(http, "store-d", &oldest).await;
        column(&first, 0, "ts").is_empty()
    })
    .await;
    // Acknowledged is not yet written: wait for the newest minute.
    let newest = format!(
        "fields=load.one&from={}&to={}&step=1s",
        base + n * 1000 - 60_000,
        base + n * 1000
    );
    wait_until_async(|| async {
        let (_, v) = series(http, "store-d", &newest).await;
        column(&v, 0, "ts").len() == 60
    })
    .await;
    wait_until_async(|| async { metric(http, "hostpulse_store_used_bytes").await <= 1_048_576.0 })
        .await;
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls an async check every 100 ms until it holds (within [`WAIT`] × 2).
async fn wait_until_async<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_needs_the_same_grants_and_refuses_bad_parameters_clearly() {
    let dir = data_dir("grants");
    let store_dir = dir.clone();
    let agg = TestAggregator::start(move |c| {
        c.storage.dir = Some(store_dir);
        c.storage.flush_interval_ms = 100;
        c.storage.max_points = 1000;
        c.auth.anonymous_clients = false;
        c.auth.client_tokens = vec![
            TokenConfig {
                name: "web-only".into(),
                token: Some("web-only-token-0123456".into()),
                topics: vec!["hosts".into(), "host.web.*".into()],
                ..Default::default()
            },
            TokenConfig {
                name: "all".into(),
                token: Some("all-token-0123456789".into()),
                topics: vec![">".into()],
                ..Default::default()
            },
        ];
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "db").await;
    let base = now_ms() - 600_000;
    send(&mut agent, base, 0..100, 1).await;
    let all = "token=all-token-0123456789";
    let q = |token: &str, rest: &str| format!("{token}&from={base}&to={}&{rest}", base + 100_000);
    // Flushed within a few intervals.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = series(agg.http, "db", &q(all, "fields=load.one&step=1s")).await;
        if column(&v, 0, "ts").len() == 100 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No token, a token without the host: the refusals of /api/v1.
    let (status, v) = series(agg.http, "db", &q("", "fields=load.one&step=1s")).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = series(
        agg.http,
        "db",
        &q("token=web-only-token-0123456", "fields=load.one&step=1s"),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("host.db.load"), "{v}");
    // Bad parameters: each a 400 that says what to change.
    for (rest, says) in [
        ("fields=cpu.nope&step=1s", "unknown field \"cpu.nope\""),
        (
            "fields=filesystems.used_bytes&step=1s",
            "needs the label \"mount\"",
        ),
        ("step=1s", "fields= is required"),
        (
            "fields=load.one&step=soon",
            "step=\"soon\" is not a duration",
        ),
        ("fields=load.one&step=500ms", "whole seconds"),
    ] {
        let (status, v) = series(agg.http, "db", &q(all, rest)).await;
        assert_eq!(status, 400, "{rest}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{rest}: {v}");
    }
    let (status, v) = series(
        agg.http,
        "db",
        &format!("{all}&fields=load.one&from=yesterday&step=1s"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("RFC 3339"), "{v}");
    // Over the cap: named, with a step that fits.
    let (status, v) = series(
        agg.http,
        "db",
        &format!(
            "{all}&fields=load.one&from={}&to={base}&step=1s",
            base - 86_400_000
        ),
    )
    .await;
    assert_eq!(status, 400);
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("storage.max_points (1000)") && e.contains("step=5m"),
        "{e}"
    );
    agg.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    // With storage off the endpoint says so.
    let agg = TestAggregator::start(|_| {}).await;
    let (status, v) = series(agg.http, "db", "fields=load.one").await;
    assert_eq!(status, 404);
    assert!(
        v["error"].as_str().unwrap().contains("[storage] dir"),
        "{v}"
    );
    agg.stop().await;
}

/// The updates of `topic` a client gets until it has `last` (seq, payload).
async fn updates_until(
    client: &mut hostpulse_tests::ws::WsClient,
    topic: &str,
    last: u64,
) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.last().map(|(s, _)| *s) != Some(last) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} up to {last}: got {:?}",
            got.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        if let Ok(Some(m)) = client.recv(Duration::from_millis(200)).await
            && m["topic"] == topic
        {
            got.push((m["seq"].as_u64().unwrap(), m["payload"].clone()));
        }
    }
    got
}

#[tokio::test]
async fn a_resume_across_a_restart_is_served_from_the_store() {
    let dir = data_dir("resume");
    let config = toml(&dir, "flush_interval_ms = 200\n[hub]\nhistory_len = 100\n");
    let base = now_ms() - 60_000;
    let (mut agg, ingest, _) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "resume-a").await;
    send(&mut agent, base, 0..40, 1).await;
    drop(agent);
    stop(&mut agg);
    agg.stderr_to_end();
    assert_eq!(
        agg.count_lines("history kept in the store for the next start"),
        1,
        "{:?}",
        agg.log
    );

    // A new process: its memory starts empty, the store brings the history
    // back before it serves anyone.
    let (mut agg, ingest, http) = start_aggregator_binary(&config);
    let restored = agg.wait_for_line("history restored from the store");
    assert!(restored.contains("updates="), "{restored}");
    let ws = format!("ws://{http}/ws");
    let mut client = hostpulse_tests::ws::WsClient::connect(&ws).await;
    // A dashboard that had seq 15 before the restart resumes from it.
    client
        .send(serde_json::json!({"action": "subscribe", "topic": "host.resume-a.cpu", "since": 15}))
        .await;
    let subscribed = client.next_on("$sys.subscribed").await;
    assert_eq!(subscribed["payload"]["complete"], true, "{subscribed}");
    let got = updates_until(&mut client, "host.resume-a.cpu", 40).await;
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (16..=40).collect::<Vec<_>>());
    for (seq, payload) in &got {
        let i = *seq as i64 - 1;
        // JSON carries the f32 as its shortest form.
        assert_eq!(
            payload["total_pct"].as_f64().unwrap() as f32,
            cpu_at(i),
            "seq {seq}: {payload}"
        );
    }
    // `history` reaches back just the same.
    let mut other = hostpulse_tests::ws::WsClient::connect(&ws).await;
    other
        .send(
            serde_json::json!({"action": "subscribe", "topic": "host.resume-a.load", "history": 5}),
        )
        .await;
    other.next_on("$sys.subscribed").await;
    let seqs: Vec<u64> = updates_until(&mut other, "host.resume-a.load", 40)
        .await
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, (36..=40).collect::<Vec<_>>());
    // The agent comes back and goes on from 41: live, with no gap after the
    // history.
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "resume-a").await;
    send(&mut agent, base, 40..42, 1).await;
    let live: Vec<u64> = updates_until(&mut client, "host.resume-a.cpu", 42)
        .await
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(live, vec![41, 42]);
    drop(agent);
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(dir);
}

fn process(pid: u32, name: &str, cpu: f32, mem: u64) -> hostpulse_proto::Process {
    hostpulse_proto::Process {
        pid,
        start_time: 1_000 + u64::from(pid),
        name: name.into(),
        cpu_pct: cpu,
        memory_bytes: mem,
    }
}

#[tokio::test]
async fn process_tables_keep_each_minutes_top_processes_with_their_max_across_a_restart() {
    let dir = data_dir("procs");
    let config = toml(&dir, "flush_interval_ms = 200\n");
    // Three minutes of samples, two hours ago, starting on a minute; a
    // process that spikes for one second in the second minute.
    let base = (now_ms() - 2 * HOUR) / 60_000 * 60_000;
    let (mut agg, ingest, _) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    let mut agent = FakeAgent::connect(&format!("http://{ingest}"), "procs-a").await;
    let samples: Vec<Sample> = (0..180i64)
        .map(|i| {
            let spike = if i == 75 { 95.0 } else { 1.0 };
            let mut top_cpu = vec![process(10, "web", 20.0 + (i % 60) as f32 / 10.0, 1 << 20)];
            if i == 75 {
                top_cpu.insert(0, process(99, "backup", spike, 5 << 20));
            }
            Sample {
                seq: i as u64 + 1,
                timestamp_ms: base + i * 1000,
                processes: Some(hostpulse_proto::Processes {
                    count: 50,
                    top_cpu,
                    top_memory: vec![process(20, "db", 2.0, (100 + i as u64) << 20)],
                    others: Default::default(),
                }),
                ..Default::default()
            }
        })
        .collect();
    for (n, chunk) in samples.chunks(60).enumerate() {
        agent.send(batch(n as u64 + 1, chunk)).await;
        agent.acked(n as u64 + 1).await;
    }
    drop(agent);
    // Closing writes the open (third) minute too.
    stop(&mut agg);

    let (mut agg, _, http) = start_aggregator_binary(&config);
    agg.wait_for_line("store opened");
    let (status, body) = http_get(
        http,
        &format!(
            "/api/v1/hosts/procs-a/processes?from={base}&to={}",
            base + 3 * 60_000
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let minutes = v["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 3, "{v}");
    for (m, minute) in minutes.iter().enumerate() {
        assert_eq!(minute["ts"], base + m as i64 * 60_000);
        // JSON carries each f32 in its shortest form.
        let procs: Vec<(u64, f32, u64)> = minute["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["pid"].as_u64().unwrap(),
                    p["max_cpu_pct"].as_f64().unwrap() as f32,
                    p["max_memory_bytes"].as_u64().unwrap(),
                )
            })
            .collect();
        // web's highest CPU in the minute is at its last second; db's
        // memory grows a MiB a second.
        let last = (m as u64 + 1) * 60 - 1;
        let mut want = vec![
            (10, 20.0 + 59.0 / 10.0f32, 1 << 20),
            (20, 2.0, (100 + last) << 20),
        ];
        if m == 1 {
            want.insert(0, (99, 95.0, 5 << 20));
        }
        assert_eq!(procs, want, "minute {m}: {minute}");
    }
    // Beyond max_points minutes: refused, naming the limit.
    let (status, body) = http_get(
        http,
        &format!("/api/v1/hosts/procs-a/processes?from=0&to={base}"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("storage.max_points"), "{body}");
    stop(&mut agg);
    let _ = std::fs::remove_dir_all(dir);
}
