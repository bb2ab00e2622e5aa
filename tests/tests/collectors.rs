//! The network, disk, filesystems, system and temperatures collectors: a
//! real agent's topics arrive through a real aggregator with the fields the
//! README documents and values true of this machine, and an agent with
//! those collectors switched off sends none of them.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use hostpulse_agent::config::AgentConfig;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{TestAgent, TestAggregator, WAIT, agent_config};
use serde_json::Value;

const NEW_FAMILIES: [&str; 5] = ["network", "disk", "filesystems", "system", "temperatures"];

/// Every new family on, the paced ones every second so a few arrive quickly.
fn loud_config(aggregator: &str, host: &str) -> AgentConfig {
    let mut c = agent_config(aggregator, host);
    c.collect.filesystems_interval_secs = 1;
    c.collect.system_interval_secs = 1;
    c.collect.temperatures_interval_secs = 1;
    c
}

/// Whether this machine has a temperature sensor sysinfo can read (hwmon
/// `temp*_input` files, or thermal zones).
fn host_has_sensors() -> bool {
    let any = |dir: &str, prefix: &str, file: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().starts_with(prefix)
                    && std::fs::read_dir(e.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|f| file(&f.file_name().to_string_lossy()))
            })
    };
    any("/sys/class/hwmon", "hwmon", &|f| {
        f.starts_with("temp") && f.ends_with("_input")
    }) || any("/sys/class/thermal", "thermal_zone", &|f| f == "temp")
}

/// Updates of `host.<host>.<family>` received until `done` holds, by family.
async fn gather(
    client: &mut WsClient,
    what: &str,
    mut done: impl FnMut(&HashMap<String, HashMap<String, Vec<Value>>>) -> bool,
) -> HashMap<String, HashMap<String, Vec<Value>>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen: HashMap<String, HashMap<String, Vec<Value>>> = HashMap::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = client.next_within(left).await else {
            panic!("timed out waiting for {what}; got {:?}", summary(&seen));
        };
        let topic = m["topic"].as_str().unwrap_or_default().to_string();
        let mut parts = topic.splitn(3, '.');
        if let (Some("host"), Some(host), Some(family)) = (parts.next(), parts.next(), parts.next())
        {
            seen.entry(host.to_string())
                .or_default()
                .entry(family.to_string())
                .or_default()
                .push(m);
        }
    }
    seen
}

fn summary(seen: &HashMap<String, HashMap<String, Vec<Value>>>) -> BTreeMap<String, Vec<String>> {
    seen.iter()
        .map(|(h, f)| (h.clone(), f.keys().cloned().collect()))
        .collect()
}

