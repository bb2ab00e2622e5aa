//! The cluster at fleet scale, end to end: real aggregator binaries, a real
//! nats-server (at its default `max_payload` and with it lowered), and
//! thousands of hosts from `hostpulse-fleet-sim` (one real gRPC stream each).
//!
//! - 5,000 hosts on one aggregator: its presence (about 1.6 MB) crosses the
//!   broker's default 1 MiB limit in chunks, every host is listed on both
//!   aggregators, and a third joining late catches up all of their history
//!   (the size and time are printed: BENCHMARKS.md, "Cluster at 5,000 hosts").
//! - A catch-up paced to take several seconds, longer than the idle timeout
//!   the asker waits between chunks, arrives whole: every seq, in order.
//! - Under a tiny `max_payload`, presence still works (many chunks), a
//!   catch-up request listing hundreds of floors is chunked (never "send
//!   everything"), and an update too large for the broker is counted in
//!   `hostpulse_cluster_publish_errors_total` and logged once per episode.
//! - One host name on two aggregators: the second agent is refused,
//!   naming the aggregator holding it.

use std::time::Duration;

use hostpulse_tests::WAIT;
use hostpulse_tests::cluster::{Burst, FleetSim, Node, eventually, hosts_online, track_until};
use hostpulse_tests::fake;
use hostpulse_tests::nats::NatsServer;
use hostpulse_tests::process::number_in;

/// Presence every second (as by default): a 5,000-host announcement is
/// about 1.4 MB, built and parsed by debug builds sharing two cores with
/// the fleet and the broker, so a peer's answer may take seconds to start
/// reaching a late node: an idle timeout of 5 s.
const SCALE_CLUSTER: [(&str, &str); 3] = [
    ("presence_interval_ms", "1000"),
    ("peer_timeout_ms", "10000"),
    ("catchup_wait_ms", "5000"),
];

/// `hostpulse_cluster_publish_errors_total{kind}` of a node.
async fn publish_errors(node: &Node, kind: &str) -> u64 {
    node.metric(&format!(
        "hostpulse_cluster_publish_errors_total{{kind=\"{kind}\"}}"
    ))
    .await
}

/// (announcements, chunks) a node has published.
async fn presence_counts(node: &Node) -> (u64, u64) {
    (
        node.metric("hostpulse_cluster_presence_announcements_total")
            .await,
        node.metric("hostpulse_cluster_presence_chunks_total").await,
    )
}

/// Waits for `n` more announcements of `node`; returns how many chunks
/// each took on average (an announcement is counted once its last chunk is
/// out, so one still going out at either reading skews this by at most its
/// own chunks).
async fn chunks_per_announcement(node: &Node, n: u64) -> f64 {
    let (a0, c0) = presence_counts(node).await;
    let (a1, c1) = eventually(
        "more presence announcements",
        async || presence_counts(node).await,
        |&(a, _)| a > a0 + n,
    )
    .await;
    (c1 - c0) as f64 / (a1 - a0) as f64
}

