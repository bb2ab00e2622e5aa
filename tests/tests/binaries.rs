//! The real binaries, started with TOML files: start-up order, shutdown,
//! configuration errors, `--help`, `--once`, JSON logs and `--hash-token`.

use std::path::Path;
use std::time::Instant;

use hostpulse_aggregator::DRAIN_TIMEOUT;
use hostpulse_tests::process::{
    Proc, addr_in, binary, run, run_ok, start_aggregator_binary, temp_file,
};
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{WAIT, fake, free_port};

fn aggregator_toml(ingest: &str, http: &str) -> String {
    format!("[ingest]\nlisten = \"{ingest}\"\n[http]\nlisten = \"{http}\"\n")
}

/// Starts the aggregator binary on port 0; returns it and its (ingest, http) addresses.
fn start_aggregator() -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    start_aggregator_binary(&aggregator_toml("127.0.0.1:0", "127.0.0.1:0"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_promptly() {
    let (mut agg, _, http) = start_aggregator();
    let url = format!("ws://{http}/ws");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::connect(&url).await;
        c.subscribe("hosts").await;
        clients.push(c);
    }
    agg.terminate();
    for c in &mut clients {
        assert_eq!(c.closed(WAIT).await, Closed::Code(1001));
    }
    // Once every client has its close there is nothing left to drain: the
    // process ends at once rather than when the drain timeout would.
    let closed = Instant::now();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
    let exit_after_closes = closed.elapsed();
    let log = agg.stderr_to_end();
    assert!(log.contains("aggregator stopped"), "{log}");
    assert!(
        !log.contains("drain timeout"),
        "the drain finished instead of timing out: {log}"
    );
    assert!(
        exit_after_closes < DRAIN_TIMEOUT / 2,
        "exited {exit_after_closes:?} after the last close (drain timeout {DRAIN_TIMEOUT:?})"
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
        } else if name == "alerts.toml" {
            hostpulse_aggregator::alert::rules::load(&path).unwrap_or_else(|e| panic!("{e}"));
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

/// Every line of `log` as a JSON object with a timestamp, a level, a
/// target and a message; returns them.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
            assert!(v.is_object(), "{line}");
            let timestamp = v["timestamp"].as_str().unwrap_or_default();
            assert!(
                humantime::parse_rfc3339(timestamp).is_ok(),
                "timestamp in {line}"
            );
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .contains(&v["level"].as_str().unwrap_or_default()),
                "level in {line}"
            );
            assert!(
                !v["target"].as_str().unwrap_or_default().is_empty(),
                "target in {line}"
            );
            assert!(
                !v["message"].as_str().unwrap_or_default().is_empty(),
                "message in {line}"
            );
            v
        })
        .collect();
    assert!(!lines.is_empty(), "no log at all");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    // The agent: start-up, an aggregator it cannot reach, shutdown.
    let mut agent = Proc::spawn(
        "hostpulse-agent",
        &[
            "--log-format",
            "json",
            "--aggregator",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
    );
    agent.wait_for_line("aggregator unreachable");
    agent.terminate();
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let lines = json_lines(&agent.stderr_to_end());
    let unreachable = lines
        .iter()
        .find(|v| v["message"] == "aggregator unreachable")
        .expect("the unreachable warning");
    assert_eq!(unreachable["level"], "WARN");
    assert!(unreachable["retry_in_ms"].is_u64(), "{unreachable}");
    assert!(lines.len() >= 3, "start, warning and stop: {lines:?}");

    // The aggregator: start-up, a client, shutdown.
    let config = temp_file(
        "aggregator.toml",
        &aggregator_toml("127.0.0.1:0", "127.0.0.1:0"),
    );
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--log-format", "json", "--config", config.to_str().unwrap()],
    );
    let listening: serde_json::Value =
        serde_json::from_str(&agg.wait_for_line("aggregator listening")).unwrap();
    let http = listening["http_addr"]
        .as_str()
        .expect("http_addr as a field");
    let mut client = WsClient::connect(&format!("ws://{http}/ws")).await;
    client.subscribe("hosts").await;
    agg.terminate();
    assert_eq!(client.closed(WAIT).await, Closed::Code(1001));
    assert_eq!(agg.wait_exit(WAIT), Some(0));
    let lines = json_lines(&agg.stderr_to_end());
    let messages: Vec<&str> = lines
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"aggregator listening") && messages.contains(&"aggregator stopped"),
        "{messages:?}"
    );
}

