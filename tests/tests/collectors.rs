//! The network, disk, filesystems, system and temperatures collectors: a
//! real agent's topics arrive through a real aggregator with the fields the
//! README documents and values true of this machine; an agent pointed at a
//! fake procfs and sysfs (`collect.proc_root`, `collect.sys_root`) reports
//! exactly what the fake files say, so every device loop and the
//! temperature payload are checked even on a machine (a CI container) with
//! no block device mounted and no sensor; and an agent with those
//! collectors switched off sends none of them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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

    // disk: every device with its fields, each a block device mounted
    // here; the plain block device under / listed. (A container may have
    // none, or / on overlay: the fake tree below covers both checks.)
    let devices = sig["disk"].last().unwrap()["payload"]["devices"].clone();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for d in devices.as_array().unwrap() {
        assert!(!d["name"].as_str().unwrap().is_empty());
        rate_of(d, "read_bytes_per_sec");
        rate_of(d, "write_bytes_per_sec");
        u64_of(d, "read_bytes_total");
        u64_of(d, "written_bytes_total");
        let source = format!("/dev/{} ", d["name"].as_str().unwrap());
        assert!(
            mounts.lines().any(|l| l.starts_with(&source)),
            "{d} is not mounted here"
        );
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
            let sensors = t[0]["payload"]["sensors"].as_array().unwrap();
            assert!(!sensors.is_empty(), "an empty list is never sent: {t:?}");
            for s in sensors {
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

/// A fake procfs and sysfs in a fresh temporary directory, rewritten by
/// [`FakeRoots::write_state`] (each file replaced whole, so the agent never
/// reads half of one).
struct FakeRoots {
    dir: PathBuf,
}

/// How many states the fake counters and sensors go through.
const STATES: usize = 4;

/// `eth0`'s counters in state `k`, in the order of the payload's `*_total`
/// fields: rx bytes, tx bytes, rx packets, tx packets, rx errors, tx errors.
fn eth0(k: usize) -> [u64; 6] {
    let k = k as u64;
    [
        1_000_000 + k * 40_960,
        2_000_000 + k * 81_920,
        1_000 + k * 40,
        3_000 + k * 80,
        2 + k,
        5 + 2 * k,
    ]
}

/// `lo`'s counters, the same in every state.
const LO: [u64; 6] = [123_456, 123_456, 789, 789, 0, 0];

/// The `*_total` keys of an interface, in the order of [`eth0`].
const NET_TOTALS: [&str; 6] = [
    "rx_bytes_total",
    "tx_bytes_total",
    "rx_packets_total",
    "tx_packets_total",
    "rx_errors_total",
    "tx_errors_total",
];

/// The rate keys of an interface, in the same order.
const NET_RATES: [&str; 6] = [
    "rx_bytes_per_sec",
    "tx_bytes_per_sec",
    "rx_packets_per_sec",
    "tx_packets_per_sec",
    "rx_errors_per_sec",
    "tx_errors_per_sec",
];

/// `hpd0`'s sectors read and written in state `k`.
fn hpd0_sectors(k: usize) -> [u64; 2] {
    let k = k as u64;
    [10_000 + k * 64, 50_000 + k * 256]
}

/// `hpd1`'s sectors read and written, the same in every state.
const HPD1_SECTORS: [u64; 2] = [777, 888];

/// The changing sensor's reading in each state, in millidegrees.
const PACKAGE_MILLI: [i64; STATES] = [42_500, 47_500, 45_000, 44_000];

/// The changing sensor's reading in state `k`, in °C.
fn package_celsius(k: usize) -> f64 {
    PACKAGE_MILLI[k] as f64 / 1000.0
}

impl FakeRoots {
    fn new() -> Self {
        let dir = hostpulse_tests::process::temp_file("roots", "")
            .parent()
            .unwrap()
            .to_path_buf();
        let roots = Self { dir };
        // Never read as counters or sensors: a thermal zone (hwmon has
        // sensors) and a hwmon sensor whose reading is impossible.
        roots.write("sys/class/thermal/thermal_zone0/type", "acpitz");
        roots.write("sys/class/thermal/thermal_zone0/temp", "99000");
        roots.write("sys/class/hwmon/hwmon0/name", "coretemp");
        roots.write("sys/class/hwmon/hwmon0/temp1_label", "Package id 0");
        roots.write("sys/class/hwmon/hwmon0/temp1_crit", "100000");
        roots.write("sys/class/hwmon/hwmon0/temp2_input", "38000");
        roots.write("sys/class/hwmon/hwmon0/temp2_highest", "61000");
        roots.write("sys/class/hwmon/hwmon1/name", "nvme");
        roots.write("sys/class/hwmon/hwmon1/device/model", "Disk X");
        roots.write("sys/class/hwmon/hwmon1/temp1_input", "35750");
        roots.write("sys/class/hwmon/hwmon1/temp2_input", "-273150");
        // The root device, mounted twice; a second device; what is not a
        // block device, or is skipped (squashfs snaps, /run), or has no
        // counters.
        roots.write(
            "proc/mounts",
            "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n\
             /dev/hpd0 / ext4 rw,relatime 0 0\n\
             proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
             tmpfs /run tmpfs rw,nosuid,nodev,mode=755 0 0\n\
             /dev/hpd0 /srv ext4 rw,relatime 0 0\n\
             /dev/hpd1 /data xfs rw,relatime 0 0\n\
             /dev/hpd2 /snap/core/1 squashfs ro,nodev,relatime 0 0\n\
             /dev/hpd3 /mnt/gone ext4 rw,relatime 0 0\n",
        );
        roots.write_state(0);
        roots
    }

    fn proc(&self) -> PathBuf {
        self.dir.join("proc")
    }

    fn sys(&self) -> PathBuf {
        self.dir.join("sys")
    }

    /// Replaces `rel` with `text` in one rename.
    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, format!("{text}\n")).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// The counters and the changing sensor as in state `k`.
    fn write_state(&self, k: usize) {
        let [rb, tb, rp, tp, re, te] = eth0(k);
        let [lrb, ltb, lrp, ltp, lre, lte] = LO;
        // Receive: bytes packets errs drop fifo frame compressed multicast;
        // transmit: bytes packets errs drop fifo colls carrier compressed.
        // The columns not read hold values no counter has.
        self.write(
            "proc/net/dev",
            &format!(
                "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo: {lrb} {lrp} {lre} 901 902 903 904 905 {ltb} {ltp} {lte} 906 907 908 909 910\n  \
                 eth0: {rb} {rp} {re} 911 912 913 914 915 {tb} {tp} {te} 916 917 918 919 920"
            ),
        );
        let [r0, w0] = hpd0_sectors(k);
        let [r1, w1] = HPD1_SECTORS;
        self.write(
            "proc/diskstats",
            &format!(
                " 259 0 hpd0 31 32 {r0} 34 35 36 {w0} 38 0 40 41 42 43 44 45 46 47\n \
                 259 1 hpd1 51 52 {r1} 54 55 56 {w1} 58 0 60 61\n \
                 259 2 hpd2 71 72 73 74 75 76 77 78 0 80 81\n \
                 259 4 hpd4 91 92 93 94 95 96 97 98 0 100 101"
            ),
        );
        self.write(
            "sys/class/hwmon/hwmon0/temp1_input",
            &PACKAGE_MILLI[k].to_string(),
        );
    }
}

impl Drop for FakeRoots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The index of the state whose counters `got` are, if any.
fn state_of<const N: usize>(got: [u64; N], state: impl Fn(usize) -> [u64; N]) -> Option<usize> {
    (0..STATES).find(|k| state(*k) == got)
}

/// Walks one family's updates in order. `moving` checks an update and
/// returns the totals and rates of the device whose counters the test steps
/// through its states (`state(k)` gives state k's totals): every sample
/// carries the family, each update shows one of the states, in order, the
/// rates match the counters' growth, and every change of state was measured.
fn walk_states<const N: usize>(
    updates: &[Value],
    what: &str,
    state: impl Fn(usize) -> [u64; N] + Copy,
    moving: impl Fn(&Value) -> ([u64; N], [f64; N]),
) {
    let mut transitions = 0;
    let mut previous: Option<(u64, u64, [u64; N])> = None;
    for update in updates {
        let (now, rates) = moving(update);
        let k = state_of(now, state).unwrap_or_else(|| panic!("{what} in no state: {update}"));
        let (seq, taken) = (u64_of(update, "seq"), taken_ms(update));
        if let Some((seq_before, taken_before, before)) = previous {
            let k_before = state_of(before, state).unwrap();
            assert!(
                k == k_before || k == k_before + 1,
                "{what}: {k_before} -> {k}"
            );
            assert_eq!(seq, seq_before + 1, "every sample carries {what}'s family");
            check_rates(what, &before, &now, &rates, [taken_before, taken]);
            transitions += usize::from(k != k_before);
        }
        previous = Some((seq, taken, now));
    }
    assert_eq!(
        transitions,
        STATES - 1,
        "{what}: every change of state was measured"
    );
}

/// The `timestamp` of an update, as Unix milliseconds.
fn taken_ms(update: &Value) -> u64 {
    let t = humantime::parse_rfc3339(update["timestamp"].as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Checks rates between two consecutive readings of counters `before` and
/// `after` (same order): all exactly 0 when nothing changed; otherwise each
/// the counter's growth over one elapsed time, rounded to a whole unit a
/// second, where that elapsed time is close to the time between the two
/// samples' timestamps.
fn check_rates(what: &str, before: &[u64], after: &[u64], rates: &[f64], taken: [u64; 2]) {
    if before == after {
        assert!(rates.iter().all(|r| *r == 0.0), "{what}: {rates:?}");
        return;
    }
    // The elapsed times each rounded rate allows, intersected.
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    for i in 0..before.len() {
        let (grown, rate) = ((after[i] - before[i]) as f64, rates[i]);
        assert!(
            rate.fract() == 0.0,
            "{what}: rate {i} is not whole: {rates:?}"
        );
        if grown == 0.0 {
            assert_eq!(rate, 0.0, "{what}: rate {i} without growth: {rates:?}");
            continue;
        }
        lo = lo.max(grown / (rate + 0.5));
        if rate >= 1.0 {
            hi = hi.min(grown / (rate - 0.5));
        }
    }
    assert!(
        lo <= hi * (1.0 + 1e-9),
        "{what}: the rates are not the growth over one elapsed time: {before:?} -> {after:?}, {rates:?}"
    );
    let between = (taken[1] - taken[0]) as f64 / 1000.0;
    assert!(
        hi > between / 3.0 - 0.02 && lo < between * 3.0 + 0.3,
        "{what}: rates imply {lo}..{hi} s between readings taken {between} s apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_and_sys_roots_are_read_and_every_field_is_as_the_files_say() {
    let roots = FakeRoots::new();
    let agg = TestAggregator::start(|_| {}).await;
    let mut client = WsClient::connect(&agg.ws_url()).await;
    client.subscribe("host.fake.>").await;
    let mut config = loud_config(&agg.ingest_url(), "fake");
    config.collect.proc_root = roots.proc();
    config.collect.sys_root = roots.sys();
    // What is read from neither root (the real machine's figures, checked
    // above), and the process table, which would only slow samples down.
    config.collect.filesystems = false;
    config.collect.system = false;
    config.collect.processes = false;
    let agent = TestAgent::start(config);

    // Each state is written once the agent has reported the previous one in
    // every family, so the agent reads every state, in order.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    let latest = |seen: &HashMap<String, Vec<Value>>, family: &str| {
        seen.get(family)
            .and_then(|u| u.last())
            .map(|u| u["payload"].clone())
    };
    for k in 0..STATES {
        if k > 0 {
            roots.write_state(k);
        }
        loop {
            let network_at_k = latest(&seen, "network").is_some_and(|p| {
                p["interfaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["name"] == "eth0" && i["rx_bytes_total"] == eth0(k)[0])
            });
            let disk_at_k = latest(&seen, "disk").is_some_and(|p| {
                p["devices"].as_array().unwrap().iter().any(|d| {
                    d["name"] == "hpd0" && d["read_bytes_total"] == hpd0_sectors(k)[0] * 512
                })
            });
            let sensors_at_k = latest(&seen, "temperatures").is_some_and(|p| {
                p["sensors"].as_array().unwrap().iter().any(|s| {
                    s["label"] == "coretemp Package id 0"
                        && s["celsius"].as_f64() == Some(package_celsius(k))
                })
            });
            if network_at_k && disk_at_k && sensors_at_k {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = client.next_within(left).await.unwrap_or_else(|| {
                panic!(
                    "timed out waiting for state {k}: network {:?}, disk {:?}, temperatures {:?}",
                    latest(&seen, "network"),
                    latest(&seen, "disk"),
                    latest(&seen, "temperatures")
                )
            });
            let topic = m["topic"].as_str().unwrap_or_default().to_string();
            if let Some(family) = topic.strip_prefix("host.fake.") {
                seen.entry(family.to_string()).or_default().push(m);
            }
        }
    }
    agent.stop().await;
    agg.stop().await;

    // network: exactly lo and eth0, every counter as written in a state the
    // agent was shown, in order; rates from one elapsed time.
    let moving = |update: &Value| {
        let interfaces = update["payload"]["interfaces"].as_array().unwrap();
        let names: Vec<&str> = interfaces
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["eth0", "lo"], "{update}");
        let totals = |i: &Value| NET_TOTALS.map(|key| u64_of(i, key));
        let rates = |i: &Value| NET_RATES.map(|key| rate_of(i, key));
        assert_eq!(totals(&interfaces[1]), LO, "{update}");
        assert_eq!(rates(&interfaces[1]), [0.0; 6], "{update}");
        (totals(&interfaces[0]), rates(&interfaces[0]))
    };
    walk_states(&seen["network"], "eth0", eth0, moving);

    // disk: the root device (mounted twice, listed once) and the other
    // mounted device with counters; never what is unmounted, skipped or
    // without counters. Sectors are 512 bytes.
    let moving = |update: &Value| {
        let devices = update["payload"]["devices"].as_array().unwrap();
        let names: Vec<&str> = devices
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["hpd0", "hpd1"], "{update}");
        let totals = |d: &Value| {
            [
                u64_of(d, "read_bytes_total"),
                u64_of(d, "written_bytes_total"),
            ]
        };
        let rates = |d: &Value| {
            [
                rate_of(d, "read_bytes_per_sec"),
                rate_of(d, "write_bytes_per_sec"),
            ]
        };
        assert_eq!(totals(&devices[1]), HPD1_SECTORS.map(|s| s * 512));
        assert_eq!(rates(&devices[1]), [0.0, 0.0], "{update}");
        (totals(&devices[0]), rates(&devices[0]))
    };
    walk_states(
        &seen["disk"],
        "hpd0",
        |k| hpd0_sectors(k).map(|s| s * 512),
        moving,
    );

    // temperatures: hwmon's sensors (so not the thermal zone), labelled as
    // documented, the impossible reading left out, the highest reading seen
    // kept (the chip's own record where it has one), thresholds as written.
    let mut highest = f64::MIN;
    for update in &seen["temperatures"] {
        let sensors = update["payload"]["sensors"].as_array().unwrap();
        let package = sensors[0]["celsius"].as_f64().unwrap();
        let k = (0..STATES)
            .find(|k| package_celsius(*k) == package)
            .unwrap_or_else(|| panic!("package sensor in no state: {update}"));
        highest = highest.max(package);
        let expected = serde_json::json!([
            {"label": "coretemp Package id 0", "celsius": package,
             "max_celsius": highest, "critical_celsius": 100.0},
            {"label": "coretemp temp2", "celsius": 38.0,
             "max_celsius": 61.0, "critical_celsius": null},
            {"label": "nvme Disk X", "celsius": 35.75,
             "max_celsius": 35.75, "critical_celsius": null},
        ]);
        assert_eq!(sensors, expected.as_array().unwrap(), "state {k}");
    }
    assert_eq!(highest, 47.5);
}
