//! Agents never stall on an aggregator's limits, and one agent id is one
//! stream: the real binaries, configured by file.
//!
//! - An agent cut off long enough to gather a batch larger than the
//!   aggregator's `ingest.max_message_bytes` delivers every sample once it
//!   is back, none lost and none twice, within a bounded time.
//! - A second agent with the same `agent_id` is refused with
//!   `ALREADY_EXISTS` naming the address that holds it, says so, and backs
//!   off: the first keeps its stream and `hosts` sees one `online`, no
//!   flapping; once the first stops, the second takes over.

use std::time::{Duration, Instant};

use hostpulse_tests::process::{Proc, number_in, start_aggregator_binary, temp_file};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::WsClient;
use hostpulse_tests::{WAIT, metric};

use serde_json::Value;

/// Starts the aggregator binary on port 0 with `extra` TOML; returns it and
/// its (ingest, http) addresses.
fn start_aggregator(extra: &str) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    start_aggregator_binary(&format!(
        "[ingest]\nlisten = \"127.0.0.1:0\"\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n"
    ))
}

/// Starts the agent binary with `toml`, and `env`.
fn start_agent(toml: &str, env: &[(&str, &str)]) -> Proc {
    let config = temp_file("agent.toml", toml);
    Proc::spawn_with_env(
        "hostpulse-agent",
        &["--config", config.to_str().unwrap()],
        env,
    )
}