/// What `hostpulse-aggregator --hash-token` prints for `input` on stdin.
fn hash_token(input: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary("hostpulse-aggregator"))
        .arg("--hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the aggregator");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_token_output_admits_that_token_and_no_other() {
    // SHA-256 in hex (FIPS 180-2's "abc" vector); the newline `echo` adds
    // is not part of the token.
    assert_eq!(
        hash_token("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let agent_token = "agent-token-0123456789abcdef";
    let client_token = "client-token-0123456789abcdef";
    let agent_hash = hash_token(agent_token);
    assert_eq!(hash_token(&format!("{agent_token}\n")), agent_hash);
    let client_hash = hash_token(client_token);

    // Only the hashes go into the aggregator's configuration.
    let config = temp_file(
        "aggregator.toml",
        &format!(
            "{}[auth]\nanonymous_agents = false\nanonymous_clients = false\n\
             [[auth.agent_tokens]]\nname = \"web\"\nsha256 = \"{agent_hash}\"\n\
             [[auth.client_tokens]]\nname = \"viewer\"\nsha256 = \"{client_hash}\"\n\
             topics = [\"hosts\", \"host.*.cpu\"]\n",
            aggregator_toml("127.0.0.1:0", "127.0.0.1:0")
        ),
    );
    let mut agg = Proc::spawn(
        "hostpulse-aggregator",
        &["--config", config.to_str().unwrap()],
    );
    let line = agg.wait_for_line("aggregator listening");
    let (ingest, http) = (addr_in(&line, "ingest_addr"), addr_in(&line, "http_addr"));

    // The real agent presenting the token is admitted, and a client with
    // its own token sees the agent's samples.
    let token_file = temp_file("agent.token", &format!("{agent_token}\n"));
    let agent_config = temp_file(
        "agent.toml",
        &format!(
            "aggregator = \"http://{ingest}\"\nhostname = \"hashed\"\ninterval_ms = 100\n\
             token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    let mut agent = Proc::spawn(
        "hostpulse-agent",
        &["--config", agent_config.to_str().unwrap()],
    );
    let mut client = WsClient::connect(&format!("ws://{http}/ws?token={client_token}")).await;
    client.subscribe("host.hashed.cpu").await;
    let m = client.next_on("host.hashed.cpu").await;
    assert!(m["seq"].as_u64().unwrap() > 0);

    // Any other token is refused, for agents and clients alike (each
    // token only where its hash is listed).
    let ingest_url = format!("http://{ingest}");
    for wrong in ["agent-token-0123456789abcdeF", client_token, ""] {
        let status =
            fake::refusal_of(&ingest_url, Some(wrong), vec![fake::hello("forged", 1)]).await;
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{wrong:?}: {status:?}"
        );
    }
    for wrong in ["client-token-0123456789abcdeF", agent_token] {
        let url = format!("ws://{http}/ws?token={wrong}");
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401, "{wrong:?}")
            }
            Err(e) => panic!("{wrong:?}: expected HTTP 401, got {e}"),
            Ok(_) => panic!("{wrong:?}: a client with a wrong token was admitted"),
        }
    }
    // The right token still works through the same fake client.
    let mut accepted = fake::open_as(
        &ingest_url,
        Some(agent_token),
        vec![fake::hello("web-02", 1)],
    )
    .await
    .expect("stream accepted");
    assert!(
        matches!(
            tokio::time::timeout(WAIT, accepted.inbound.message()).await,
            Ok(Ok(Some(hostpulse_proto::v1::AggregatorMessage {
                kind: Some(hostpulse_proto::v1::aggregator_message::Kind::Welcome(_))
            })))
        ),
        "Welcome for the right token"
    );

    agent.terminate();
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    agg.terminate();
    assert_eq!(agg.wait_exit(WAIT), Some(0));
}

#[test]
fn systemd_units_verify_cleanly() {
    // .ci/run installs systemd-analyze; the units point at /usr/bin (where the
    // Debian packages put the binaries), so the copies checked here point at
    // the binaries just built. scripts/deb-test.sh verifies the installed ones.
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
        std::fs::write(&path, text.replace("/usr/bin/", &format!("{bin_dir}/"))).unwrap();
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

/// Each thread of `pid`: (name, nice), from /proc/PID/task/TID/stat.
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc") {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (name) state ..." : the name may hold spaces; fields after
        // the last ')' start at state (field 3); nice is field 19.
        let (head, tail) = stat.rsplit_once(')').expect("stat format");
        let name = head.split_once('(').expect("stat format").1.to_string();
        let nice = tail.split_whitespace().nth(16).expect("nice field");
        out.push((name, nice.parse().expect("a number")));
    }
    out
}

#[tokio::test]
async fn client_threads_run_below_the_live_path() {
    let (agg, _, http) = start_aggregator();
    // A client request, so the client runtime's threads have all started.
    let (status, _) = hostpulse_tests::http_get(http, "/healthz").await;
    assert_eq!(status, 200);
    // A thread the runtime has just started shows its creator's priority
    // until its start hook has run: read until every client thread has
    // settled (bounded).
    let settled = |threads: &[(String, i64)]| {
        let main = threads.iter().find(|(n, _)| n == "hostpulse-aggre");
        main.is_some_and(|(_, base)| {
            let want = (base + i64::from(hostpulse_aggregator::CLIENT_NICE)).min(19);
            threads
                .iter()
                .all(|(n, nice)| n != "hostpulse-ws" || *nice == want)
        })
    };
    let deadline = Instant::now() + WAIT;
    let mut threads = thread_nices(agg.child.id());
    while !settled(&threads) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = thread_nices(agg.child.id());
    }
    let base = threads
        .iter()
        .find(|(n, _)| n == "hostpulse-aggre")
        .map(|t| t.1)
        .expect("the main thread");
    let live: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n == "hostpulse-live")
        .collect();
    let clients: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n == "hostpulse-ws")
        .collect();
    assert!(!live.is_empty() && !clients.is_empty(), "{threads:?}");
    assert!(
        live.iter().all(|t| t.1 == base),
        "live path at the process's own priority: {threads:?}"
    );
    let expected = (base + i64::from(hostpulse_aggregator::CLIENT_NICE)).min(19);
    assert!(
        clients.iter().all(|t| t.1 == expected),
        "client threads at nice {expected}: {threads:?}"
    );
}
