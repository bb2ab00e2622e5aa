//! The real binaries, started with TOML files: start-up order, shutdown,
//! configuration errors, `--help` and `--once`.

use std::path::Path;
use std::time::Duration;

use hostpulse_tests::process::{Proc, addr_in, run, run_ok, temp_file};
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{WAIT, free_port};

fn aggregator_toml(ingest: &str, http: &str) -> String {
    format!("[ingest]\nlisten = \"{ingest}\"\n[http]\nlisten = \"{http}\"\n")
}

/// Starts the aggregator binary on port 0; returns it and its (ingest, http) addresses.
fn start_aggregator() -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    let config = temp_file(
        "aggregator.toml",
        &aggregator_toml("127.0.0.1:0", "127.0.0.1:0"),
    );
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap()],
    );
    let line = agg.wait_for_line("aggregator listening");
    (
        agg,
        addr_in(&line, "ingest_addr"),
        addr_in(&line, "http_addr"),
    )
}

#[tokio::test]
async fn an_agent_started_before_its_aggregator_connects_once_it_is_up() {
    let ingest_port = free_port();
    let agent_config = temp_file(
        "agent.toml",
        &format!(
            "aggregator = \"http://127.0.0.1:{ingest_port}\"\nhostname = \"late\"\n\
             interval_ms = 100\nreconnect_min_ms = 50\nreconnect_max_ms = 400\n"
        ),
    );
    let mut agent = Proc::spawn(
        "hostpulse-agent",
        &["--config", agent_config.to_str().unwrap()],
    );
    // It tries, fails, and keeps trying rather than exiting.
    agent.wait_for_line("aggregator unreachable");
    agent.wait_for_line("retry_in_ms");
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent must not exit"
    );

    let config = temp_file(
        "aggregator.toml",
        &aggregator_toml(&format!("127.0.0.1:{ingest_port}"), "127.0.0.1:0"),
    );
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap()],
    );
    let http = addr_in(&agg.wait_for_line("aggregator listening"), "http_addr");
    agent.wait_for_line("connected");

    let mut client = WsClient::connect(&format!("ws://{http}/ws")).await;
    client.subscribe("host.late.cpu").await;
    let m = client.next_on("host.late.cpu").await;
    assert!(m["seq"].as_u64().unwrap() > 0);

    agent.terminate();
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    agg.terminate();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_promptly() {
    let (mut agg, _, http) = start_aggregator();
    let url = format!("ws://{http}/ws");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::connect(&url).await;
        c.subscribe("hosts").await;
        clients.push(c);
    }
    let started = std::time::Instant::now();
    agg.terminate();
    for c in &mut clients {
        assert_eq!(c.closed(WAIT).await, Closed::Code(1001));
    }
    assert_eq!(agg.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn configuration_errors_name_the_file_the_key_and_the_reason() {
    let cases = [
        ("hostpulse-aggregator", "[hub]\nhistory = 5\n", "history"),
        (
            "hostpulse-aggregator",
            "[hub]\nhistory_len = 0\n",
            "`hub.history_len`: must be positive",
        ),
        (
            "hostpulse-aggregator",
            "[http]\nlisten = \"localhost\"\n",
            "listen",
        ),
        (
            "hostpulse-agent",
            "interval_ms = 1\n",
            "`interval_ms`: 1 is below the minimum of 10",
        ),
        ("hostpulse-agent", "colour = \"red\"\n", "colour"),
        (
            "hostpulse-agent",
            "aggregator = \"127.0.0.1:7070\"\n",
            "must start with http://",
        ),
    ];
    for (binary, text, phrase) in cases {
        let path = temp_file("bad.toml", text);
        let mut p = Proc::spawn(binary, &["--config", path.to_str().unwrap()]);
        let text_out = p.stderr_to_end();
        assert!(
            text_out.contains("configuration refused"),
            "{binary}: {text_out}"
        );
        assert!(
            text_out.contains(path.to_str().unwrap()),
            "{binary}: names the file: {text_out}"
        );
        assert!(text_out.contains(phrase), "{binary} {text:?}: {text_out}");
        assert_eq!(p.wait_exit(WAIT), Some(64), "{binary} exits with 64");
    }
    let mut p = Proc::spawn("hostpulse-agent", &["--config", "/nonexistent/agent.toml"]);
    assert!(
        p.wait_for_line("configuration refused")
            .contains("cannot read")
    );
    assert_eq!(p.wait_exit(WAIT), Some(64));
}

#[test]
fn help_describes_both_binaries() {
    for binary in ["hostpulse-aggregator", "hostpulse-agent"] {
        let text = run_ok(binary, &["--help"], &[]);
        assert!(text.contains("--config"), "{binary}: {text}");
    }
}

#[test]
fn once_prints_one_sample_as_json() {
    let config = repo_file("deploy/agent.toml");
    let out = run_ok("hostpulse-agent", &["--once", "--config", &config], &[]);
    let sample: serde_json::Value = serde_json::from_str(&out).expect("pretty JSON");
    assert!(sample["seq"].as_u64().unwrap() > 0);
    assert!(sample["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(sample["cpu"]["per_core_pct"].is_array());
    assert!(sample["processes"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut checked = 0;
    // deploy/ and the local cluster's files in deploy/cluster/.
    let entries = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("cluster")).unwrap());
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") {
            continue;
        }
        if name.starts_with("agent") {
            hostpulse_agent::AgentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        } else if name.starts_with("aggregator") {
            hostpulse_aggregator::AggregatorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        } else {
            panic!("{name}: unknown config file; teach this test about it");
        }
        checked += 1;
    }
    assert!(checked >= 6, "found {checked} config files");
}

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn check_config_prints_the_effective_settings_without_secrets() {
    let path = temp_file(
        "aggregator.toml",
        "[hub]\nhistory_len = 42\n[[auth.client_tokens]]\nname = \"ops\"\n\
         token = \"super-secret-token-123\"\ntopics = [\">\"]\n",
    );
    let text = run_ok(
        "hostpulse-aggregator",
        &["--check-config", "--config", path.to_str().unwrap()],
        &[],
    );
    assert!(text.contains("history_len = 42"), "{text}");
    assert!(
        text.contains("ping_interval_ms = 15000"),
        "defaults are shown: {text}"
    );
    assert!(!text.contains("super-secret"), "{text}");
    assert!(text.contains("<redacted>"));

    let token_file = temp_file("agent.token", "agent-secret-token-0123\n");
    let text = run_ok(
        "hostpulse-agent",
        &["--check-config", "--hostname", "web-07"],
        &[
            ("HOSTPULSE_AGGREGATOR", "http://127.0.0.9:7070".as_ref()),
            ("HOSTPULSE_TOKEN_FILE", token_file.as_os_str()),
        ],
    );
    assert!(
        text.contains(token_file.to_str().unwrap()),
        "token file override: {text}"
    );
    assert!(!text.contains("agent-secret"), "{text}");
    assert!(text.contains("hostname = \"web-07\""), "{text}");
    assert!(
        text.contains("http://127.0.0.9:7070"),
        "environment overrides apply: {text}"
    );
    // A bad file is still refused, with exit 64.
    let bad = temp_file("bad.toml", "interval_ms = 0\n");
    let out = run(
        "hostpulse-agent",
        &["--check-config", "--config", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut agent = Proc::spawn(
        "hostpulse-agent",
        &[
            "--log-format",
            "json",
            "--aggregator",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
    );
    let line = agent.wait_for_line("aggregator unreachable");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["message"], "aggregator unreachable");
    assert!(v["retry_in_ms"].is_u64());
}

#[test]
fn systemd_units_verify_cleanly() {
    // .ci/run installs systemd-analyze; the units point at /usr/local/bin, so
    // the copies checked here point at the binaries just built.
    let dir = std::env::temp_dir().join(format!("hostpulse-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin_dir = hostpulse_tests::process::binary("hostpulse-agent")
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut units = Vec::new();
    for name in ["hostpulse-aggregator.service", "hostpulse-agent.service"] {
        let text = std::fs::read_to_string(repo_file(&format!("deploy/{name}"))).unwrap();
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"));
        let path = dir.join(name);
        std::fs::write(&path, text.replace("/usr/local/bin", &bin_dir)).unwrap();
        units.push(path);
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}