fn count(seen: &HashMap<String, HashMap<String, Vec<Value>>>, host: &str, family: &str) -> usize {
    seen.get(host)
        .and_then(|f| f.get(family))
        .map_or(0, Vec::len)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

fn rate_of(v: &Value, key: &str) -> f64 {
    let r = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"));
    assert!(r.is_finite() && r >= 0.0, "{key} = {r} in {v}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_arrive_with_the_documented_fields() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.sig.>").await;
    let agent = TestAgent::start(loud_config(&agg.ingest_url(), "sig"));

    // Until every family has arrived a few times (the paced ones, every
    // second, at least three times) and loopback traffic (this very
    // agent's stream) has shown up as a rate.
    let lo_moving = |updates: &[Value]| {
        updates.iter().any(|u| {
            u["payload"]["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| {
                    i["name"] == "lo"
                        && i["rx_bytes_per_sec"].as_f64() > Some(0.0)
                        && i["tx_packets_per_sec"].as_f64() > Some(0.0)
                })
        })
    };
    let seen = gather(&mut client, "every new family", |seen| {
        count(seen, "sig", "system") >= 3
            && count(seen, "sig", "filesystems") >= 3
            && count(seen, "sig", "disk") >= 3
            && seen
                .get("sig")
                .and_then(|f| f.get("network"))
                .is_some_and(|n| lo_moving(n))
    })
    .await;
    let sig = &seen["sig"];

    // network: every interface with every documented field; loopback
    // present, its counters rising.
    let mut lo_totals = Vec::new();
    for update in &sig["network"] {
        let interfaces = update["payload"]["interfaces"].as_array().unwrap();
        for i in interfaces {
            assert!(!i["name"].as_str().unwrap().is_empty());
            for key in [
                "rx_bytes_per_sec",
                "tx_bytes_per_sec",
                "rx_packets_per_sec",
                "tx_packets_per_sec",
                "rx_errors_per_sec",
                "tx_errors_per_sec",
            ] {
                rate_of(i, key);
            }
            for key in [
                "rx_bytes_total",
                "tx_bytes_total",
                "rx_packets_total",
                "tx_packets_total",
                "rx_errors_total",
                "tx_errors_total",
            ] {
                u64_of(i, key);
            }
        }
        let lo = interfaces
            .iter()
            .find(|i| i["name"] == "lo")
            .unwrap_or_else(|| panic!("no lo in {update}"));
        lo_totals.push(u64_of(lo, "rx_bytes_total"));
    }
    assert!(
        lo_totals.windows(2).all(|w| w[0] <= w[1]) && lo_totals.last() > lo_totals.first(),
        "lo counters rise: {lo_totals:?}"
    );

    // filesystems: the root filesystem, with consistent space figures.
    let fs = &sig["filesystems"].last().unwrap()["payload"]["mounts"];
    let root = fs
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mount"] == "/")
        .unwrap_or_else(|| panic!("no / in {fs}"));
    let (total, used, free) = (
        u64_of(root, "total_bytes"),
        u64_of(root, "used_bytes"),
        u64_of(root, "free_bytes"),
    );
    assert!(total > 0 && total >= used && used + free == total, "{root}");
    assert!(root["device"].is_string() && !root["fs_type"].as_str().unwrap().is_empty());

    // disk: every device with its fields; the block device under / listed.
    let devices = sig["disk"].last().unwrap()["payload"]["devices"].clone();
    for d in devices.as_array().unwrap() {
        assert!(!d["name"].as_str().unwrap().is_empty());
        rate_of(d, "read_bytes_per_sec");
        rate_of(d, "write_bytes_per_sec");
        u64_of(d, "read_bytes_total");
        u64_of(d, "written_bytes_total");
    }
    if let Some(dev) = root["device"].as_str().unwrap().strip_prefix("/dev/") {
        // Through a symlink (e.g. /dev/root, /dev/mapper/x) the name may
        // differ; a plain device must be there.
        if !std::fs::symlink_metadata(format!("/dev/{dev}"))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(true)
        {
            assert!(
                devices.as_array().unwrap().iter().any(|d| d["name"] == dev),
                "{dev} (under /) not in {devices}"
            );
        }
    }

    // system: uptime, boot time in the past, core counts, frequencies.
    let system = &sig["system"].last().unwrap()["payload"];
    let uptime = u64_of(system, "uptime_secs");
    let boot = u64_of(system, "boot_time");
    let now = now_secs();
    assert!(uptime > 0 && boot < now, "{system}");
    assert!(
        boot.abs_diff(now - uptime) <= 5,
        "boot + uptime = now: {system}"
    );
    let logical = u64_of(system, "logical_cores");
    // The kernel's count (available_parallelism would apply CPU quotas).
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    assert_eq!(logical, cores, "{system}");
    assert!(
        system["physical_cores"].is_null()
            || (1..=logical).contains(&u64_of(system, "physical_cores"))
    );
    u64_of(system, "cpu_frequency_mhz");
    assert_eq!(
        system["per_core_frequency_mhz"].as_array().unwrap().len() as u64,
        logical
    );
    // Paced to one a second although samples come every 100 ms.
    assert!(
        sig["system"].len() * 5 < sig["network"].len(),
        "system {} vs network {}",
        sig["system"].len(),
        sig["network"].len()
    );

    // temperatures: listed where this machine has sensors, absent where not
    // (after three temperature collections, one per system update).
    match sig.get("temperatures") {
        Some(t) => {
            assert!(host_has_sensors(), "temperatures without sensors: {t:?}");
            for s in t[0]["payload"]["sensors"].as_array().unwrap() {
                assert!(!s["label"].as_str().unwrap().is_empty());
                let c = s["celsius"].as_f64().unwrap();
                assert!((-100.0..=300.0).contains(&c), "{s}");
            }
        }
        None => assert!(
            !host_has_sensors(),
            "this machine has sensors but sent no temperatures"
        ),
    }

    agent.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_collectors_send_nothing() {
    let agg = TestAggregator::start(|_| {}).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.*.>").await;
    let mut quiet = loud_config(&agg.ingest_url(), "quiet");
    quiet.collect.network = false;
    quiet.collect.disk = false;
    quiet.collect.filesystems = false;
    quiet.collect.system = false;
    quiet.collect.temperatures = false;
    let loud = TestAgent::start(loud_config(&agg.ingest_url(), "loud"));
    let quiet = TestAgent::start(quiet);

    // Long enough for both agents to have sent many samples, and for the
    // loud one to have sent every paced family twice: had the quiet one
    // collected them, they would be here by now.
    let seen = gather(&mut client, "both agents' topics", |seen| {
        count(seen, "quiet", "cpu") >= 20
            && count(seen, "loud", "system") >= 2
            && count(seen, "loud", "filesystems") >= 2
            && count(seen, "loud", "network") >= 10
            && count(seen, "loud", "disk") >= 10
    })
    .await;
    let quiet_families = &seen["quiet"];
    for family in NEW_FAMILIES {
        assert!(
            !quiet_families.contains_key(family),
            "a disabled collector sent {family}: {:?}",
            summary(&seen)
        );
    }
    for family in ["cpu", "memory", "load", "processes"] {
        assert!(quiet_families.contains_key(family), "{family} still sent");
    }

    // Nor does the REST snapshot know of them.
    let (status, body) = hostpulse_tests::http_get(agg.http, "/api/v1/hosts/quiet").await;
    assert_eq!(status, 200);
    let host: Value = serde_json::from_str(&body).unwrap();
    let latest = host["latest"].as_object().unwrap();
    assert!(
        NEW_FAMILIES.iter().all(|f| !latest.contains_key(*f)),
        "{body}"
    );
    assert!(latest.contains_key("cpu"));

    loud.stop().await;
    quiet.stop().await;
    agg.stop().await;
}
