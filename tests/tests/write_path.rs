//! The WebSocket write path, end to end: a batch larger than
//! `ws.max_frame_bytes` arrives as several `batch.update` frames, each within
//! the limit, in order and with every update exactly once, in every encoding;
//! and a frame the server cannot write (larger than the connection's write
//! buffer limit) closes that connection with 1011 and a log line naming it,
//! while other connections carry on; and a connection waiting for its turn
//! to replay (behind a replay whose write is stuck) still reads its client.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hostpulse_tests::fake::{self, FakeAgent};
use hostpulse_tests::track::Tracker;
use hostpulse_tests::ws::{Closed, WsClient};
use hostpulse_tests::{TestAggregator, WAIT, metric};
use serde_json::json;

/// Every log line the in-process aggregator writes while this test binary runs.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        logs
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits (up to [`WAIT`]) for a captured log line containing every one of `parts`.
async fn log_line_with(parts: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {parts:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the `$sys.subscribed` of a batching client (alone in a `batch.update`).
async fn subscribed_in_batch(client: &mut WsClient) {
    let frame = client.next().await;
    assert_eq!(frame["topic"], "batch.update", "{frame}");
    let items = frame["updates"].as_array().expect("a list of updates");
    assert!(
        items.len() == 1 && items[0]["topic"] == "$sys.subscribed",
        "{frame}"
    );
}

/// Sends one gRPC batch of `samples` samples, each a load update and a
/// process table of `processes` processes, published at once into one
/// batching window of each client (one per encoding), and checks that each
/// client gets it as `batch.update` frames of at most `split` bytes, at
/// least `min_frames` of them, with every update exactly once, in order.
async fn burst_arrives_split(split: usize, samples: u64, processes: usize, min_frames: usize) {
    let agg = TestAggregator::start(|c| c.ws.max_frame_bytes = split).await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "big").await;
    let mut clients = Vec::new();
    for encoding in ["json", "msgpack", "msgpack%2Bdeflate"] {
        // A window long enough that the whole burst lands in one batch.
        let mut c = WsClient::connect(&format!(
            "{}?encoding={encoding}&batch_ms=500",
            agg.ws_url()
        ))
        .await;
        c.send(json!({"action": "subscribe", "topic": "host.big.>"}))
            .await;
        subscribed_in_batch(&mut c).await;
        clients.push((encoding, c));
    }
    let burst: Vec<_> = (1..=samples)
        .map(|seq| fake::sample(seq, processes))
        .collect();
    agent.send(fake::batch(1, &burst)).await;
    agent.acked(1).await;
    for (encoding, c) in &mut clients {
        let mut tracker = Tracker::default();
        let mut order: Vec<u64> = Vec::new();
        let mut frames = 0;
        let mut largest = 0;
        let mut multi = 0;
        while tracker.count.values().sum::<u64>() < 2 * samples {
            let (bytes, frame) = c
                .next_frame_within(WAIT)
                .await
                .unwrap_or_else(|| panic!("{encoding}: every update within {WAIT:?}"));
            assert_eq!(frame["topic"], "batch.update", "{encoding}: {frame}");
            let updates = frame["updates"].as_array().expect("a list of updates");
            assert!(!updates.is_empty(), "{encoding}: an empty batch frame");
            frames += 1;
            largest = largest.max(bytes);
            if updates.len() > 1 {
                multi += 1;
            }
            for u in updates {
                tracker.record(u);
                order.push(u["seq"].as_u64().expect("a seq"));
            }
        }
        assert!(
            largest <= split,
            "{encoding}: a {largest}-byte frame over the {split}-byte split size"
        );
        // For deflate the split applies before compression, so it too
        // takes this many frames.
        assert!(frames >= min_frames, "{encoding}: only {frames} frames");
        assert!(
            multi >= frames / 2,
            "{encoding}: frames carry several updates"
        );
        tracker.assert_exactly_once();
        let expected: BTreeMap<String, u64> = ["host.big.load", "host.big.processes"]
            .into_iter()
            .map(|t| (t.to_string(), samples))
            .collect();
        assert_eq!(tracker.count, expected, "{encoding}: every update, once");
        // In publication order (update seqs are the sample seqs): sample by
        // sample, across frames.
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{encoding}: seqs go back across frames: {order:?}"
        );
        // Nothing more: the burst was delivered once.
        assert!(
            c.next_within(Duration::from_millis(700)).await.is_none(),
            "{encoding}: more frames than updates"
        );
    }
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_split_size_arrives_split_in_order_with_every_update_once() {
    // 40 samples with 40-process tables (about 8 KiB of JSON each): about
    // 330 KiB in one window, twenty times a 16 KiB split size.
    burst_arrives_split(16 << 10, 40, 40, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_mib_burst_splits_at_the_default_256_kib_and_deflates_complete() {
    // 40 samples with 200-process tables: well over a MiB per window, so
    // frames near 256 KiB, whose deflate runs on the blocking pool.
    burst_arrives_split(256 << 10, 40, 200, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_write_buffer_limit_closes_with_1011_and_a_log_line() {
    logs();
    // Write buffer limit: 4 KiB + 2 x 1 KiB = 6 KiB; a 200-process table is
    // about 40 KiB of JSON.
    let agg = TestAggregator::start(|c| {
        c.ws.queue_max_bytes = 1 << 10;
        c.ws.max_message_bytes = 1 << 10;
        c.ws.max_frame_bytes = 1 << 10;
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "huge").await;
    let mut victim = WsClient::connect(&agg.ws_url()).await;
    victim.subscribe("host.huge.processes").await;
    let victim_addr = victim.local_addr().to_string();
    let mut bystander = WsClient::connect(&agg.ws_url()).await;
    bystander.subscribe("host.huge.load").await;
    assert_eq!(metric(agg.http, "hostpulse_ws_connections").await, 2.0);

    agent.send(fake::batch(1, &[fake::sample(1, 200)])).await;
    agent.acked(1).await;

    assert_eq!(
        victim.closed(WAIT).await,
        Closed::Code(1011),
        "an unwritable frame closes with 1011"
    );
    let line = log_line_with(&["write buffer limit", "1011", &victim_addr]).await;
    assert!(
        line.contains("conn="),
        "the log line names the connection: {line}"
    );

    // The other connection got its update and is still served.
    let load = bystander.next_on("host.huge.load").await;
    assert_eq!(load["seq"], 1, "{load}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(agg.http, "hostpulse_ws_connections").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bystander.send(json!({"action": "ping", "id": 7})).await;
    let pong = bystander.next_on("$sys.pong").await;
    assert_eq!(pong["payload"]["id"], 7, "{pong}");
    agg.stop().await;
}

/// The send queue (bytes written but not yet acknowledged by the peer) of
/// the loopback TCP socket from local port `local` to remote port `remote`,
/// from /proc/net/tcp.
fn tcp_send_queue(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit_once(':')?.1, 16).ok();
        if port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        u64::from_str_radix(f[4].split_once(':')?.0, 16).ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_its_turn_to_replay_still_answers_its_client() {
    // One replay at a time, and a stuck write that keeps its turn for the
    // whole test.
    let agg = TestAggregator::start(|c| {
        c.ws.replay_concurrency = 1;
        c.ws.write_timeout_ms = 120_000;
    })
    .await;
    let mut agent = FakeAgent::connect(&agg.ingest_url(), "big").await;
    for seq in 1..=120 {
        agent
            .send(fake::batch(seq, &[fake::sample(seq, 400)]))
            .await;
    }
    agent.acked(120).await;
    let subscribe = json!({"action": "subscribe", "topic": "host.big.processes", "history": 120});

    // A asks for 120 updates of about 60 KB each through a tiny receive
    // buffer and never reads: its replay's write blocks, holding the turn.
    let mut stuck = WsClient::connect_with_recv_buffer(&agg.ws_url(), 4096).await;
    stuck.send(subscribe.clone()).await;
    let port = stuck.local_addr().port();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = 0;
    loop {
        // Blocked: the server's send queue to A is full and stays so.
        let now = tcp_send_queue(agg.http.port(), port).unwrap_or(0);
        if now > 64 << 10 && now == last {
            break;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's replay never blocked (send queue {now} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // B asks for a replay too, so it waits for A's turn to end; meanwhile
    // its session still reads it: a Close is answered at once.
    let mut waiting = WsClient::connect(&agg.ws_url()).await;
    waiting.send(subscribe).await;
    let reply = waiting.next_within(WAIT).await.expect("$sys.subscribed");
    assert_eq!(reply["topic"], "$sys.subscribed", "{reply}");
    waiting
        .send_message(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    assert_eq!(
        waiting.closed(Duration::from_secs(5)).await,
        Closed::Code(1005),
        "a Close answered while waiting for a replay turn"
    );
    // A still holds the turn: B's reply did not come from A letting go.
    assert!(tcp_send_queue(agg.http.port(), port).unwrap_or(0) > 64 << 10);
    drop(stuck);
    agg.stop().await;
}