/// The `n`th log line of `node` containing `needle` (waits up to `limit`).
async fn nth_line(node: &mut Node, needle: &str, n: usize, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let found: Vec<String> = node
            .proc
            .lines_so_far()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect();
        if let Some(line) = found.get(n - 1) {
            return line.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} lines with {needle:?}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_hosts_cross_the_default_max_payload_in_chunks_and_are_listed_everywhere() {
    const HOSTS: usize = 5_000;
    const BACKLOG: u64 = 4;
    let nats = NatsServer::start();
    let mut n1 = Node::start_with(&nats, "agg-1", &SCALE_CLUSTER).await;
    let n2 = Node::start_with(&nats, "agg-2", &SCALE_CLUSTER).await;
    let mut fleet = FleetSim::start(n1.ingest, HOSTS, BACKLOG, 5_000, "scale");
    let took = fleet.ready(Duration::from_secs(240)).await;
    eprintln!("{HOSTS} hosts attached with their backlog in {took:?}");

    for node in [&n1, &n2] {
        let hosts = hosts_online(node, HOSTS, Duration::from_secs(60)).await;
        for i in 1..=HOSTS {
            let name = format!("scale-{i:05}");
            assert_eq!(
                hosts.get(&name),
                Some(&("agg-1".to_string(), true)),
                "{name} on {}",
                node.http
            );
        }
    }
    // Each announcement went out in several chunks, none refused.
    let per = chunks_per_announcement(&n1, 3).await;
    let bytes = n1.metric("hostpulse_cluster_presence_bytes").await;
    eprintln!(
        "presence of {HOSTS} hosts at the default max_payload: {bytes} bytes, {per:.2} chunks each"
    );
    assert!(per > 1.0, "{per} chunks per announcement");
    assert!(
        bytes > 1 << 20,
        "{bytes} bytes: not past the default max_payload"
    );
    assert_eq!(publish_errors(&n1, "presence").await, 0);
    assert_eq!(publish_errors(&n1, "update").await, 0);

    // A third aggregator joins late and catches up every host's history.
    let mut n3 = Node::start_with(&nats, "agg-3", &SCALE_CLUSTER).await;
    // Debug builds on a small machine: tens of MB to take in while the
    // fleet keeps sampling.
    let slow = Duration::from_secs(90);
    let applied = nth_line(&mut n3, "catch-up applied", 1, slow).await;
    let answered = nth_line(&mut n1, "catch-up answered to=agg-3", 1, slow).await;
    let updates = number_in(&answered, "updates");
    eprintln!(
        "cluster-5000 catch-up: {updates} updates, {} bytes in {} chunks, answered in {} ms; \
         applied on the late node in {} ms (ended {})",
        number_in(&answered, "bytes"),
        number_in(&answered, "chunks"),
        number_in(&answered, "took_ms"),
        number_in(&applied, "took_ms"),
        applied
            .split("ended=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?"),
    );
    assert!(
        updates >= HOSTS as u64 * BACKLOG * 3,
        "every host's backlog: {answered}"
    );
    assert_eq!(number_in(&applied, "updates"), updates, "{applied}");
    assert!(applied.contains("ended=Complete"), "{applied}");
    hosts_online(&n3, HOSTS, Duration::from_secs(60)).await;
    drop(fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_longer_than_its_idle_timeout_arrives_whole_and_in_order() {
    const HOSTS: usize = 8;
    const HISTORY: u64 = 1_000;
    // About 200 bytes per update: some 1.6 MB to send at 400 kB/s, i.e.
    // about 4 s, against an idle timeout of 500 ms on the asker.
    let hub = "history_len = 2000";
    let nats = NatsServer::start();
    let mut n1 = Node::start_with_hub(
        &nats,
        "agg-1",
        &[("catchup_answer_bytes_per_sec", "400000")],
        hub,
    )
    .await;
    let mut agents = Vec::new();
    for i in 0..HOSTS {
        let mut b = Burst::connect(&n1, &format!("slow-{i}")).await;
        for _ in 0..HISTORY / 250 {
            b.send(250).await;
        }
        agents.push(b);
    }
    let want = HOSTS as u64 * HISTORY;
    eventually(
        "aggregator 1 to take every sample",
        async || n1.load_updates().await,
        |&n| n == want,
    )
    .await;

    let mut n2 = Node::start_with_hub(&nats, "agg-2", &[("catchup_wait_ms", "500")], hub).await;
    // Live updates while the answer is still being sent: held, then
    // applied after it, in order.
    n1.line("answering a catch-up to=agg-2");
    for b in &mut agents {
        b.send(5).await;
    }
    let applied = n2.line("catch-up applied");
    let answered = n1.line("catch-up answered to=agg-2");
    eprintln!("{answered}\n{applied}");
    assert!(
        number_in(&applied, "took_ms") > 1_000,
        "the answer was meant to take longer than a second: {applied}"
    );
    assert!(number_in(&applied, "updates") >= want, "{applied}");
    assert!(
        !applied.contains("ended=Idle"),
        "cut short by the idle timeout: {applied}"
    );
    // And after it, live again.
    for b in &mut agents {
        b.send(5).await;
    }
    let last = HISTORY + 10;
    let tracker = track_until(&n2, "host.*.load", 2000, |t| {
        (0..HOSTS).all(|i| t.last(&format!("host.slow-{i}.load")) == Some(last))
    })
    .await;
    tracker.assert_exactly_once();
    for i in 0..HOSTS {
        assert_eq!(tracker.range[&format!("host.slow-{i}.load")], (1, last));
    }
    assert_eq!(n2.metric("hostpulse_cluster_dropped_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_max_payload_chunks_presence_and_requests_and_counts_what_cannot_fit() {
    const HOSTS: usize = 300;
    const MAX_PAYLOAD: usize = 8 << 10;
    let mut nats = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    let tune = [
        ("presence_interval_ms", "500"),
        ("peer_timeout_ms", "3000"),
        ("catchup_wait_ms", "1000"),
    ];
    let mut n1 = Node::start_with(&nats, "agg-1", &tune).await;
    let n2 = Node::start_with(&nats, "agg-2", &tune).await;
    let mut fleet = FleetSim::start(n1.ingest, HOSTS, 2, 1_000, "tiny");
    fleet.ready(Duration::from_secs(60)).await;
    hosts_online(&n2, HOSTS, Duration::from_secs(30)).await;
    let per = chunks_per_announcement(&n1, 2).await;
    eprintln!(
        "presence of {HOSTS} hosts under a {MAX_PAYLOAD}-byte max_payload: {per:.1} chunks each"
    );
    assert!(per >= 5.0, "{per} chunks per announcement");
    assert_eq!(publish_errors(&n1, "presence").await, 0);

    // An update larger than the broker takes: refused by the client,
    // counted, logged once; the next one that fits ends the episode.
    let mut big = Burst::connect(&n1, "big").await;
    big.agent
        .send(fake::batch(1, &[fake::sample(1, 600)]))
        .await;
    big.agent.acked(1).await;
    (big.batches, big.seq) = (1, 1);
    eventually(
        "the refused update counted",
        async || publish_errors(&n1, "update").await,
        |&n| n == 1,
    )
    .await;
    let failed = n1.line("publishing to NATS failed");
    assert!(
        failed.contains("kind=\"update\"") || failed.contains("kind=update"),
        "{failed}"
    );
    big.send(3).await;
    let back = n1.line("publishing to NATS works again");
    assert_eq!(number_in(&back, "failed"), 1, "{back}");
    assert_eq!(n1.proc.count_lines("publishing to NATS failed"), 1);
    assert_eq!(publish_errors(&n1, "update").await, 1);

    // After a broker outage each node asks for what it missed, listing
    // the floor of every topic it holds (some 900): many chunks, not a
    // request for everything.
    // Counted before the outage: at its start aggregator 2 asked once, or
    // more often on a busy machine (a peer slow to begin is asked again).
    let asked_before = n1.proc.count_lines("answering a catch-up to=agg-2");
    let answered_before = n1.proc.count_lines("catch-up answered to=agg-2");
    nats.stop();
    nats.restart();
    // The first request of aggregator 2 after the outage.
    let asked = nth_line(
        &mut n1,
        "answering a catch-up to=agg-2",
        asked_before + 1,
        WAIT,
    )
    .await;
    let chunks = number_in(&asked, "request_chunks");
    assert!(chunks >= 3, "{asked}");
    assert!(number_in(&asked, "floors") >= HOSTS as u64 * 3, "{asked}");
    let answered = nth_line(
        &mut n1,
        "catch-up answered to=agg-2",
        answered_before + 1,
        WAIT,
    )
    .await;
    let history = n1.load_updates().await * 3;
    assert!(
        number_in(&answered, "updates") < history / 2,
        "only what was missed, not everything ({history}): {answered}"
    );
    drop(fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_name_on_two_aggregators_is_refused_naming_the_holder() {
    let nats = NatsServer::start();
    let n1 = Node::start(&nats, "agg-1").await;
    let n2 = Node::start(&nats, "agg-2").await;
    let _first = Burst::connect(&n1, "twin").await;
    eventually(
        "aggregator 2 to list the host on aggregator 1",
        async || n2.hosts().await.get("twin").cloned(),
        |h| *h == Some(("agg-1".to_string(), true)),
    )
    .await;

    // Another agent, same host name, on aggregator 2.
    let mut hello = fake::hello("twin", 1);
    if let Some(hostpulse_proto::v1::agent_message::Kind::Hello(h)) = &mut hello.kind {
        h.agent_id = "impostor".into();
    }
    let status = fake::refusal_of(&n2.ingest_url(), None, vec![hello]).await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().contains("agg-1") && status.message().contains("twin"),
        "{status:?}"
    );
    // Still listed once, on aggregator 1, and no conflict to report.
    assert_eq!(
        n2.hosts().await.get("twin"),
        Some(&("agg-1".to_string(), true))
    );
    assert_eq!(n2.metric("hostpulse_cluster_host_conflicts_total").await, 0);

    // The same agent moving over (failing over) is let in.
    let _moved = fake::FakeAgent::connect(&n2.ingest_url(), "twin").await;
    eventually(
        "aggregator 2 to list the host as its own",
        async || n2.hosts().await.get("twin").cloned(),
        |h| *h == Some(("agg-2".to_string(), true)),
    )
    .await;
}