/// Blocks this worker (the other keeps the test's tasks running) until
/// `proc` logs a line containing `needle`.
fn line(proc: &mut Proc, needle: &str) -> String {
    tokio::task::block_in_place(|| proc.wait_for_line(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_the_aggregators_message_limit_is_delivered_exactly_once() {
    // 20 KB: a few of this machine's samples; the backlog is far more.
    let (mut agg, ingest, http) = start_aggregator("max_message_bytes = 20000");
    let topic = "host.backlog.cpu";
    // The subscriber is there before the agent's first sample, and resumes
    // from its last seq whenever its connection breaks.
    let url = format!("ws://{http}/ws");
    let mut client = WsClient::connect(&url).await;
    client.subscribe(topic).await;
    let (last_tx, mut last_rx) = tokio::sync::oneshot::channel::<u64>();
    let subscriber = tokio::spawn(async move {
        let mut tracker = Tracker::default();
        let mut last: Option<u64> = None;
        loop {
            if last.is_none()
                && let Ok(seq) = last_rx.try_recv()
            {
                last = Some(seq);
            }
            if last.is_some() && tracker.last(topic) == last {
                return tracker;
            }
            match client.recv(Duration::from_millis(200)).await {
                Ok(Some(m)) => tracker.record(&m),
                Ok(None) => {}
                Err(_) => {
                    client = WsClient::connect_retrying(&url, WAIT).await;
                    client.send(tracker.resume(topic)).await;
                }
            }
        }
    });

    // The aggregator does not answer (stopped, as the was paused)
    // while the agent starts: it cannot know the limit, and gathers its
    // samples into batches of 100, each far over 20 KB.
    agg.signal("STOP");
    let mut agent = start_agent(
        &format!(
            "aggregator = \"http://{ingest}\"\nhostname = \"backlog\"\ninterval_ms = 100\n\
             batch_max_samples = 100\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
             connect_timeout_ms = 1000\n[collect]\nprocesses_budget_pct = 100.0\n"
        ),
        &[],
    );
    let starting = line(&mut agent, "agent starting");
    // Its samples are numbered from just above the run's first seq.
    let first_seq = hostpulse_agent::collect::first_seq(number_in(&starting, "epoch")) + 1;
    line(&mut agent, "aggregator unreachable");
    tokio::time::sleep(Duration::from_secs(12)).await;
    agg.signal("CONT");
    let resumed = Instant::now();

    // Back: the backlog goes out in pieces the aggregator takes.
    let split = line(&mut agent, "split before sending");
    assert!(number_in(&split, "bytes") > 20_000, "{split}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The agent stops: it sends what is left and waits for the acks.
    agent.terminate();
    let exit = line(&mut agent, "every batch acknowledged; exiting");
    let last = number_in(&exit, "last_sample_seq");
    let _ = last_tx.send(last);
    let tracker = tokio::time::timeout(WAIT, subscriber)
        .await
        .expect("the subscriber sees the agent's last sample")
        .expect("subscriber task");
    let recovery = resumed.elapsed();

    // Every sample, from the first, once and in order.
    tracker.assert_exactly_once();
    assert_eq!(tracker.range[topic], (first_seq, last));
    assert!(
        last - first_seq > 100,
        "13 s or more of samples at 10 a second: {first_seq}..{last}"
    );
    assert_eq!(agent.count_lines("given up"), 0, "no sample given up");
    assert!(
        recovery < Duration::from_secs(20),
        "everything delivered {recovery:?} after the aggregator came back"
    );
    assert_eq!(
        tokio::task::block_in_place(|| agent.wait_exit(WAIT)),
        Some(0)
    );
    agg.terminate();
    assert_eq!(tokio::task::block_in_place(|| agg.wait_exit(WAIT)), Some(0));
}

/// The `hosts` events received within `window`: (event, host).
async fn hosts_events(watcher: &mut WsClient, window: Duration) -> Vec<(String, String)> {
    let end = tokio::time::Instant::now() + window;
    let mut events = Vec::new();
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return events;
        }
        match watcher.recv(left).await {
            Ok(Some(m)) if m["topic"] == "hosts" => {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                events.push((text(&m["payload"]["event"]), text(&m["payload"]["host"])));
            }
            Ok(_) => {}
            Err(closed) => panic!("watcher closed: {closed:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_agent_id_is_refused_and_backs_off_without_flapping() {
    let (mut agg, ingest, http) = start_aggregator("");
    let mut watcher = WsClient::connect(&format!("ws://{http}/ws")).await;
    watcher.subscribe("hosts").await;
    // Clones of one machine image: same host name, same id (here from the
    // environment, as a drop-in would set it).
    let toml = format!(
        "aggregator = \"http://{ingest}\"\nhostname = \"twin\"\ninterval_ms = 100\n\
         reconnect_min_ms = 250\nreconnect_max_ms = 5000\n"
    );
    let env = [("HOSTPULSE_AGENT_ID", "twin-id")];
    let mut first = start_agent(&toml, &env);
    line(&mut first, "pipeline: connected");
    let online = hosts_events(&mut watcher, Duration::from_millis(500)).await;
    assert_eq!(online, [("online".to_string(), "twin".to_string())]);
    let refused_before = metric(http, "hostpulse_ingest_refused_streams_total").await;

    let mut second = start_agent(&toml, &env);
    let refusal = line(&mut second, "another agent is streaming with this agent_id");
    assert!(
        refusal.contains("agent_id \"twin-id\" is already streaming from 127.0.0.1:"),
        "{refusal}"
    );
    assert!(refusal.contains("HOSTPULSE_AGENT_ID"), "{refusal}");

    // 30 s: the first keeps its one stream, `hosts` stays quiet, and the
    // second keeps trying, ever less often.
    let events = hosts_events(&mut watcher, Duration::from_secs(30)).await;
    assert!(events.is_empty(), "no flapping: {events:?}");
    assert_eq!(
        first.count_lines("pipeline: connected"),
        1,
        "the first never lost its stream"
    );
    assert_eq!(second.count_lines("pipeline: connected"), 0);
    assert_eq!(
        second.count_lines("another agent is streaming with this agent_id"),
        1,
        "said once"
    );
    let refused = metric(http, "hostpulse_ingest_refused_streams_total").await - refused_before;
    // Backoff from 250 ms doubling to 5 s, with jitter: about a dozen
    // attempts in 30 s (a fixed 250 ms would be 120).
    assert!(
        (3.0..=20.0).contains(&refused),
        "{refused} attempts refused in 30 s"
    );
    assert_eq!(metric(http, "hostpulse_agents_connected").await, 1.0);

    // The first stops; its stream ends, and the second takes over at its
    // next attempt: a new run of the host.
    first.terminate();
    assert_eq!(
        tokio::task::block_in_place(|| first.wait_exit(WAIT)),
        Some(0)
    );
    line(&mut second, "pipeline: connected");
    let events = hosts_events(&mut watcher, Duration::from_millis(500)).await;
    assert_eq!(
        events,
        [
            ("offline".to_string(), "twin".to_string()),
            ("restarted".to_string(), "twin".to_string())
        ]
    );
    second.terminate();
    agg.terminate();
    assert_eq!(tokio::task::block_in_place(|| agg.wait_exit(WAIT)), Some(0));
}
